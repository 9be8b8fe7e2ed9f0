"""Savings against a baseline, per luminaire, cabinet and site (the figure energy-performance
contracts are paid on).

Baselines:
- ``dusk-to-dawn``: each luminaire at its rated power, full level, every second of night
  (sunset to sunrise at the site) in the period: ``rated_w x night_hours``. A node without a
  rated power has no baseline and is listed apart (``without_baseline``), never counted as 0.
- ``reference``: each luminaire's measured energy in a reference period (before the dimming
  programme), per second of night, times the night of the period, so a winter reference is
  not compared with a summer month as if nights were equal.

Coverage (docs/energy.md §5): a baseline counts only the night seconds where the luminaire's
energy is known (a 15-minute bucket of it exists), so a night without data is never "saved".
``coverage`` is the fraction of the baseline's night hours with data, per luminaire, cabinet
and site; below ``min_coverage`` (``[savings] min_coverage``) ``saved_pct`` is withheld (None)
and ``withheld`` says why. Totals (cabinet, site) add up only luminaires that have a baseline.
"""

from __future__ import annotations

import json
import sqlite3
from bisect import bisect_right
from typing import Any

from .buckets import QUALITY_NAMES, combine_quality
from .periods import next_period
from .query import on_nodes, selection, site_tz, sum_by_source
from .spans import check_grain, require_selection, span_parts
from .sun import night_intervals

DEFAULT_MIN_COVERAGE = 0.9


class _Nights:
    """Night seconds inside any span, from the sorted, disjoint dusk-to-dawn intervals."""

    def __init__(self, nights: list[tuple[float, float]]):
        self.nights = nights
        self.starts = [n[0] for n in nights]

    def within(self, a: float, b: float) -> float:
        i = max(0, bisect_right(self.starts, a) - 1)
        tot = 0.0
        while i < len(self.nights) and self.nights[i][0] < b:
            lo, hi = max(a, self.nights[i][0]), min(b, self.nights[i][1])
            if hi > lo:
                tot += hi - lo
            i += 1
        return tot


def known_night(conn: sqlite3.Connection, cond: str, params: list, lo: int, hi: int,
                nights: list[tuple[float, float]]) -> dict[str, float]:
    """Per source, the night seconds of ``[lo, hi)`` where its energy is known.

    A quarter hour is known when the source has a bucket there that is not ``missing``. Whole
    days and hours whose roll-up holds every bucket, none worse than interpolated, count whole
    without reading their buckets; the other days and hours are read bucket by bucket. A source
    complete over a piece is counted in SQL (one row per source), so a year for 2,134
    luminaires costs one pass over the day roll-up.
    """
    tz = site_tz(conn)
    night = _Nights(nights)
    out: dict[str, float] = {}
    drill: dict[tuple[int, int], list[str]] = {}
    for table, a, b in span_parts(lo, hi, tz):
        grid: dict[int, tuple[int, float]] = {}  # row start -> (quarter hours, night s)
        p = a
        while p < b:
            e = {"buckets": p + 900, "energy_hour": p + 3600}.get(table) or next_period(p, "day", tz)
            grid[p] = ((e - p) // 900, night.within(p, e))
            p = e
        if table == "buckets":
            whole = "quality != 'missing'"
        else:
            usual = 96 if table == "energy_day" else 4
            odd = " ".join(f"WHEN {k} THEN {v[0]}" for k, v in grid.items() if v[0] != usual)
            whole = "q < 2 AND n = " + (f"CASE start {odd} ELSE {usual} END" if odd else str(usual))
        _known_piece(conn, table, a, b, cond, params, whole, grid, out)
        if table != "buckets":  # days and hours with a gap or a missing bucket: their buckets
            for src, s in conn.execute(f"SELECT source, start FROM {table} WHERE {cond} AND "
                                       f"start >= ? AND start < ? AND NOT ({whole})", [*params, a, b]):
                e = s + 3600 if table == "energy_hour" else next_period(s, "day", tz)
                drill.setdefault((s, e), []).append(src)
    for (a, b), srcs in drill.items():
        grid = {q: (1, night.within(q, q + 900)) for q in range(a, b, 900)}
        _known_piece(conn, "buckets", a, b, "source IN (SELECT value FROM json_each(?))",
                     [json.dumps(srcs)], "quality != 'missing'", grid, out)
    return out


def _known_piece(conn: sqlite3.Connection, table: str, a: int, b: int, cond: str, params: list,
                 whole: str, grid: dict[int, tuple[int, float]], out: dict[str, float]) -> None:
    """Add to ``out`` the night seconds of the rows of ``table`` in ``[a, b)`` that are whole."""
    rng = f"FROM {table} WHERE {cond} AND start >= ? AND start < ? AND {whole}"
    every = sum(v[1] for v in grid.values())
    some = []
    for src, n in conn.execute(f"SELECT source, COUNT(*) {rng} GROUP BY source", [*params, a, b]):
        if n == len(grid):  # the usual case: complete over the piece, counted in SQL
            out[src] = out.get(src, 0.0) + every
        else:
            some.append(src)
    if some:
        for src, s in conn.execute(f"SELECT source, start {rng} AND source IN (SELECT value FROM "
                                   "json_each(?))", [*params, a, b, json.dumps(some)]):
            out[src] = out.get(src, 0.0) + grid[s][1]


def _figures(baseline: float, actual: float, covered_s: float, night_s: float,
             min_coverage: float) -> dict[str, Any]:
    saved = baseline - actual
    cov = covered_s / night_s if night_s > 0 else None
    withheld = None
    if cov is None:
        withheld = "no night in the period: no baseline"
    elif cov < min_coverage:
        withheld = (f"coverage {cov:.1%} of the baseline's night hours is below [savings] "
                    f"min_coverage {min_coverage:.0%}")
    pct = round(100.0 * saved / baseline, 2) if baseline > 0 and withheld is None else None
    return {"baseline_wh": round(baseline, 6), "actual_wh": round(actual, 6),
            "saved_wh": round(saved, 6), "saved_pct": pct,
            "coverage": None if cov is None else round(cov, 4), "withheld": withheld}


def savings(conn: sqlite3.Connection, *, start: float, end: float, latitude: float | None = None,
            longitude: float | None = None, baseline: str | None = None,
            reference_from: float | None = None, reference_to: float | None = None,
            node: str | None = None, group: str | None = None, cabinet: str | None = None,
            min_coverage: float | None = None, config: Any = None) -> dict[str, Any]:
    """Savings of the selected luminaires over ``[start, end)`` (15-minute boundaries).

    ``config`` (a gateway.config.Config) supplies the site position and the ``[savings]``
    settings for any of latitude, longitude, baseline, reference_from/to, min_coverage not given.

    Returns ``{selection, baseline, start, end, night_hours, min_coverage, site: {baseline_wh,
    actual_wh, saved_wh, saved_pct, coverage, withheld, nodes}, cabinets: [{cabinet, ...}],
    nodes: [{id, cabinet, group, rated_w, quality, ...}], without_baseline: [ids]}``.
    Raises ValueError for an unknown baseline, a reference baseline without its period or a
    window off the 15-minute grain; UnknownSelection for an unknown node, group or cabinet.
    """
    if config is not None:
        from ..config import parse_time

        latitude = config.site.latitude if latitude is None else latitude
        longitude = config.site.longitude if longitude is None else longitude
        baseline = baseline or config.savings.baseline
        if min_coverage is None:
            min_coverage = config.savings.min_coverage
        if reference_from is None and config.savings.reference_from:
            reference_from = parse_time(config.savings.reference_from)
        if reference_to is None and config.savings.reference_to:
            reference_to = parse_time(config.savings.reference_to)
    baseline = baseline or "dusk-to-dawn"
    min_coverage = DEFAULT_MIN_COVERAGE if min_coverage is None else min_coverage
    if latitude is None or longitude is None:
        raise ValueError("savings need the site latitude and longitude")
    if baseline not in ("dusk-to-dawn", "reference"):
        raise ValueError('baseline must be "dusk-to-dawn" or "reference"')
    start, end = check_grain(start, "from"), check_grain(end, "to")
    if end <= start:
        raise ValueError("to must be after from")
    cond, params, label = selection(node, group, cabinet)
    require_selection(conn, node, group, cabinet, label)
    nights = night_intervals(start, end, latitude, longitude)
    night = sum(b - a for a, b in nights)
    actual = sum_by_source(conn, cond, params, start, end)
    known = known_night(conn, cond, params, start, end, nights)
    ref: dict[str, list] = {}
    ref_known: dict[str, float] = {}
    ref_nights: list[tuple[float, float]] = []
    if baseline == "reference":
        if reference_from is None or reference_to is None or reference_to <= reference_from:
            raise ValueError("the reference baseline needs reference_from < reference_to")
        rf, rt = check_grain(reference_from, "reference_from"), check_grain(reference_to, "reference_to")
        ref = sum_by_source(conn, cond, params, rf, rt)
        ref_nights = night_intervals(rf, rt, latitude, longitude)
        ref_known = known_night(conn, cond, params, rf, rt, ref_nights)
    nodes_meta = conn.execute(f"SELECT id, cabinet, grp, rated_w FROM nodes WHERE {on_nodes(cond)} "
                              "ORDER BY id", params).fetchall()
    out_nodes, without = [], []
    cab: dict[str | None, list[float]] = {}
    site = [0.0, 0.0, 0.0, 0.0, 0]  # baseline, actual, covered night s, night s, nodes
    for nid, cabname, grp, rated in nodes_meta:
        a = actual.get(nid, [0.0, None, True, 0])
        cov_s = known.get(nid, 0.0)
        row = {"id": nid, "cabinet": cabname, "group": grp, "rated_w": rated,
               "quality": QUALITY_NAMES[combine_quality(a[1], a[2])]}
        base = None
        if baseline == "dusk-to-dawn":
            base = rated * cov_s / 3600.0 if rated is not None else None
        else:
            r = ref.get(nid)
            ref_s = ref_known.get(nid, 0.0)
            row["reference_coverage"] = (round(ref_s / sum(b - a for a, b in ref_nights), 4)
                                         if ref_nights else None)
            base = r[0] * cov_s / ref_s if r is not None and ref_s > 0 else None
        if base is None:
            without.append(nid)
            row.update({"baseline_wh": None, "actual_wh": round(a[0], 6), "saved_wh": None,
                        "saved_pct": None, "coverage": round(cov_s / night, 4) if night else None,
                        "withheld": "no baseline"})
        else:
            row.update(_figures(base, a[0], cov_s, night, min_coverage))
            c = cab.setdefault(cabname, [0.0, 0.0, 0.0, 0.0, 0])
            for acc in (c, site):
                acc[0] += base
                acc[1] += a[0]
                acc[2] += cov_s
                acc[3] += night
                acc[4] += 1
        out_nodes.append(row)
    cabinets = [{"cabinet": k, "nodes": v[4], **_figures(v[0], v[1], v[2], v[3], min_coverage)}
                for k, v in sorted(cab.items(), key=lambda kv: (kv[0] is None, kv[0] or ""))]
    return {"selection": label, "baseline": baseline, "start": start, "end": end,
            "night_hours": round(night / 3600.0, 3), "min_coverage": min_coverage,
            "site": {"nodes": site[4], **_figures(site[0], site[1], site[2], site[3], min_coverage)},
            "cabinets": cabinets, "nodes": out_nodes, "without_baseline": without}
