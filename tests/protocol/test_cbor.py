"""protocol.cbor against cbor2 (both directions), and against malformed input."""

import math
import struct
import tracemalloc

import cbor2
import pytest
from fuzz_budget import examples  # make test's budget, scaled in the soak run
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from protocol import cbor

SETTINGS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

ints = st.integers(min_value=-(2**64), max_value=2**64 - 1)
floats = st.floats(allow_nan=True, allow_infinity=True)
scalars = st.one_of(st.none(), st.booleans(), ints, floats, st.text(max_size=40), st.binary(max_size=40))
keys = st.one_of(
    st.integers(min_value=-(2**64), max_value=2**64 - 1), st.text(max_size=10), st.binary(max_size=10)
)
values = st.recursive(
    scalars,
    lambda children: st.one_of(st.lists(children, max_size=6), st.dictionaries(keys, children, max_size=6)),
    max_leaves=25,
)


def same(a, b):
    """Equality where NaN == NaN and the sign of zero counts; bools are not ints."""
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    if isinstance(a, float) and isinstance(b, float):
        if math.isnan(a) or math.isnan(b):
            return math.isnan(a) and math.isnan(b)
        return a == b and math.copysign(1, a) == math.copysign(1, b)
    if isinstance(a, float) != isinstance(b, float):
        return False
    if isinstance(a, list | tuple) and isinstance(b, list | tuple):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    return type(a) is type(b) and a == b


def depth(v):
    if isinstance(v, list):
        return 1 + max((depth(x) for x in v), default=0)
    if isinstance(v, dict):
        return 1 + max((depth(x) for x in v.values()), default=0)
    return 0


@SETTINGS
@given(values)
def test_our_dumps_then_cbor2_loads(v):
    assert same(cbor2.loads(cbor.dumps(v)), v)


@SETTINGS
@given(values, st.booleans())
def test_cbor2_dumps_then_our_loads(v, canonical):
    assume(depth(v) <= 16)
    assert same(cbor.loads(cbor2.dumps(v, canonical=canonical)), v)


@SETTINGS
@given(st.one_of(st.none(), st.booleans(), ints, floats, st.text(max_size=40), st.binary(max_size=40)))
def test_scalars_encode_exactly_like_cbor2_canonical(v):
    """Preferred serialization: shortest exact float width, shortest int head (RFC 8949 §4.2)."""
    assert cbor.dumps(v) == cbor2.dumps(v, canonical=True)


@SETTINGS
@given(st.floats(allow_nan=False, allow_infinity=False))
def test_float_width_is_shortest_exact(x):
    enc = cbor.dumps(x)
    assert same(cbor.loads(enc), x)
    head = enc[0]
    if head == 0xFB:  # float64 only when float32 would lose the value
        try:
            f32 = struct.unpack(">f", struct.pack(">f", x))[0]
        except OverflowError:
            f32 = None
        assert f32 != x
    if head in (0xFA, 0xFB):  # and float32 only when float16 would
        h = struct.unpack(">e", struct.pack(">e", x))[0] if abs(x) < 65520 else None
        assert h != x


def test_every_float16_bit_pattern_decodes_like_struct():
    for bits in range(0x10000):
        data = b"\xf9" + bits.to_bytes(2, "big")
        want = struct.unpack(">e", bits.to_bytes(2, "big"))[0]
        got = cbor.loads(data)
        assert same(got, want), hex(bits)
        if not math.isnan(want):
            assert cbor.dumps(got) == data  # every finite float16 value re-encodes to itself


@settings(max_examples=50, deadline=None)
@given(values)
def test_deterministic_map_order(v):
    """Map keys come out in bytewise order of their encodings (RFC 8949 §4.2.1)."""
    d = {"b": 1, 24: 2, -1: 3, b"\x00": 4, 0: 5, "a": v}
    enc = cbor.dumps(d)
    assert enc.startswith(bytes.fromhex("a6 00 05 18 18 02 20 03 41 00 04 61 61".replace(" ", "")))
    assert same(cbor.loads(enc), d)


def test_accepts_bytes_bytearray_memoryview():
    data = cbor.dumps([1, "a", b"b"])
    for d in (data, bytearray(data), memoryview(data), memoryview(b"xx" + data)[2:]):
        assert cbor.loads(d) == [1, "a", b"b"]
    with pytest.raises(cbor.CBORError):
        cbor.loads("not bytes")


def test_encode_errors():
    for bad in (2**64, -(2**64) - 1, {1, 2}, object(), 1j):
        with pytest.raises(cbor.CBORError):
            cbor.dumps(bad)
    loop = []
    loop.append(loop)
    with pytest.raises(cbor.CBORError):
        cbor.dumps(loop)


def test_depth_limit_is_configurable():
    data = b"\x81" * 16 + b"\x00"
    assert depth(cbor.loads(data)) == 16
    with pytest.raises(cbor.CBORError, match="nesting"):
        cbor.loads(b"\x81" + data)
    with pytest.raises(cbor.CBORError, match="nesting"):
        cbor.loads(data, max_depth=4)
    assert cbor.loads(b"\x81" * 40 + b"\x00", max_depth=40)


def test_max_items_caps_elements_in_all_containers():
    data = bytes.fromhex("8301820203a10102")  # [1, [2, 3], {1: 2}]: 3 + 2 + 2 elements
    assert cbor.loads(data, max_items=7) == [1, [2, 3], {1: 2}]
    with pytest.raises(cbor.CBORError, match="limit"):
        cbor.loads(data, max_items=6)
    hostile = b"\x99\x03\xe8" + b"\xa0" * 1000  # 1000 empty maps in 1003 bytes
    assert len(cbor.loads(hostile)) == 1000
    with pytest.raises(cbor.CBORError, match="limit"):
        cbor.loads(hostile, max_items=64)
    assert cbor.loads(b"\x05", max_items=0) == 5


def test_error_messages_are_clear():
    cases = {
        "18": "truncated",
        "0000": "trailing",
        "9f01ff": "indefinite",
        "c100": "tags",
        "f7": "simple",
        "62c328": "UTF-8",
        "7bffffffffffffffff": "exceeds",
        "a1a00102": "unhashable",
        "a201020103": "duplicate",
    }
    for hx, word in cases.items():
        with pytest.raises(cbor.CBORError, match=word):
            cbor.loads(bytes.fromhex(hx))


def test_cbor_error_is_a_value_error():
    assert issubclass(cbor.CBORError, ValueError)


@pytest.mark.parametrize(
    "data",
    [
        b"\x5b\xff\xff\xff\xff\xff\xff\xff\xff",
        b"\x7b\x7f\xff\xff\xff\xff\xff\xff\xff" + b"x" * 100,
        b"\x9b\xff\xff\xff\xff\xff\xff\xff\xff",
        b"\xbb\xff\xff\xff\xff\xff\xff\xff\xff" + b"\x00" * 100,
        b"\x9a\x00\x10\x00\x00" + b"\x00" * 1000,
    ],
)
def test_huge_declared_length_fails_without_allocating(data):
    tracemalloc.start()
    try:
        with pytest.raises(cbor.CBORError):
            cbor.loads(data)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 64 * 1024


@settings(max_examples=examples(1500), deadline=None)
@given(st.binary(max_size=64))
def test_random_bytes_raise_only_cbor_error(data):
    try:
        cbor.loads(data)
    except cbor.CBORError:
        pass


@settings(max_examples=examples(600), deadline=None)
@given(values, st.data())
def test_mutated_valid_cbor_raises_only_cbor_error(v, data):
    enc = bytearray(cbor.dumps(v))
    for _ in range(data.draw(st.integers(1, 4))):
        op = data.draw(st.integers(0, 3))
        i = data.draw(st.integers(0, len(enc)))
        if op == 0 and i < len(enc):
            enc[i] = data.draw(st.integers(0, 255))
        elif op == 1:
            enc.insert(i, data.draw(st.integers(0, 255)))
        elif op == 2 and i < len(enc):
            del enc[i]
        else:
            enc = enc[:i]
    try:
        cbor.loads(bytes(enc))
    except cbor.CBORError:
        pass
