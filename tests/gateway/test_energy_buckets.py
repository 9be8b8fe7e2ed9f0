"""gateway/energy/buckets.py and rebuild.py: splitting, qualities, resets, wraps, replacement,
and incremental rebuild == full rebuild."""

import sqlite3

import pytest

from gateway.energy.buckets import buckets_from_readings, delta_of
from gateway.energy.rebuild import rebuild_all, rebuild_dirty
from gateway.store.readings import ingest_fn, validate_report
from gateway.store.schema import migrate

B = 1_768_003_200  # a bucket (and hour) boundary: 2026-01-10T00:00:00Z
assert B % 3600 == 0


def r(t, wh, w=None, rel=0):
    return (t, wh, w, rel)


def test_delta_split_in_proportion_to_time_across_a_boundary():
    out = buckets_from_readings([r(B - 300, 100), r(B + 600, 190)])
    assert out == {B - 900: (pytest.approx(30.0), "measured"), B: (pytest.approx(60.0), "measured")}


def test_long_gap_is_interpolated_and_conserved():
    # 2 h without reports: 120 Wh spread evenly over 8 buckets
    out = buckets_from_readings([r(B - 60, 0), r(B, 1), r(B + 7200, 121), r(B + 7260, 122)])
    gap = [out[B + 900 * k] for k in range(8)]
    assert all(q == "interpolated" for _wh, q in gap)
    assert [wh for wh, _q in gap] == pytest.approx([15.0] * 8)
    assert out[B - 900] == (pytest.approx(1.0), "measured")
    assert out[B + 7200] == (pytest.approx(1.0), "measured")
    assert sum(wh for wh, _ in out.values()) == pytest.approx(122.0)


def test_relative_time_is_estimated():
    out = buckets_from_readings([r(B + 10, 0), r(B + 70, 1, rel=1), r(B + 130, 2)])
    assert out[B][1] == "estimated"


def test_worst_quality_wins_within_a_bucket():
    # measured delta then a long interpolated delta that ends inside the same bucket
    out = buckets_from_readings([r(B - 3600, 0), r(B + 100, 50), r(B + 160, 51)])
    assert out[B][1] == "interpolated"


def test_reset_starts_a_new_cycle_and_noise_is_ignored():
    assert delta_of(1000, 1005) == ("delta", 5)
    assert delta_of(1000, 950) == ("noise", 0.0)  # 5 % dip: noise
    assert delta_of(1000, 10) == ("reset", 10)  # below 0.9 x previous: new cycle from 0
    assert delta_of(2**32 - 5, 3) == ("wrap", 8)  # integer counter wrapped
    out = buckets_from_readings([r(B, 1000), r(B + 60, 1010), r(B + 120, 960), r(B + 180, 1020),
                                 r(B + 240, 5), r(B + 300, 9)])
    # 10 + (dip skipped: 1020 - 1010) + reset 5 + 4
    assert sum(wh for wh, _ in out.values()) == pytest.approx(29.0)
    assert out[B][1] == "estimated"  # the reset's timing is unknown


def test_replacement_event_uses_power_integral_or_is_missing():
    reads = [r(B, 5000, 40.0), r(B + 600, 5010, 40.0), r(B + 3000, 3, 40.0), r(B + 3600, 13, 40.0)]
    out = buckets_from_readings(reads, [(B + 1500, "replacement")])
    # 2400 s at 40 W = 26.67 Wh estimated across the swap, never 5010 -> 3 as a reset
    total = sum(wh for wh, _ in out.values())
    assert total == pytest.approx(10 + 40 * 2400 / 3600 + 10)
    assert out[B + 1800][1] == "estimated"
    no_power = [r(B, 5000), r(B + 600, 5010), r(B + 3000, 3), r(B + 3600, 13)]
    out = buckets_from_readings(no_power, [(B + 1500, "replacement")])
    assert out[B + 1800] == (0.0, "missing")
    assert out[B][1] == "estimated"  # part measured, part missing


def test_same_time_readings_and_explicit_reset_event():
    out = buckets_from_readings([r(B + 5, 10), r(B + 5, 12), r(B + 65, 15)])
    assert out[B][0] == pytest.approx(5)
    out = buckets_from_readings([r(B, 100), r(B + 60, 103)], [(B + 30, "reset")])
    assert out[B] == (pytest.approx(103), "estimated")


def _db():
    c = sqlite3.connect(":memory:", isolation_level=None)
    migrate(c)
    c.execute("INSERT INTO meta VALUES ('rollup_tz', 'Europe/Paris')")
    return c


def _ingest(c, source, reps, now):
    rows = [validate_report(x, now) for x in reps]
    c.execute("BEGIN")
    ingest_fn(source, rows, "node", now)(c)
    c.execute("COMMIT")


def _dump(c):
    return (c.execute("SELECT source, start, round(wh, 6), quality FROM buckets ORDER BY 1, 2").fetchall(),
            c.execute("SELECT source, start, round(wh, 6), q, n FROM energy_hour ORDER BY 1, 2").fetchall(),
            c.execute("SELECT source, start, round(wh, 6), q, n FROM energy_day ORDER BY 1, 2").fetchall())


def test_late_reading_in_a_gap_rebuilds_like_a_full_rebuild():
    c = _db()
    reps = [{"seq": s, "t": B + 60 * s, "wh": 10 * s} for s in range(1, 200)]
    now = B + 100_000
    _ingest(c, "n1", reps[:50] + reps[150:], now)  # a gap of 100 min
    rebuild_dirty(c, "Europe/Paris")
    gap_q = c.execute("SELECT quality FROM buckets WHERE start = ?", (B + 3600,)).fetchone()[0]
    assert gap_q == "interpolated"
    _ingest(c, "n1", reps[50:150], now)  # the backlog arrives
    rebuild_dirty(c, "Europe/Paris")
    incremental = _dump(c)
    rebuild_all(c, "Europe/Paris")
    assert _dump(c) == incremental
    assert c.execute("SELECT DISTINCT quality FROM buckets").fetchall() == [("measured",)]
    assert c.execute("SELECT SUM(wh) FROM buckets").fetchone()[0] == pytest.approx(1980)


def test_local_day_rollup_on_a_dst_day_has_92_buckets():
    # 2026-03-29 in Europe/Paris is 23 hours long
    from gateway.config import parse_time

    c = _db()
    d0 = parse_time("2026-03-28T23:00:00Z")  # local midnight, 29 March
    reps = [{"seq": s, "t": d0 - 900 + 300 * s, "wh": s} for s in range(1, 300)]
    _ingest(c, "n1", reps, d0 + 200_000)
    rebuild_dirty(c, "Europe/Paris")
    row = c.execute("SELECT n, wh FROM energy_day WHERE start = ?", (int(d0),)).fetchone()
    assert row[0] == 92 and row[1] == pytest.approx(92 * 3)


def test_a_clock_stepped_back_is_not_a_meter_reset():
    # A node's clock is corrected 31 min back after report 30 (the HIL scenario that once
    # counted 13x the energy): the chain follows seq, so nothing is counted twice.
    reps = [{"seq": k, "t": B + 60 * k - (1860 if k > 30 else 0), "wh": 10 + k} for k in range(1, 91)]
    c = _db()
    _ingest(c, "n1", reps[:35], B + 100_000)
    rebuild_dirty(c, "Europe/Paris")
    _ingest(c, "n1", reps[35:], B + 100_000)
    rebuild_dirty(c, "Europe/Paris")
    assert c.execute("SELECT SUM(wh) FROM buckets").fetchone()[0] == pytest.approx(89)
    incremental = _dump(c)
    rebuild_all(c, "Europe/Paris")
    assert _dump(c) == incremental
    # the step back is estimated; the steady stretches stay measured
    quals = dict(c.execute("SELECT start, quality FROM buckets"))
    step_bucket = (B + 60 * 31 - 1860) // 900 * 900
    assert quals[step_bucket] == "estimated"
    assert quals[B + 2700] == "measured"  # after the overlap, only post-correction reports
