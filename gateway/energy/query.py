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
from .periods import BY, floor_period, iso_local, next_period, periods

_Q15 = ("CASE quality WHEN 'measured' THEN 0 WHEN 'interpolated' THEN 1 "
        "WHEN 'estimated' THEN 2 ELSE 3 END")


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
               f"FROM (SELECT start, wh, {_Q15} AS q FROM buckets WHERE {cond} AND start >= ? "
               f"AND start < ?) GROUP BY start")
    else:
        table = "energy_hour" if by == "hour" else "energy_day"
        sql = (f"SELECT start, SUM(wh), MAX(CASE WHEN q < 3 THEN q END), SUM(q = 3), SUM(n) "
               f"FROM {table} WHERE {cond} AND start >= ? AND start < ? GROUP BY start")
    return conn.execute(sql, [*params, lo, hi]).fetchall()


def energy(conn: sqlite3.Connection, *, node: str | None = None, group: str | None = None,
           cabinet: str | None = None, start: float | None = None, end: float | None = None,
           by: str = "day") -> dict[str, Any]:
    """Energy of a selection over ``[start, end)`` by ``15min``, ``hour``, ``day`` or ``month``.

    ``start``/``end`` are Unix seconds, widened to whole periods (days and months are local to
    the site time zone); None means from the first / to the last data of the selection.
    Returns ``{selection, by, timezone, start, end, total_wh, quality, rows: [{start, end,
    local, wh, quality, coverage}]}``. Raises ValueError for a bad ``by`` or selection.
    """
    if by not in BY:
        raise ValueError(f"by must be one of {', '.join(BY)}")
    tz = site_tz(conn)
    cond, params, label = selection(node, group, cabinet)
    if start is None or end is None:
        lo, hi = conn.execute(f"SELECT MIN(start), MAX(start) FROM energy_day WHERE {cond}",
                              params).fetchone()
        if lo is None:
            return {"selection": label, "by": by, "timezone": tz, "start": start, "end": end,
                    "total_wh": 0.0, "quality": "missing", "rows": []}
        start = lo if start is None else start
        end = next_period(int(hi), "day", tz) if end is None else end
    if end <= start:
        raise ValueError("end must be after start")
    plist = periods(start, end, by, tz)
    lo, hi = plist[0][0], plist[-1][1]
    nsrc = 1 if node is not None else _count_sources(conn, cond, params)
    table_by = "day" if by == "month" else by
    acc: dict[int, list] = {p: [0.0, None, 0, 0] for p, _e in plist}
    for s, wh, kq, nmiss, n in _grouped(conn, table_by, cond, params, lo, hi):
        p = floor_period(s, by, tz) if by == "month" else s
        cell = acc.get(p)
        if cell is None:
            continue
        cell[0] += wh
        if kq is not None and (cell[1] is None or kq > cell[1]):
            cell[1] = kq
        cell[2] += nmiss
        cell[3] += n
    rows = []
    total = 0.0
    worst_known, any_missing = None, False
    for p, e in plist:
        wh, kq, nmiss, n = acc[p]
        q = combine_quality(kq, nmiss > 0)
        expected = (e - p) // 900 * max(nsrc, 1)
        cov = min(1.0, n / expected) if expected else 0.0
        # rounded to the µWh: splitting in proportion to time leaves float noise
        # (60.00000000000001) that integrators comparing totals should not see
        rows.append({"start": p, "end": e, "local": iso_local(p, tz), "wh": round(wh, 6),
                     "quality": QUALITY_NAMES[q], "coverage": round(cov, 4)})
        total += wh
        if kq is not None and (worst_known is None or kq > worst_known):
            worst_known = kq
        any_missing = any_missing or q == MISSING or nmiss > 0
    return {"selection": label, "by": by, "timezone": tz, "start": lo, "end": hi,
            "total_wh": round(total, 6), "quality": QUALITY_NAMES[combine_quality(worst_known, any_missing)],
            "rows": rows}


def sum_by_source(conn: sqlite3.Connection, cond: str, params: list, start: float, end: float
                  ) -> dict[str, list]:
    """Energy per source over ``[start, end)``: ``{source: [wh, known_max_q, any_missing, n]}``.

    Whole local days come from the day roll-up, the partial days at both ends from the
    15-minute buckets (so the answer is exact to the bucket and fast over a year).
    """
    tz = site_tz(conn)
    start, end = floor_period(start, "15min", tz), -(-int(end) // 900) * 900
    d0 = floor_period(start, "day", tz)
    if d0 < start:
        d0 = next_period(d0, "day", tz)
    d1 = floor_period(end, "day", tz)
    parts = []
    if d0 < d1:
        parts.append(("energy_day", d0, d1))
        parts += [("buckets", start, d0), ("buckets", d1, end)]
    else:
        parts.append(("buckets", start, end))
    out: dict[str, list] = {}
    for table, lo, hi in parts:
        if hi <= lo:
            continue
        if table == "buckets":
            sql = (f"SELECT source, SUM(wh), MAX(CASE WHEN q < 3 THEN q END), SUM(q = 3), "
                   f"COUNT(*) FROM (SELECT source, wh, {_Q15} AS q FROM buckets WHERE {cond} "
                   f"AND start >= ? AND start < ?) GROUP BY source")
        else:
            sql = (f"SELECT source, SUM(wh), MAX(CASE WHEN q < 3 THEN q END), SUM(q = 3), "
                   f"SUM(n) FROM energy_day WHERE {cond} AND start >= ? AND start < ? "
                   f"GROUP BY source")
        for src, wh, kq, nmiss, n in conn.execute(sql, [*params, lo, hi]):
            cell = out.setdefault(src, [0.0, None, False, 0])
            cell[0] += wh
            if kq is not None and (cell[1] is None or kq > cell[1]):
                cell[1] = kq
            cell[2] = cell[2] or nmiss > 0
            cell[3] += n
    return out


def circuit_check(conn: sqlite3.Connection, cabinet: str, start: float, end: float) -> dict:
    """Compare the cabinet meter(s) with the sum of its luminaire nodes over ``[start, end)``.

    Returns ``{cabinet, start, end, nodes, nodes_wh, meters: [{id, wh, quality}], meter_wh,
    unaccounted_wh, unaccounted_pct, quality}``: ``unaccounted_wh`` = meter - nodes (cable
    losses, node metering error, or consumption that is not ours); None without a meter.
    """
    ncond, nparams, _ = selection(cabinet=cabinet, kind="node")
    mcond, mparams, _ = selection(cabinet=cabinet, kind="meter")
    nodes = sum_by_source(conn, ncond, nparams, start, end)
    meters = sum_by_source(conn, mcond, mparams, start, end)
    n_nodes = _count_sources(conn, ncond, nparams)
    meter_ids = [r[0] for r in conn.execute(
        "SELECT id FROM nodes WHERE kind = 'meter' AND cabinet = ? ORDER BY id", (cabinet,))]
    nodes_wh = sum(c[0] for c in nodes.values())
    worst, miss = None, len(nodes) < n_nodes
    for c in list(nodes.values()) + list(meters.values()):
        if c[1] is not None and (worst is None or c[1] > worst):
            worst = c[1]
        miss = miss or c[2]
    mlist = []
    for mid in meter_ids:
        c = meters.get(mid)
        mlist.append({"id": mid, "wh": c[0] if c else None,
                      "quality": QUALITY_NAMES[combine_quality(c[1], c[2])] if c else "missing"})
    meter_wh = sum(c[0] for c in meters.values()) if meters else None
    unacc = None if meter_wh is None else meter_wh - nodes_wh
    pct = None if unacc is None or not meter_wh else round(100.0 * unacc / meter_wh, 3)
    return {"cabinet": cabinet, "start": start, "end": end, "nodes": n_nodes,
            "nodes_wh": nodes_wh, "meters": mlist, "meter_wh": meter_wh,
            "unaccounted_wh": unacc, "unaccounted_pct": pct,
            "quality": QUALITY_NAMES[combine_quality(worst, miss or meter_wh is None)]}
