"""Savings against a baseline, per luminaire, cabinet and site (the figure energy-performance
contracts are paid on).

Baselines:
- ``dusk-to-dawn``: each luminaire at its rated power, full level, every second of night
  (sunset to sunrise at the site) in the period: ``rated_w x night_hours``. A node without a
  rated power has no baseline and is listed apart (``without_baseline``), never counted as 0.
- ``reference``: each luminaire's measured energy in a reference period (before the dimming
  programme), scaled by night length: ``ref_wh x night(period) / night(reference)``, so a
  winter reference is not compared with a summer month as if nights were equal.
Totals (cabinet, site) add up only luminaires that have a baseline, actual against baseline.
"""

from __future__ import annotations

import sqlite3
from typing import Any

from .buckets import QUALITY_NAMES, combine_quality
from .query import on_nodes, selection, sum_by_source
from .sun import night_seconds


def _figures(baseline: float, actual: float) -> dict[str, Any]:
    saved = baseline - actual
    return {"baseline_wh": baseline, "actual_wh": actual, "saved_wh": saved,
            "saved_pct": round(100.0 * saved / baseline, 2) if baseline > 0 else None}


def savings(conn: sqlite3.Connection, *, start: float, end: float, latitude: float | None = None,
            longitude: float | None = None, baseline: str | None = None,
            reference_from: float | None = None, reference_to: float | None = None,
            node: str | None = None, group: str | None = None, cabinet: str | None = None,
            config: Any = None) -> dict[str, Any]:
    """Savings of the selected luminaires over ``[start, end)``.

    ``config`` (a gateway.config.Config) supplies the site position and the ``[savings]``
    settings for any of latitude, longitude, baseline, reference_from/to not given.

    Returns ``{baseline, start, end, night_hours, site: {baseline_wh, actual_wh, saved_wh,
    saved_pct, nodes}, cabinets: [{cabinet, ...}], nodes: [{id, cabinet, group, rated_w,
    quality, ...}], without_baseline: [ids]}``. Raises ValueError for an unknown baseline or a
    reference baseline without its period.
    """
    if config is not None:
        from ..config import parse_time

        latitude = config.site.latitude if latitude is None else latitude
        longitude = config.site.longitude if longitude is None else longitude
        baseline = baseline or config.savings.baseline
        if reference_from is None and config.savings.reference_from:
            reference_from = parse_time(config.savings.reference_from)
        if reference_to is None and config.savings.reference_to:
            reference_to = parse_time(config.savings.reference_to)
    baseline = baseline or "dusk-to-dawn"
    if latitude is None or longitude is None:
        raise ValueError("savings need the site latitude and longitude")
    if baseline not in ("dusk-to-dawn", "reference"):
        raise ValueError('baseline must be "dusk-to-dawn" or "reference"')
    if end <= start:
        raise ValueError("end must be after start")
    cond, params, label = selection(node, group, cabinet)
    night = night_seconds(start, end, latitude, longitude)
    actual = sum_by_source(conn, cond, params, start, end)
    ref: dict[str, list] = {}
    ref_night = 0.0
    if baseline == "reference":
        if reference_from is None or reference_to is None or reference_to <= reference_from:
            raise ValueError("the reference baseline needs reference_from < reference_to")
        ref = sum_by_source(conn, cond, params, reference_from, reference_to)
        ref_night = night_seconds(reference_from, reference_to, latitude, longitude)
    nodes_meta = conn.execute(f"SELECT id, cabinet, grp, rated_w FROM nodes WHERE {on_nodes(cond)} "
                              "ORDER BY id", params).fetchall()
    out_nodes, without = [], []
    cab: dict[str | None, list[float]] = {}
    site = [0.0, 0.0, 0]
    for nid, cabname, grp, rated in nodes_meta:
        a = actual.get(nid, [0.0, None, True, 0])
        if baseline == "dusk-to-dawn":
            base = rated * night / 3600.0 if rated is not None else None
        else:
            r = ref.get(nid)
            base = r[0] * night / ref_night if r is not None and ref_night > 0 else None
        row = {"id": nid, "cabinet": cabname, "group": grp, "rated_w": rated,
               "quality": QUALITY_NAMES[combine_quality(a[1], a[2])]}
        if base is None:
            without.append(nid)
            row.update({"baseline_wh": None, "actual_wh": a[0], "saved_wh": None,
                        "saved_pct": None})
        else:
            row.update(_figures(base, a[0]))
            c = cab.setdefault(cabname, [0.0, 0.0, 0])
            for acc in (c, site):
                acc[0] += base
                acc[1] += a[0]
                acc[2] += 1
        out_nodes.append(row)
    cabinets = [{"cabinet": k, "nodes": v[2], **_figures(v[0], v[1])}
                for k, v in sorted(cab.items(), key=lambda kv: (kv[0] is None, kv[0] or ""))]
    return {"selection": label, "baseline": baseline, "start": start, "end": end,
            "night_hours": round(night / 3600.0, 3),
            "site": {"nodes": site[2], **_figures(site[0], site[1])},
            "cabinets": cabinets, "nodes": out_nodes, "without_baseline": without}
