"""Energy queries over the buckets and roll-ups: per node, group, cabinet or site, and the
circuit check. Sync functions taking a sqlite3 connection; run them with ``store.read``.

A selection is one of ``node=`` (any source, also a meter), ``group=``, ``cabinet=`` or none
(the site). Groups, cabinets and the site add up luminaire nodes only (``kind = 'node'``):
meters measure the same energy again and are compared in ``circuit_check`` instead.

Each returned row carries a ``quality`` (the worst quality of what it adds up; "missing" when
no bucket exists) and a ``coverage`` (buckets present / buckets expected for the selected
sources), so a half-reported day is visible as such.
"""

from __future__ import annotations

import sqlite3
from typing import Any

from .buckets import MISSING, QUALITY_NAMES, combine_quality
from .periods import BY, floor_period, iso_local, iso_utc, next_period
from .spans import (
    GRAIN_S,
    Q_RANK_SQL,
    bounded_periods,
    check_grain,
    require_selection,
    sums,
)


def site_tz(conn: sqlite3.Connection) -> str:
    """The time zone the day roll-ups were built in (the site's)."""
    row = conn.execute("SELECT value FROM meta WHERE key = 'rollup_tz'").fetchone()
    return row[0] if row else "UTC"


def selection(node: str | None = None, group: str | None = None, cabinet: str | None = None,
              kind: str = "node") -> tuple[str, list, str]:
    """SQL condition on ``source`` for a selection, its parameters, and a label.

    Raises ValueError if more than one of node, group, cabinet is given.
    """
    given = [x for x in (node, group, cabinet) if x is not None]
    if len(given) > 1:
        raise ValueError("give at most one of node, group, cabinet")
    if node is not None:
        return "source = ?", [node], f"node:{node}"
    if group is not None:
        return ("source IN (SELECT id FROM nodes WHERE kind = ? AND grp = ?)", [kind, group],
                f"group:{group}")
    if cabinet is not None:
        return ("source IN (SELECT id FROM nodes WHERE kind = ? AND cabinet = ?)", [kind, cabinet],
                f"cabinet:{cabinet}")
    return "source IN (SELECT id FROM nodes WHERE kind = ?)", [kind], "site"


def on_nodes(cond: str) -> str:
    """The same selection as a condition on the nodes table (``id`` instead of ``source``)."""
    return cond.replace("source", "id", 1)


def _count_sources(conn: sqlite3.Connection, cond: str, params: list) -> int:
    return conn.execute(f"SELECT COUNT(*) FROM nodes WHERE {on_nodes(cond)}", params).fetchone()[0]


def _grouped(conn: sqlite3.Connection, by: str, cond: str, params: list, lo: int, hi: int
             ) -> list[tuple[int, float, int | None, int, int]]:
    """Rows (start, wh, known_max_q, n_missing_rows, n_buckets) per period start of the table."""
    if by == "15min":
        sql = (f"SELECT start, SUM(wh), MAX(CASE WHEN q < 3 THEN q END), SUM(q = 3), COUNT(*) "
               f"FROM (SELECT start, wh, {Q_RANK_SQL} AS q FROM buckets WHERE {cond} AND start >= ? "
               f"AND start < ?) GROUP BY start")
    else:
        table = "energy_hour" if by == "hour" else "energy_day"
        sql = (f"SELECT start, SUM(wh), MAX(CASE WHEN q < 3 THEN q END), SUM(q = 3), SUM(n) "
               f"FROM {table} WHERE {cond} AND start >= ? AND start < ? GROUP BY start")
    return conn.execute(sql, [*params, lo, hi]).fetchall()


def _add(cell: list, wh: float, kq: int | None, nmiss: int, n: int) -> None:
    cell[0] += wh
    if kq is not None and (cell[1] is None or kq > cell[1]):
        cell[1] = kq
    cell[2] += nmiss
    cell[3] += n


def energy(conn: sqlite3.Connection, *, node: str | None = None, group: str | None = None,
           cabinet: str | None = None, start: float | None = None, end: float | None = None,
           by: str = "day") -> dict[str, Any]:
    """Energy of a selection over ``[start, end)`` by ``15min``, ``hour``, ``day`` or ``month``.

    ``start``/``end`` are Unix seconds on a 15-minute boundary; the total answers exactly that
    window: a first or last period that sticks out is clipped to it (``clipped: true``, its
    ``start``/``end`` and ``coverage`` those of the clipped part). None means from the first /
    to the end of the last local day with data of the selection.
    Returns ``{selection, by, timezone, start, end, total_wh, quality, rows: [{start, end,
    local, wh, quality, coverage, clipped}]}``. Raises ValueError for a bad ``by``, selection
    or window, TooManyRows past MAX_ROWS rows, UnknownSelection for an unknown node, group or
    cabinet.
    """
    if by not in BY:
        raise ValueError(f"by must be one of {', '.join(BY)}")
    tz = site_tz(conn)
    cond, params, label = selection(node, group, cabinet)
    require_selection(conn, node, group, cabinet, label)
    if start is not None:
        start = check_grain(start, "from")
    if end is not None:
        end = check_grain(end, "to")
    given = (start is not None, end is not None)
    if start is None or end is None:
        lo, hi = conn.execute(f"SELECT MIN(start), MAX(start) FROM energy_day WHERE {cond}",
                              params).fetchone()
        if lo is None:
            return {"selection": label, "by": by, "timezone": tz, "start": start, "end": end,
                    "total_wh": 0.0, "quality": "missing", "rows": []}
        start = int(lo) // GRAIN_S * GRAIN_S if start is None else start
        end = next_period(int(hi), "day", tz) if end is None else end
    if end <= start:
        if given == (True, False):
            raise ValueError(f"from {iso_utc(start)} is after the last data of {label} (its day "
                             f"ends {iso_utc(end)}); give an earlier from, or to as well")
        if given == (False, True):
            raise ValueError(f"to {iso_utc(end)} is before the first data of {label} (its day "
                             f"starts {iso_utc(start)}); give a later to, or from as well")
        raise ValueError("to must be after from")
    plist = bounded_periods(start, end, by, tz)
    nsrc = 1 if node is not None else _count_sources(conn, cond, params)
    acc: dict[int, list] = {p: [0.0, None, 0, 0] for p, _e in plist}
    # whole periods from the roll-up of their kind, the clipped ends from spans.sums
    whole = [(p, e) for p, e in plist if p >= start and e <= end]
    if whole:
        table_by = "day" if by == "month" else by
        for s, wh, kq, nmiss, n in _grouped(conn, table_by, cond, params, whole[0][0],
                                            whole[-1][1]):
            cell = acc.get(floor_period(s, by, tz) if by == "month" else s)
            if cell is not None:
                _add(cell, wh, kq, nmiss, n)
    for p, e in plist:
        if p < start or e > end:
            for _k, wh, kq, nmiss, n in sums(conn, cond, params, max(p, start), min(e, end),
                                             per_source=False):
                _add(acc[p], wh, kq, nmiss, n)
    rows = []
    total = 0.0
    worst_known, any_missing = None, False
    for p, e in plist:
        wh, kq, nmiss, n = acc[p]
        a, b = max(p, start), min(e, end)
        q = combine_quality(kq, nmiss > 0)
        expected = (b - a) // 900 * max(nsrc, 1)
        cov = min(1.0, n / expected) if expected else 0.0
        # rounded to the µWh: splitting in proportion to time leaves float noise
        # (60.00000000000001) that integrators comparing totals should not see
        rows.append({"start": a, "end": b, "local": iso_local(a, tz), "wh": round(wh, 6),
                     "quality": QUALITY_NAMES[q], "coverage": round(cov, 4),
                     "clipped": (a, b) != (p, e)})
        total += wh
        if kq is not None and (worst_known is None or kq > worst_known):
            worst_known = kq
        any_missing = any_missing or q == MISSING or nmiss > 0
    return {"selection": label, "by": by, "timezone": tz, "start": start, "end": end,
            "total_wh": round(total, 6), "quality": QUALITY_NAMES[combine_quality(worst_known, any_missing)],
            "rows": rows}


def sum_by_source(conn: sqlite3.Connection, cond: str, params: list, start: float, end: float
                  ) -> dict[str, list]:
    """Energy per source over ``[start, end)`` (15-minute boundaries, else ValueError):
    ``{source: [wh, known_max_q, any_missing, n]}``.

    Whole local days come from the day roll-up, whole hours from the hour roll-up, the rest
    from the 15-minute buckets (so the answer is exact to the bucket and fast over a year).
    """
    lo, hi = check_grain(start, "from"), check_grain(end, "to")
    out: dict[str, list] = {}
    for src, wh, kq, nmiss, n in sums(conn, cond, params, lo, hi):
        cell = out.setdefault(src, [0.0, None, 0, 0])
        _add(cell, wh, kq, nmiss, n)
    for cell in out.values():
        cell[2] = cell[2] > 0
    return out


def _round6(x: float | None) -> float | None:
    return None if x is None else round(x, 6)


# (table, length of a row in s; days: up to 25 h) from the finest: buckets may be pruned, hour
# and day roll-ups are kept
_GRAINS = (("buckets", 900), ("energy_hour", 3600), ("energy_day", 90000))


def _complete_span(conn: sqlite3.Connection, src: str, lo: int, hi: int, tz: str
                   ) -> tuple[int, int] | None:
    """The part of ``[lo, hi)`` where ``src``'s energy is complete, or None without data in it.

    Data before ``lo`` (after ``hi``) means the delta chain crosses the edge, so the source
    covers it; otherwise its first and last rows in the window are partial (they hold the
    energy after its first / before its last reading only) and are left out. The finest table
    that has rows answers for each end (roll-ups stand in for pruned buckets).
    """
    def one(sql: str, *args: Any) -> Any:
        row = conn.execute(sql, (src, *args)).fetchone()
        return row[0] if row else None

    rows = [(t, n) for t, n in _GRAINS
            if one(f"SELECT 1 FROM {t} WHERE source = ? AND start < ? AND start > ? LIMIT 1",
                   hi, lo - n)]
    if not rows:
        return None
    day0 = floor_period(lo, "day", tz)  # a day row before lo's day ends at or before lo
    before = any(one(f"SELECT 1 FROM {t} WHERE source = ? AND start + ? <= ? LIMIT 1", n, lo)
                 for t, n in _GRAINS[:2]) or one(
        "SELECT 1 FROM energy_day WHERE source = ? AND start < ? LIMIT 1", day0)
    after = any(one(f"SELECT 1 FROM {t} WHERE source = ? AND start >= ? LIMIT 1", hi)
                for t, _n in _GRAINS)
    a, b = lo, hi
    if not before:  # complete from the end of its first row in the window, whichever table
        ends = []
        for t, n in rows:
            first = one(f"SELECT MIN(start) FROM {t} WHERE source = ? AND start < ? AND start > ?",
                        hi, lo - n)
            ends.append(next_period(first, "day", tz) if t == "energy_day" else first + n)
        a = max(lo, -(-min(ends) // GRAIN_S) * GRAIN_S)
    if not after:  # complete up to the start of its last row in the window
        b = min(hi, max(lo, max(one(f"SELECT MAX(start) FROM {t} WHERE source = ? AND start < ?",
                                    hi) for t, _n in rows)))
    return a, b


def circuit_check(conn: sqlite3.Connection, cabinet: str, start: float, end: float) -> dict:
    """Compare the cabinet meter(s) with the sum of its luminaire nodes over the part of
    ``[start, end)`` (15-minute boundaries) that every one of them with data covers.

    A meter polled every few seconds runs ahead of nodes reporting every few minutes: over an
    open window the meter would count energy the nodes have not reported yet. So the check is
    made over ``compared = {start, end}``: from the latest first complete quarter hour to the
    earliest last one of the sources with data in the window (None when they share none, or
    when the cabinet has no meter or no node: then each side is summed over the whole window).
    Returns ``{cabinet, start, end, compared, nodes, nodes_wh, meters: [{id, wh, quality}],
    meter_wh, unaccounted_wh, unaccounted_pct, quality}``: ``unaccounted_wh`` = meter - nodes
    (cable losses, node metering error, or consumption that is not ours); None without a meter.
    """
    lo, hi = check_grain(start, "from"), check_grain(end, "to")
    ncond, nparams, _ = selection(cabinet=cabinet, kind="node")
    mcond, mparams, _ = selection(cabinet=cabinet, kind="meter")
    tz = site_tz(conn)
    n_nodes = _count_sources(conn, ncond, nparams)
    node_ids = [r[0] for r in conn.execute(f"SELECT id FROM nodes WHERE {on_nodes(ncond)}", nparams)]
    meter_ids = [r[0] for r in conn.execute(
        "SELECT id FROM nodes WHERE kind = 'meter' AND cabinet = ? ORDER BY id", (cabinet,))]
    if not meter_ids or not node_ids:  # nothing to compare: each side over the whole window
        compared = None
        nodes = sum_by_source(conn, ncond, nparams, lo, hi)
        meters = sum_by_source(conn, mcond, mparams, lo, hi)
    else:
        spans = [sp for sp in (_complete_span(conn, s, lo, hi, tz) for s in node_ids + meter_ids)
                 if sp is not None]
        a = max((sp[0] for sp in spans), default=lo)
        b = min((sp[1] for sp in spans), default=hi)
        compared = {"start": a, "end": b} if spans and b > a else None
        nodes = sum_by_source(conn, ncond, nparams, a, b) if compared else {}
        meters = sum_by_source(conn, mcond, mparams, a, b) if compared else {}
    nodes_wh = sum(c[0] for c in nodes.values())
    worst, miss = None, len(nodes) < n_nodes
    for c in list(nodes.values()) + list(meters.values()):
        if c[1] is not None and (worst is None or c[1] > worst):
            worst = c[1]
        miss = miss or c[2]
    mlist = []
    for mid in meter_ids:
        c = meters.get(mid)
        mlist.append({"id": mid, "wh": round(c[0], 6) if c else None,
                      "quality": QUALITY_NAMES[combine_quality(c[1], c[2])] if c else "missing"})
    meter_wh = sum(c[0] for c in meters.values()) if meters else None
    unacc = None if meter_wh is None else meter_wh - nodes_wh
    pct = None if unacc is None or not meter_wh else round(100.0 * unacc / meter_wh, 3)
    r6 = _round6  # µWh, as energy(): sums over day/hour/bucket pieces leave float noise
    return {"cabinet": cabinet, "start": lo, "end": hi, "compared": compared, "nodes": n_nodes,
            "nodes_wh": r6(nodes_wh), "meters": mlist, "meter_wh": r6(meter_wh),
            "unaccounted_wh": r6(unacc), "unaccounted_pct": pct,
            "quality": QUALITY_NAMES[combine_quality(worst, miss or meter_wh is None)]}
