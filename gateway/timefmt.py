"""Times at the edges of the gateway: what the API and the CLI accept and print.

Inside, times are Unix seconds (float). Outside, one representation (docs/cli.md "Times"):
ISO 8601 in UTC with a `Z`, to the second (`2026-01-15T18:00:00Z`), or `null`. Input accepts
ISO 8601 dates and date-times with `Z`, an offset, or no zone (UTC), between the years 1970
and 2999 (a gateway has no data before 1970, and later years overflow date arithmetic).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

FORMATS = ("2026-12-01, 2026-12-01T17:00, 2026-12-01T17:00:00Z or 2026-12-01T18:00:00+01:00 "
           "(no zone = UTC)")
EARLIEST = 0.0  # 1970-01-01T00:00:00Z
LATEST = 32503680000.0  # 3000-01-01T00:00:00Z


def parse(text: str, name: str) -> float:
    """Parse the value of parameter/flag `name` into Unix seconds.

    Raises ValueError naming `name` and the accepted formats.
    """
    s = text.strip()
    if s[-1:] in ("Z", "z"):
        s = s[:-1] + "+00:00"
    try:
        dt = datetime.fromisoformat(s)
    except ValueError:
        raise ValueError(f"{name} {text!r} is not a date or time; use ISO 8601: {FORMATS}") from None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    try:
        t = dt.timestamp()
    except (OverflowError, ValueError):
        t = -1.0
    if not EARLIEST <= t < LATEST:
        raise ValueError(f"{name} {text!r} is out of range: give a time between 1970-01-01 and "
                         "2999-12-31")
    return t


def iso(t: float | None) -> str | None:
    """Unix seconds -> `2026-01-15T18:00:00Z` (UTC, the second it falls in); None stays None."""
    if t is None:
        return None
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


TIME_KEYS = frozenset(("start", "end", "last_poll"))


def iso_times(doc: Any, keys: frozenset[str] = TIME_KEYS) -> Any:
    """`doc` with every number under one of `keys` (at any depth) as `iso()`; the energy,
    savings and meter answers keep Unix seconds inside and go out as ISO 8601 here."""
    if isinstance(doc, dict):
        return {k: (iso(v) if k in keys and isinstance(v, int | float) and not isinstance(v, bool)
                    else iso_times(v, keys)) for k, v in doc.items()}
    if isinstance(doc, list):
        return [iso_times(v, keys) for v in doc]
    return doc
