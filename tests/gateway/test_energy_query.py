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
    assert len(month["rows"]) == 1 and month["rows"][0]["local"].startswith("2026-01-01")


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
    empty = await town.read(lambda c: energy(c, node="nobody"))
    assert empty["total_wh"] == 0 and empty["rows"] == []


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
