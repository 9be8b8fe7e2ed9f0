import asyncio
import struct

import mprun
from mprun import raises

from firmware.modbus_rtu import (
    FRAME_EXCEPTION,
    FRAME_OK,
    NEED_MORE,
    ModbusError,
    ResponseParser,
    RtuMaster,
    build_read,
    crc16,
    regs_to_float32,
)


def with_crc(body):
    c = crc16(body)
    return bytes(body) + bytes([c & 0xFF, c >> 8])


def test_crc_known_vectors():
    # classic examples from the Modbus spec / vendor manuals (CRC sent low byte first)
    assert with_crc(bytes.fromhex("010400000002"))[-2:] == bytes.fromhex("71cb")
    assert with_crc(bytes.fromhex("01030000000a"))[-2:] == bytes.fromhex("c5cd")
    assert with_crc(bytes.fromhex("1103006b0003"))[-2:] == bytes.fromhex("7687")
    assert crc16(b"") == 0xFFFF
    # a frame with its CRC appended has a residue of 0
    assert crc16(with_crc(b"\x05\x04\x01\x56\x00\x02")) == 0


def test_build_read():
    assert bytes(build_read(1, 0, 2)) == bytes.fromhex("01040000000271cb")
    f = build_read(7, 0x0156, 2)
    assert f[0] == 7 and f[1] == 4 and f[2:6] == b"\x01\x56\x00\x02" and crc16(f) == 0
    raises(ValueError, build_read, 0, 0, 1)
    raises(ValueError, build_read, 248, 0, 1)
    raises(ValueError, build_read, 1, 0, 126)
    raises(ValueError, build_read, 1, 0xFFFF, 2)


def answer(unit, regs_bytes, func=4):
    return with_crc(bytes([unit, func, len(regs_bytes)]) + regs_bytes)


VOLT = struct.pack(">f", 230.0) + struct.pack(">f", 12.5)


def test_parse_clean_and_bytewise():
    p = ResponseParser()
    p.reset(1, 4, 4)
    frame = answer(1, VOLT)
    for i, b in enumerate(frame):
        p.feed(bytes([b]))
        st = p.poll()
        assert st == (FRAME_OK if i == len(frame) - 1 else NEED_MORE)
    assert p.float32(0) == 230.0 and p.float32(2) == 12.5
    assert p.registers() == struct.unpack(">4H", VOLT)
    assert regs_to_float32(0x4366, 0x0000) == 230.0


def test_parse_garbage_then_frame():
    p = ResponseParser()
    p.reset(1, 4, 4)
    p.feed(b"\x00\xff\x01\x99garbage\x01\x04")  # includes a false start "01 04" with bad count
    p.feed(answer(1, VOLT))
    assert p.poll() == FRAME_OK and p.float32(0) == 230.0 and p.skipped > 0


def test_parse_crc_error_then_valid():
    p = ResponseParser()
    p.reset(1, 4, 4)
    bad = bytearray(answer(1, VOLT))
    bad[5] ^= 0x10
    p.feed(bad)
    assert p.poll() == NEED_MORE and p.crc_errors == 1
    p.feed(answer(1, VOLT))
    assert p.poll() == FRAME_OK and p.float32(0) == 230.0


def test_parse_other_unit_ignored_and_exception():
    p = ResponseParser()
    p.reset(2, 4, 4)
    p.feed(answer(1, VOLT))
    assert p.poll() == NEED_MORE
    p.feed(with_crc(b"\x02\x84\x02"))
    assert p.poll() == FRAME_EXCEPTION and p.exception_code == 2


def test_parser_buffer_never_overflows():
    p = ResponseParser(bufsize=64)
    p.reset(1, 4, 2)
    for _ in range(50):
        p.feed(b"\xaa" * 13)
        assert p.poll() == NEED_MORE
    p.feed(answer(1, struct.pack(">f", 1.5)))
    assert p.poll() == FRAME_OK and p.float32(0) == 1.5


class ScriptUart:
    """A serial line that answers each request with the next scripted reply."""

    char_ms = 1.0

    def __init__(self, replies):
        self.replies = list(replies)
        self.rx = b""
        self.sent = []

    def drain(self):
        self.rx = b""

    def write(self, buf):
        self.sent.append(bytes(buf))
        self.rx = self.replies.pop(0) if self.replies else b""
        return len(buf)

    def readinto(self, buf, nbytes=-1):
        n = min(len(buf), len(self.rx), 7)  # dribble in, as a slow line does
        buf[:n] = self.rx[:n]
        self.rx = self.rx[n:]
        return n


def run(coro):
    return asyncio.run(coro)


def test_master_reads_and_retries_after_garbage():
    u = ScriptUart([b"\x13\x37junk", answer(1, VOLT)])
    m = RtuMaster(u, timeout_ms=30, retries=2)
    p = run(m.read(1, 0, 4))
    assert p.float32(0) == 230.0 and len(u.sent) == 2 and m.requests == 2
    assert u.sent[0] == bytes(build_read(1, 0, 4))


def test_master_gives_up_after_three_tries():
    u = ScriptUart([b"", b"", b"", answer(1, VOLT)])
    m = RtuMaster(u, timeout_ms=20, retries=2)
    try:
        run(m.read(1, 0, 4))
        raise AssertionError("no error")
    except ModbusError as e:
        assert "timeout" in str(e) and e.code is None
    assert len(u.sent) == 3 and m.failures == 1


def test_master_exception_not_retried():
    u = ScriptUart([with_crc(b"\x01\x84\x02")])
    m = RtuMaster(u, timeout_ms=20, retries=2)
    try:
        run(m.read(1, 0x9000, 2))
        raise AssertionError("no error")
    except ModbusError as e:
        assert e.code == 2
    assert len(u.sent) == 1


mprun.run(globals())
