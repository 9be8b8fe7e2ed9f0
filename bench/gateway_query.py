"""Latency of the energy queries (`slgw energy`, savings, circuit check) over one year of data
for 2,134 nodes (one town's real programme size).

    .venv/bin/python bench/gateway_query.py [--nodes 2134] [--days 365] [--repeat 5]

What is generated (directly into SQLite, in the gateway's own schema, in about a minute):
- 2,134 luminaire nodes in 40 cabinets and 20 groups (rated 20-150 W), and 40 cabinet meters;
- the local-day roll-up (``energy_day``) for a full year for every node and meter
  (the table a year query reads): 365 x 2,174 rows;
- the UTC-hour roll-up for the last 31 days and the 15-minute buckets for the last 7 days
  (a full year of buckets would be 75 M rows; queries over long ranges never read them:
  ``sum_by_source`` takes whole days from the day roll-up and only the partial days at the edges
  from the buckets).
Data are made the way the rebuild writes them (the rebuild itself is measured by the ingest
benchmark and tested for equality with a full rebuild).

Baselines measured in the same run: one bare ``SELECT SUM(wh)`` over the year's day rows of every
node (the floor for any site-wide year query), and the same site total computed from 15-minute buckets, measured
over the 7 days of buckets and scaled to a year (what a query without roll-ups would cost).
"""

from __future__ import annotations

import argparse
import math
import os
import random
import sqlite3
import statistics
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from gateway.config import parse_time  # noqa: E402
from gateway.energy import circuit_check, energy, savings  # noqa: E402
from gateway.energy.periods import next_period  # noqa: E402
from gateway.energy.sun import night_seconds  # noqa: E402
from gateway.store.schema import migrate  # noqa: E402

TZ = "Europe/Paris"
LAT, LON = 48.85, 2.35
YEAR0 = parse_time("2025-01-01T00:00:00+01:00")


def generate(path: str, n_nodes: int, days: int) -> tuple[float, dict]:
    """Fill a fresh database. Returns (end of data, counts)."""
    rnd = random.Random(2134)
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = OFF")  # generation only; the gateway uses FULL
    migrate(conn)
    conn.execute("INSERT INTO meta VALUES ('rollup_tz', ?)", (TZ,))
    conn.execute("BEGIN")
    nodes = []
    for i in range(n_nodes):
        nid = f"sl-{i:05d}"
        rated = rnd.choice([20, 30, 40, 60, 80, 100, 150])
        nodes.append((nid, f"cab-{i % 40:02d}", f"grp-{i % 20:02d}", rated))
    conn.executemany("INSERT INTO nodes(id, kind, cabinet, grp, rated_w, modbus_slot) "
                     "VALUES (?, 'node', ?, ?, ?, ?)",
                     [(*n, i) for i, n in enumerate(nodes)])
    meters = [(f"meter-{c:02d}", f"cab-{c:02d}") for c in range(40)]
    conn.executemany("INSERT INTO nodes(id, kind, cabinet) VALUES (?, 'meter', ?)", meters)
    # local days and their night hours at the site
    day_starts = [int(YEAR0)]
    for _ in range(days):
        day_starts.append(next_period(day_starts[-1], "day", TZ))
    night_h = [night_seconds(a, b, LAT, LON) / 3600 for a, b in zip(day_starts[:-1], day_starts[1:], strict=True)]
    end = day_starts[-1]
    # quarter hours per local day (92 and 100 on the daylight-saving days), as the rebuild writes
    n_q = [(b - a) // 900 for a, b in zip(day_starts[:-1], day_starts[1:], strict=True)]
    cab_day: dict[tuple[str, int], float] = {}
    rows = []
    for nid, cab, _grp, rated in nodes:
        dim = rnd.uniform(0.35, 0.7)  # the dimming programme's average level
        for d, h, n in zip(day_starts[:-1], night_h, n_q, strict=True):
            wh = rated * h * dim * rnd.uniform(0.95, 1.05) + 0.8 * 24  # + controller standby
            rows.append((nid, d, wh, 0, n))
            cab_day[(cab, d)] = cab_day.get((cab, d), 0.0) + wh
    for mid, cab in meters:
        for d, n in zip(day_starts[:-1], n_q, strict=True):
            rows.append((mid, d, cab_day[(cab, d)] * 1.04, 0, n))  # 4 % cable losses
    conn.executemany("INSERT INTO energy_day VALUES (?, ?, ?, ?, ?)", rows)
    n_day = len(rows)
    # hours for the last 31 days, buckets for the last 7 (nodes and meters)
    sources = [(n[0], n[3]) for n in nodes] + [(m[0], 40 * 60.0) for m in meters]
    h0 = end - 31 * 86400
    rows = [(sid, h, rated * 0.5, 0, 4) for sid, rated in sources for h in range(h0, end, 3600)]
    conn.executemany("INSERT INTO energy_hour VALUES (?, ?, ?, ?, ?)", rows)
    n_hour = len(rows)
    b0 = end - 7 * 86400
    rows = [(sid, b, rated * 0.125, "measured") for sid, rated in sources
            for b in range(b0, end, 900)]
    conn.executemany("INSERT INTO buckets VALUES (?, ?, ?, ?)", rows)
    n_b = len(rows)
    conn.execute("COMMIT")
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.execute("ANALYZE")
    conn.close()
    return end, {"energy_day": n_day, "energy_hour": n_hour, "buckets": n_b}


def _refused(fn) -> dict:
    """Run a query the gateway must refuse; the answer is the refusal (issue 16: the 37-year
    15-minute query once took 12.5 s and 200 MB)."""
    try:
        out = fn()
    except ValueError as exc:
        return {"refused": str(exc)}
    return {"refused": None, **out}


def timed(fn, repeat: int) -> tuple[float, object]:
    out = None
    ts = []
    for _ in range(repeat):
        t = time.perf_counter()
        out = fn()
        ts.append(time.perf_counter() - t)
    return statistics.median(ts) * 1000, out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--nodes", type=int, default=2134)
    ap.add_argument("--days", type=int, default=365)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--db", help="keep the generated database at this path")
    a = ap.parse_args()
    path = a.db or os.path.join(tempfile.mkdtemp(prefix="slgw-qbench-"), "year.db")
    if os.path.exists(path):
        os.unlink(path)
    t = time.perf_counter()
    end, counts = generate(path, a.nodes, a.days)
    start = YEAR0
    print(f"generated {a.nodes} nodes + 40 meters, {a.days} days: "
          + ", ".join(f"{k} {v:,} rows" for k, v in counts.items())
          + f" in {time.perf_counter() - t:.0f} s ({os.path.getsize(path) / 1e6:.0f} MB)")
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA query_only = ON")
    cases = [
        ("site, year by day (slgw energy)", lambda: energy(conn, start=start, end=end, by="day")),
        ("site, year by month", lambda: energy(conn, start=start, end=end, by="month")),
        ("site, whole data range (no --from/--to)", lambda: energy(conn, by="day")),
        ("group (107 nodes), year by day", lambda: energy(conn, group="grp-03", start=start, end=end)),
        ("cabinet (54 nodes), year by month", lambda: energy(conn, cabinet="cab-07", start=start,
                                                              end=end, by="month")),
        ("one node, year by day", lambda: energy(conn, node="sl-01234", start=start, end=end)),
        ("site, last 31 days by hour", lambda: energy(conn, start=end - 31 * 86400, end=end,
                                                       by="hour")),
        ("site, last day by 15 min", lambda: energy(conn, start=end - 86400, end=end, by="15min")),
        ("one node, last 7 days by 15 min", lambda: energy(conn, node="sl-00042",
                                                            start=end - 7 * 86400, end=end,
                                                            by="15min")),
        ("savings, site, year (per node/cabinet)", lambda: savings(
            conn, start=start + 3600, end=end - 1800, latitude=LAT, longitude=LON)),
        ("circuit check, one cabinet, year", lambda: circuit_check(conn, "cab-07", start + 3600,
                                                                   end - 1800)),
        ("site, 17:00-21:00 by day (one clipped row)", lambda: energy(
            conn, start=end - 86400 + 16 * 3600, end=end - 86400 + 20 * 3600, by="day")),
        ("one node, 37 years by 15 min (refused)", lambda: _refused(lambda: energy(
            conn, node="sl-00042", start=start, end=start + 37 * 365 * 86400, by="15min"))),
        ("one node, 37 years by day", lambda: energy(conn, node="sl-00042", start=start,
                                                     end=start + 37 * 365 * 86400, by="day")),
    ]
    floor_ms, _ = timed(lambda: conn.execute(
        "SELECT SUM(wh) FROM energy_day WHERE source IN (SELECT id FROM nodes WHERE kind = 'node') "
        "AND start >= ? AND start < ?", (start, end)).fetchone(), a.repeat)
    wk_ms, _ = timed(lambda: conn.execute("SELECT start, SUM(wh) FROM buckets WHERE source IN "
                                          "(SELECT id FROM nodes WHERE kind = 'node') GROUP BY start"
                                          ).fetchall(), max(1, a.repeat // 2))
    naive_year_ms = wk_ms * a.days / 7
    print(f"baselines: one bare SUM over the year's day rows of every node {floor_ms:.0f} ms; "
          f"site by day from "
          f"15-min buckets: {wk_ms:.0f} ms for 7 days -> ~{naive_year_ms / 1000:.1f} s for a year")
    print(f"{'query':44s} {'median ms':>10s}  {'x SUM':>7s}  result")
    for name, fn in cases:
        ms, out = timed(fn, a.repeat)
        if out.get("refused"):
            res = "refused: " + out["refused"][:60] + "..."
        elif "total_wh" in out:
            res = f"{out['total_wh'] / 1000:,.0f} kWh, {len(out['rows'])} rows, {out['quality']}"
        elif "site" in out:
            res = (f"saved {out['site']['saved_pct']} % of {out['site']['baseline_wh'] / 1e6:,.0f} MWh, "
                   f"coverage {out['site']['coverage']}")
        else:
            res = f"unaccounted {out['unaccounted_pct']} % over {out['compared']}"
        print(f"{name:44s} {ms:10.1f}  {ms / floor_ms:7.1f}  {res}")
    ms, _ = timed(lambda: energy(conn, start=start, end=end, by="day"), a.repeat)
    print(f"year query vs no roll-ups: {naive_year_ms / ms:.0f}x faster")
    conn.close()
    if not math.isfinite(ms):
        raise SystemExit(1)


if __name__ == "__main__":
    main()
