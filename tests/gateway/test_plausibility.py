"""Plausibility of reports (issue 11): every attack of the issue against gateway/ingest.py on a
real Store, with the Sends encoded by protocol.report as the node encodes them, and the honest
cases that must still pass (backlog after days offline, a node without time, node and gateway
restarts, a resent pack)."""

import logging

import cbor2
import pytest

from gateway.energy.buckets import MAX_SPREAD_S, buckets_from_readings, delta_of
from gateway.ingest import Ingestor
from gateway.plausibility import Rules
from gateway.store import Store
from protocol.report import encode_descriptor, encode_reports

NOW = 1_790_000_000.0  # 2026-09-21, the gateway's (trusted) clock in these tests
SITE_SQL = "SELECT COALESCE(SUM(wh), 0) FROM buckets"


class TrustedClock:
    def __init__(self, trusted=True):
        self._trusted = trusted

    def now(self):
        return NOW

    def trusted(self):
        return self._trusted


def rep(seq, t, wh, w=40.0, level=100, faults=0):
    return (seq, int(t), int(wh), w, level, 3600 * (seq % 10**6), faults)


def honest(first, n, t0, wh0, period=900, watts=40.0):
    """n reports of a 40 W lamp every ``period`` s: +10 Wh per 15 minutes."""
    return [rep(first + i, t0 + period * i, wh0 + watts * period * i / 3600) for i in range(n)]


@pytest.fixture
async def store(tmp_path):
    s = await Store.open(str(tmp_path / "slgw.db"))
    try:
        yield s
    finally:
        await s.close()


@pytest.fixture
def ing(store):
    return Ingestor(store, clock=TrustedClock())


async def send(ing, reps, ep="n1", now=NOW):
    return await ing.handle_payload(ep, encode_reports(reps), now=now)


async def q(store, sql, *args):
    return await store.read(lambda c: c.execute(sql, args).fetchall())


async def started(ing, ep="n1"):
    """A node that reported for 2 hours (8 reports, seq 1-8, up to NOW - 3600)."""
    a = await send(ing, honest(1, 8, NOW - 3600 - 7 * 900, 1000), ep)
    assert a.code_str == "2.04" and a.stored == 8
    return NOW - 3600, 1000 + 70


async def test_forged_huge_energy_is_refused_and_the_site_total_stays(ing, store):
    t, wh = await started(ing)
    a = await send(ing, [rep(9, t + 60, 1e15)])
    assert a.code_str == "4.00" and "implausible" in a.diagnostic
    await store.refresh()
    assert (await q(store, SITE_SQL))[0][0] == pytest.approx(70.0)
    assert ing.implausible["counter"] == 1
    # also within 32 bits: 4 GWh in one minute from a 40 W lamp
    a = await send(ing, [rep(9, t + 60, 2**32 - 10)])
    assert a.code_str == "4.00" and ing.implausible["energy"] == 1
    # the node's row counts the refusals, with the last reason (slgw node show)
    row = (await q(store, "SELECT implausible, implausible_reason, wh FROM nodes"))[0]
    assert row[0] == 2 and "2000 W x 2" in row[1] and row[2] == 1070  # no rating known yet
    # the genuine next report is stored as usual
    assert (await send(ing, [rep(9, t + 900, wh + 10)])).code_str == "2.04"


async def test_first_report_with_a_huge_counter_is_refused(ing):
    a = await send(ing, [rep(1, NOW - 60, 1e15)], ep="new")
    assert a.code_str == "4.00" and ing.implausible["counter"] == 1


async def test_first_report_with_a_huge_seq_is_refused_and_does_not_freeze_the_node(ing, store):
    """A node with its own key could freeze its own live state with a first report of
    seq 2^63 - 1: with no previous seq, the jump rule had nothing to bound (audit of issue 11)."""
    a = await send(ing, [rep(2**63 - 1, NOW - 1800, 1000)], ep="new")
    assert a.code_str == "4.00" and "implausible seq" in a.diagnostic
    assert ing.implausible["seq"] == 1
    a = await send(ing, [rep(2**32, NOW - 1800, 1000)], ep="new")
    assert a.code_str == "4.00"
    # the genuine reports are stored (not refused as out of order), the highest seq below 2^32 too
    a = await send(ing, honest(2**32 - 3, 2, NOW - 1800, 1000), ep="new")
    assert a.code_str == "2.04" and (a.stored, a.duplicates) == (2, 0)
    assert (await q(store, "SELECT last_seq FROM nodes WHERE id = 'new'"))[0][0] == 2**32 - 2


async def test_energy_step_beyond_rated_power_times_elapsed(ing, store):
    t, wh = await started(ing)
    await ing.handle_payload("n1", encode_descriptor("1", None, None, None, None, 40.0, None, None),
                             now=NOW)
    # 40 W x 2 margin over 900 s + 300 s grace + 1 Wh = 27.7 Wh allowed
    assert (await send(ing, [rep(9, t + 900, wh + 28)])).code_str == "4.00"
    assert (await send(ing, [rep(9, t + 900, wh + 27)])).code_str == "2.04"
    # a reset guess (counter below 0.9 x) counts the new reading: bounded too
    assert (await send(ing, [rep(10, t + 1800, 500)])).code_str == "4.00"
    assert (await send(ing, [rep(10, t + 1800, 3)])).code_str == "2.04"


async def test_counter_wrap_has_an_upper_bound(ing):
    a = await send(ing, [rep(1, NOW - 1200, 2**32 - 100)], ep="w")
    assert a.code_str == "2.04"
    # a genuine wrap: +110 Wh in 20 minutes is too much for 2000 W x 2? no: allowed
    assert (await send(ing, [rep(2, NOW - 60, 10)], ep="w")).code_str == "2.04"
    # buckets.py: a "wrap" from far below 2**32, or from beyond it, is no wrap
    assert delta_of(2**32 - 5, 3) == ("wrap", 8)
    assert delta_of(2**32 - 2**26, 3)[0] == "reset"
    kind, d = delta_of(1e15, 500)
    assert kind == "reset" and d == 500  # today's code: "wrap" with -1e15 Wh


def test_energy_is_never_negative_and_a_reset_guess_never_measured():
    b = buckets_from_readings([(900.0, 1e15, 40.0, 0), (1800.0, 500.0, 40.0, 0),
                               (2700.0, 510.0, 40.0, 0)])
    assert all(wh >= 0 for wh, _q in b.values())
    assert b[900] == (500.0, "estimated")  # the reset guess
    assert b[1800] == (pytest.approx(10.0), "measured")


async def test_seq_far_ahead_is_refused_and_does_not_freeze_the_node(ing, store):
    t, wh = await started(ing)
    for forged in (2**63 - 1, 9 + 10**6):
        a = await send(ing, [rep(forged, t + 60, wh)])
        assert a.code_str == "4.00" and "implausible seq" in a.diagnostic
    # the genuine reports go on: stored (not "duplicates"), live state follows them
    a = await send(ing, honest(9, 3, t + 900, wh))
    assert a.code_str == "2.04" and (a.stored, a.duplicates) == (3, 0)
    assert (await q(store, "SELECT last_seq, wh FROM nodes"))[0] == (11, wh + 20)
    assert ing.implausible["seq"] == 2


async def test_back_dated_report_is_refused_and_creates_no_rows(ing, store):
    t, wh = await started(ing)
    await store.refresh()
    before = await q(store, "SELECT COUNT(*) FROM buckets")
    for k in range(12):  # the 12 datagrams
        a = await send(ing, [rep(9 + k, 1_580_000_000 + k, wh + k)])
        assert a.code_str == "4.00"
    await store.refresh()
    assert await q(store, "SELECT COUNT(*) FROM buckets") == before
    assert ing.implausible["time_old"] == 12
    # with the gateway's clock untrusted, the previous report's time still bounds it
    loose = Ingestor(store, clock=TrustedClock(False))
    assert (await send(loose, [rep(9, t - 7200, wh + 1)])).code_str == "4.00"
    assert loose.implausible["time_order"] == 1
    # a step back within time_back_s (a clock corrected by the gateway) is accepted
    assert (await send(ing, [rep(9, t - 300, wh + 1)])).code_str == "2.04"


async def test_back_dated_first_report_and_future_report(ing, store):
    assert (await send(ing, [rep(1, NOW - 40 * 86400, 5)], ep="n2")).code_str == "4.00"
    assert (await send(ing, [rep(1, NOW + 3600, 5)], ep="n2")).code_str == "4.00"
    assert ing.implausible["time_old"] == 1 and ing.implausible["time_future"] == 1
    # an untrusted gateway clock (a Pi without NTP) refuses neither: the store re-times them
    loose = Ingestor(store, clock=TrustedClock(False))
    assert (await send(loose, [rep(1, NOW + 3 * 86400, 5)], ep="n3")).code_str == "2.04"


def test_one_reading_creates_a_bounded_number_of_bucket_rows():
    # the first reading in 2020 (the store's lower bound), the next one today
    b = buckets_from_readings([(1_577_836_800.0, 0.0, None, 0), (NOW, 1000.0, None, 0)])
    assert len(b) <= MAX_SPREAD_S // 900 + 1
    assert sum(wh for wh, _q in b.values()) == pytest.approx(1000.0)  # energy conserved


async def test_rated_power_is_bounded_and_its_change_logged(ing, store, caplog):
    for bad in (1e5, 0.0, 2001.0):
        d = encode_descriptor("1", None, None, None, None, bad, None, None)
        assert (await ing.handle_payload("n1", d, now=NOW)).code_str == "4.00", bad
    d = encode_descriptor("1", None, None, None, None, 40.0, None, None)
    assert (await ing.handle_payload("n1", d, now=NOW)).code_str == "2.04"
    with caplog.at_level(logging.WARNING, logger="gateway.ingest"):
        d = encode_descriptor("1", None, None, None, None, 250.0, None, None)
        assert (await ing.handle_payload("n1", d, now=NOW)).code_str == "2.04"
    assert "rated power changed from 40 W to 250 W" in caplog.text
    # the limit is configurable
    big = Ingestor(store, rules=Rules(max_rated_w=5000.0))
    d = encode_descriptor("1", None, None, None, None, 4000.0, None, None)
    assert (await big.handle_payload("n1", d, now=NOW)).code_str == "2.04"


async def test_refusals_are_logged_once_a_minute_per_node(ing, caplog):
    t, wh = await started(ing)
    with caplog.at_level(logging.WARNING, logger="gateway.ingest"):
        for _ in range(20):
            assert (await send(ing, [rep(9, t + 60, 2**31)])).code_str == "4.00"
    lines = [r for r in caplog.records if "refused" in r.getMessage()]
    assert len(lines) == 1 and "node n1" in lines[0].getMessage()
    assert ing.implausible["energy"] == 20


async def test_new_report_older_than_the_newest_is_refused_but_a_resend_is_a_duplicate(ing):
    t, wh = await started(ing)
    a = await send(ing, honest(3, 4, NOW - 3600 - 5 * 900, 1020))  # the same pack again
    assert a.code_str == "2.04" and a.duplicates == 4
    # seq 0 was never stored: a new report older than seq 8 is out of order
    a = await send(ing, [rep(0, NOW - 9000, 999)])
    assert a.code_str == "4.00" and ing.implausible["out_of_order"] == 1


# --- the honest cases ------------------------------------------------------------------------

async def test_honest_backlog_after_three_days_offline(ing, store):
    """A node offline for 3 days whose outbox merged its oldest reports (SPEC §3.3): the
    first report of the backlog is a summary that skipped 200 seqs over 2 days, then 96
    reports every 15 min, sent oldest first in packs of 11 as the node packs them."""
    t, wh = await started(ing)
    t1 = t + 2 * 86400
    wh1 = wh + 40 * 2 * 24  # 2 days at 40 W
    reps = [rep(9 + 200, t1, wh1)] + honest(210, 96, t1 + 900, wh1 + 10)
    # they are received a day after the last was taken: the gateway's clock is later
    now = t1 + 97 * 900 + 600
    for i in range(0, len(reps), 11):
        a = await send(ing, reps[i:i + 11], now=now)
        assert a.code_str == "2.04", (i, a.diagnostic)
    assert (await q(store, "SELECT COUNT(*) FROM readings"))[0][0] == 8 + 97
    await store.refresh()
    total = (await q(store, SITE_SQL))[0][0]
    assert total == pytest.approx(reps[-1][2] - 1000)  # every Wh counted once


async def test_node_without_time_then_restart_then_gateway_restart(tmp_path, store, ing):
    t, wh = await started(ing)
    # the node reboots after a power cut: seq skips its 16-block, no valid time (relative t),
    # supplyLoss flag; then time is set again
    rel = [{-2: "/10250/0/", -3: -1800, 0: "0", 2: 8 + 17}, {0: "1", 2: 0x20 | 0x80},
           {-2: "/3311/0/", 0: "5805", 2: wh + 10}, {0: "5851", 2: 100}, {0: "5852", 2: 1},
           {-2: "/3305/0/", 0: "5800", 2: 40.0}]
    assert (await ing.handle_payload("n1", cbor2.dumps(rel), now=NOW + 900)).code_str == "2.04"
    assert (await send(ing, [rep(26, NOW + 1700, wh + 20)], now=NOW + 1800)).code_str == "2.04"
    # the gateway restarts: a new Ingestor on the same database loads the node's state
    again = Ingestor(store, clock=TrustedClock())
    assert (await send(again, [rep(27, NOW + 2600, wh + 30)], now=NOW + 2700)).code_str == "2.04"
    assert (await send(again, [rep(28, NOW + 3500, 2**31)], now=NOW + 3600)).code_str == "4.00"


async def test_a_replaced_meter_is_rebased_after_three_consistent_reports(ing, store):
    """A meter swapped for one that reads 50,000 Wh: refused 3 times (the node drops each),
    then accepted with a replacement event; the jump never counts as energy."""
    t, wh = await started(ing)
    new = [rep(9 + k, t + 600 * (k + 1), 50_000 + 10 * k) for k in range(5)]
    for r in new[:3]:
        a = await send(ing, [r])
        assert a.code_str == "4.00" and "energy" in a.diagnostic
    a = await send(ing, [new[3]])
    assert a.code_str == "2.04", a.diagnostic
    a = await send(ing, [new[4]])
    assert a.code_str == "2.04", a.diagnostic
    ev = await q(store, "SELECT t, kind FROM meter_events")
    assert ev == [(new[3][1], "replacement")]
    await store.refresh()
    total = (await q(store, SITE_SQL))[0][0]
    # 70 Wh before, 10 Wh after, and the 40 minutes across estimated from 40 W: not 49,000 Wh
    assert total == pytest.approx(70 + 40 * 2400 / 3600 + 10)


async def test_an_inconsistent_forger_is_never_rebased(ing, store):
    t, wh = await started(ing)
    for k in range(8):  # big jumps that do not agree with each other
        a = await send(ing, [rep(9 + k, t + 60 * (k + 1), 10**6 * (k % 2 + 1) + 10**5 * k)])
        assert a.code_str == "4.00"
    assert await q(store, "SELECT COUNT(*) FROM meter_events") == [(0,)]
    # nor is one whose power is beyond the rated power (the estimate across a jump uses it)
    big = Ingestor(store, clock=TrustedClock())
    assert (await send(big, [rep(9, t + 60, wh + 1, w=4001.0)])).code_str == "4.00"
    assert big.implausible["power"] == 1
    # and rebaseline_after = 0 turns re-basing off
    never = Ingestor(store, clock=TrustedClock(), rules=Rules(rebaseline_after=0))
    for k in range(6):
        assert (await send(never, [rep(9 + k, t + 900 * (k + 1), 50_000 + k)])).code_str == "4.00"


async def test_a_rebase_waits_for_a_power_within_the_nodes_rating(ing, store):
    t, wh = await started(ing)
    d = encode_descriptor("1", None, None, None, None, 40.0, None, None)
    assert (await ing.handle_payload("n1", d, now=NOW)).code_str == "2.04"
    new = [rep(9 + k, t + 600 * (k + 1), 50_000 + 10 * k) for k in range(5)]
    for r in new[:3]:
        assert (await send(ing, [r])).code_str == "4.00"
    # a failing lamp may draw 200 W (stored as usual), but not across a meter swap
    hot = rep(*new[3][:3], w=200.0)
    assert (await send(ing, [hot])).code_str == "4.00"
    assert (await send(ing, [new[4]])).code_str == "2.04"
    assert await q(store, "SELECT COUNT(*) FROM meter_events") == [(1,)]
