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
from typing import Any

T_MIN = 1_577_836_800.0  # 2020-01-01: no node report is older than the project
FUTURE_SLACK_S = 86400.0
MAX_SEQ = 2**63 - 1


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


def ensure_source(conn: sqlite3.Connection, source: str, kind: str = "node",
                  now: float | None = None) -> None:
    """Create the source's row if missing. Nodes get the next free Modbus slot (max + 1)."""
    if kind == "node":
        conn.execute("INSERT OR IGNORE INTO nodes(id, kind, created_at, modbus_slot) VALUES "
                     "(?, 'node', ?, (SELECT COALESCE(MAX(modbus_slot), -1) + 1 FROM nodes))",
                     (source, now))
    else:
        conn.execute("INSERT OR IGNORE INTO nodes(id, kind, created_at) VALUES (?, ?, ?)",
                     (source, kind, now))


def mark_dirty(conn: sqlite3.Connection, source: str, t_from: float, t_to: float) -> None:
    """Record that the source's buckets over [t_from, t_to] must be rebuilt."""
    conn.execute("INSERT INTO dirty(source, t_from, t_to) VALUES (?, ?, ?) ON CONFLICT(source) DO "
                 "UPDATE SET t_from = MIN(t_from, excluded.t_from), t_to = MAX(t_to, excluded.t_to)",
                 (source, t_from, t_to))


def ingest_fn(source: str, rows: list[tuple], kind: str, now: float):
    """Build the write function that stores validated rows for one source.

    The function inserts with ``INSERT OR IGNORE`` (a duplicate (source, seq) changes nothing),
    updates the node's live columns when the newest stored report is newer than what the node
    row holds, and marks the source dirty for re-aggregation. Returns IngestResult.
    """

    def fn(conn: sqlite3.Connection) -> IngestResult:
        ensure_source(conn, source, kind, now)
        stored = 0
        newest = None
        t_lo, t_hi = math.inf, -math.inf
        for row in rows:
            cur = conn.execute("INSERT OR IGNORE INTO readings(source, seq, t, wh, w, level, "
                               "on_time, faults, rel_time, received_at) VALUES (?,?,?,?,?,?,?,?,?,?)",
                               (source, *row))
            if cur.rowcount == 1:
                stored += 1
                t = row[1]
                t_lo, t_hi = min(t_lo, t), max(t_hi, t)
                if newest is None or t > newest[1]:
                    newest = row
        if newest is not None:
            _seq, t, wh, w, level, on_time, faults, _rel, _recv = newest
            conn.execute("UPDATE nodes SET last_report = ?, wh = ?, power_w = COALESCE(?, power_w), "
                         "level = COALESCE(?, level), on_time = COALESCE(?, on_time), faults = ? "
                         "WHERE id = ? AND (last_report IS NULL OR last_report <= ?)",
                         (t, wh, w, level, on_time, faults, source, t))
            mark_dirty(conn, source, t_lo, t_hi)
        return IngestResult(stored, len(rows) - stored)

    return fn
