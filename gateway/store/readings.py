"""Raw readings: validation and the idempotent insert, run inside the store's writer.

Owns ``validate_report`` (what a storable report is), ``ingest_fn`` (the write function that
``Store.ingest_reports`` queues) and ``ensure_source`` (the node/meter row, with its stable
Modbus slot).

A report is a dict ``{seq, t, wh, w, level, on_time, faults, rel_time}`` as returned by
``protocol.report.parse_send``; only ``seq``, ``t`` and ``wh`` are required. Meters fed by the
Modbus poller use the same shape: ``seq`` must grow and never repeat per source (the poll time
in milliseconds is a good choice), ``wh`` is the cumulative import energy in Wh.

Time decisions: ``rel_time`` true or a negative ``t`` means "seconds before receipt"
(SPEC §3.1), resolved against ``received_at``. A ``t`` that is not plausible (before 2020 or
more than a day after the gateway's clock) comes from a node with a broken clock; the report is
kept (its cumulative Wh is still right) with ``t = received_at`` and marked rel_time, so its
buckets are "estimated". Nothing is dropped for bad time.
"""

from __future__ import annotations

import math
import sqlite3
from dataclasses import dataclass
from itertools import chain
from typing import Any

T_MIN = 1_577_836_800.0  # 2020-01-01: no node report is older than the project
FUTURE_SLACK_S = 86400.0
MAX_SEQ = 2**63 - 1
_NUMBER = (int, float)  # exact types: bool is an int subclass, not a number here


@dataclass
class IngestResult:
    """Outcome of one ``ingest_reports`` call: reports newly stored, and duplicates ignored."""

    stored: int
    duplicates: int


def _num(r: dict, key: str, lo: float | None = None, hi: float | None = None,
         required: bool = False) -> float | None:
    v = r.get(key)
    if v is None:
        if required:
            raise ValueError(f"report without '{key}'")
        return None
    if isinstance(v, bool) or not isinstance(v, int | float):
        raise ValueError(f"report '{key}' must be a number, got {type(v).__name__}")
    if not math.isfinite(v):
        raise ValueError(f"report '{key}' is not finite")
    if lo is not None and v < lo or hi is not None and v > hi:
        raise ValueError(f"report '{key}' = {v} out of range [{lo}, {hi}]")
    return v


def validate_report(r: Any, received_at: float) -> tuple:
    """Check one report and return the readings row (without source).

    Returns ``(seq, t, wh, w, level, on_time, faults, rel_time, received_at)``.
    Raises ValueError naming the field for a missing, non-numeric or out-of-range value.
    """
    # The common case first, with the same checks inlined: a parser's complete report with a
    # plausible absolute time (backlog packs make this a per-report cost). Anything else,
    # including every invalid value (nan and inf fail the range tests), takes the full path,
    # which names the bad field.
    if type(r) is dict and r.get("rel_time") is False:
        seq, t, wh = r.get("seq"), r.get("t"), r.get("wh")
        w, level, on_time, faults = r.get("w"), r.get("level"), r.get("on_time"), r.get("faults")
        if (type(seq) is int and 0 <= seq <= MAX_SEQ
                and type(t) in _NUMBER and T_MIN <= t <= received_at + FUTURE_SLACK_S
                and type(wh) in _NUMBER and 0 <= wh <= 1e15
                and type(w) in _NUMBER and -1e7 <= w <= 1e7
                and type(level) in _NUMBER and 0 <= level <= 100
                and type(on_time) in _NUMBER and 0 <= on_time <= 1e12
                and type(faults) is int and 0 <= faults < 2**32):
            return (seq, float(t), float(wh), w, level, on_time, faults, 0, received_at)
    if not isinstance(r, dict):
        raise ValueError("report must be a dict")
    seq = r.get("seq")
    if isinstance(seq, bool) or not isinstance(seq, int) or not 0 <= seq <= MAX_SEQ:
        raise ValueError("report 'seq' must be an integer 0..2^63-1")
    t = _num(r, "t", required=True)
    wh = _num(r, "wh", 0, 1e15, required=True)
    w = _num(r, "w", -1e7, 1e7)
    level = _num(r, "level", 0, 100)
    on_time = _num(r, "on_time", 0, 1e12)
    faults = r.get("faults")
    if faults is not None and (isinstance(faults, bool) or not isinstance(faults, int)
                               or not 0 <= faults < 2**32):
        raise ValueError("report 'faults' must be an integer 0..2^32-1")
    rel = bool(r.get("rel_time"))
    if rel and t <= 0 or t < 0:
        t, rel = received_at + t, True
    elif rel:
        pass  # already resolved by the parser against its own receive time
    if not (T_MIN <= t <= received_at + FUTURE_SLACK_S):
        t, rel = received_at, True
    return (seq, float(t), float(wh), w, level, on_time, faults or 0, int(rel), received_at)


# A new node's Modbus slot: max + 1, assigned once and never changed (issue 5's bridge map).
_NEXT_SLOT = "(SELECT COALESCE(MAX(modbus_slot), -1) + 1 FROM nodes)"
_DIRTY = ("INSERT INTO dirty(source, t_from, t_to) VALUES (?, ?, ?) ON CONFLICT(source) DO "
          "UPDATE SET t_from = MIN(t_from, excluded.t_from), t_to = MAX(t_to, excluded.t_to)")


def ensure_source(conn: sqlite3.Connection, source: str, kind: str = "node",
                  now: float | None = None) -> None:
    """Create the source's row if missing. Nodes get the next free Modbus slot (max + 1)."""
    if kind == "node":
        conn.execute("INSERT OR IGNORE INTO nodes(id, kind, created_at, modbus_slot) VALUES "
                     f"(?, 'node', ?, {_NEXT_SLOT})", (source, now))
    else:
        conn.execute("INSERT OR IGNORE INTO nodes(id, kind, created_at) VALUES (?, ?, ?)",
                     (source, kind, now))


def mark_dirty(conn: sqlite3.Connection, source: str, t_from: float, t_to: float) -> None:
    """Record that the source's buckets over [t_from, t_to] must be rebuilt."""
    conn.execute(_DIRTY, (source, t_from, t_to))


# Creates the source's row on its first report (nodes get the next Modbus slot) and moves the
# live columns forward only: a late, older report (lower seq) never overwrites a newer state.
_LIVE = ("INSERT INTO nodes(id, kind, created_at, modbus_slot, last_seq, last_report, wh, power_w, "
         f"level, on_time, faults) VALUES (?1, ?2, ?3, CASE WHEN ?2 = 'node' THEN {_NEXT_SLOT} END, "
         "?4, ?5, ?6, ?7, ?8, ?9, ?10) "
         "ON CONFLICT(id) DO UPDATE SET last_seq = excluded.last_seq, "
         "last_report = excluded.last_report, wh = excluded.wh, "
         "power_w = COALESCE(excluded.power_w, power_w), level = COALESCE(excluded.level, level), "
         "on_time = COALESCE(excluded.on_time, on_time), faults = excluded.faults "
         "WHERE nodes.last_seq IS NULL OR nodes.last_seq <= excluded.last_seq")


class IngestWrite:
    """One ``ingest_reports`` call as a write function.

    Called alone (``fn(conn)``) it stores its rows; the store's writer also merges all the
    IngestWrites of a commit group with ``ingest_many`` (one statement for the live columns and
    one for the dirty marks of the whole group instead of several per call).
    """

    __slots__ = ("source", "rows", "kind", "now")

    def __init__(self, source: str, rows: list[tuple], kind: str, now: float) -> None:
        self.source, self.rows, self.kind, self.now = source, rows, kind, now

    def __call__(self, conn: sqlite3.Connection) -> IngestResult:
        return ingest_many(conn, [self])[0]


# Rows go in with multi-row INSERTs: Python's sqlite3 releases and retakes the GIL around every
# sqlite3_step, i.e. per row with executemany, and each retake waits for the busy event loop to
# let go (a backlog group of 32 packs is ~350 rows). One statement per _CHUNK rows instead.
_INSERT_HEAD = ("INSERT OR IGNORE INTO readings(source, seq, t, wh, w, level, on_time, faults, "
                "rel_time, received_at) VALUES ")
_CHUNK = 32  # 320 parameters; statements for 1.._CHUNK rows fit sqlite3's statement cache
_INSERT_SQL = {n: _INSERT_HEAD + ",".join(["(?,?,?,?,?,?,?,?,?,?)"] * n) for n in range(1, _CHUNK + 1)}


def _insert_rows(conn: sqlite3.Connection, rows: list[tuple]) -> int:
    """Insert (source, *row) tuples, ignoring duplicates; return how many were new."""
    before = conn.total_changes
    for i in range(0, len(rows), _CHUNK):
        chunk = rows[i:i + _CHUNK]
        conn.execute(_INSERT_SQL[len(chunk)], list(chain.from_iterable(chunk)))
    return conn.total_changes - before


def ingest_many(conn: sqlite3.Connection, writes: list[IngestWrite]) -> list[IngestResult]:
    """Store the rows of several ingest calls; INSERT OR IGNORE makes duplicates no-ops.

    Returns one IngestResult per call, in order.
    """
    rows = [(w.source, *row) for w in writes for row in w.rows]
    if len(writes) == 1:
        stored_each = [_insert_rows(conn, rows)]
    else:
        # All calls' rows at once; only if some were duplicates (rare: a node resending a pack
        # whose answer it missed) undo that and insert call by call to count them per call.
        conn.execute("SAVEPOINT ingest_all")
        if _insert_rows(conn, rows) == len(rows):
            conn.execute("RELEASE ingest_all")
            stored_each = [len(w.rows) for w in writes]
        else:
            conn.execute("ROLLBACK TO ingest_all")
            conn.execute("RELEASE ingest_all")
            stored_each = [_insert_rows(conn, [(w.source, *row) for row in w.rows]) for w in writes]
    results, live, dirty = [], [], []
    for w, stored in zip(writes, stored_each, strict=True):
        results.append(IngestResult(stored, len(w.rows) - stored))
        if stored:
            # Bounds over the whole pack (a superset of what was new): rebuilding a little more
            # than needed is harmless.
            # The live columns follow the newest report by seq (a clock may have stepped back).
            newest = max(w.rows, key=lambda r: r[0])
            seq, t, wh, pw, level, on_time, faults, _rel, _recv = newest
            live.append((w.source, w.kind, w.now, seq, t, wh, pw, level, on_time, faults))
            dirty.append((w.source, min(r[1] for r in w.rows), max(r[1] for r in w.rows)))
    if live:
        conn.executemany(_LIVE, live)  # one row per call: new nodes take max + 1 one by one
        _mark_dirty_many(conn, dirty)
    return results


_DIRTY_SQL: dict[int, str] = {}


def _mark_dirty_many(conn: sqlite3.Connection, marks: list[tuple]) -> None:
    """mark_dirty for several (source, t_from, t_to), in one statement per _CHUNK sources."""
    merged: dict[str, list] = {}
    for src, lo, hi in marks:  # one row per source: an upsert may not touch a row twice
        m = merged.get(src)
        if m is None:
            merged[src] = [src, lo, hi]
        else:
            m[1], m[2] = min(m[1], lo), max(m[2], hi)
    rows = list(merged.values())
    for i in range(0, len(rows), _CHUNK):
        chunk = rows[i:i + _CHUNK]
        sql = _DIRTY_SQL.get(len(chunk))
        if sql is None:
            sql = _DIRTY_SQL[len(chunk)] = _DIRTY.replace("(?, ?, ?)", ",".join(["(?,?,?)"] * len(chunk)))
        conn.execute(sql, list(chain.from_iterable(chunk)))


def ingest_fn(source: str, rows: list[tuple], kind: str, now: float) -> IngestWrite:
    """Build the write function that stores validated rows for one source (see IngestWrite)."""
    return IngestWrite(source, rows, kind, now)
