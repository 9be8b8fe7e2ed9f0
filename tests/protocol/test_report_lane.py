"""The lane of protocol/report_parse.py (issue 16: the gateway's one Send parser): a pack in the
node's own byte layout is read from the bytes; whatever the lane accepts, the general path
(CBOR decode, SenML validation and resolution) gives identically; whatever it doubts it leaves
to the general path, which then accepts or names the bad field. cbor2 builds packs the way a
third party would, with the values in any width."""

import cbor2
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocol import report_parse, senml
from protocol.report import encode_descriptor, encode_reports, parse_send

NOW = 1_768_000_000.0


def general(data, now=NOW):
    return report_parse.parse_records(senml.decode(data), now)


report_st = st.tuples(st.integers(0, 2**63 - 1), st.integers(1 << 28, 2**32),
                      st.integers(0, 2**40), st.floats(-500, 5000, allow_nan=False),
                      st.integers(0, 100), st.integers(0, 2**40), st.integers(0, 2**32))


@settings(max_examples=300, deadline=None)
@given(st.lists(report_st, min_size=1, max_size=12))
def test_the_lane_reads_every_node_pack_as_the_general_path_does(reps):
    data = encode_reports(reps)
    lane = report_parse._node_layout(data)
    assert lane is not None
    assert lane == general(data)[0]
    assert parse_send(data, NOW) == (lane, {})


def node_layout(seq, t, wh, w, level, on_time, faults=None):
    """The node's records and key order with raw values (cbor2 picks the widths)."""
    recs = [{0: "0", 2: seq, -2: "/10250/0/", -3: t}]
    if faults is not None:
        recs.append({0: "1", 2: faults})
    recs += [{0: "5805", 2: wh, -2: "/3311/0/"}, {0: "5851", 2: level},
             {0: "5852", 2: on_time}, {0: "5800", 2: w, -2: "/3305/0/"}]
    return cbor2.dumps(recs)


values = st.one_of(st.integers(-2**64 + 1, 2**64 - 1), st.floats(), st.booleans(), st.none(),
                   st.text(max_size=3))


@settings(max_examples=400, deadline=None)
@given(seq=values, t=values, wh=values, w=values, level=values, on_time=values,
       faults=st.one_of(st.none(), values))
def test_whatever_the_lane_accepts_the_general_path_gives_alike(seq, t, wh, w, level, on_time,
                                                                faults):
    data = node_layout(seq, t, wh, w, level, on_time, faults)
    lane = report_parse._node_layout(data)
    try:
        want = general(data)[0]
    except ValueError:
        want = ValueError
    if lane is not None:
        assert lane == want
    got = parse_send(data, NOW)[0] if want is not ValueError else None
    assert got == (None if want is ValueError else want)


def test_the_lane_declines_what_is_not_the_node_layout():
    reps = [(s, 1_768_000_000 + 60 * s, 1000 + s, 42.5, 100, 60 * s, s % 3) for s in range(1, 12)]
    data = encode_reports(reps)
    assert report_parse._node_layout(data) == general(data)[0]
    # a wrong record count, trailing bytes, a cut pack: declined, and the general path refuses
    for bad in (b"\x9a" + data[1:], data + b"\x00", data[:-1], data[:40], b"", b"\xff"):
        assert report_parse._node_layout(bad) is None
        with pytest.raises(ValueError):
            parse_send(bad, NOW)
    good = node_layout(1, 1_768_000_000, 10, 1.5, 50, 60)
    assert report_parse._node_layout(good) == general(good)[0]
    # other orders, energy via 3305, relative time, extra labels: left to the general path
    base = [{-2: "/10250/0/", -3: 1_768_000_000, 0: "0", 2: 1}, {0: "1", 2: 0},
            {-2: "/3311/0/", 0: "5805", 2: 10}, {0: "5851", 2: 50}, {0: "5852", 2: 60},
            {-2: "/3305/0/", 0: "5800", 2: 12.5}]
    for v in ([base[1], base[0]] + base[2:],
              base[:2] + [{0: "5805", 2: 10, -2: "/3305/0/"}] + base[3:],
              [{**base[0], -3: -30}] + base[1:],
              base[:1] + [{0: "1", 2: 0, 6: 5}] + base[2:]):
        data = cbor2.dumps(v)
        assert report_parse._node_layout(data) is None
        assert parse_send(data, NOW) == general(data)
    desc = encode_descriptor("1.0", 45.0, 4.0, "g", "c", 30.0, 100, "UTC0")
    assert report_parse._node_layout(desc) is None and parse_send(desc, NOW)[1]


@pytest.mark.parametrize("rep,field", [
    ((1, 1_768_000_000, 10, float("inf"), 50, 60), "w"),
    ((1, 1_768_000_000, -1, 1.0, 50, 60), "wh"),
    ((1, 1_768_000_000, 10, 1.0, 101, 60), "level"),
    ((1, 1_768_000_000, 10, 1.0, 50, -60), "on_time"),
    ((2**63, 1_768_000_000, 10, 1.0, 50, 60), "seq"),
    ((1.0, 1_768_000_000, 10, 1.0, 50, 60), "seq"),
    ((1, 1_768_000_000, True, 1.0, 50, 60), "wh"),
])
def test_a_bad_value_in_the_node_layout_is_named_by_the_general_path(rep, field):
    data = node_layout(*rep)
    assert report_parse._node_layout(data) is None
    with pytest.raises(ValueError) as e:
        parse_send(data, NOW)
    assert field in str(e.value) or "finite" in str(e.value)


MP_LANE = r"""
import random
from protocol import report, report_parse, senml
random.seed(11)
n = lane = 0
for i in range(300):
    reps = []
    for k in range(random.getrandbits(3) + 1):
        big = random.getrandbits(30) << 32 | random.getrandbits(32)
        reps.append((random.choice((random.getrandbits(4), random.getrandbits(16), big)),
                     1768000000 + k * 60, random.choice((random.getrandbits(8), big >> 20)),
                     random.getrandbits(12) / 4,
                     random.getrandbits(7) % 101, random.getrandbits(30), random.getrandbits(3)))
    data = report.encode_reports(reps)
    got = report_parse._node_layout(data)
    want = report_parse.parse_records(senml.decode(data), 1768000000)[0]
    assert got is not None and got == want, (reps, got, want)
    assert report_parse._node_layout(data[:-1]) is None
    n += 1
print("lane", n)
"""


def test_the_lane_under_micropython(tmp_path):
    from test_protocol_micropython import run_mp

    script = tmp_path / "lane.py"
    script.write_text(MP_LANE)
    rc, out, err = run_mp([str(script)], tmp_path, timeout=120)
    assert rc == 0, out + err
    assert "lane 300" in out
