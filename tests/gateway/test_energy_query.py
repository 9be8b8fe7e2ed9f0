"""gateway/energy/query.py and savings.py: roll-ups by period and selection, coverage and
missing data, savings against astral's dusk/dawn, reference baseline, circuit check."""

import datetime as dt

import astral
import astral.sun
import pytest

from gateway.config import parse_time
from gateway.energy import circuit_check, energy, savings
from gateway.store import Store

D0 = parse_time("2026-01-09T23:00:00Z")  # local midnight of 10 January, Europe/Paris
LAT, LON = 48.85, 2.35


@pytest.fixture
async def town(tmp_path):
    """3 nodes of 60 W-equivalent (5 Wh per 5 min) for 3 days: A1, A2 in cabinet A / group g1,
    B1 in cabinet B / group g2 (reports every 5 min), a meter in cabinet A (every 10 min)."""
    s = await Store.open(str(tmp_path / "slgw.db"), timezone="Europe/Paris")
    meta = {"A1": ("A", "g1", 60.0), "A2": ("A", "g1", 60.0), "B1": ("B", "g2", 100.0)}
    for nid, (cab, grp, rated) in meta.items():
        reps = [{"seq": i, "t": D0 + 300 * i, "wh": 1000 + 5 * i} for i in range(0, 864)]
        await s.ingest_reports(nid, reps, received_at=D0 + 300 * 864)
        await s.write(lambda c, a=(cab, grp, rated, nid): c.execute(
            "UPDATE nodes SET cabinet = ?, grp = ?, rated_w = ? WHERE id = ?", a))
    reps = [{"seq": i, "t": D0 + 600 * i, "wh": 7 + 24 * i} for i in range(0, 432)]
    await s.ingest_reports("meterA", reps, kind="meter", received_at=D0 + 300 * 864)
    await s.write(lambda c: c.execute("UPDATE nodes SET cabinet = 'A' WHERE id = 'meterA'"))
    await s.refresh()
    try:
        yield s
    finally:
        await s.close()


async def test_site_by_day_month_hour_15min_agree(town):
    day = await town.read(lambda c: energy(c, by="day"))
    assert day["selection"] == "site" and day["timezone"] == "Europe/Paris"
    # 3 nodes x 863 intervals x 5 Wh; the meter is not part of the site total
    assert day["total_wh"] == pytest.approx(3 * 863 * 5)
    assert [r["local"][:10] for r in day["rows"]] == ["2026-01-10", "2026-01-11", "2026-01-12"]
    assert day["rows"][0]["wh"] == pytest.approx(3 * 60 * 24) and day["rows"][0]["coverage"] == 1.0
    assert day["quality"] == "measured"
    for by in ("month", "hour", "15min"):
        q = await town.read(lambda c, by=by: energy(c, by=by, start=D0, end=D0 + 3 * 86400))
        assert q["total_wh"] == pytest.approx(day["total_wh"]), by
    month = await town.read(lambda c: energy(c, by="month", start=D0, end=D0 + 86400))
    # the month is clipped to the day asked for: the total answers the window, not January
    (row,) = month["rows"]
    assert row["local"].startswith("2026-01-10") and row["clipped"] and row["wh"] == pytest.approx(4320)
    assert not any(r["clipped"] for r in day["rows"])


async def test_selection_by_node_group_cabinet(town):
    g1 = await town.read(lambda c: energy(c, group="g1", start=D0, end=D0 + 86400))
    cab_b = await town.read(lambda c: energy(c, cabinet="B", start=D0, end=D0 + 86400))
    node = await town.read(lambda c: energy(c, node="A1", start=D0, end=D0 + 86400, by="hour"))
    meter = await town.read(lambda c: energy(c, node="meterA", start=D0, end=D0 + 86400))
    assert g1["total_wh"] == pytest.approx(2 * 1440) and cab_b["total_wh"] == pytest.approx(1440)
    assert node["total_wh"] == pytest.approx(1440) and len(node["rows"]) == 24
    assert meter["total_wh"] == pytest.approx(24 * 144)
    with pytest.raises(ValueError):
        await town.read(lambda c: energy(c, node="A1", group="g1"))
    with pytest.raises(ValueError):
        await town.read(lambda c: energy(c, by="week"))


async def test_periods_without_data_are_missing(town):
    q = await town.read(lambda c: energy(c, node="A1", start=D0 - 2 * 3600, end=D0 + 3600, by="hour"))
    assert [r["quality"] for r in q["rows"]] == ["missing", "missing", "measured"]
    assert q["rows"][0]["wh"] == 0 and q["rows"][0]["coverage"] == 0
    silent = await town.read(lambda c: energy(c, node="A1", start=D0 - 86400, end=D0))
    assert silent["total_wh"] == 0 and silent["quality"] == "missing"


def _astral_night(start, end):
    obs = astral.Observer(LAT, LON)
    tot = 0.0
    d = dt.datetime.fromtimestamp(start, dt.UTC).date() - dt.timedelta(days=1)
    while d <= dt.datetime.fromtimestamp(end, dt.UTC).date():
        dusk = astral.sun.sunset(obs, d, tzinfo=dt.UTC).timestamp()
        dawn = astral.sun.sunrise(obs, d + dt.timedelta(days=1), tzinfo=dt.UTC).timestamp()
        tot += max(0.0, min(dawn, end) - max(dusk, start))
        d += dt.timedelta(days=1)
    return tot


async def test_dusk_to_dawn_savings_per_node_cabinet_site(town):
    start, end = D0, D0 + 2 * 86400
    sv = await town.read(lambda c: savings(c, start=start, end=end, latitude=LAT, longitude=LON))
    night_h = _astral_night(start, end) / 3600
    assert sv["night_hours"] == pytest.approx(night_h, abs=0.01)
    a1 = next(n for n in sv["nodes"] if n["id"] == "A1")
    assert a1["baseline_wh"] == pytest.approx(60 * night_h, rel=1e-4)
    assert a1["actual_wh"] == pytest.approx(2 * 1440)
    assert a1["saved_wh"] == pytest.approx(a1["baseline_wh"] - a1["actual_wh"])
    cab = {c["cabinet"]: c for c in sv["cabinets"]}
    assert cab["A"]["nodes"] == 2 and cab["A"]["baseline_wh"] == pytest.approx(120 * night_h, rel=1e-4)
    site = sv["site"]
    assert site["baseline_wh"] == pytest.approx(220 * night_h, rel=1e-4)
    assert site["actual_wh"] == pytest.approx(3 * 2 * 1440)
    assert site["saved_pct"] == pytest.approx(100 * (1 - site["actual_wh"] / site["baseline_wh"]), abs=0.01)
    assert all(n["id"] != "meterA" for n in sv["nodes"])


async def test_node_without_rated_power_has_no_baseline(town):
    await town.write(lambda c: c.execute("UPDATE nodes SET rated_w = NULL WHERE id = 'B1'"))
    sv = await town.read(lambda c: savings(c, start=D0, end=D0 + 86400, latitude=LAT, longitude=LON))
    assert sv["without_baseline"] == ["B1"] and sv["site"]["nodes"] == 2


async def test_reference_baseline_scales_by_night_length(town):
    ref_from, ref_to = D0, D0 + 86400
    start, end = D0 + 86400, D0 + 2 * 86400
    sv = await town.read(lambda c: savings(c, start=start, end=end, latitude=LAT, longitude=LON,
                                           baseline="reference", reference_from=ref_from,
                                           reference_to=ref_to))
    ratio = _astral_night(start, end) / _astral_night(ref_from, ref_to)
    a1 = next(n for n in sv["nodes"] if n["id"] == "A1")
    assert a1["baseline_wh"] == pytest.approx(1440 * ratio, rel=1e-3)
    with pytest.raises(ValueError):
        await town.read(lambda c: savings(c, start=start, end=end, latitude=LAT, longitude=LON,
                                          baseline="reference"))


async def test_circuit_check_meter_against_nodes(town):
    start, end = D0 + 3600, D0 + 86400 + 1800  # partial days: buckets at the edges, days inside
    cc = await town.read(lambda c: circuit_check(c, "A", start, end))
    hours = (end - start) / 3600
    assert cc["nodes"] == 2 and cc["nodes_wh"] == pytest.approx(2 * 60 * hours)
    assert cc["meter_wh"] == pytest.approx(144 * hours)
    assert cc["unaccounted_wh"] == pytest.approx(24 * hours)
    assert cc["unaccounted_pct"] == pytest.approx(100 * 24 / 144, abs=0.001)
    assert cc["meters"][0]["id"] == "meterA" and cc["quality"] == "measured"
    no_meter = await town.read(lambda c: circuit_check(c, "B", start, end))
    assert no_meter["meter_wh"] is None and no_meter["unaccounted_wh"] is None


async def test_savings_from_config(town):
    from gateway.config import load_config

    cfg = load_config(None, {"site.latitude": LAT, "site.longitude": LON})
    a = await town.read(lambda c: savings(c, start=D0, end=D0 + 86400, config=cfg))
    b = await town.read(lambda c: savings(c, start=D0, end=D0 + 86400, latitude=LAT, longitude=LON))
    assert a["site"] == b["site"] and a["baseline"] == "dusk-to-dawn"


async def test_meter_replacement_recorded_after_the_fact_is_applied(tmp_path):
    s = await Store.open(str(tmp_path / "slgw.db"), timezone="Europe/Paris")
    try:
        old = [{"seq": i, "t": D0 + 300 * i, "wh": 90_000 + 5 * i, "w": 60.0} for i in range(0, 12)]
        new = [{"seq": i, "t": D0 + 300 * i, "wh": 5 * (i - 12), "w": 60.0} for i in range(12, 24)]
        await s.ingest_reports("m1", old + new, kind="meter", received_at=D0 + 86400)
        await s.refresh()
        before = await s.read(lambda c: energy(c, node="m1", start=D0, end=D0 + 7200, by="hour"))
        # 90,055 -> 0 looks like a reset: the new reading counted as a whole cycle (0 Wh here)
        assert before["total_wh"] == pytest.approx(55 + 0 + 55)
        await s.add_meter_event("m1", D0 + 300 * 11 + 150, "replacement", "new SDM120")
        await s.refresh()
        after = await s.read(lambda c: energy(c, node="m1", start=D0, end=D0 + 7200, by="hour"))
        # the swap interval now gets the power integral: 300 s at 60 W = 5 Wh, estimated
        assert after["total_wh"] == pytest.approx(55 + 5 + 55)
        assert after["rows"][0]["quality"] == "estimated"
        with pytest.raises(ValueError):
            await s.add_meter_event("m1", D0, "exploded")
    finally:
        await s.close()


# --- issue 16: figures that say what they cover ---------------------------------------------
DAY2_17H = D0 + 86400 + 17 * 3600  # 11 January, 17:00 Paris


@pytest.mark.parametrize("by", ["day", "month", "hour", "15min"])
async def test_a_window_is_answered_not_widened(town, by):
    # `--from 17:00 --to 21:00` by day once answered the whole local day (1,440 Wh for A1)
    q = await town.read(lambda c: energy(c, node="A1", start=DAY2_17H, end=DAY2_17H + 4 * 3600, by=by))
    assert q["total_wh"] == pytest.approx(4 * 60)
    assert (q["start"], q["end"]) == (DAY2_17H, DAY2_17H + 4 * 3600)
    assert q["rows"][0]["start"] == DAY2_17H and q["rows"][-1]["end"] == DAY2_17H + 4 * 3600
    if by in ("day", "month"):
        (row,) = q["rows"]
        assert row["clipped"] and row["coverage"] == 1.0 and row["wh"] == pytest.approx(240)
    else:
        assert not any(r["clipped"] for r in q["rows"])


async def test_clipped_periods_carry_their_own_coverage(town):
    # a quarter past the hour: the first hour is clipped to its last 45 minutes
    q = await town.read(lambda c: energy(c, node="A1", start=DAY2_17H + 900, end=DAY2_17H + 7200,
                                         by="hour"))
    assert [(r["clipped"], r["wh"]) for r in q["rows"]] == [(True, pytest.approx(45)),
                                                            (False, pytest.approx(60))]
    # 2 h before and 2 h after the end of the data, by day and by month
    end = D0 + 3 * 86400
    by_day = await town.read(lambda c: energy(c, node="A1", start=end - 7200, end=end + 7200))
    assert [(r["clipped"], r["coverage"], r["quality"]) for r in by_day["rows"]] == [
        (True, 1.0, "measured"), (True, 0.0, "missing")]
    (month,) = (await town.read(lambda c: energy(c, node="A1", start=end - 7200, end=end + 7200,
                                                 by="month")))["rows"]
    # the data ends 5 minutes before midnight: 6,900 s at 60 W
    assert month["clipped"] and month["coverage"] == 0.5 and month["wh"] == pytest.approx(115)


async def test_a_window_off_the_15_minute_grain_is_refused(town):
    for call in (lambda c: energy(c, node="A1", start=DAY2_17H + 420, end=DAY2_17H + 3600),
                 lambda c: energy(c, node="A1", start=DAY2_17H, end=DAY2_17H + 3599.5),
                 lambda c: savings(c, start=DAY2_17H + 1, end=D0 + 2 * 86400, latitude=LAT,
                                   longitude=LON),
                 lambda c: circuit_check(c, "A", D0, D0 + 100)):
        with pytest.raises(ValueError, match="15-minute boundary"):
            await town.read(call)


async def test_one_bound_past_the_data_says_so(town):
    with pytest.raises(ValueError, match="after the last data of node:A1"):
        await town.read(lambda c: energy(c, node="A1", start=D0 + 10 * 86400))
    with pytest.raises(ValueError, match="before the first data of node:A1"):
        await town.read(lambda c: energy(c, node="A1", end=D0 - 86400))
    with pytest.raises(ValueError, match="to must be after from"):
        await town.read(lambda c: energy(c, node="A1", start=D0, end=D0))


async def test_an_answer_too_large_is_refused_naming_the_limit_and_by(town):
    from gateway.energy.spans import MAX_ROWS, TooManyRows

    years37 = 37 * 365 * 86400
    with pytest.raises(TooManyRows, match=r"by 15min.*40,000.*coarser --by"):
        await town.read(lambda c: energy(c, node="A1", start=D0, end=D0 + years37, by="15min"))
    assert MAX_ROWS == 40_000
    q = await town.read(lambda c: energy(c, node="A1", start=D0, end=D0 + years37, by="day"))
    assert q["total_wh"] == pytest.approx(863 * 5) and len(q["rows"]) == 37 * 365


async def test_an_unknown_selection_is_not_an_empty_answer(town):
    from gateway.energy.spans import UnknownSelection

    for kw in ({"node": "nobody"}, {"group": "nope"}, {"cabinet": "Z"}, {"cabinet": ""}):
        with pytest.raises(UnknownSelection, match="no node matches"):
            await town.read(lambda c, kw=kw: energy(c, **kw))
        with pytest.raises(UnknownSelection, match="no node matches"):
            await town.read(lambda c, kw=kw: savings(c, start=D0, end=D0 + 86400, latitude=LAT,
                                                     longitude=LON, **kw))


async def test_nights_without_data_are_not_saved(town):
    # issue 16: 3 days of data in the default 30-day window gave "99.37 % saved"
    start, end = D0, D0 + 30 * 86400
    sv = await town.read(lambda c: savings(c, start=start, end=end, latitude=LAT, longitude=LON))
    covered_h = _astral_night(D0, D0 + 3 * 86400) / 3600
    cov = covered_h / (_astral_night(start, end) / 3600)
    a1 = next(n for n in sv["nodes"] if n["id"] == "A1")
    assert a1["baseline_wh"] == pytest.approx(60 * covered_h, rel=1e-4)  # only the known nights
    assert a1["actual_wh"] == pytest.approx(863 * 5)
    assert a1["coverage"] == pytest.approx(cov, abs=1e-4) and 0.09 < cov < 0.11
    for fig in [a1, sv["site"], *sv["cabinets"]]:
        assert fig["saved_pct"] is None and "min_coverage 90%" in fig["withheld"], fig
    assert sv["min_coverage"] == 0.9 and sv["site"]["coverage"] == pytest.approx(cov, abs=1e-4)
    # a lower threshold gives the percentage, of the covered nights only
    low = await town.read(lambda c: savings(c, start=start, end=end, latitude=LAT, longitude=LON,
                                            min_coverage=0.05))
    site = low["site"]
    assert site["withheld"] is None
    assert site["saved_pct"] == pytest.approx(100 * (1 - 3 * 863 * 5 / (220 * covered_h)), abs=0.01)


async def test_a_luminaire_that_started_late_has_its_baseline_from_then(town):
    reps = [{"seq": i, "t": D0 + 86400 + 300 * i, "wh": 5 * i} for i in range(0, 289)]
    await town.ingest_reports("C1", reps, received_at=D0 + 3 * 86400)
    await town.write(lambda c: c.execute(
        "UPDATE nodes SET cabinet = 'C', grp = 'g3', rated_w = 60 WHERE id = 'C1'"))
    await town.refresh()
    sv = await town.read(lambda c: savings(c, start=D0, end=D0 + 3 * 86400, latitude=LAT,
                                           longitude=LON, cabinet="C", min_coverage=0.3))
    (c1,) = sv["nodes"]
    day2 = _astral_night(D0 + 86400, D0 + 2 * 86400) / 3600
    assert c1["baseline_wh"] == pytest.approx(60 * day2, rel=1e-4)
    assert c1["coverage"] == pytest.approx(day2 * 3600 / _astral_night(D0, D0 + 3 * 86400), abs=1e-4)
    assert c1["saved_pct"] == pytest.approx(100 * (1 - 1440 / (60 * day2)), abs=0.01)


async def test_a_reference_with_a_gap_is_taken_per_known_night(town):
    # the reference starts a day before the data: its energy is per known night second
    ref_from, ref_to = D0 - 86400, D0 + 86400
    start, end = D0 + 86400, D0 + 2 * 86400
    sv = await town.read(lambda c: savings(c, start=start, end=end, latitude=LAT, longitude=LON,
                                           baseline="reference", reference_from=ref_from,
                                           reference_to=ref_to))
    a1 = next(n for n in sv["nodes"] if n["id"] == "A1")
    ratio = _astral_night(start, end) / _astral_night(D0, D0 + 86400)
    assert a1["baseline_wh"] == pytest.approx(1440 * ratio, rel=1e-3)
    assert 0.4 < a1["reference_coverage"] < 0.6 and a1["coverage"] == 1.0


async def test_circuit_check_compares_only_the_span_every_source_covers(town):
    # the meter runs 2 h ahead of its nodes (an open window, as `slgw energy --cabinet A`)
    more = [{"seq": i, "t": D0 + 600 * i, "wh": 7 + 24 * i} for i in range(432, 444)]
    await town.ingest_reports("meterA", more, kind="meter", received_at=D0 + 4 * 86400)
    await town.refresh()
    cc = await town.read(lambda c: circuit_check(c, "A", D0, D0 + 4 * 86400))
    # first buckets hold energy from the first reading only, last ones up to the last one
    assert cc["compared"] == {"start": D0 + 900, "end": D0 + 300 * 863 // 900 * 900}
    assert cc["unaccounted_pct"] == pytest.approx(100 * 24 / 144, abs=0.001)
    hours = (cc["compared"]["end"] - cc["compared"]["start"]) / 3600
    assert cc["meter_wh"] == pytest.approx(144 * hours) and cc["nodes_wh"] == pytest.approx(120 * hours)
    assert (cc["start"], cc["end"]) == (D0, D0 + 4 * 86400)
    # a closed window inside everybody's data is compared whole
    closed = await town.read(lambda c: circuit_check(c, "A", D0 + 3600, D0 + 7200))
    assert closed["compared"] == {"start": D0 + 3600, "end": D0 + 7200}
    nothing = await town.read(lambda c: circuit_check(c, "A", D0 - 7200, D0))
    assert nothing["compared"] is None and nothing["meter_wh"] is None
