"""Period boundaries for roll-ups and queries: 15 min and hours in UTC, days and months in the
site's local time zone (so "yesterday" and "March" mean what the town means, including the
23- and 25-hour days of daylight-saving changes).
"""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

BY = ("15min", "hour", "day", "month")


def _zone(tz: str) -> ZoneInfo:
    return ZoneInfo(tz)


def local_midnight(t: float, tz: str) -> int:
    """Unix time of the local midnight at or before ``t``."""
    z = _zone(tz)
    d = datetime.fromtimestamp(t, z).date()
    return int(datetime(d.year, d.month, d.day, tzinfo=z).timestamp())


def floor_period(t: float, by: str, tz: str) -> int:
    """Start of the period of kind ``by`` holding ``t``."""
    if by == "15min":
        return int(math.floor(t / 900)) * 900
    if by == "hour":
        return int(math.floor(t / 3600)) * 3600
    z = _zone(tz)
    d = datetime.fromtimestamp(t, z).date()
    if by == "month":
        d = d.replace(day=1)
    elif by != "day":
        raise ValueError(f"by must be one of {', '.join(BY)}")
    return int(datetime(d.year, d.month, d.day, tzinfo=z).timestamp())


def next_period(start: int, by: str, tz: str) -> int:
    """Start of the period after the one starting at ``start``."""
    if by == "15min":
        return start + 900
    if by == "hour":
        return start + 3600
    z = _zone(tz)
    d = datetime.fromtimestamp(start, z).date()
    if by == "day":
        d = d + timedelta(days=1)
    else:
        d = (d.replace(day=1) + timedelta(days=32)).replace(day=1)
    return int(datetime(d.year, d.month, d.day, tzinfo=z).timestamp())


def periods(start: float, end: float, by: str, tz: str) -> list[tuple[int, int]]:
    """Consecutive ``(start, end)`` periods covering ``[start, end)``, aligned to ``by``."""
    out = []
    p = floor_period(start, by, tz)
    while p < end:
        n = next_period(p, by, tz)
        out.append((p, n))
        p = n
    return out


def iso_local(t: int, tz: str) -> str:
    """ISO 8601 local time with offset, for people and CSV."""
    return datetime.fromtimestamp(t, _zone(tz)).isoformat()


def iso_utc(t: float) -> str:
    """ISO 8601 UTC with a Z."""
    return datetime.fromtimestamp(t, UTC).isoformat().replace("+00:00", "Z")
