"""Rebuild a source's buckets and roll-ups from its raw readings (never patched in place).

Runs in the store's writer (``Store.refresh`` and the background aggregation loop), inside
the writer's transaction. For a dirty range ``[t_from, t_to]`` of one source:

1. widen it to whole buckets, from the bucket of the last reading before ``t_from`` to the
   bucket of the source's last reading (a new reading changes the deltas on both of its sides,
   and the reset/noise reading of every delta after it);
2. read the readings that determine those buckets, in seq order (plus a few earlier ones to
   warm up the noise rule), and the meter events;
3. replace the buckets of that range, then recompute the hour and local-day roll-ups that
   contain it from the buckets.
"""

from __future__ import annotations

import sqlite3
from collections import defaultdict

from .buckets import (
    BUCKET_S,
    MISSING,
    QUALITY_NAMES,
    bucket_quality,
    combine_quality,
    floor_bucket,
    intervals,
    spread,
)
from .periods import local_midnight, next_period

WARMUP_READINGS = 16


def _combine(rows: list[tuple[float, int]]) -> tuple[float, int]:
    """Sum energy and combine qualities of buckets (wh, rank) into one roll-up row."""
    known = [r[1] for r in rows if r[1] != MISSING]
    return sum(r[0] for r in rows), combine_quality(max(known, default=None),
                                                     len(known) < len(rows))


def rebuild_source(conn: sqlite3.Connection, source: str, t_from: float, t_to: float,
                   tz: str) -> tuple[int, int]:
    """Rebuild buckets and roll-ups of ``source`` affected by readings in ``[t_from, t_to]``.

    Returns the rebuilt bucket range ``(lo, hi)``.
    """
    # The buckets that change: those under the deltas that start or end at a reading in the
    # range, i.e. from its neighbours in time and, since the chain runs in seq order, in seq
    # (they differ only after a node's clock stepped back).
    row = conn.execute("SELECT MAX(t) FROM readings WHERE source = ? AND t < ?",
                       (source, t_from)).fetchone()
    a = row[0] if row[0] is not None else t_from
    row = conn.execute("SELECT MIN(t) FROM readings WHERE source = ? AND t > ?",
                       (source, t_to)).fetchone()
    b = row[0] if row[0] is not None else t_to
    smin, smax = conn.execute("SELECT MIN(seq), MAX(seq) FROM readings WHERE source = ? AND t >= ? "
                              "AND t <= ?", (source, t_from, t_to)).fetchone()
    if smin is not None:
        ta, tb = conn.execute(
            "SELECT MIN(t), MAX(t) FROM readings WHERE source = ? AND seq >= COALESCE((SELECT "
            "MAX(seq) FROM readings WHERE source = ?1 AND seq < ?2), ?2) AND seq <= COALESCE(("
            "SELECT MIN(seq) FROM readings WHERE source = ?1 AND seq > ?3), ?3)",
            (source, smin, smax)).fetchone()
        a, b = min(a, ta), max(b, tb)
    # A reading that arrives late can change how every later delta is read (the reset and
    # noise rules compare against the reading before, and a reset found earlier shifts the
    # reference), so the rebuild runs to the source's last reading. In the usual case the new
    # readings are the newest and this adds nothing; a late straggler costs the readings after it.
    row = conn.execute("SELECT MAX(t) FROM readings WHERE source = ? AND (t > ? OR seq > ?)",
                       (source, t_to, smax if smax is not None else 1 << 62)).fetchone()
    if row[0] is not None:
        b = max(b, row[0])
    lo = floor_bucket(a)
    hi = floor_bucket(b) + BUCKET_S
    # Readings that determine buckets [lo, hi): by time, from the last one at or before lo to the
    # first at or after hi; then, since the chain runs in seq order, the whole seq range they
    # span, the next one, and a warm-up before so the noise rule starts from the right reference.
    r = conn.execute("SELECT MAX(t) FROM readings WHERE source = ? AND t <= ?", (source, lo)
                     ).fetchone()[0]
    first = r if r is not None else lo
    r = conn.execute("SELECT MIN(t) FROM readings WHERE source = ? AND t >= ?", (source, hi)
                     ).fetchone()[0]
    last = r if r is not None else hi
    smin, smax = conn.execute("SELECT MIN(seq), MAX(seq) FROM readings WHERE source = ? AND t >= ? "
                              "AND t <= ?", (source, first, last)).fetchone()
    readings: list = []
    events: list = []
    if smin is not None:
        r = conn.execute("SELECT MIN(seq) FROM (SELECT seq FROM readings WHERE source = ? AND "
                         "seq < ? ORDER BY seq DESC LIMIT ?)", (source, smin, WARMUP_READINGS)
                         ).fetchone()[0]
        s_lo = r if r is not None else smin
        r = conn.execute("SELECT MIN(seq) FROM readings WHERE source = ? AND seq > ?",
                         (source, smax)).fetchone()[0]
        s_hi = r if r is not None else smax
        readings = conn.execute("SELECT t, wh, w, rel_time FROM readings WHERE source = ? AND "
                                "seq >= ? AND seq <= ? ORDER BY seq", (source, s_lo, s_hi)).fetchall()
        ts = [x[0] for x in readings]
        events = conn.execute("SELECT t, kind FROM meter_events WHERE source = ? AND t > ? AND "
                              "t <= ?", (source, min(ts), max(ts))).fetchall()
    cells = spread(intervals(readings, events), lo, hi)
    conn.execute("DELETE FROM buckets WHERE source = ? AND start >= ? AND start < ?",
                 (source, lo, hi))
    conn.executemany("INSERT INTO buckets(source, start, wh, quality) VALUES (?, ?, ?, ?)",
                     [(source, b, c[0], QUALITY_NAMES[bucket_quality(c)])
                      for b, c in sorted(cells.items())])
    rollup_source(conn, source, lo, hi, tz)
    return lo, hi


def rollup_source(conn: sqlite3.Connection, source: str, lo: int, hi: int, tz: str) -> None:
    """Recompute the hour and local-day roll-ups of ``source`` that overlap ``[lo, hi)``."""
    h_lo, h_hi = lo // 3600 * 3600, -(-hi // 3600) * 3600
    d_lo = local_midnight(lo, tz)
    d_hi = local_midnight(hi - 1, tz)
    d_hi = next_period(d_hi, "day", tz)
    span_lo, span_hi = min(h_lo, d_lo), max(h_hi, d_hi)
    rows = conn.execute("SELECT start, wh, quality FROM buckets WHERE source = ? AND start >= ? "
                        "AND start < ? ORDER BY start", (source, span_lo, span_hi)).fetchall()
    rank = {n: i for i, n in enumerate(QUALITY_NAMES)}
    hours: dict[int, list] = defaultdict(list)
    days: dict[int, list] = defaultdict(list)
    day_start, day_end = d_lo, next_period(d_lo, "day", tz)
    for start, wh, q in rows:
        cell = (wh, rank[q])
        if h_lo <= start < h_hi:
            hours[start // 3600 * 3600].append(cell)
        if d_lo <= start < d_hi:
            while start >= day_end:
                day_start, day_end = day_end, next_period(day_end, "day", tz)
            days[day_start].append(cell)
    conn.execute("DELETE FROM energy_hour WHERE source = ? AND start >= ? AND start < ?",
                 (source, h_lo, h_hi))
    conn.executemany("INSERT INTO energy_hour(source, start, wh, q, n) VALUES (?, ?, ?, ?, ?)",
                     [(source, h, *_combine(c), len(c)) for h, c in hours.items()])
    conn.execute("DELETE FROM energy_day WHERE source = ? AND start >= ? AND start < ?",
                 (source, d_lo, d_hi))
    conn.executemany("INSERT INTO energy_day(source, start, wh, q, n) VALUES (?, ?, ?, ?, ?)",
                     [(source, d, *_combine(c), len(c)) for d, c in days.items()])


def rebuild_dirty(conn: sqlite3.Connection, tz: str, max_sources: int = 500) -> int:
    """Rebuild up to ``max_sources`` dirty sources and clear their marks. Returns how many."""
    rows = conn.execute("SELECT source, t_from, t_to FROM dirty LIMIT ?", (max_sources,)).fetchall()
    for source, t_from, t_to in rows:
        rebuild_source(conn, source, t_from, t_to, tz)
        conn.execute("DELETE FROM dirty WHERE source = ?", (source,))
    return len(rows)


def dirty_sources(conn: sqlite3.Connection) -> list[str]:
    """The sources whose buckets wait for a rebuild, oldest mark first."""
    return [r[0] for r in conn.execute("SELECT source FROM dirty ORDER BY rowid")]


def rebuild_sources(conn: sqlite3.Connection, tz: str, sources: list[str]) -> int:
    """Rebuild the given sources that are still dirty (over their current marks) and clear
    the marks. Returns how many were rebuilt."""
    n = 0
    for source in sources:
        row = conn.execute("SELECT t_from, t_to FROM dirty WHERE source = ?", (source,)).fetchone()
        if row is None:  # rebuilt meanwhile
            continue
        rebuild_source(conn, source, row[0], row[1], tz)
        conn.execute("DELETE FROM dirty WHERE source = ?", (source,))
        n += 1
    return n


def rebuild_all(conn: sqlite3.Connection, tz: str) -> int:
    """Mark every source with readings dirty over its whole span and rebuild everything."""
    conn.execute("DELETE FROM buckets")
    conn.execute("DELETE FROM energy_hour")
    conn.execute("DELETE FROM energy_day")
    conn.execute("INSERT OR REPLACE INTO dirty(source, t_from, t_to) SELECT source, MIN(t), MAX(t) "
                 "FROM readings GROUP BY source")
    n = 0
    while (k := rebuild_dirty(conn, tz, 10**9)):
        n += k
    return n


def ensure_rollup_tz(conn: sqlite3.Connection, tz: str) -> None:
    """Make the local-day roll-ups follow ``tz``; rebuild them from buckets if the zone changed."""
    row = conn.execute("SELECT value FROM meta WHERE key = 'rollup_tz'").fetchone()
    if row is not None and row[0] == tz:
        return
    if row is not None:
        conn.execute("DELETE FROM energy_day")
        srcs = conn.execute("SELECT source, MIN(start), MAX(start) FROM buckets GROUP BY source"
                            ).fetchall()
        for source, lo, hi in srcs:
            rollup_source(conn, source, lo, hi + BUCKET_S, tz)
    conn.execute("INSERT OR REPLACE INTO meta(key, value) VALUES ('rollup_tz', ?)", (tz,))
