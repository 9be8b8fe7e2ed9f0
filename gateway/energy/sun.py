"""Night (dusk-to-dawn) intervals for the savings baseline, from the ``astral`` package.

Dusk and dawn are sunset and sunrise at the usual -0.833 degree solar elevation (astral's
default), for the site's latitude and longitude (one site position for all luminaires: a town
spans a few kilometres, a few seconds of sunset). In polar day or night a date has no sunset
or sunrise; the sun's elevation at local noon then decides whether the whole day is night.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from functools import lru_cache

import astral
import astral.sun


@lru_cache(maxsize=4096)
def _events(lat: float, lon: float, d: date) -> tuple[float | None, float | None, bool]:
    """(sunrise, sunset) of UTC date ``d`` as Unix s (None if absent), and 'sun up at noon'."""
    obs = astral.Observer(lat, lon)
    try:
        rise = astral.sun.sunrise(obs, d, tzinfo=UTC).timestamp()
    except ValueError:
        rise = None
    try:
        sset = astral.sun.sunset(obs, d, tzinfo=UTC).timestamp()
    except ValueError:
        sset = None
    noon = datetime(d.year, d.month, d.day, 12, tzinfo=UTC) - timedelta(hours=lon / 15.0)
    up = astral.sun.elevation(obs, noon) > -0.833
    return rise, sset, up


def night_intervals(start: float, end: float, lat: float, lon: float) -> list[tuple[float, float]]:
    """Dusk-to-dawn intervals intersected with ``[start, end)`` (Unix seconds), in order."""
    d = datetime.fromtimestamp(start, UTC).date() - timedelta(days=1)
    last = datetime.fromtimestamp(end, UTC).date() + timedelta(days=1)
    marks: list[tuple[float, str]] = []
    while d <= last:
        rise, sset, up = _events(lat, lon, d)
        day0 = datetime(d.year, d.month, d.day, tzinfo=UTC).timestamp()
        if rise is None and sset is None:
            if not up:
                marks += [(day0, "dusk"), (day0 + 86400, "dawn")]
        else:
            if rise is not None:
                marks.append((rise, "dawn"))
            if sset is not None:
                marks.append((sset, "dusk"))
        d += timedelta(days=1)
    marks.sort()
    out: list[tuple[float, float]] = []
    dusk = None
    for t, kind in marks:
        if kind == "dusk" and dusk is None:
            dusk = t
        elif kind == "dawn" and dusk is not None:
            a, b = max(dusk, start), min(t, end)
            if b > a:
                if out and a <= out[-1][1]:
                    out[-1] = (out[-1][0], b)
                else:
                    out.append((a, b))
            dusk = None
    return out


def night_seconds(start: float, end: float, lat: float, lon: float) -> float:
    """Seconds of night within ``[start, end)``."""
    return sum(b - a for a, b in night_intervals(start, end, lat, lon))
