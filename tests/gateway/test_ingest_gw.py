"""gateway/ingest.py: real SenML-CBOR Sends (built by protocol.report and by cbor2) to answers."""

import cbor2
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.ingest import Ingestor
from gateway.store import Store
from protocol.report import encode_descriptor, encode_reports

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
