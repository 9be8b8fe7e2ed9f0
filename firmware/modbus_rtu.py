"""A small Modbus RTU master: CRC-16, function 04 (read input registers), float32, timeouts.

The framing is sans-I/O (``crc16``, ``build_read``, ``ResponseParser`` work on bytes and run on
CPython too); ``RtuMaster`` is the thin async part that drives a HAL ``Uart``.

Framing (Modbus over serial line V1.02 §2.5): ``unit | function | data | crc_lo crc_hi``;
a function-04 answer is ``unit | 0x04 | byte count | registers (big-endian) | crc``, an
exception answer ``unit | 0x84 | code | crc``. The parser resynchronises on garbage: bytes that
cannot start the expected answer are skipped, and a candidate frame whose CRC fails is dropped
one byte at a time until a valid frame appears or the deadline passes.

Time on the wire is physical, so ``RtuMaster`` measures its timeouts and the 3.5-character
silence with the interpreter's real clock (``time.ticks_ms``/``asyncio.sleep_ms``), never with the
emulated node clock, which may run faster than real time.
"""

import struct

try:
    from micropython import const
except ImportError:  # CPython

    def const(x):
        return x


FUNC_READ_INPUT = const(4)
FUNC_READ_HOLDING = const(3)
MAX_REGS = const(125)

NEED_MORE = const(0)
FRAME_OK = const(1)
FRAME_EXCEPTION = const(2)


class ModbusError(Exception):
    """No valid answer: timeout, CRC/garbage only, or a Modbus exception (``code`` set)."""

    def __init__(self, msg, code=None):
        super().__init__(msg)
        self.code = code


def crc16(buf, n=-1):
    """Modbus CRC-16 (poly 0xA001 reflected, init 0xFFFF) of ``buf[:n]``. Sent low byte first."""
    crc = 0xFFFF
    if n < 0:
        n = len(buf)
    for i in range(n):
        crc ^= buf[i]
        for _ in range(8):
            if crc & 1:
                crc = (crc >> 1) ^ 0xA001
            else:
                crc >>= 1
    return crc


def build_read(unit, address, count, function=FUNC_READ_INPUT, out=None):
    """The 8-byte request frame for a register read. Writes into ``out`` if given; returns it.

    Raises ValueError for a unit outside 1..247 or a count outside 1..125.
    """
    if not 1 <= unit <= 247:
        raise ValueError("unit id must be 1..247")
    if not 1 <= count <= MAX_REGS:
        raise ValueError("register count must be 1..125")
    if not 0 <= address <= 0xFFFF or address + count > 0x10000:
        raise ValueError("address out of range")
    if out is None:
        out = bytearray(8)
    out[0] = unit
    out[1] = function
    out[2] = address >> 8
    out[3] = address & 0xFF
    out[4] = count >> 8
    out[5] = count & 0xFF
    c = crc16(out, 6)
    out[6] = c & 0xFF
    out[7] = c >> 8
    return out


class ResponseParser:
    """Find the answer to one read in a byte stream (sans-I/O).

    ``feed(data)`` then ``poll()`` -> ``NEED_MORE``, ``FRAME_OK`` (``registers()`` holds the
    values) or ``FRAME_EXCEPTION`` (``exception_code``). ``crc_errors`` and ``skipped`` count
    the rubbish seen on the way. The buffer is preallocated (``bufsize`` bytes).
    """

    def __init__(self, bufsize=256):
        self.buf = bytearray(bufsize)
        self.mv = memoryview(self.buf)
        self.reset(1, FUNC_READ_INPUT, 1)

    def reset(self, unit, function, count):
        self.unit = unit
        self.function = function
        self.count = count
        self.n = 0
        self.start = 0
        self.crc_errors = 0
        self.skipped = 0
        self.exception_code = None
        self._regs_at = 0

    def space(self):
        """A writable memoryview of the free part of the buffer (for ``readinto``)."""
        if self.start and self.n == len(self.buf):
            self._compact()
        return self.mv[self.n :]

    def advance(self, k):
        """Account for ``k`` bytes written into ``space()``."""
        self.n += k

    def feed(self, data):
        k = len(data)
        if self.n + k > len(self.buf):
            self._compact()
            k = min(k, len(self.buf) - self.n)
        self.buf[self.n : self.n + k] = data[:k]
        self.n += k

    def _compact(self):
        s = self.start
        if s:
            self.buf[0 : self.n - s] = self.buf[s : self.n]
            self.n -= s
            self.start = 0

    def poll(self):
        buf = self.buf
        want = 5 + 2 * self.count
        while True:
            s = self.start
            avail = self.n - s
            if avail < 2:
                return NEED_MORE
            if buf[s] != self.unit or (buf[s + 1] & 0x7F) != self.function:
                self._skip()
                continue
            if buf[s + 1] & 0x80:
                if avail < 5:
                    return NEED_MORE
                if self._crc_ok(s, 5):
                    self.exception_code = buf[s + 2]
                    self.start = s + 5
                    return FRAME_EXCEPTION
                self.crc_errors += 1
                self._skip()
                continue
            if avail < 3:
                return NEED_MORE
            if buf[s + 2] != 2 * self.count:
                self._skip()
                continue
            if avail < want:
                return NEED_MORE
            if self._crc_ok(s, want):
                self._regs_at = s + 3
                self.start = s + want
                return FRAME_OK
            self.crc_errors += 1
            self._skip()

    def _skip(self):
        self.start += 1
        self.skipped += 1

    def _crc_ok(self, s, length):
        c = crc16(self.mv[s : s + length - 2])
        return self.buf[s + length - 2] == (c & 0xFF) and self.buf[s + length - 1] == (c >> 8)

    def registers(self):
        """The registers of the last FRAME_OK as a tuple of ints."""
        return struct.unpack(">%dH" % self.count, self.mv[self._regs_at : self._regs_at + 2 * self.count])

    def float32(self, index):
        """IEEE-754 float32 from registers ``index`` and ``index + 1`` (high word first)."""
        at = self._regs_at + 2 * index
        return struct.unpack(">f", self.mv[at : at + 4])[0]


def regs_to_float32(hi, lo):
    """Decode a big-endian float32 held in two registers (Eastron word order)."""
    return struct.unpack(">f", struct.pack(">HH", hi, lo))[0]


class RtuMaster:
    """Drive one serial line: one request at a time, with timeout and inter-frame silence."""

    def __init__(self, uart, timeout_ms=500, retries=2):
        self.uart = uart
        self.timeout_ms = timeout_ms
        self.retries = retries
        self.parser = ResponseParser()
        self.req = bytearray(8)
        self.gap_ms = int(3.5 * uart.char_ms + 0.999) or 1
        self.requests = 0
        self.failures = 0

    async def read(self, unit, address, count, function=FUNC_READ_INPUT):
        """Read registers; returns the parser (``registers()``/``float32()``) on success.

        Tries ``retries + 1`` times. Raises ModbusError after the last failure (``code`` set for
        a Modbus exception answer, which is not retried).
        """
        import time

        try:
            import asyncio
        except ImportError:  # pragma: no cover
            import uasyncio as asyncio
        sleep_ms = getattr(asyncio, "sleep_ms", None)
        p = self.parser
        build_read(unit, address, count, function, self.req)
        last = "timeout"
        for _ in range(self.retries + 1):
            self.requests += 1
            self.uart.drain()
            p.reset(unit, function, count)
            await _sleep(asyncio, sleep_ms, self.gap_ms)
            self.uart.write(self.req)
            t0 = time.ticks_ms()
            # the answer cannot arrive before its own wire time
            budget = self.timeout_ms + int((13 + 2 * count) * self.uart.char_ms)
            while True:
                k = self.uart.readinto(p.space())
                if k:
                    p.advance(k)
                    st = p.poll()
                    if st == FRAME_OK:
                        return p
                    if st == FRAME_EXCEPTION:
                        self.failures += 1
                        raise ModbusError("modbus exception %d" % p.exception_code, p.exception_code)
                if time.ticks_diff(time.ticks_ms(), t0) > budget:
                    last = "crc error" if p.crc_errors else ("garbage" if p.skipped else "timeout")
                    break
                await _sleep(asyncio, sleep_ms, 2)
        self.failures += 1
        raise ModbusError("no valid answer from unit %d (%s)" % (unit, last))


async def _sleep(asyncio, sleep_ms, ms):
    if sleep_ms is not None:
        await sleep_ms(ms)
    else:  # CPython
        await asyncio.sleep(ms / 1000)
