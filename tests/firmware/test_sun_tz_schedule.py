"""The node's astronomical clock, POSIX TZ rules and schedule, run under the real `micropython`,
checked against astral (sun) and CPython's zoneinfo (time zones).

One micropython process answers all queries of a test through tests/firmware/mp_core/oracle_time.py.
"""

import datetime as dt
import json
import os
import random
from zoneinfo import ZoneInfo

import pytest
from astral import Observer
from astral.sun import sunrise, sunset
from core_support import MP_CORE, run_mp

UTC = dt.UTC
ORACLE = os.path.join(MP_CORE, "oracle_time.py")
PARIS = "CET-1CEST,M3.5.0,M10.5.0/3"


def ask(queries):
    r = run_mp(ORACLE, stdin="".join(json.dumps(q) + "\n" for q in queries), timeout=60)
    assert r.returncode == 0, r.stderr
    out = [json.loads(line) for line in r.stdout.splitlines() if line.strip()]
    assert len(out) == len(queries)
    return out


def days(d):
    return (d - dt.date(1970, 1, 1)).days


LATS = [-60, -50, -40, -30, -20, -10, 0, 10, 25, 40, 48.85, 60]
DATES = [dt.date(2026, m, d) for m in range(1, 13) for d in (5, 20)]


@pytest.mark.parametrize("lon", [2.35, -122.4, 151.2])
def test_sunrise_sunset_within_one_minute_of_astral(lon):
    tz = dt.timezone(dt.timedelta(hours=round(lon / 15)))
    qs, ref = [], []
    for lat in LATS:
        obs = Observer(lat, lon)
        for d in DATES:
            base = dt.datetime(d.year, d.month, d.day, tzinfo=UTC)
            r = (sunrise(obs, d, tzinfo=tz) - base).total_seconds() / 60
            s = (sunset(obs, d, tzinfo=tz) - base).total_seconds() / 60
            qs.append({"op": "sun", "days": days(d), "lat": lat, "lon": lon})
            ref.append((lat, d, r, s))
    worst = 0.0
    for (lat, d, r, s), (mr, ms, state) in zip(ref, ask(qs), strict=False):
        assert state == 0, (lat, d)
        worst = max(worst, abs(mr - r), abs(ms - s))
        assert abs(mr - r) <= 1.0 and abs(ms - s) <= 1.0, (lat, lon, d, mr, r, ms, s)
    print(f"worst deviation from astral: {worst:.3f} min")


def test_polar_day_and_night_do_not_crash_and_match_astral():
    cases = [(75, dt.date(2026, 6, 21), 1), (75, dt.date(2026, 12, 21), -1),
             (-75, dt.date(2026, 6, 21), -1), (-75, dt.date(2026, 12, 21), 1), (89.999, dt.date(2026, 3, 30), 1),
             (90, dt.date(2026, 12, 1), -1), (-90, dt.date(2026, 12, 1), 1)]
    out = ask([{"op": "sun", "days": days(d), "lat": lat, "lon": 20.0} for lat, d, _ in cases])
    for (lat, d, want), (r, s, state) in zip(cases, out, strict=False):
        assert state == want, (lat, d)
        assert r == s  # zero-length day (night) or zero-length night (day), documented in sun.py
        if abs(lat) < 89:
            with pytest.raises(ValueError):
                sunrise(Observer(lat, 20.0), d, tzinfo=UTC)


ZONES = [
    (PARIS, "Europe/Paris"),
    ("EST5EDT,M3.2.0,M11.1.0", "America/New_York"),
    ("AEST-10AEDT,M10.1.0,M4.1.0/3", "Australia/Sydney"),
    ("NZST-12NZDT,M9.5.0,M4.1.0/3", "Pacific/Auckland"),
    ("<-03>3", "America/Sao_Paulo"),
    ("IST-5:30", "Asia/Kolkata"),
    ("UTC0", "UTC"),
]


def _transitions(zone, years):
    """UTC instants where zoneinfo's offset changes (found by hourly scan + bisection)."""
    out = []
    t = int(dt.datetime(years[0], 1, 1, tzinfo=UTC).timestamp())
    end = int(dt.datetime(years[-1] + 1, 1, 1, tzinfo=UTC).timestamp())
    off = lambda x: dt.datetime.fromtimestamp(x, zone).utcoffset()  # noqa: E731
    prev = off(t)
    while t < end:
        nt = t + 3600
        if off(nt) != prev:
            lo, hi = t, nt
            while hi - lo > 1:
                mid = (lo + hi) // 2
                if off(mid) == prev:
                    lo = mid
                else:
                    hi = mid
            out.append(hi)
            prev = off(nt)
        t = nt
    return out


@pytest.mark.parametrize("posix,name", ZONES)
def test_posix_tz_matches_zoneinfo(posix, name):
    zone = ZoneInfo(name)
    rng = random.Random(name)
    instants = []
    trans = _transitions(zone, [2025, 2026, 2027])
    for tr in trans:
        instants += [tr - 3601, tr - 1, tr, tr + 1, tr + 3600]
    start = int(dt.datetime(2025, 1, 1, tzinfo=UTC).timestamp())
    instants += [start + rng.randrange(3 * 365 * 86400) for _ in range(300)]
    out = ask([{"op": "tz", "tz": posix, "t": t} for t in instants])
    for t, (off, _dst) in zip(instants, out, strict=False):
        want = dt.datetime.fromtimestamp(t, zone).utcoffset().total_seconds()
        assert off == want, (posix, t, dt.datetime.fromtimestamp(t, UTC), off, want)
    if name in ("Europe/Paris", "America/New_York", "Australia/Sydney"):
        assert len(trans) == 6


def test_paris_local_to_utc_incl_gap_and_overlap():
    zone = ZoneInfo("Europe/Paris")
    cases = []
    for d in (dt.datetime(2026, 3, 29), dt.datetime(2026, 10, 25), dt.datetime(2026, 7, 1), dt.datetime(2026, 1, 1)):
        for minute in range(0, 24 * 60, 15):
            cases.append(d + dt.timedelta(minutes=minute))
    out = ask([{"op": "from_local", "tz": PARIS,
                "local": int((c - dt.datetime(1970, 1, 1)).total_seconds())} for c in cases])
    for c, got in zip(cases, out, strict=False):
        if c.date() == dt.date(2026, 3, 29) and 2 <= c.hour < 3:
            # the gap: the standard-time reading, i.e. the same instant as 03:xx CEST
            want = int(c.replace(tzinfo=dt.timezone(dt.timedelta(hours=1))).timestamp())
        else:
            want = int(c.replace(tzinfo=zone, fold=0).timestamp())  # overlap: first (DST) occurrence
        assert got == want, (c, got, want)


def test_bad_tz_strings_are_rejected():
    bad = ["", "C", "CET", "CET-1CEST,M3.5.0", "CET-1CEST,M13.5.0,M10.5.0", "CET-1CEST,M3.6.0,M10.5.0",
           "CET-1CEST,M3.5.7,M10.5.0", "CET-1x", "CET-1CEST,J0,J5", "<AB>1", "X" * 70, "CET-1CEST;M3"]
    script = (
        "from firmware.tzrule import TZ\n"
        "import sys\n"
        f"for s in {bad!r}:\n"
        "    try:\n"
        "        TZ(s)\n"
        "        print('ACCEPTED', s)\n"
        "    except ValueError:\n"
        "        print('rejected')\n"
    )
    r = run_mp(script)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["rejected"] * len(bad), r.stdout


# ---- the schedule against a reference built from astral + zoneinfo ---------------------------
FRENCH = [[1, 0, 100], [0, 1350, 40], [0, 0, 0], [0, 300, 40], [2, 0, 0]]


def _ref_events(steps, lat, lon, zone, day):
    obs = Observer(lat, lon)
    ev = []
    for i, (kind, minutes, level) in enumerate(steps):
        if kind == 0:
            local = dt.datetime(day.year, day.month, day.day) + dt.timedelta(minutes=minutes)
            t = local.replace(tzinfo=zone, fold=0)
            if t.astimezone(UTC).astimezone(zone).replace(tzinfo=None) != local:  # DST gap
                t = local.replace(tzinfo=dt.timezone(zone.utcoffset(local - dt.timedelta(hours=3))))
            t = t.timestamp()
        else:
            fn = sunset if kind == 1 else sunrise
            t = fn(obs, day, tzinfo=dt.timezone(dt.timedelta(hours=round(lon / 15)))).timestamp() + minutes * 60
        ev.append((t, i, level))
    return ev


def _ref_level(steps, lat, lon, zone, t):
    local_day = dt.datetime.fromtimestamp(t, zone).date()
    ev = []
    for k in (-1, 0, 1):
        ev += _ref_events(steps, lat, lon, zone, local_day + dt.timedelta(days=k))
    ev.sort()
    best = None
    near = min(abs(e[0] - t) for e in ev)
    for e in ev:
        if e[0] <= t:
            best = e[2]
    return best, near


@pytest.mark.parametrize("lat,lon,posix,name", [(48.85, 2.35, PARIS, "Europe/Paris"),
                                                (-33.87, 151.2, "AEST-10AEDT,M10.1.0,M4.1.0/3", "Australia/Sydney"),
                                                (59.9, 10.75, PARIS, "Europe/Oslo")])
def test_schedule_levels_match_reference(lat, lon, posix, name):
    zone = ZoneInfo(name)
    rng = random.Random(posix + name)
    start = int(dt.datetime(2026, 1, 1, tzinfo=UTC).timestamp())
    times = [start + rng.randrange(365 * 86400) for _ in range(400)]
    out = ask([{"op": "level", "steps": FRENCH, "lat": lat, "lon": lon, "tz": posix, "t": t} for t in times])
    checked = 0
    for t, got in zip(times, out, strict=False):
        want, near = _ref_level(FRENCH, lat, lon, zone, t)
        if near < 90:  # within 1.5 min of a step: either level is right
            continue
        checked += 1
        assert got == want, (dt.datetime.fromtimestamp(t, zone), got, want)
    assert checked > 350
