"""One Modbus line: a serial RS-485 bus or a TCP connection, shared by the meters on it.

Owns the pymodbus client of the line, its lock, the RTU inter-frame silence, per-request
timeout and retries, (re)connection, and the classification of every failure. What it
guarantees (field-notes §6-§7):

- One lock per line: requests on one RS-485 bus never overlap, whoever issues them.
- RTU: at least the configured silence (>= 3.5 characters at the baud rate, which
  pymodbus does not insert) passes between the end of one exchange and the next request.
- The timeout is the caller's, per request and per attempt; on RTU the wire time of the
  request and the expected response is added, so a long read at 2400 baud is not cut off.
  pymodbus' own retries are off (``retries=0``): a dead device costs exactly
  timeout x attempts, and the caller chooses attempts (0 retries for a quarantined probe).
- Failures raise ``BusError`` with a ``kind``: ``timeout`` (nothing came back),
  ``crc`` (a frame from the right unit and function that failed its CRC; detected as soon
  as the whole answer is in, not after the timeout), ``garbage``
  (bytes that are no valid frame), ``exception`` (the device answered with a Modbus
  exception; never retried), ``connection`` (port or peer unavailable).
- TCP: after a bad frame, or two timeouts in a row with no good answer from any unit in
  between, the connection is dropped and reopened on the next request; this recovers a
  peer that power-cycled (half-open sockets included) without cutting the healthy units
  of a TCP gateway off because one unit behind it is dead.
  A serial port that vanished (USB adapter unplugged) is reopened the same way.
"""

from __future__ import annotations

import asyncio
import logging
import time

from pymodbus.client import AsyncModbusSerialClient, AsyncModbusTcpClient
from pymodbus.exceptions import ConnectionException, ModbusException, ModbusIOException
from pymodbus.framer import FramerRTU

from .config import MeterConfig, char_bits

log = logging.getLogger(__name__)

ERROR_KINDS = ("timeout", "crc", "garbage", "exception", "connection")


class BusError(Exception):
    """A request failed; ``kind`` is one of ERROR_KINDS, ``code`` the Modbus exception code."""

    def __init__(self, kind: str, message: str, code: int | None = None) -> None:
        super().__init__(message)
        self.kind = kind
        self.code = code


class Bus:
    """A Modbus line and the lock that serialises every request on it.

    Build it from the first meter on the line (``Bus.for_meter``); every meter with the
    same ``bus_key`` shares the instance.
    """

    def __init__(self, key: str, transport: str, *, host: str = "127.0.0.1", port: int = 502,
                 device: str = "", baudrate: int = 9600, parity: str = "N", stopbits: int = 1,
                 bytesize: int = 8, silence: float = 0.0, connect_timeout: float = 1.0) -> None:
        self.key = key
        self.transport = transport
        self.lock = asyncio.Lock()
        self.silence = silence
        self.char_time = char_bits(bytesize, parity, stopbits) / baudrate if transport == "rtu" else 0.0
        self._quiet_since = 0.0
        self._rx = b""  # the receive buffer as the framer last saw it, this attempt
        self._silent = 0  # consecutive timeouts on the line
        self._expect: tuple[int, int, int] | None = None  # RTU: (unit, function, answer length)
        self.connects = 0
        trace = self._trace_packet
        if transport == "rtu":
            self.client: AsyncModbusSerialClient | AsyncModbusTcpClient = AsyncModbusSerialClient(
                device, baudrate=baudrate, parity=parity, stopbits=stopbits, bytesize=bytesize,
                timeout=connect_timeout, retries=0, reconnect_delay=0, name=key, trace_packet=trace)
        else:
            self.client = AsyncModbusTcpClient(host, port=port, timeout=connect_timeout, retries=0,
                                               reconnect_delay=0, name=key, trace_packet=trace)
        # We decide when to drop a connection, not pymodbus' "N silent requests" rule,
        # which would cut a TCP gateway's healthy units off because one unit is dead.
        self.client.set_max_no_responses(1 << 30)

    @classmethod
    def for_meter(cls, m: MeterConfig) -> Bus:
        """Build the line a meter sits on, with the meter's line settings."""
        return cls(m.bus_key, m.transport, host=m.host, port=m.port, device=m.device,
                   baudrate=m.baudrate, parity=m.parity, stopbits=m.stopbits, bytesize=m.bytesize,
                   silence=m.silence, connect_timeout=max(m.timeout, 1.0))

    def _trace_packet(self, sending: bool, data: bytes) -> bytes:
        if not sending:
            self._rx = data  # pymodbus passes its whole accumulated buffer each time
            if self._expect is not None:
                self._check_crc(data)
        return data

    def _check_crc(self, data: bytes) -> None:
        """RTU: end the wait at once when the whole answer is in and its CRC is wrong.

        pymodbus drops such a frame silently and waits for the full timeout; a meter with a
        bad transceiver would then cost its line a timeout per request instead of the
        answer's wire time.
        """
        unit, function, size = self._expect  # type: ignore[misc]
        if len(data) < size or data[0] != unit or data[1] != function:
            return
        if FramerRTU.check_CRC(data[:size - 2], int.from_bytes(data[size - 2:size], "big")):
            return
        fut = self.client.ctx.response_future
        if not fut.done():
            fut.set_exception(ModbusIOException(f"CRC error in a {size}-byte answer"))

    async def _connect(self) -> None:
        if self.client.connected:
            return
        ok = False
        try:
            ok = await self.client.connect()
        except Exception as exc:  # pyserial and sockets raise a zoo of errors here
            raise BusError("connection", f"{self.key}: cannot open: {exc}") from exc
        if not ok or not self.client.connected:
            raise BusError("connection", f"{self.key}: cannot connect (device absent or peer down)")
        self.connects += 1
        if self.transport == "rtu":
            # bytes left in the port from before (an answer cut off by a restart) would be
            # taken as the start of the next response
            try:
                self.client.ctx.transport.sync_serial.reset_input_buffer()  # type: ignore[union-attr]
            except Exception:
                log.debug("modbus %s: could not flush the serial input", self.key, exc_info=True)
        if self.connects > 1:
            log.info("modbus %s: reconnected (connection #%d)", self.key, self.connects)

    def close(self) -> None:
        """Close the line; the next request reopens it."""
        try:
            self.client.close()
        except Exception:  # closing a dead transport must never raise into the poll loop
            log.debug("modbus %s: close failed", self.key, exc_info=True)

    def _set_timeout(self, timeout: float) -> None:
        # pymodbus reads the response deadline from the transaction manager's copy of
        # comm_params on every attempt, so a per-device timeout is a per-request setting.
        self.client.ctx.comm_params.timeout_connect = timeout

    def rtu_wire_time(self, count: int) -> float:
        """Time on the wire of one read of `count` registers and its answer."""
        return (8 + 5 + 2 * count) * self.char_time

    def _classify(self, unit: int, function: int) -> tuple[str, str]:
        data = self._rx
        if not data:
            return "timeout", "no answer"
        if self.transport == "rtu" and len(data) >= 4 and data[0] == unit and data[1] & 0x7F == function:
            return "crc", f"frame failed its CRC: {data[:16].hex()}"
        return "garbage", f"{len(data)} unusable byte(s): {data[:16].hex()}"

    async def _wait_silence(self) -> None:
        if self.silence <= 0:
            return
        wait = self._quiet_since + self.silence - time.monotonic()
        if wait > 0:
            await asyncio.sleep(wait)

    async def execute(self, unit: int, function: int, address: int, count: int, *,
                      timeout: float, retries: int = 0) -> list[int]:
        """Read ``count`` registers (function 3 holding, 4 input) under the line's lock.

        Returns:
            The registers read.
        Raises:
            BusError: after the last attempt, with the kind of the last failure.
        """
        async with self.lock:
            last: BusError | None = None
            for _attempt in range(retries + 1):
                try:
                    return await self._attempt(unit, function, address, count, timeout)
                except BusError as exc:
                    last = exc
                    if exc.kind in ("exception", "connection"):
                        break
            assert last is not None
            raise last

    async def _attempt(self, unit: int, function: int, address: int, count: int, timeout: float) -> list[int]:
        await self._connect()
        await self._wait_silence()
        self._rx = b""
        if self.transport == "rtu":
            self._expect = (unit, function, 5 + 2 * count)
        self._set_timeout(timeout + self.rtu_wire_time(count))
        read = self.client.read_input_registers if function == 4 else self.client.read_holding_registers
        try:
            rr = await read(address, count=count, device_id=unit)
        except ConnectionException as exc:
            self.close()
            raise BusError("connection", f"{self.key}: {exc}") from exc
        except (TimeoutError, ModbusException, OSError) as exc:
            kind, detail = self._classify(unit, function)
            self._silent = self._silent + 1 if kind == "timeout" else 0
            # TCP: a bad frame desynchronises the stream; two timeouts in a row with no
            # good answer between them (any unit) mean a half-open socket, e.g. a peer that
            # power-cycled. One dead unit behind a TCP gateway does not cut the others off.
            if self.transport == "tcp" and (kind != "timeout" or self._silent >= 2):
                self.close()
            raise BusError(kind, f"{self.key} unit {unit} fc {function} @{address}: {detail}") from exc
        finally:
            self._expect = None
            self._quiet_since = time.monotonic()
        self._silent = 0
        if rr.isError():
            code = getattr(rr, "exception_code", None)
            raise BusError("exception", f"{self.key} unit {unit} fc {function} @{address}+{count}: "
                           f"Modbus exception {code}", code)
        regs = list(rr.registers)
        if len(regs) != count:
            raise BusError("garbage", f"{self.key} unit {unit}: asked {count} registers, got {len(regs)}")
        return regs

