"""protocol.report: the SPEC §3.1 report layout, packing, descriptor, and parse_send validation."""

import cbor2
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from protocol import coap, report, senml
from protocol.lwm2m import CF_SENML_CBOR, MAX_PAYLOAD

SETTINGS = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])

reports = st.tuples(
    st.integers(0, 2**63 - 1),  # seq
    st.one_of(st.integers(1_600_000_000, 4_200_000_000), st.integers(-86400 * 30, 0)),  # t
    st.integers(0, 2**40),  # wh
    st.floats(0, 2000, allow_nan=False),  # w
    st.integers(0, 100),  # level
    st.integers(0, 2**40),  # on_time
    st.integers(0, 0xFF),  # faults
)

REALISTIC = (123456, 1763776800, 48213, 37.25, 40, 9504000, 0)
# with a fault flag set, a report has all six records of SPEC §3.1 (index-based tests use it)
FAULTY = REALISTIC[:-1] + (0x01,)


def expected(r, now=None):
    seq, t, wh, w, level, on_time, faults = r
    rel = t < 2**28
    return {
        "seq": seq,
        "t": (now + t) if (rel and now is not None) else t,
        "wh": wh,
        "w": round(w * 4) / 4,
        "level": level,
        "on_time": on_time,
        "faults": faults,
        "rel_time": rel,
    }


@SETTINGS
@given(
    st.lists(reports, min_size=1, max_size=12),
    st.one_of(st.none(), st.integers(1_700_000_000, 1_800_000_000)),
)
def test_round_trip(reps, now):
    data = report.encode_reports(reps)
    parsed, attrs = report.parse_send(data, now=now)
    assert attrs == {}
    assert parsed == [expected(r, now) for r in reps]


def test_layout_is_spec_3_1():
    recs = report.report_records(FAULTY)
    assert recs == [
        {-2: "/10250/0/", -3: 1763776800, 0: "0", 2: 123456},
        {0: "1", 2: 1},
        {-2: "/3311/0/", 0: "5805", 2: 48213},
        {0: "5851", 2: 40},
        {0: "5852", 2: 9504000},
        {-2: "/3305/0/", 0: "5800", 2: 37.25},
    ]
    resolved = senml.resolve(recs)
    assert [r["n"] for r in resolved] == [
        "/10250/0/0",
        "/10250/0/1",
        "/3311/0/5805",
        "/3311/0/5851",
        "/3311/0/5852",
        "/3305/0/5800",
    ]
    assert cbor2.loads(report.encode_reports([FAULTY])) == recs


@pytest.mark.parametrize(
    "w,want", [(37.2, 37.25), (37.1, 37.0), (0.124, 0.0), (511.8, 511.75), (1234.56, 1234.5)]
)
def test_power_rounded_to_quarter_watt(w, want):
    rec = report.report_records((1, 1763776800, 0, w, 0, 0, 0))[-1]
    assert rec[2] == want


def test_no_fault_record_when_there_is_no_fault():
    """SPEC §3.1: faults 0 are sent by leaving the record out; the parser reads that as 0."""
    names = [r["n"] for r in senml.resolve(report.report_records(REALISTIC))]
    assert "/10250/0/1" not in names and len(names) == 5
    assert report.parse_send(report.encode_reports([REALISTIC]))[0][0]["faults"] == 0
    assert len(report.encode_reports([FAULTY])) == len(report.encode_reports([REALISTIC])) + 6


def test_power_below_512_w_takes_three_bytes():
    """Every quarter watt below 512 W is a float16 (SPEC §3.1), so the size does not vary."""
    sizes = set()
    for q in range(0, 512 * 4):
        payload = report.encode_reports([(1, 1763776800, 0, q / 4, 0, 0, 0)])
        assert payload.endswith(b"\xf9" + cbor2.dumps(q / 4, canonical=True)[1:] + b"!h/3305/0/")
        sizes.add(len(payload))
    assert len(sizes) == 1
    assert len(report.encode_reports([(1, 1763776800, 0, 512.25, 0, 0, 0)])) == sizes.pop() + 2


def test_packing_respects_the_limit_and_order():
    backlog = [
        (i + 1, 1763776800 + 900 * i, 48213 + 10 * i, 37.25, 40, 9504000 + 900 * i, 0) for i in range(200)
    ]
    packs = report.pack_reports(backlog)
    assert [r for p in packs for r in p] == backlog  # oldest first, nothing lost or repeated
    assert all(p for p in packs)
    for p in packs:
        assert len(report.encode_reports(p)) <= MAX_PAYLOAD
    # full packs really are full: one more report would not fit
    for p, nxt in zip(packs, packs[1:], strict=False):
        assert len(report.encode_reports(p + [nxt[0]])) > MAX_PAYLOAD
    per_pack = len(packs[0])
    assert per_pack == 11, per_pack  # SPEC §3.2 "about ten reports" (no fault records here)
    print("reports per 1024-byte pack:", per_pack, "payload", len(report.encode_reports(packs[0])))


@SETTINGS
@given(st.lists(reports, max_size=60), st.integers(100, 1500))
def test_packing_property(reps, limit):
    packs = report.pack_reports(reps, limit=limit)
    assert [r for p in packs for r in p] == reps
    for p in packs:
        assert p
        size = len(report.encode_reports(p))
        assert size <= limit or len(p) == 1  # a single report always gets a pack


def test_a_single_oversized_report_still_gets_a_pack():
    assert report.pack_reports([REALISTIC], limit=10) == [[REALISTIC]]
    assert report.pack_reports([]) == []


def test_reordered_and_full_names_and_unknown_records():
    records = [
        {-2: "/10250/0/", -3: 1763776800, 0: "0", 2: 9},
        {-2: "", 0: "/9999/0/0", 3: "ignored"},
        {0: "/3305/0/5800", 2: 12.5},
        {0: "/3311/0/5852", 2: 60},
        {0: "/3305/0/5805", 2: 100},
        {0: "/3311/0/5805", 2: 100},  # the same counter under both objects: fine when equal
        {0: "/10250/0/1", 2: 1},
    ]
    parsed, attrs = report.parse_send(cbor2.dumps(records))
    assert parsed == [
        {
            "seq": 9,
            "t": 1763776800,
            "wh": 100,
            "w": 12.5,
            "level": None,
            "on_time": 60,
            "faults": 1,
            "rel_time": False,
        }
    ]
    assert attrs == {}


@SETTINGS
@given(st.permutations(list(range(6))))
def test_one_report_in_any_record_order(order):
    """SPEC §3.1: any record order, here with full names and a time on every record."""
    recs = senml.resolve(report.report_records(FAULTY))
    full = [{0: r["n"], 6: 1763776800, 2: r["v"]} for r in recs]
    parsed, attrs = report.parse_send(cbor2.dumps([full[i] for i in order]))
    assert attrs == {}
    assert parsed == [expected(FAULTY)]


def test_report_fields_before_the_seq_record_join_the_first_report_only():
    recs = [
        {-2: "/3311/0/", -3: 1763776800, 0: "5805", 2: 10},
        {-2: "/3/0/", 0: "3", 3: "1.0"},
        {-2: "/10250/0/", 0: "0", 2: 1},
        {-2: "/10250/0/", 0: "0", 2: 2},
        {-2: "/3311/0/", 0: "5805", 2: 11},
    ]
    parsed, attrs = report.parse_send(cbor2.dumps(recs))
    assert [(r["seq"], r["wh"]) for r in parsed] == [(1, 10), (2, 11)]
    assert attrs == {"/3/0/3": "1.0"}
    # no report at all: report-like names are plain attributes
    _, attrs = report.parse_send(cbor2.dumps(recs[:2]))
    assert attrs == {"/3311/0/5805": 10, "/3/0/3": "1.0"}


def test_descriptor_and_attributes_before_reports():
    desc = report.descriptor_records(
        "1.2.0", 48.85, 2.35, "rue", "C7", 40.0, 100, "CET-1CEST,M3.5.0,M10.5.0/3"
    )
    data = senml.encode(desc + report.report_records(REALISTIC))
    parsed, attrs = report.parse_send(data)
    assert len(parsed) == 1 and parsed[0]["seq"] == 123456
    assert attrs == {
        "/3/0/3": "1.2.0",
        "/3/0/15": "CET-1CEST,M3.5.0,M10.5.0/3",
        "/6/0/0": 48.85,
        "/6/0/1": 2.35,
        "/10250/0/5": "rue",
        "/10250/0/6": "C7",
        "/10250/0/7": 40.0,
        "/10250/0/3": 100,
    }
    # None attributes are left out, and base names stay right
    partial = report.descriptor_records(None, None, 2.0, None, "C1", None, 50, None)
    _, attrs = report.parse_send(senml.encode(partial))
    assert attrs == {"/6/0/1": 2.0, "/10250/0/6": "C1", "/10250/0/3": 50}
    assert len(report.encode_descriptor("1.2.0", 48.85, 2.35, "rue", "C7", 40.0, 100, "UTC0")) < 200


@pytest.mark.parametrize(
    "index,value,field",
    [
        (0, -1, "seq"),
        (0, 2**63, "seq"),
        (0, 1.0, "seq"),
        (0, "1", "seq"),
        (1, -1, "faults"),
        (1, 0.5, "faults"),
        (2, -0.5, "wh"),
        (2, "5", "wh"),
        (3, 100.5, "level"),
        (3, -1, "level"),
        (4, -3, "on_time"),
        (5, "x", "w"),
    ],
)
def test_range_errors_name_the_field(index, value, field):
    recs = report.report_records(FAULTY)
    if isinstance(value, str):
        del recs[index][2]
        recs[index][3] = value
    else:
        recs[index][2] = value
    with pytest.raises(senml.SenMLError, match=field):
        report.parse_send(cbor2.dumps(recs))


def test_report_without_energy_and_empty_pack():
    recs = report.report_records(FAULTY)
    del recs[2]
    recs[3][-2] = "/3311/0/"
    with pytest.raises(senml.SenMLError, match="energy"):
        report.parse_send(cbor2.dumps(recs))
    with pytest.raises(senml.SenMLError, match="empty"):
        report.parse_send(b"\x80")
    with pytest.raises(senml.SenMLError):
        report.parse_send(b"\xff")


def test_energy_given_twice_with_different_values():
    recs = report.report_records(REALISTIC) + [{0: "/3305/0/5805", -2: "", 2: 1}]
    with pytest.raises(senml.SenMLError, match="twice"):
        report.parse_send(cbor2.dumps(recs))


def test_full_send_datagram_fits_the_budget():
    m = coap.Message(coap.CON, coap.POST, 0x7D34, b"\x5a\x01")
    m.set_path("/dp")
    m.add_option(coap.CONTENT_FORMAT, CF_SENML_CBOR)
    m.payload = report.encode_reports([REALISTIC])
    assert len(coap.encode(m)) <= 127
    # the largest values that fit 4-byte heads (seq/t/wh/on_time), w < 512 W, any fault flags
    m.payload = report.encode_reports([(2**32 - 1, 4_000_000_000, 2**32 - 1, 511.75, 100, 2**32 - 1, 0xFF)])
    assert len(coap.encode(m)) == 114
    # a 64-bit seq costs 4 bytes more and still fits 127 (SPEC §9.1)
    m.payload = report.encode_reports([(2**32, 4_000_000_000, 2**32 - 1, 511.75, 100, 2**32 - 1, 0xFF)])
    assert len(coap.encode(m)) == 118
