"""The Modbus TCP bridge server: the gateway's nodes as registers, for SCADA.

Map (unit id 1 by default; input registers, function 04; every value an IEEE-754 float32
in two registers, high word first, i.e. big-endian word order):

====  ============================================  ========================================
reg   gateway totals                                 notes
====  ============================================  ========================================
0     total node power, W                            sum over online nodes
2     total node energy, kWh                         sum of the nodes' cumulative energy
4     nodes registered                               luminaire nodes known to the gateway
6     nodes online
8     nodes with an active fault                     any fault flag in the last report
====  ============================================  ========================================

Node block at ``100 + 10*slot`` (``slot`` = ``nodes.modbus_slot``, stable, shown by
``slgw nodes --json``): +0 level %, +2 power W, +4 cumulative energy kWh, +6 status bits
(1 online, 2 lamp fault, 4 meter fault), +8 seconds since the last report.

Decisions: a value never reported reads 0, and "seconds since the last report" reads -1
when there was none; an unused slot reads all zeros (status 0). Lamp fault = any of the
lamp-monitor flags (lampFailure, powerTooHigh, powerTooLow, lampUnexpectedOn); meter fault =
meterFailure. Slots up to 6542 fit in the 16-bit address space. The register image is
rebuilt from the store when a request arrives and the image is older than ``refresh``
(default 1 s), so an idle bridge costs nothing and a busy SCADA costs one query per second.

Writes: only when ``writable = true``. Holding register ``100 + 10*slot`` (function 06, or
16 writing that one register) takes a level 0..100 as an unsigned integer and queues a
``level`` command for that node through the same command queue as the CLI
(``submit_command``); reading it back (function 03) gives the level the node last
reported, which changes once the node has applied the command (the write queues a
command, it does not pretend the lamp already obeyed).
Refusals: writes when read-only -> exception 01; an address that is not a level register or
a slot without a node -> 02; a level outside 0..100 -> 03; the queue refusing -> 04.

Who may write (issue 11, decision): ``writable = true`` on a non-loopback bind needs
``write_allow`` (the SCADA's addresses or networks; config validation refuses to start
otherwise); with ``write_allow`` set, a write from any other client gets exception 01, as on
a read-only bridge, and reads stay open. Writes are rate-limited for all clients together
(``max_writes_per_s``, bursts of two seconds' worth): past it, exception 06 (server busy), so
a runaway SCADA script cannot flood the nodes with commands. Refused writes are counted and
logged at most once a minute per reason.
"""

from __future__ import annotations

import asyncio
import contextvars
import errno
import ipaddress
import logging
import math
import socket
import sqlite3
import time
from array import array
from collections.abc import Awaitable, Callable
from typing import Any

from pymodbus.constants import ExcCodes
from pymodbus.server import ModbusTcpServer
from pymodbus.server.requesthandler import ServerRequestHandler
from pymodbus.simulator import DataType, SimData, SimDevice

from protocol import lwm2m

from .config import ModbusConfigError, ServerConfig
from .decode import encode

log = logging.getLogger(__name__)

NODE_BASE = 100
BLOCK = 10
MAX_SLOT = (0xFFFF - NODE_BASE - BLOCK + 1) // BLOCK   # 6542: the last block ends at 65529
IMAGE_SIZE = NODE_BASE + BLOCK * (MAX_SLOT + 1)
ST_ONLINE, ST_LAMP_FAULT, ST_METER_FAULT = 1, 2, 4
LAMP_FLAGS = (lwm2m.FAULT_LAMP_FAILURE | lwm2m.FAULT_POWER_TOO_HIGH | lwm2m.FAULT_POWER_TOO_LOW
              | lwm2m.FAULT_LAMP_UNEXPECTED_ON)

SubmitCommand = Callable[[str, str, dict], Awaitable[Any]]
NODE_QUERY = ("SELECT id, modbus_slot, level, power_w, wh, faults, last_report, last_seen, lifetime "
              "FROM nodes WHERE kind = 'node' AND modbus_slot IS NOT NULL")


# The client whose request is being handled: set by _Handler for the request's task, read by
# Bridge._write (pymodbus's datastore callback is not told who asked).
_PEER: contextvars.ContextVar[str | None] = contextvars.ContextVar("modbus_peer", default=None)


class _Handler(ServerRequestHandler):
    """pymodbus's per-connection handler, telling Bridge._write which client asked, and
    keeping the connection limits (`_Server`)."""

    last_active = 0.0

    def connection_made(self, transport: Any) -> None:
        super().connection_made(transport)
        self.last_active = time.monotonic()
        owner = self.server
        if len(owner.active_connections) > owner.slgw_max_connections:
            owner.slgw_on_refused()
            self.close()  # the newest goes: a SCADA that is already connected keeps its slot

    def callback_data(self, data: bytes, addr: tuple | None = None) -> int:
        self.last_active = time.monotonic()
        return super().callback_data(data, addr)

    async def handle_request(self) -> None:
        peer = self.transport.get_extra_info("peername") if self.transport else None
        _PEER.set(peer[0] if peer else None)
        await super().handle_request()


class _Server(ModbusTcpServer):
    """pymodbus's TCP server with a connection cap (`max_connections`: past it a new connection
    is closed at once) and an idle timeout (`close_idle`, run by Bridge): pymodbus itself keeps
    every connection forever, so a flood of silent connections used up the process's file
    descriptors, which the HTTP API needs too."""

    slgw_max_connections = 16

    def slgw_on_refused(self) -> None:
        pass

    def callback_new_connection(self) -> _Handler:
        return _Handler(self, self.trace_packet, self.trace_pdu, self.trace_connect)

    def close_idle(self, idle_s: float) -> int:
        """Close the connections without a request for `idle_s`; return how many."""
        now = time.monotonic()
        idle = [c for c in list(self.active_connections.values())
                if now - getattr(c, "last_active", now) > idle_s]
        for c in idle:
            c.close()
        return len(idle)


class WriteLimiter:
    """A token bucket: `rate` writes per second, bursts of `2 * rate` (at least 1)."""

    def __init__(self, rate: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.rate = rate
        self.burst = max(1.0, 2.0 * rate)
        self.clock = clock
        self._tokens = self.burst
        self._t = clock()

    def take(self, n: int = 1) -> bool:
        """Take `n` writes if the bucket has them; False (nothing taken) otherwise."""
        now = self.clock()
        self._tokens = min(self.burst, self._tokens + (now - self._t) * self.rate)
        self._t = now
        if self._tokens >= n:
            self._tokens -= n
            return True
        return False


def _f32(v: float | None) -> list[int]:
    return encode(0.0 if v is None or not math.isfinite(v) else float(v), "float32")


def build_image(rows: list[tuple], now: float, is_online: Callable[[tuple], bool]) -> tuple[array, dict[int, str]]:
    """Build the input-register image and the slot -> node id map from node rows.

    ``rows`` are NODE_QUERY rows. Pure: the tests check the map with it.
    """
    img = array("H", bytes(2 * IMAGE_SIZE))
    slots: dict[int, str] = {}
    total_w = total_kwh = 0.0
    n_online = n_fault = 0
    for row in rows:
        node_id, slot, level, power_w, wh, faults, last_report, _seen, _lt = row
        online = is_online(row)
        faults = faults or 0
        n_online += online
        n_fault += bool(faults)
        if online and power_w is not None and math.isfinite(power_w):
            total_w += power_w
        kwh = (wh or 0.0) / 1000.0
        total_kwh += kwh
        if not 0 <= slot <= MAX_SLOT:
            continue
        slots[slot] = node_id
        status = (ST_ONLINE if online else 0) | (ST_LAMP_FAULT if faults & LAMP_FLAGS else 0) \
            | (ST_METER_FAULT if faults & lwm2m.FAULT_METER_FAILURE else 0)
        age = -1.0 if last_report is None else max(0.0, now - last_report)
        base = NODE_BASE + BLOCK * slot
        for off, val in ((0, level), (2, power_w), (4, kwh), (6, status), (8, age)):
            img[base + off:base + off + 2] = array("H", _f32(val))
    for off, val in ((0, total_w), (2, total_kwh), (4, len(rows)), (6, n_online), (8, n_fault)):
        img[off:off + 2] = array("H", _f32(val))
    return img, slots


class Bridge:
    """The bridge server: a pymodbus TCP server over a register image kept from the store."""

    def __init__(self, cfg: ServerConfig, store: Any, submit_command: SubmitCommand | None,
                 clock: Callable[[], float] = time.time, is_online: Callable[[str, float], bool] | None = None,
                 offline_after_s: float = 0.0) -> None:
        self.cfg = cfg
        self.store = store
        self.submit_command = submit_command
        self.clock = clock
        self._is_online = is_online
        self.offline_after_s = offline_after_s
        self.image = array("H", bytes(2 * IMAGE_SIZE))
        self.levels: dict[int, float] = {}
        self.slots: dict[int, str] = {}
        self._built = -math.inf
        self.server: ModbusTcpServer | None = None
        self.port = 0
        self.counters = {"reads": 0, "writes": 0, "refused_writes": 0, "refreshes": 0, "refresh_errors": 0}
        self.counters.update(refused_connections=0, idle_closed=0)
        self.limiter = WriteLimiter(cfg.max_writes_per_s)
        self._idle_task: asyncio.Task | None = None
        self._refusal_logged: dict[str, float] = {}

    def _online(self, row: tuple, now: float) -> bool:
        if self._is_online is not None:
            return self._is_online(row[0], now)
        # without the live registry: online while the last contact is younger than the
        # registration lifetime (or [nodes] offline_after_s)
        seen = max((t for t in (row[6], row[7]) if t is not None), default=None)
        horizon = self.offline_after_s or row[8] or lwm2m.DEFAULT_LIFETIME
        return seen is not None and now - seen <= horizon

    async def refresh(self, force: bool = False) -> None:
        """Rebuild the image from the store if it is older than ``refresh`` (or forced)."""
        mono = time.monotonic()
        if not force and mono - self._built < self.cfg.refresh:
            return
        self._built = mono

        def q(conn: sqlite3.Connection) -> list[tuple]:
            return [tuple(r) for r in conn.execute(NODE_QUERY).fetchall()]

        try:
            rows = await self.store.read(q)
        except Exception:
            self.counters["refresh_errors"] += 1
            log.exception("modbus bridge: reading the store failed; serving the previous values")
            return
        now = self.clock()
        self.image, self.slots = build_image(rows, now, lambda r: self._online(r, now))
        self.levels = {r[1]: r[2] for r in rows if r[2] is not None}
        self.counters["refreshes"] += 1

    async def _action(self, function_code: int, start_address: int, address: int, count: int,
                      registers: list[int], set_values: list | None) -> ExcCodes | None:
        off = address - start_address
        if set_values is None:
            self.counters["reads"] += 1
            await self.refresh()
            if function_code == 4:
                registers[off:off + count] = self.image[address:address + count].tolist()
            else:
                registers[off:off + count] = [self._level_reg(a) for a in range(address, address + count)]
            return None
        return await self._write(address, list(set_values))

    def _level_reg(self, addr: int) -> int:
        slot, rem = divmod(addr - NODE_BASE, BLOCK)
        if addr < NODE_BASE or rem:
            return 0
        level = self.levels.get(slot)
        return 0 if level is None else max(0, min(100, round(level)))

    def _refuse(self, why: str, peer: str | None, code: ExcCodes) -> ExcCodes:
        self.counters["refused_writes"] += 1
        now = time.monotonic()
        if now - self._refusal_logged.get(why, -math.inf) >= 60.0:
            self._refusal_logged[why] = now
            log.warning("modbus bridge: write from %s refused (%s), answered exception %d; "
                        "further refusals of this kind are counted, logged once a minute",
                        peer or "?", why, int(code))
        return code

    def _may_write(self, peer: str | None) -> bool:
        if not self.cfg.write_allow:
            return True  # config validation allows that on a loopback bind only
        try:
            ip = ipaddress.ip_address(peer or "")
        except ValueError:
            return False
        if ip.version == 6 and ip.ipv4_mapped:
            ip = ip.ipv4_mapped
        return any(ip in net for net in self.cfg.write_allow)

    async def _write(self, address: int, values: list[int]) -> ExcCodes | None:
        if not self.cfg.writable:
            self.counters["refused_writes"] += 1
            return ExcCodes.ILLEGAL_FUNCTION
        peer = _PEER.get()
        if not self._may_write(peer):
            return self._refuse("client not in [modbus_server] write_allow", peer,
                                ExcCodes.ILLEGAL_FUNCTION)
        if not self.limiter.take(len(values)):
            return self._refuse(f"over max_writes_per_s = {self.cfg.max_writes_per_s:g}", peer,
                                ExcCodes.DEVICE_BUSY)
        await self.refresh()
        targets = []
        for k, value in enumerate(values):
            addr = address + k
            slot, rem = divmod(addr - NODE_BASE, BLOCK)
            if addr < NODE_BASE or rem or slot not in self.slots:
                self.counters["refused_writes"] += 1
                return ExcCodes.ILLEGAL_ADDRESS
            if not 0 <= value <= 100:
                self.counters["refused_writes"] += 1
                return ExcCodes.ILLEGAL_VALUE
            targets.append((slot, self.slots[slot], value))
        if self.submit_command is None:
            return ExcCodes.DEVICE_FAILURE
        for slot, node_id, value in targets:
            try:
                await self.submit_command(node_id, "level", {"level": value})
            except Exception as exc:
                self.counters["refused_writes"] += 1
                log.warning("modbus bridge: level %d for node %s (slot %d) refused: %s", value, node_id, slot, exc)
                return ExcCodes.DEVICE_FAILURE
            self.counters["writes"] += 1
            log.info("modbus bridge: SCADA set node %s (slot %d) to level %d", node_id, slot, value)
        return None

    async def start(self) -> int:
        """Listen on bind:port; returns the bound port (useful with port 0)."""
        regs = [SimData(0, count=IMAGE_SIZE, values=0, datatype=DataType.REGISTERS)]
        bits = [SimData(0, count=1, values=False, datatype=DataType.BITS)]
        device = SimDevice(id=self.cfg.unit, simdata=(bits, list(bits), regs, list(regs)), action=self._action)
        self._check_bind()
        self.server = _Server(device, address=(self.cfg.bind, self.cfg.port))
        self.server.slgw_max_connections = self.cfg.max_connections
        self.server.slgw_on_refused = self._on_refused_connection
        await self.server.serve_forever(background=True)
        self._idle_task = asyncio.create_task(self._close_idle_loop())
        self.port = self.server.transport.sockets[0].getsockname()[1]  # type: ignore[attr-defined]
        log.info("modbus bridge: serving SCADA on %s:%d (unit %d, %s)", self.cfg.bind, self.port,
                 self.cfg.unit, "writable" if self.cfg.writable else "read-only")
        return self.port

    def _check_bind(self) -> None:
        """Bind a probe socket first: pymodbus only logs "could not listen". Raises
        ModbusConfigError for an address this host does not have, OSError(EADDRINUSE) for a
        port in use (the service reports both with what to change)."""
        family = socket.AF_INET6 if ":" in self.cfg.bind else socket.AF_INET
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind((self.cfg.bind, self.cfg.port))
            except OSError as exc:
                if exc.errno == errno.EADDRINUSE:
                    raise OSError(errno.EADDRINUSE, f"TCP {self.cfg.bind}:{self.cfg.port} ([modbus_server] "
                                  "bind/port) is in use; stop the other program or change port") from None
                raise ModbusConfigError(f"[modbus_server]: cannot listen on {self.cfg.bind}:{self.cfg.port}: "
                                        f"{exc.strerror}; bind must be an address of this host (see "
                                        "`ip addr`), 127.0.0.1 or 0.0.0.0") from None

    def _on_refused_connection(self) -> None:
        self.counters["refused_connections"] += 1
        self._log_limited("connections", "modbus bridge: a new connection was closed at once: "
                          f"{self.cfg.max_connections} are open ([modbus_server] max_connections); "
                          f"{self.counters['refused_connections']} refused since start-up")

    def _log_limited(self, key: str, message: str) -> None:
        now = time.monotonic()
        if now - self._refusal_logged.get(key, -math.inf) >= 60.0:
            self._refusal_logged[key] = now
            log.warning("%s (logged at most once a minute)", message)

    async def _close_idle_loop(self) -> None:
        idle_s = self.cfg.idle_timeout
        while True:
            await asyncio.sleep(min(15.0, idle_s / 4))
            if self.server is None:
                return
            n = self.server.close_idle(idle_s)
            if n:
                self.counters["idle_closed"] += n
                self._log_limited("idle", f"modbus bridge: closed {n} connection(s) without a "
                                  f"request for {idle_s:g} s ([modbus_server] idle_timeout)")

    async def stop(self) -> None:
        """Stop listening and close client connections."""
        if self._idle_task is not None:
            self._idle_task.cancel()
            await asyncio.gather(self._idle_task, return_exceptions=True)
            self._idle_task = None
        if self.server is not None:
            await self.server.shutdown()
            self.server = None
