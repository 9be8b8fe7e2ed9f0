"""Serve emulated meters with pymodbus: Modbus TCP, or RTU framing for the paced relay.

Every unit on one server shares the line, as meters on one RS-485 bus do. Register values
are produced at read time by a ``SimDevice`` action (so energy is always current), the
Eastron limits are enforced there, and faults are injected on the outgoing bytes through
pymodbus' ``trace_packet`` hook (a unit that is unplugged or absent sends nothing).
"""

from __future__ import annotations

import functools
import logging
import os

from pymodbus.constants import ExcCodes
from pymodbus.framer import FramerType
from pymodbus.server import ModbusTcpServer
from pymodbus.simulator import DataType, SimData, SimDevice

from .model import Meter

log = logging.getLogger("tools.meters")


async def _action(meter: Meter, function_code: int, start_address: int, address: int, count: int,
                  registers: list[int], set_values: list | None) -> ExcCodes | None:
    if set_values is not None:
        return ExcCodes.ILLEGAL_FUNCTION  # meters' measurement registers are read-only
    fc = 4 if function_code == 4 else 3
    code = meter.check(fc, address, count)
    if code is not None:
        return ExcCodes(code)
    words = meter.read(fc, address, count)
    off = address - start_address
    registers[off:off + count] = words
    return None


def _block(rng: tuple[int, int] | None, holes: set[int]) -> list[SimData]:
    """The register map: the valid range in runs around `holes`, which pymodbus itself then
    refuses with exception 02, before our action runs (as the meter's firmware would)."""
    if rng is None:
        return [SimData(0xFFF0, count=1, values=0, datatype=DataType.REGISTERS)]
    out: list[SimData] = []
    start = rng[0]
    for addr in [*sorted(a for a in holes if rng[0] <= a < rng[1]), rng[1]]:
        if addr > start:
            out.append(SimData(start, count=addr - start, values=0, datatype=DataType.REGISTERS))
        start = addr + 1
    return out


def sim_device(meter: Meter) -> SimDevice:
    """A pymodbus SimDevice whose registers come from `meter` at read time."""
    bits = [SimData(0, count=1, values=False, datatype=DataType.BITS)]
    holding = _block(meter.ranges[3], meter.missing.get(3, set()))
    inputs = _block(meter.ranges[4], meter.missing.get(4, set()))
    return SimDevice(id=meter.unit, simdata=(bits, list(bits), holding, inputs),
                     action=functools.partial(_action, meter))


class FaultInjector:
    """trace_packet hook: drops, corrupts or replaces each response by its unit's fault."""

    def __init__(self, meters: dict[int, Meter], rtu: bool) -> None:
        self.meters = meters
        self.rtu = rtu
        self.sent: dict[str, int] = {"ok": 0, "dropped": 0, "crc": 0, "garbage": 0}

    def __call__(self, sending: bool, data: bytes) -> bytes:
        if not sending or not data:
            return data
        unit = data[0] if self.rtu else (data[6] if len(data) > 6 else 0)
        meter = self.meters.get(unit)
        fault = "unplugged" if meter is None else meter.fault
        if fault == "unplugged":
            self.sent["dropped"] += 1
            return b""
        if fault == "crc":
            self.sent["crc"] += 1
            return data[:-1] + bytes([data[-1] ^ 0x5A]) if self.rtu else data[:7] + os.urandom(len(data) - 7)
        if fault == "garbage":
            self.sent["garbage"] += 1
            # bytes that start with no valid unit/function pair, as line noise does
            return bytes([0xFF, 0xFF]) + os.urandom(max(3, len(data) - 2))
        self.sent["ok"] += 1
        if meter is not None and len(data) > (1 if self.rtu else 7) and data[1 if self.rtu else 7] & 0x80:
            meter.refused += 1  # an exception answer (function code with the high bit set)
        return data


async def start_server(meters: dict[int, Meter], host: str, port: int, rtu: bool = False
                       ) -> tuple[ModbusTcpServer, int, FaultInjector]:
    """Start a server for `meters` on host:port (0 = any free port).

    ``rtu=True`` frames RTU over the TCP stream (what the pty relay connects to).

    Returns:
        (server, bound port, fault injector).
    """
    injector = FaultInjector(meters, rtu)
    server = ModbusTcpServer([sim_device(m) for m in meters.values()],
                             framer=FramerType.RTU if rtu else FramerType.SOCKET,
                             address=(host, port), trace_packet=injector)
    await server.serve_forever(background=True)
    sock = server.transport.sockets[0]  # type: ignore[attr-defined]
    return server, sock.getsockname()[1], injector
