"""What a lamp should be doing now, so "tonight at a glance" can show lamps that are dark when
they should be lit, and lit by day.

The wanted level is that of the lamp's schedule (its own, else its group's: the one the node was
sent, SPEC §5.2 steps ``[kind, minutes, level]``, kind 0 = local time, 1 = sunset + minutes,
2 = sunrise + minutes), placed in the site's time zone at the lamp's own coordinates; the level
in force is that of the latest step at or before the instant. A lamp with no schedule follows
the fail-safe: its default level from dusk to dawn, off by day. Sun times come from ``astral``
(the same calculator as the savings baseline, gateway/energy/sun.py).
"""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

from astral import Observer
from astral.sun import sunrise, sunset

from gateway.energy.sun import night_intervals


def _sun(obs: Observer, day: date, fn: object) -> float | None:
    try:
        return fn(obs, day, tzinfo=UTC).timestamp()  # type: ignore[operator]
    except ValueError:  # polar day or night: no such event that day
        return None


def wanted_level(steps: list[list[int]] | None, lat: float, lon: float, tz: str, t: float,
                 default_level: int = 100) -> int:
    """The level (0-100) the schedule, or the fail-safe without one, wants at Unix time `t`."""
    if not steps:
        night = night_intervals(t - 1, t + 1, lat, lon)
        return default_level if night else 0
    zone = ZoneInfo(tz)
    obs = Observer(latitude=lat, longitude=lon)
    today = datetime.fromtimestamp(t, zone).date()
    best: tuple[float, int] | None = None
    for back in range(3):  # today's steps, else the latest of the previous days
        day = today - timedelta(days=back)
        for kind, minutes, level in steps:
            if kind == 0:
                at = datetime(day.year, day.month, day.day, tzinfo=zone).timestamp() + 60 * minutes
            else:
                base = _sun(obs, day, sunset if kind == 1 else sunrise)
                if base is None:
                    continue
                at = base + 60 * minutes
            if at <= t and (best is None or at > best[0]):
                best = (at, int(level))
        if best is not None:
            return best[1]
    return default_level


def is_night(lat: float, lon: float, t: float) -> bool:
    """True between dusk and dawn at (lat, lon)."""
    return bool(night_intervals(t - 1, t + 1, lat, lon))
