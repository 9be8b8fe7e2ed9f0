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
from functools import lru_cache
from zoneinfo import ZoneInfo

from astral import Observer
from astral.sun import sunrise, sunset

from gateway.energy.sun import night_intervals


@lru_cache(maxsize=4096)
def _sun(lat: float, lon: float, day: date, kind: int) -> float | None:
    """Sunset (kind 1) or sunrise (2) on `day`; positions rounded to 0.01° by the callers
    (about 1 km: a few seconds of sun time), so a town's lamps share one computation."""
    try:
        fn = sunset if kind == 1 else sunrise
        return fn(Observer(latitude=lat, longitude=lon), day, tzinfo=UTC).timestamp()
    except ValueError:  # polar day or night: no such event that day
        return None


def wanted_level(steps: list[list[int]] | None, lat: float, lon: float, tz: str, t: float,
                 default_level: int = 100) -> int:
    """The level (0-100) the schedule, or the fail-safe without one, wants at Unix time `t`."""
    if not steps:
        return default_level if is_night(lat, lon, t) else 0
    zone = ZoneInfo(tz)
    lat, lon = round(lat, 2), round(lon, 2)
    today = datetime.fromtimestamp(t, zone).date()
    best: tuple[float, int] | None = None
    for back in range(3):  # today's steps, else the latest of the previous days
        day = today - timedelta(days=back)
        for kind, minutes, level in steps:
            if kind == 0:
                # wall-clock minutes after local midnight, as the node counts them (SPEC §5.2)
                at = (datetime(day.year, day.month, day.day, tzinfo=zone)
                      + timedelta(minutes=minutes)).timestamp()
            else:
                base = _sun(lat, lon, day, kind)
                if base is None:
                    continue
                at = base + 60 * minutes
            if at <= t and (best is None or at > best[0]):
                best = (at, int(level))
        if best is not None:
            return best[1]
    return default_level


def is_night(lat: float, lon: float, t: float) -> bool:
    """True between dusk and dawn at (lat, lon) (to the minute, 0.01°)."""
    return _night(round(lat, 2), round(lon, 2), int(t // 60) * 60)


@lru_cache(maxsize=4096)
def _night(lat: float, lon: float, t: int) -> bool:
    return bool(night_intervals(t - 1, t + 1, lat, lon))


def classify(online: bool, fault_flags: int, level: int | None, held: bool, want: int,
             want_then: int, night: bool) -> str:
    """A lamp's state for the view, the first that applies: "offline", "fault", "dark" (level
    0 while its schedule wants light, now and when it last reported, so a switch not reported
    yet is not flagged), "dayburn" (lit in daylight, not held by an operator, while the
    schedule wants it off now and then), else "off", "on" (100 %) or "dimmed"."""
    if not online or level is None:
        return "offline"
    if fault_flags:
        return "fault"
    if level == 0 and want > 0 and want_then > 0:
        return "dark"
    if level > 0 and not held and not night and want == 0 and want_then == 0:
        return "dayburn"
    if level == 0:
        return "off"
    return "on" if level >= 100 else "dimmed"
