import mprun
from mprun import FakeClock, raises

from firmware.schedule import Override, Schedule, validate_steps, wanted_level
from firmware.sun import days_from_civil, sun_times
from firmware.tzrule import TZ

PARIS = TZ("CET-1CEST,M3.5.0,M10.5.0/3")
FRENCH = [[1, 0, 100], [0, 1350, 40], [0, 0, 0], [0, 300, 40], [2, 0, 0]]
LAT, LON = 48.85, 2.35


def local(y, mo, d, h, mi=0):
    return PARIS.from_local(days_from_civil(y, mo, d) * 86400 + h * 3600 + mi * 60)


def test_french_winter_night():
    s = Schedule(FRENCH, LAT, LON, PARIS)
    assert s.level_at(local(2026, 1, 15, 12)) == 0  # day: off since dawn
    assert s.level_at(local(2026, 1, 15, 19)) == 100  # after sunset
    assert s.level_at(local(2026, 1, 15, 22, 45)) == 40
    assert s.level_at(local(2026, 1, 16, 2)) == 0  # after midnight: previous-day lookback
    assert s.level_at(local(2026, 1, 16, 6)) == 40
    assert s.level_at(local(2026, 1, 16, 9)) == 0


def test_boundaries_exact_minute():
    s = Schedule([[0, 600, 30], [0, 1200, 70]], 0, 0, PARIS)
    t = local(2026, 5, 1, 10)
    assert s.level_at(t - 1) == 70  # yesterday's 20:00 step still in force
    assert s.level_at(t) == 30
    assert s.level_at(local(2026, 5, 1, 20)) == 70


def test_lookback_single_step():
    s = Schedule([[0, 1380, 55]], LAT, LON, PARIS)
    assert s.level_at(local(2026, 7, 1, 3)) == 55  # only yesterday's step applies


def test_sunset_offset_spills_over_midnight():
    s = Schedule([[1, 600, 20], [2, -60, 80]], LAT, LON, PARIS)  # sunset+10h, sunrise-1h
    days = days_from_civil(2026, 1, 10)
    rise, sset, _ = sun_times(days + 1, LAT, LON)
    spill = days * 86400 + int(sset * 60) + 600 * 60  # after local midnight
    assert s.level_at(spill + 120) == 20
    before_rise = (days + 1) * 86400 + int(rise * 60) - 3600
    assert s.level_at(before_rise - 300) == 20
    assert s.level_at(before_rise + 300) == 80


def test_dst_day_fixed_steps_stay_local():
    s = Schedule([[0, 1350, 40], [0, 360, 100]], LAT, LON, PARIS)
    # 22:30 local is 21:30 UTC in winter and 20:30 UTC in summer
    assert s.level_at(local(2026, 3, 28, 22, 31)) == 40
    assert s.level_at(local(2026, 3, 29, 22, 29)) == 100
    assert s.level_at(local(2026, 3, 29, 22, 31)) == 40
    assert local(2026, 3, 29, 22, 30) - local(2026, 3, 28, 22, 30) == 23 * 3600


def test_empty_schedule_and_wanted_level():
    h = FakeClock()
    ov = Override(h)
    empty = Schedule([], LAT, LON, PARIS)
    assert empty.level_at(local(2026, 1, 1, 20)) is None
    assert wanted_level(empty, ov, local(2026, 1, 1, 20), 100) == 100
    s = Schedule(FRENCH, LAT, LON, PARIS)
    assert wanted_level(s, ov, local(2026, 1, 15, 12), 100) == 0
    assert wanted_level(s, ov, None, 77) == 77  # time invalid: default level, schedule ignored


def test_override_expiry_and_cancel():
    h = FakeClock()
    ov = Override(h)
    s = Schedule(FRENCH, LAT, LON, PARIS)
    noon = local(2026, 1, 15, 12)
    ov.set(60, 90)
    assert wanted_level(s, ov, noon, 100) == 60 and ov.left_s() == 90
    assert ov.state() == [60, 90]
    h.advance(89500)
    assert ov.active_level() == 60 and ov.left_s() == 1
    h.advance(600)
    assert ov.active_level() is None and wanted_level(s, ov, noon, 100) == 0
    assert ov.state() == [None, 0]
    ov.set(10, 5)
    ov.set(None, 0)
    assert ov.active_level() is None
    ov.set(30, 100)
    assert wanted_level(s, ov, None, 100) == 30  # an override also holds without valid time


def test_override_long_duration_across_ticks_wrap():
    h = FakeClock((1 << 30) - 1000)
    ov = Override(h)
    ov.set(25, 604800)
    for _ in range(7 * 24):
        h.advance(3600 * 1000)
        ov.active_level()
    assert ov.active_level() is None


def test_override_rejects_bad_values_unchanged():
    h = FakeClock()
    ov = Override(h)
    ov.set(50, 100)
    for lvl, secs in ((101, 10), (-1, 10), (50, 0), (50, 604801), (True, 10), ("5", 10), (5.5, 10)):
        raises(ValueError, ov.set, lvl, secs)
    assert ov.state() == [50, 100]


def test_validate_steps_rejects():
    bad = [
        "x", [[0, 1440, 10]], [[0, -1, 10]], [[1, 721, 10]], [[2, -721, 10]], [[3, 0, 10]],
        [[0, 0, 101]], [[0, 0, -1]], [[0, 0]], [[0, 0, 1.5]], [[0, 0, True]], [[0, 0, 1]] * 17,
    ]
    for b in bad:
        raises(ValueError, validate_steps, b)
    assert validate_steps([[1, -720, 0], [2, 720, 100]]) == [(1, -720, 0), (2, 720, 100)]
    s = Schedule(FRENCH, LAT, LON, PARIS)
    raises(ValueError, s.set_steps, [[0, 0, 200]])
    assert len(s.steps) == 5  # unchanged


def test_polar_ties_follow_the_sky():
    # Tromso-like latitude, lamp on at sunset, off at sunrise
    s = Schedule([[1, 0, 100], [2, 0, 0]], 75.0, 20.0, None)
    june = days_from_civil(2026, 6, 21) * 86400
    dec = days_from_civil(2026, 12, 21) * 86400
    for h in range(0, 24, 3):
        assert s.level_at(june + h * 3600) == 0  # midnight sun: day steps hold
        assert s.level_at(dec + h * 3600) == 100  # polar night: night steps hold


def test_boot_after_outage_applies_level_now():
    # power was off from 21:00 to 01:30: the 22:30 (40 %) and 00:00 (off) steps were missed;
    # at boot the node lights what the schedule wants now, with no fade from a stale level
    from firmware.light import Light

    s = Schedule(FRENCH, LAT, LON, PARIS)
    h = FakeClock()
    light = Light(h, fade_ms=2000)
    light.apply_now(wanted_level(s, Override(h), local(2026, 2, 3, 1, 30), 100))
    assert light.actual_level == 0 and h.relays[-1] is False
    h2 = FakeClock()
    light2 = Light(h2, fade_ms=2000)
    light2.apply_now(wanted_level(s, Override(h2), local(2026, 2, 3, 23, 0), 100))
    assert light2.actual_level == 40 and abs(h2.duties[-1] - 0.4) < 1e-9
    # and without valid time at boot: the default (fail-safe) level
    h3 = FakeClock()
    light3 = Light(h3, fade_ms=2000)
    light3.apply_now(wanted_level(s, Override(h3), None, 100))
    assert light3.actual_level == 100


def test_next_change():
    s = Schedule([[0, 600, 30], [0, 1200, 70]], 0, 0, None)
    t0 = days_from_civil(2026, 5, 1) * 86400
    assert s.next_change(t0) == t0 + 600 * 60
    assert s.next_change(t0 + 600 * 60) == t0 + 1200 * 60
    assert Schedule([], 0, 0, None).next_change(t0) is None


mprun.run(globals())
