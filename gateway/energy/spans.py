"""Sums over an arbitrary 15-minute-aligned span from the finest table that still holds it,
and the window rules every energy answer shares (grain, size limit, known selection).

A span ``[lo, hi)`` is cut into whole local days (``energy_day``), then whole UTC hours
(``energy_hour``), then quarter hours (``buckets``): a year costs a few hundred day rows per
source, and the answer is exact to the bucket. Roll-ups are kept forever while buckets may be
pruned (``retention_bucket_days``), so an hour-aligned span stays answerable after pruning.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator

from .buckets import BUCKET_S
from .periods import floor_period, iso_utc, next_period

# The finest grain of stored energy: a window must start and end on it (docs/energy.md §4).
GRAIN_S = BUCKET_S
# Most rows one energy answer may hold: a leap year of 15-minute rows (35,136) fits.
MAX_ROWS = 40_000

Q_RANK_SQL = ("CASE quality WHEN 'measured' THEN 0 WHEN 'interpolated' THEN 1 "
        "WHEN 'estimated' THEN 2 ELSE 3 END")


class UnknownSelection(LookupError):
    """The node, group or cabinet asked for does not exist (API 404, CLI exit 4)."""


class TooManyRows(ValueError):
    """The answer would hold more than MAX_ROWS rows (API 400, CLI exit 2)."""


def check_grain(t: float, name: str) -> int:
    """``t`` as an int if it falls on a 15-minute boundary (UTC); else ValueError naming it.

    Decision (docs/energy.md §4): a window off the grain is refused, not widened or
    pro-rated: the energy inside a quarter hour is not known more finely than that.
    """
    if t != int(t) or int(t) % GRAIN_S:
        lo = int(t) // GRAIN_S * GRAIN_S
        raise ValueError(f"{name} {iso_utc(t)} is not on a 15-minute boundary, the finest grain of "
                         f"stored energy; use {iso_utc(lo)} or {iso_utc(lo + GRAIN_S)}")
    return int(t)


def bounded_periods(start: int, end: int, by: str, tz: str) -> list[tuple[int, int]]:
    """The periods of kind ``by`` that meet ``[start, end)``, at most MAX_ROWS of them.

    Raises TooManyRows (naming the limit and ``by``) before building a larger list.
    """
    per = {"15min": 900, "hour": 3600, "day": 86400, "month": 30 * 86400}[by]
    longest = {"15min": 900, "hour": 3600, "day": 90000, "month": 31 * 90000}[by]

    def refuse() -> TooManyRows:
        return TooManyRows(
            f"this answer would hold about {int((end - start) // per):,} rows by {by}, more "
            f"than the {MAX_ROWS:,} allowed per answer: use a coarser --by (by=) or a "
            "shorter --from/--to window")

    if (end - start) // longest > MAX_ROWS:  # surely too many: refuse before counting
        raise refuse()
    out: list[tuple[int, int]] = []
    p = floor_period(start, by, tz)
    while p < end:
        if len(out) >= MAX_ROWS:
            raise refuse()
        n = next_period(p, by, tz)
        out.append((p, n))
        p = n
    return out


def require_selection(conn: sqlite3.Connection, node: str | None, group: str | None,
                      cabinet: str | None, label: str) -> None:
    """Raise UnknownSelection if the node, group (of luminaires) or cabinet does not exist."""
    if node is not None:
        sql, arg = "SELECT 1 FROM nodes WHERE id = ?", node
    elif group is not None:
        sql, arg = "SELECT 1 FROM nodes WHERE kind = 'node' AND grp = ?", group
    elif cabinet is not None:
        sql, arg = "SELECT 1 FROM nodes WHERE cabinet = ?", cabinet
    else:
        return
    if conn.execute(sql + " LIMIT 1", (arg,)).fetchone() is None:
        raise UnknownSelection(f"no node matches {label!r} (`slgw nodes` lists the node ids, "
                               "groups and cabinets)")


def _ceil(t: int, step: int) -> int:
    return -(-t // step) * step


def span_parts(lo: int, hi: int, tz: str) -> list[tuple[str, int, int]]:
    """``[lo, hi)`` as ``(table, a, b)`` pieces: whole local days, whole UTC hours, quarters."""
    d0 = floor_period(lo, "day", tz)
    if d0 < lo:
        d0 = next_period(d0, "day", tz)
    d1 = floor_period(hi, "day", tz)
    parts: list[tuple[str, int, int]] = []
    edges = [(lo, hi)]
    if d0 < d1:
        parts.append(("energy_day", d0, d1))
        edges = [(lo, d0), (d1, hi)]
    for a, b in edges:
        h0, h1 = _ceil(a, 3600), b // 3600 * 3600
        if h0 < h1:
            parts += [("energy_hour", h0, h1), ("buckets", a, h0), ("buckets", h1, b)]
        else:
            parts.append(("buckets", a, b))
    return [p for p in parts if p[2] > p[1]]


def sums(conn: sqlite3.Connection, cond: str, params: list, lo: int, hi: int,
         per_source: bool = True) -> Iterator[tuple[str | None, float, int | None, int, int]]:
    """``(source, wh, known_max_q, n_missing, n_buckets)`` over ``[lo, hi)`` per source (or
    one row with source None), in pieces: the caller adds the pieces of a source up."""
    key = "source" if per_source else "NULL"
    for table, a, b in span_parts(lo, hi, _tz(conn)):
        if table == "buckets":
            inner = (f"SELECT {key} AS k, wh, {Q_RANK_SQL} AS q, 1 AS n FROM buckets WHERE {cond} "
                     "AND start >= ? AND start < ?")
        else:
            inner = f"SELECT {key} AS k, wh, q, n FROM {table} WHERE {cond} AND start >= ? AND start < ?"
        yield from conn.execute(
            f"SELECT k, SUM(wh), MAX(CASE WHEN q < 3 THEN q END), SUM(q = 3), SUM(n) FROM "
            f"({inner}) GROUP BY k", [*params, a, b])


def _tz(conn: sqlite3.Connection) -> str:
    row = conn.execute("SELECT value FROM meta WHERE key = 'rollup_tz'").fetchone()
    return row[0] if row else "UTC"
