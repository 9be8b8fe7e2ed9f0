"""The level a SPEC §5.2 schedule intends at an instant, computed independently of the firmware:
sunset/sunrise from ``astral`` (solar depression 0.833°), local days from ``zoneinfo``.

Steps ``[kind, minutes, level]``: kind 0 = local time (minutes after local midnight), 1 = sunset +
minutes, 2 = sunrise + minutes. Each local day's steps are placed in time; the level in force
is that of the latest step at or before the instant, looking back into the previous days.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

from astral import Observer
from astral.sun import sunrise, sunset


def step_times(steps: list[list[int]], lat: float, lon: float, tz: str, day: date) -> list[tuple[float, int]]:
    """(Unix time, level) of each step on local ``day``."""
    zone = ZoneInfo(tz)
    obs = Observer(latitude=lat, longitude=lon)
    out = []
    for kind, minutes, level in steps:
        if kind == 0:
            base = datetime(day.year, day.month, day.day, tzinfo=zone)
            at = (base + timedelta(minutes=minutes)).timestamp()
        elif kind == 1:
            at = sunset(obs, day, tzinfo=UTC).timestamp() + 60 * minutes
        else:
            at = sunrise(obs, day, tzinfo=UTC).timestamp() + 60 * minutes
        out.append((at, level))
    return out


def timeline(steps, lat, lon, tz, t0: float, t1: float) -> list[tuple[float, int]]:
    """Every (time, level) step between two days before t0 and a day after t1, sorted."""
    zone = ZoneInfo(tz)
    d0 = datetime.fromtimestamp(t0, zone).date() - timedelta(days=2)
    d1 = datetime.fromtimestamp(t1, zone).date() + timedelta(days=1)
    out = []
    d = d0
    while d <= d1:
        out += step_times(steps, lat, lon, tz, d)
        d += timedelta(days=1)
    return sorted(out)


def level_at(tl: list[tuple[float, int]], t: float) -> int:
    """The level in force at ``t`` on a timeline from :func:`timeline`."""
    lvl = None
    for at, level in tl:
        if at <= t:
            lvl = level
        else:
            break
    if lvl is None:
        raise ValueError("timeline starts after t")
    return lvl


def changes(tl: list[tuple[float, int]], t0: float, t1: float) -> list[tuple[float, int, int]]:
    """(time, old level, new level) of every change of level in (t0, t1]."""
    out = []
    prev = level_at(tl, t0)
    for at, level in tl:
        if t0 < at <= t1 and level != prev:
            out.append((at, prev, level))
            prev = level
        elif t0 < at <= t1:
            prev = level
    return out
