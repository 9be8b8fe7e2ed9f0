"""protocol.senml: RFC 8428 resolution, label types, names, and hostile packs."""

import cbor2
import pytest
from fuzz_budget import examples  # make test's budget, scaled in the soak run
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from protocol import senml
from protocol.lwm2m import (
    SENML_BN,
    SENML_BS,
    SENML_BT,
    SENML_BU,
    SENML_BV,
    SENML_N,
    SENML_S,
    SENML_T,
    SENML_U,
    SENML_V,
)

SETTINGS = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])

NAME_CHARS = "abcXYZ0129-:./_"
names = st.text(alphabet=NAME_CHARS, min_size=1, max_size=12).filter(senml.valid_name)
numbers = st.one_of(
    st.integers(-(2**40), 2**40),
    st.floats(allow_nan=False, allow_infinity=False, width=32, min_value=-1e9, max_value=1e9),
)


@st.composite
def records(draw):
    rec = {SENML_N: draw(names)}
    kind = draw(st.integers(0, 3))
    if kind == 0:
        rec[SENML_V] = draw(numbers)
    elif kind == 1:
        rec[3] = draw(st.text(max_size=20))
    elif kind == 2:
        rec[4] = draw(st.booleans())
    else:
        rec[8] = draw(st.binary(max_size=20))
    if draw(st.booleans()):
        rec[SENML_T] = draw(st.integers(-1000, 2**31))
    if draw(st.booleans()):
        rec[SENML_U] = draw(st.sampled_from(["W", "Wh", "s", "%"]))
    return rec


@SETTINGS
@given(st.lists(records(), max_size=12))
def test_encode_is_cbor2_readable_and_round_trips(recs):
    data = senml.encode(recs)
    assert cbor2.loads(data) == recs
    assert senml.decode(data) == recs
    assert senml.decode(cbor2.dumps(recs)) == recs


@SETTINGS
@given(
    st.lists(records(), min_size=1, max_size=12),
    st.text(alphabet=NAME_CHARS, max_size=8).filter(lambda b: b == "" or senml.valid_name(b)),
    st.integers(0, 2**32),
)
def test_resolution_with_a_base_name_and_time_equals_full_names(recs, bn, bt):
    """Moving a prefix into bn and a time into bt resolves to the same records (RFC 8428 §4.6)."""
    full = [{**r, SENML_N: bn + r[SENML_N], SENML_T: bt + r.get(SENML_T, 0)} for r in recs]
    based = [dict(r) for r in recs]
    based[0][SENML_BN] = bn
    based[0][SENML_BT] = bt
    assert senml.resolve(based, now=1_700_000_000) == senml.resolve(full, now=1_700_000_000)


def test_base_values_carry_forward_and_zero_is_kept():
    recs = [
        {SENML_BN: "dev/", SENML_BT: 0, SENML_BV: 0, SENML_BU: "W", SENML_N: "a", SENML_V: 1},
        {SENML_N: "b", SENML_V: 2, SENML_T: 5},
        {SENML_BN: "", SENML_BV: 10, SENML_BS: 0, SENML_N: "c", SENML_V: 3, SENML_S: 4},
        {SENML_BT: 2_000_000_000, SENML_N: "d", SENML_V: 0.5, SENML_U: "kW"},
    ]
    out = senml.resolve(recs, now=1_000_000_000)
    assert out == [
        {"n": "dev/a", "t": 1_000_000_000, "rel": True, "v": 1, "u": "W"},
        {"n": "dev/b", "t": 1_000_000_005, "rel": True, "v": 2, "u": "W"},
        {"n": "c", "t": 1_000_000_000, "rel": True, "v": 13, "s": 4, "u": "W"},
        {"n": "d", "t": 2_000_000_000, "v": 10.5, "u": "kW"},
    ]


def test_relative_time_boundary():
    just_abs = [{SENML_N: "x", SENML_V: 1, SENML_T: 2**28}]
    just_rel = [{SENML_N: "x", SENML_V: 1, SENML_T: 2**28 - 1}]
    assert senml.resolve(just_abs, now=5) == [{"n": "x", "t": 2**28, "v": 1}]
    assert senml.resolve(just_rel, now=5) == [{"n": "x", "t": 2**28 + 4, "rel": True, "v": 1}]
    assert senml.resolve([{SENML_N: "x", SENML_V: 1, SENML_T: -60}]) == [
        {"n": "x", "t": -60, "rel": True, "v": 1}
    ]


def test_names():
    for ok in ("/3311/0/5851", "urn:dev:mac:0024befffe804ff1", "a", "9_x.y-z:w"):
        assert senml.valid_name(ok), ok
    for bad in ("", "-a", ":a", ".a", "a b", "a\n", "caf\u00e9", "a,b", "a\x00"):
        assert not senml.valid_name(bad), bad
        with pytest.raises(senml.SenMLError, match="name"):
            senml.resolve([{SENML_N: bad, SENML_V: 1}])


@pytest.mark.parametrize(
    "rec,word",
    [
        ({SENML_N: "x", SENML_V: True}, "number"),
        ({SENML_N: "x", SENML_V: None}, "number"),
        ({SENML_N: "x", SENML_V: [1]}, "number"),
        ({SENML_N: "x", SENML_V: float("nan")}, "finite"),
        ({SENML_N: "x", SENML_T: float("-inf"), SENML_V: 1}, "finite"),
        ({SENML_N: b"x", SENML_V: 1}, "text"),
        ({SENML_N: "x", 4: 1}, "boolean"),
        ({SENML_N: "x", 8: "ab"}, "byte string"),
        ({SENML_N: "x", -1: "10", SENML_V: 1}, "integer"),
        ({SENML_N: "x", "abc_": 1, SENML_V: 1}, "must-understand"),
        ({SENML_N: "x"}, "no value"),
        ({SENML_N: "x", SENML_V: 1, 4: True}, "more than one"),
    ],
)
def test_bad_records(rec, word):
    with pytest.raises(senml.SenMLError, match=word):
        senml.resolve(senml.decode(cbor2.dumps([rec])))


def test_sums_that_overflow_are_rejected():
    big = 1.7e308
    with pytest.raises(senml.SenMLError, match="time"):
        senml.resolve([{SENML_BT: big, SENML_T: big, SENML_N: "x", SENML_V: 1}])
    with pytest.raises(senml.SenMLError, match="value"):
        senml.resolve([{SENML_BV: big, SENML_N: "x", SENML_V: big}])
    with pytest.raises(senml.SenMLError, match="sum"):
        senml.resolve([{SENML_BS: -big, SENML_N: "x", SENML_S: -big}])


def test_pack_shape():
    for obj in ({}, 5, "x", [[]], [5], [{"n": "x"}, 1]):
        with pytest.raises(senml.SenMLError):
            senml.decode(cbor2.dumps(obj))
    with pytest.raises(senml.SenMLError, match="CBOR"):
        senml.decode(b"\x81")
    assert senml.decode(b"\x80") == [] and senml.resolve([]) == []
    with pytest.raises(senml.SenMLError):
        senml.encode([{SENML_N: "x", SENML_V: "1"}])


def test_value_of():
    assert senml.value_of({"n": "a", "vs": "x"}) == "x"
    assert senml.value_of({"n": "a", "v": 0}) == 0
    assert senml.value_of({"n": "a", "s": 3}) == 3


json_like = st.recursive(
    st.one_of(
        st.none(),
        st.booleans(),
        st.integers(-(2**70), 2**70),
        st.floats(),
        st.text(max_size=8),
        st.binary(max_size=8),
    ),
    lambda c: st.one_of(
        st.lists(c, max_size=4),
        st.dictionaries(st.one_of(st.integers(-10, 10), st.text(max_size=4)), c, max_size=5),
    ),
    max_leaves=20,
)


@settings(max_examples=examples(400), deadline=None)
@given(json_like)
def test_arbitrary_cbor_raises_only_senml_error(obj):
    try:
        data = cbor2.dumps(obj)
    except (OverflowError, ValueError):
        return
    try:
        senml.resolve(senml.decode(data), now=1_700_000_000)
    except senml.SenMLError:
        pass
