"""Hostile input for the firmware core's parsers (they are pure and run on CPython too):
random bytes and strings never raise anything but the documented ValueError, and never make a
parser accept rubbish. The same code runs under micropython in tests/firmware/mp_core."""

import struct

import core_support  # noqa: F401  (puts the project root on sys.path)
from hypothesis import given, settings
from hypothesis import strategies as st

from firmware.durable import decode, encode
from firmware.modbus_rtu import FRAME_EXCEPTION, FRAME_OK, NEED_MORE, ResponseParser, crc16
from firmware.outbox import pack_slot, unpack_slot
from firmware.schedule import validate_steps
from firmware.tzrule import TZ


def frame(unit, payload):
    body = bytes([unit, 4, len(payload)]) + payload
    c = crc16(body)
    return body + bytes([c & 0xFF, c >> 8])


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=400), st.integers(1, 247), st.binary(min_size=4, max_size=4))
def test_rtu_parser_finds_the_frame_after_any_garbage(garbage, unit, regs):
    p = ResponseParser()
    p.reset(unit, 4, 2)
    good = frame(unit, regs)
    data = garbage + good
    for i in range(0, len(data), 7):
        p.feed(data[i : i + 7])
        st_ = p.poll()
        assert st_ in (NEED_MORE, FRAME_OK, FRAME_EXCEPTION)
        if st_ != NEED_MORE:
            break
    assert st_ in (FRAME_OK, FRAME_EXCEPTION), "valid frame not found after the garbage"
    if st_ == FRAME_OK:
        # the frame found is ours, or one the garbage happened to hold with a valid CRC
        vals = struct.pack(">2H", *p.registers())
        assert vals == regs or frame(unit, vals) in garbage


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_rtu_parser_random_bytes_never_raise(data):
    p = ResponseParser(bufsize=64)
    p.reset(1, 4, 10)
    for i in range(0, len(data), 5):
        p.feed(data[i : i + 5])
        p.poll()


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_durable_decode_rejects_rubbish(blob):
    r = decode(blob)
    assert r is None or encode(*r) == blob


@given(st.integers(0, 2**32 - 1), st.binary(max_size=100), st.integers(0, 200), st.integers(0, 7))
def test_durable_single_bit_flip_detected(gen, data, pos, bit):
    blob = bytearray(encode(gen, data))
    pos %= len(blob)
    blob[pos] ^= 1 << bit
    assert decode(blob) is None


@settings(max_examples=300, deadline=None)
@given(st.binary(min_size=32, max_size=32))
def test_outbox_slot_rubbish_is_empty(blob):
    r = unpack_slot(bytearray(blob))
    assert r is None or bytes(pack_slot(r)) == blob


@settings(max_examples=500, deadline=None)
@given(st.text(max_size=70))
def test_tz_parser_only_value_error(s):
    try:
        tz = TZ(s)
    except ValueError:
        return
    # accepted: it must work for any instant
    for t in (0, 1767225600, 2**31 - 1):
        off = tz.utc_offset(t)
        assert -26 * 3600 <= off <= 26 * 3600
        assert tz.from_local(tz.to_local(t)) in (t, t - 3600, t + 3600, t - (tz.dst_offset - tz.std_offset))


@settings(max_examples=300, deadline=None)
@given(st.recursive(st.none() | st.booleans() | st.integers(-2000, 2000) | st.floats() | st.text(max_size=3),
                    lambda c: st.lists(c, max_size=18), max_leaves=60))
def test_schedule_validation_only_value_error(steps):
    try:
        out = validate_steps(steps)
    except ValueError:
        return
    assert len(out) <= 16 and all(len(x) == 3 for x in out)


@given(st.binary(max_size=300), st.integers(0, 2**32 - 1))
def test_crc32_fallback_matches_zlib(data, start):
    import zlib

    from firmware.durable import crc32_py

    assert crc32_py(data) == zlib.crc32(data)
    assert crc32_py(data, start) == zlib.crc32(data, start)
