"""gateway/ingest.py: real SenML-CBOR Sends (built by protocol.report and by cbor2) to answers."""

import cbor2
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.ingest import Ingestor, fast_parse_reports
from gateway.store import Store
from protocol.report import encode_descriptor, encode_reports, parse_send

NOW = 1_768_000_000.0


def pack(seqs, t0=NOW - 3600):
    return encode_reports([(s, int(t0 + 60 * s), 500 + s, 31.25, 80, 60 * s, 0) for s in seqs])


@pytest.fixture
async def ing(tmp_path):
    s = await Store.open(str(tmp_path / "slgw.db"))
    try:
        yield Ingestor(s)
    finally:
        await s.close()


async def count(ing):
    return await ing.store.read(lambda c: c.execute("SELECT COUNT(*) FROM readings").fetchone()[0])


async def test_send_is_stored_and_replay_is_acknowledged(ing):
    a = await ing.handle_payload("n1", pack(range(1, 9)), now=NOW)
    assert a.code == (2, 4) and a.coap_code == 68 and a.code_str == "2.04"
    assert (a.stored, a.duplicates) == (8, 0)
    a = await ing.handle_payload("n1", pack(range(5, 13)), now=NOW)
    assert a.code_str == "2.04" and (a.stored, a.duplicates) == (4, 4)
    row = await ing.store.read(lambda c: c.execute(
        "SELECT seq, t, wh, w, level, on_time, faults, rel_time FROM readings WHERE seq = 3").fetchone())
    assert row == (3, NOW - 3600 + 180, 503.0, 31.25, 80.0, 180.0, 0, 0)


async def test_third_party_cbor_with_relative_time(ing):
    # built with cbor2, records out of order, relative base time (a node without valid time)
    records = [{-2: "/3311/0/", -3: -120, 0: "5805", 2: 42},
               {-2: "/10250/0/", -3: -120, 0: "0", 2: 7},
               {-2: "/3311/0/", -3: -120, 0: "5805", 2: 42}]
    records = [records[1], records[0]]
    a = await ing.handle_payload("n2", cbor2.dumps(records), now=NOW)
    assert a.code_str == "2.04", a
    row = await ing.store.read(lambda c: c.execute("SELECT t, wh, rel_time FROM readings").fetchone())
    assert row == (NOW - 120, 42.0, 1)


@pytest.mark.parametrize("payload", [
    b"",                                   # empty
    pack([1, 2])[:-3],                     # truncated CBOR
    b"\xff\x00",                           # garbage
    cbor2.dumps({"not": "a pack"}),         # CBOR but not SenML
    cbor2.dumps([{-2: "/10250/0/", 0: "0", 2: 1, -3: NOW}]),  # report without energy
    cbor2.dumps([{-2: "/10250/0/", 0: "0", 2: 1, -3: NOW}, {-2: "/3311/0/", 0: "5805", 2: "x"}]),
    cbor2.dumps([{-2: "/10250/0/", 0: "0", 2: 1, -3: NOW}, {-2: "/3311/0/", 0: "5805", 2: 5},
                 {0: "5851", 2: 250}]),   # level out of range
])
async def test_bad_payloads_are_400_and_store_nothing(ing, payload):
    a = await ing.handle_payload("n1", payload, now=NOW)
    assert a.code_str == "4.00" and a.diagnostic and len(a.diagnostic.encode()) <= 64
    assert await count(ing) == 0


async def test_descriptor_updates_metadata(ing):
    a = await ing.handle_payload("n3", encode_descriptor("1.2.0", 45.76, 4.84, "rue-haute", "C7",
                                                          48.0, 90, "CET-1CEST,M3.5.0,M10.5.0/3"),
                                 now=NOW)
    assert a.code_str == "2.04" and a.descriptor["cabinet"] == "C7"
    row = await ing.store.read(lambda c: c.execute(
        "SELECT fw, lat, lon, grp, cabinet, rated_w, default_level, modbus_slot FROM nodes "
        "WHERE id = 'n3'").fetchone())
    assert row == ("1.2.0", 45.76, 4.84, "rue-haute", "C7", 48.0, 90, 0)
    bad = encode_descriptor("1.2.0", 145.0, 4.84, None, None, None, None, None)
    assert (await ing.handle_payload("n3", bad, now=NOW)).code_str == "4.00"


async def test_store_failure_is_503_with_growing_max_age_then_recovers(ing):
    assert (await ing.handle_payload("n1", pack(range(1, 9)), now=NOW)).code_str == "2.04"
    pages = await ing.store.write(lambda c: c.execute("PRAGMA page_count").fetchone()[0])
    await ing.store.write(lambda c: c.execute(f"PRAGMA max_page_count = {pages}"))
    big = encode_reports([(s, int(NOW - 86400 + 60 * s), 500 + s, 31.25, 80, 60 * s, 0)
                          for s in range(100, 110)])
    ages = []
    k = 0
    while len(ages) < 3 and k < 1000:
        # new nodes' packs until the pages run out; once full, every new pack is refused
        k += 1
        a = await ing.handle_payload(f"m{k}", big, now=NOW)
        if a.code_str == "5.03":
            ages.append(a.max_age)
    assert ages == [5, 10, 20] and ing.failures == 3
    before = await count(ing)
    await ing.store.write(lambda c: c.execute("PRAGMA max_page_count = 1073741823"))
    a = await ing.handle_payload("late", big, now=NOW)
    assert a.code_str == "2.04" and await count(ing) == before + 10
    await ing.store.write(lambda c: c.execute(f"PRAGMA max_page_count = {pages}"))


async def test_unexpected_failure_is_500():
    class Broken:
        async def ingest_reports(self, *a, **k):
            raise RuntimeError("bug")

    a = await Ingestor(Broken()).handle_payload("n1", pack([1]), now=NOW)
    assert a.code_str == "5.00"



report_st = st.tuples(st.integers(0, 2**63 - 1), st.integers(1 << 28, 2**32),
                      st.integers(0, 2**40), st.floats(-500, 5000, allow_nan=False),
                      st.integers(0, 100), st.integers(0, 2**40), st.integers(0, 255))


@settings(max_examples=200, deadline=None)
@given(st.lists(report_st, min_size=1, max_size=10))
def test_fast_path_equals_the_protocol_parser(reps):
    data = encode_reports(reps)
    fast = fast_parse_reports(data)
    assert fast is not None
    assert fast == parse_send(data, NOW)[0]


def test_fast_path_declines_what_it_does_not_know():
    base = [{-2: "/10250/0/", -3: 1_768_000_000, 0: "0", 2: 1}, {0: "1", 2: 0},
            {-2: "/3311/0/", 0: "5805", 2: 10}, {0: "5851", 2: 50}, {0: "5852", 2: 60},
            {-2: "/3305/0/", 0: "5800", 2: 12.5}]
    assert fast_parse_reports(cbor2.dumps(base)) is not None
    # no fault record means faults 0 (SPEC §3.1), as the node sends it in the usual case
    assert fast_parse_reports(cbor2.dumps(base[:1] + base[2:]))[0]["faults"] == 0
    variants = [
        base[:5],                                              # missing power record
        [{**base[0], -3: -30}] + base[1:],               # relative time
        base[:3] + [{0: "5851", 2: 250}] + base[4:],           # level out of range
        base[:2] + [{0: "5805", 2: 10, -2: "/3305/0/"}] + base[3:],  # energy via 3305
        [base[1], base[0]] + base[2:],                         # records in another order
        base[:1] + [{0: "1", 2: True}] + base[2:],             # bool, not a number
        base[:2] + [{**base[2], 2: float("nan")}] + base[3:],
        base[:1] + [{0: "1", 2: 0, 6: 5}] + base[2:],          # extra label
    ]
    for v in variants:
        assert fast_parse_reports(cbor2.dumps(v)) is None, v
    assert fast_parse_reports(b"\xff") is None


def test_parse_payload_is_parse_send_with_a_fast_path():
    from gateway.ingest import parse_payload

    data = pack(range(1, 4))
    assert parse_payload(data, NOW) == parse_send(data, NOW)
    rel = cbor2.dumps([{-2: "/10250/0/", -3: -60, 0: "0", 2: 1}, {-2: "/3311/0/", 0: "5805", 2: 3}])
    assert parse_payload(rel, NOW) == parse_send(rel, NOW)  # the slow path
    desc = encode_descriptor("1.0", 45.0, 4.0, "g", "c", 30.0, 100, "UTC0")
    assert parse_payload(desc, NOW) == parse_send(desc, NOW)
    with pytest.raises(ValueError):
        parse_payload(b"\xff", NOW)


def test_template_and_dict_paths_agree_and_decline_alike():
    from gateway.ingest import _dict_parse_reports, _template_parse_reports

    reps = [(s, 1_768_000_000 + 60 * s, 1000 + s, 42.5, 100, 60 * s, s % 3) for s in range(1, 12)]
    data = encode_reports(reps)
    assert _template_parse_reports(data) == _dict_parse_reports(data) == parse_send(data, NOW)[0]
    # a wrong record count in the array head, trailing bytes, a cut pack: both paths decline
    for bad in (b"\x9a" + data[1:], data + b"\x00", data[:-1], data[:40]):
        assert _template_parse_reports(bad) is None, bad[:4]
    # values the template admits syntactically but parse_send refuses: declined

    def node_layout(seq, t, wh, w, level, on_time):  # the node's key order, raw values
        return cbor2.dumps([{0: "0", 2: seq, -2: "/10250/0/", -3: t},
                            {0: "5805", 2: wh, -2: "/3311/0/"}, {0: "5851", 2: level},
                            {0: "5852", 2: on_time}, {0: "5800", 2: w, -2: "/3305/0/"}])

    good = node_layout(1, 1_768_000_000, 10, 1.5, 50, 60)
    assert _template_parse_reports(good) == parse_send(good, NOW)[0]
    for rep in [(1, 1_768_000_000, 10, float("inf"), 50, 60),
                (1, 1_768_000_000, 10, float("nan"), 50, 60),
                (1, float("inf"), 10, 1.0, 50, 60),
                (1, 1_768_000_000, -1, 1.0, 50, 60),
                (1, 1_768_000_000, 10, 1.0, 101, 60),
                (1, 1_768_000_000, 10, 1.0, 50, -60),
                (2**63, 1_768_000_000, 10, 1.0, 50, 60),
                (1.0, 1_768_000_000, 10, 1.0, 50, 60),    # a float seq
                (1, 1_768_000_000, True, 1.0, 50, 60),    # a bool
                (1, 1000, 10, 1.0, 50, 60)]:  # relative time: parse_send resolves it
        assert _template_parse_reports(node_layout(*rep)) is None, rep


@settings(max_examples=300, deadline=None)
@given(st.fixed_dictionaries({
    "seq": st.one_of(st.integers(-1, 2**63), st.booleans(), st.floats()),
    "t": st.one_of(st.floats(), st.integers(-10, 2**34), st.none()),
    "wh": st.one_of(st.floats(), st.integers(-1, 10**16), st.booleans()),
    "w": st.one_of(st.floats(), st.none(), st.integers(-10**8, 10**8)),
    "level": st.one_of(st.floats(), st.integers(-1, 101), st.none()),
    "on_time": st.one_of(st.floats(), st.integers(-1, 10**13), st.none()),
    "faults": st.one_of(st.integers(-1, 2**33), st.booleans(), st.none()),
    "rel_time": st.just(False)}))
def test_validate_report_fast_path_equals_the_full_checks(r):
    """validate_report's inlined common case gives what the field-by-field checks give."""
    from gateway.store.readings import validate_report

    now = 1_768_000_000.0
    slow = dict(r, rel_time=0)  # not `is False`: forces the full path, same meaning
    try:
        want = validate_report(slow, now)
    except ValueError:
        want = ValueError
    try:
        got = validate_report(r, now)
    except ValueError:
        got = ValueError
    assert got == want or (got != got and want != want)
