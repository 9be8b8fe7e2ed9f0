"""The durable northbound outbox: SQL triggers that announce data in the transaction that
stores it, and the publisher's reads, acknowledgements and status.

Why triggers: the store has one writer (gateway/store/core.py) and several write paths (the
ingest of Sends and meter polls in gateway/store/readings.py, the bucket rebuild in
gateway/energy/rebuild.py, registrations). A trigger runs inside whatever transaction changes
the row, so an announcement is committed if and only if its data is, whoever wrote it, and no
write path has to know about MQTT. The triggers exist only while ``[mqtt] enabled`` (installed
at start, dropped at a start with it off), so a gateway without MQTT pays nothing.

What is announced (docs/northbound.md has the JSON schemas):
- a report, for every new row of ``readings`` (key ``r/NODE/SEQ``; duplicates are ignored by
  the ingest, so they announce nothing);
- a 15-minute energy bucket, when a rebuild inserts a bucket whose value or quality changed
  (key ``b/NODE/START``; a newer value replaces a pending older one, and goes at the end);
- the node's state, when its live columns or its exported energy change (key ``s/NODE``, one
  pending at most per node: the newest replaces the older);
- a fault change, when the node's fault flags change (key ``f/NODE/SEQ``).

Bound (``[mqtt] max_outbox``): the outbox holds at most that many rows (checked at every
``BOUND_EVERY``-th row, so up to that many more for a moment). When a new row goes past it, the OLDEST rows are dropped (whatever their kind: the newest data is what an
operator needs after a long outage, and every report carries the meter's cumulative Wh, so a
consumer loses resolution, not energy), counted in ``nb_stats.dropped`` and logged by the
publisher. Precisely: rows whose id is ``max_outbox`` or more below the newest id are dropped,
so the bound holds without counting rows (ids of replaced rows are not reused).
"""

from __future__ import annotations

import sqlite3
import time
from typing import Any

from protocol.lwm2m import FAULT_NAMES

# (julianday('now') - 2440587.5) * 86400: Unix seconds with sub-second resolution in SQLite
# 3.40 (unixepoch('subsec') needs 3.42). The gateway's real clock: "when it was queued".
_NOW = "((julianday('now') - 2440587.5) * 86400.0)"
_FAULT_VALUES = ", ".join(f"({bit}, '{name}')" for bit, name in FAULT_NAMES)


def _fault_names(expr: str) -> str:
    """SQL for the JSON array of fault names set in the integer ``expr``."""
    return (f"(SELECT json_group_array(column2) FROM (VALUES {_FAULT_VALUES}) "
            f"WHERE ({expr}) & column1)")


# The node state as sent: built when the row is published, from the node's row as it is then
# (the newest state is the one that matters, and building it at every report would cost the
# writer more than the rest of the outbox together). A state row's payload is '' in the table.
_STATE_JSON = f"""json_object(
    'type', 'state', 'node', n.id, 'kind', n.kind, 'group', n.grp, 'cabinet', n.cabinet,
    'level', n.level, 'power_w', n.power_w, 'meter_wh', n.wh,
    'energy_wh', COALESCE(e.exported_wh, 0), 'on_time', n.on_time, 'faults', n.faults,
    'fault_names', json({_fault_names('n.faults')}), 'seq', n.last_seq,
    't', n.last_report, 'fw', n.fw, 'lat', n.lat, 'lon', n.lon, 'rated_w', n.rated_w)"""


def _state_insert(node_expr: str) -> str:
    # DELETE + INSERT rather than INSERT OR REPLACE: a trigger's conflict clause is overridden
    # by the firing statement's (the ingest's upsert, INSERT OR IGNORE), so it cannot be relied on
    return (f"DELETE FROM nb_outbox WHERE key = 's/' || {node_expr}; "
            f"INSERT INTO nb_outbox(key, topic, payload, t, created_at) VALUES ("
            f"'s/' || {node_expr}, 'node/' || {node_expr} || '/state', '', NULL, {_NOW});")


def _fault_trigger(name: str, event: str, when: str, old: str) -> str:
    """A fault-change announcement: what is raised, cleared and active after ``NEW``."""
    prev = f"COALESCE({old}, 0)"
    return f"""CREATE TRIGGER {name} {event} WHEN {when} BEGIN
  INSERT INTO nb_outbox(key, topic, payload, t, created_at) VALUES (
    'f/' || NEW.id || '/' || COALESCE(NEW.last_seq, CAST(NEW.last_report AS INTEGER), 0),
    'node/' || NEW.id || '/fault',
    json_object('type', 'fault', 'node', NEW.id, 'seq', NEW.last_seq, 't', NEW.last_report,
      'faults', NEW.faults, 'previous', {prev},
      'raised', json({_fault_names(f'NEW.faults & ~{prev}')}),
      'cleared', json({_fault_names(f'{prev} & ~NEW.faults')}),
      'active', json({_fault_names('NEW.faults')})),
    NEW.last_report, {_NOW});
END"""


TRIGGERS: dict[str, str] = {
    # The report's JSON is built when it is published (_PENDING), from its readings row, which
    # never changes: the writer only pays for one small insert per report.
    "nb_report": f"""CREATE TRIGGER nb_report AFTER INSERT ON readings BEGIN
  INSERT INTO nb_outbox(key, topic, payload, t, created_at) VALUES (
    'r/' || NEW.source || '/' || NEW.seq, 'node/' || NEW.source || '/report', '', NEW.t, {_NOW});
END""",
    # A rebuild deletes a range of buckets and inserts it again: remember the old values so
    # the insert can tell what changed. Rows left by deletes that are not followed by an
    # insert (retention) are emptied by Outbox.housekeeping().
    "nb_bucket_del": """CREATE TRIGGER nb_bucket_del BEFORE DELETE ON buckets BEGIN
  INSERT OR REPLACE INTO nb_removed(source, start, wh, quality)
    VALUES (OLD.source, OLD.start, OLD.wh, OLD.quality);
END""",
    "nb_bucket_ins": f"""CREATE TRIGGER nb_bucket_ins AFTER INSERT ON buckets BEGIN
  INSERT OR IGNORE INTO nb_energy(source) VALUES (NEW.source);
  UPDATE nb_energy SET total_wh = total_wh + NEW.wh - COALESCE((SELECT wh FROM nb_removed
      WHERE source = NEW.source AND start = NEW.start), 0) WHERE source = NEW.source;
  DELETE FROM nb_outbox WHERE key = 'b/' || NEW.source || '/' || NEW.start
    AND NOT EXISTS (SELECT 1 FROM nb_removed WHERE source = NEW.source
      AND start = NEW.start AND wh = NEW.wh AND quality = NEW.quality);
  INSERT INTO nb_outbox(key, topic, payload, t, created_at)
    SELECT 'b/' || NEW.source || '/' || NEW.start, 'node/' || NEW.source || '/energy',
      json_object('type', 'energy', 'node', NEW.source, 'start', NEW.start,
        'end', NEW.start + 900, 'wh', NEW.wh, 'quality', NEW.quality),
      NEW.start, {_NOW}
    WHERE NOT EXISTS (SELECT 1 FROM nb_removed WHERE source = NEW.source
      AND start = NEW.start AND wh = NEW.wh AND quality = NEW.quality);
  DELETE FROM nb_removed WHERE source = NEW.source AND start = NEW.start;
END""",
    # The exported total never decreases: a rebuild that moves energy between buckets (a late
    # reading) may lower the running sum for a moment, and a re-read meter reset may lower it
    # for good; the exported value then holds until the sum passes it again.
    "nb_energy_up": f"""CREATE TRIGGER nb_energy_up AFTER UPDATE OF total_wh ON nb_energy
  WHEN NEW.total_wh > NEW.exported_wh BEGIN
  UPDATE nb_energy SET exported_wh = NEW.total_wh WHERE source = NEW.source;
  {_state_insert('NEW.source')}
END""",
    "nb_node_ins": f"""CREATE TRIGGER nb_node_ins AFTER INSERT ON nodes BEGIN
  {_state_insert('NEW.id')}
END""",
    "nb_node_up": f"""CREATE TRIGGER nb_node_up AFTER UPDATE OF level, power_w, wh, on_time, faults,
  last_report, grp, cabinet, fw, lat, lon, rated_w ON nodes BEGIN
  {_state_insert('NEW.id')}
END""",
    "nb_fault": _fault_trigger("nb_fault", "AFTER UPDATE OF faults ON nodes",
                               "NEW.faults IS NOT OLD.faults", "OLD.faults"),
    "nb_fault_new": _fault_trigger("nb_fault_new", "AFTER INSERT ON nodes", "NEW.faults != 0", "0"),
}


BOUND_EVERY = 256  # the bound is checked at every 256th row: at most this many rows past it


def _bound_trigger(max_rows: int) -> str:
    # checked on every BOUND_EVERY-th id only: the check costs a query per row otherwise
    return f"""CREATE TRIGGER nb_bound AFTER INSERT ON nb_outbox
  WHEN NEW.id % {BOUND_EVERY} = 0 AND NEW.id - {max_rows} >= (SELECT MIN(id) FROM nb_outbox) BEGIN
  UPDATE nb_stats SET value = value + (SELECT COUNT(*) FROM nb_outbox
    WHERE id <= NEW.id - {max_rows}) WHERE key = 'dropped';
  DELETE FROM nb_outbox WHERE id <= NEW.id - {max_rows};
END"""


ALL_TRIGGERS = (*TRIGGERS, "nb_bound")


def install(conn: sqlite3.Connection, max_rows: int) -> None:
    """(Re)create the outbox triggers, bounded at ``max_rows``; a write function for the store.

    Dropped first so a changed bound or a newer trigger text takes effect at start.
    """
    uninstall(conn)
    for sql in TRIGGERS.values():
        conn.execute(sql)
    conn.execute(_bound_trigger(max_rows))


def uninstall(conn: sqlite3.Connection) -> int:
    """Drop the outbox triggers (MQTT off): nothing more is queued; what is queued stays.

    Returns how many rows wait in the outbox (to say so in the log).
    """
    for name in ALL_TRIGGERS:
        conn.execute(f"DROP TRIGGER IF EXISTS {name}")
    return conn.execute("SELECT COUNT(*) FROM nb_outbox").fetchone()[0]


_REPORT_JSON = """json_object('type', 'report', 'node', r.source, 'seq', r.seq, 't', r.t,
    'wh', r.wh, 'w', r.w, 'level', r.level, 'on_time', r.on_time, 'faults', r.faults,
    'time_estimated', json(CASE WHEN r.rel_time THEN 'true' ELSE 'false' END),
    'received_at', r.received_at)"""
# key 'r/NODE/SEQ': node ids never contain '/' (the LwM2M endpoint rule)
_KEY_NODE = "substr(o.key, 3, instr(substr(o.key, 3), '/') - 1)"
_KEY_NUM = "CAST(substr(o.key, 3 + instr(substr(o.key, 3), '/')) AS INTEGER)"
_PAYLOAD = f"""CASE
    WHEN o.payload != '' THEN o.payload
    WHEN substr(o.key, 1, 1) = 's' THEN (SELECT {_STATE_JSON} FROM nodes n
        LEFT JOIN nb_energy e ON e.source = n.id WHERE n.id = substr(o.key, 3))
    WHEN substr(o.key, 1, 1) = 'r' THEN (SELECT {_REPORT_JSON} FROM readings r
        WHERE r.source = {_KEY_NODE} AND r.seq = {_KEY_NUM}) END"""
_PENDING = f"""SELECT o.id, o.key, o.topic, {_PAYLOAD}
    FROM nb_outbox o WHERE o.id > ? ORDER BY o.id LIMIT ?"""
# The same rows packed into ONE text value: fields joined by US (0x1f), rows by RS (0x1e).
# Why: the sqlite3 module releases the GIL around every row it steps through and takes it back
# for every row it converts; read by a store thread while the event loop publishes, a batch of
# 1000 rows meant 1000s of GIL hand-offs with the loop (py-spy: ~17 us of wall time per row
# in pending(), against 3.4 us alone). One value = one hand-off per batch. Neither separator
# can occur in a field: keys and topics are made of node ids ([A-Za-z0-9._-]) and payloads
# are JSON, whose strings escape control characters; pending() checks it anyway.
_PENDING_PACKED = f"""SELECT COUNT(*), group_concat(rec, char(30)) FROM (
    SELECT o.id || char(31) || o.key || char(31) || o.topic || char(31) ||
        COALESCE({_PAYLOAD}, '') AS rec
    FROM nb_outbox o WHERE o.id > ? ORDER BY o.id LIMIT ?)"""


def pending(conn: sqlite3.Connection, after_id: int, limit: int) -> list[tuple]:
    """Rows to publish, oldest first: (id, key, topic, payload) with id > after_id.

    State and report payloads are built now from the node's row and the readings row; None if
    that row is gone (a registration that expired before it reported; a reading pruned by
    retention before it could be sent, counted as dropped): nothing to announce."""
    count, packed = conn.execute(_PENDING_PACKED, (after_id, limit)).fetchone()
    if not count:
        return []
    rows = []
    for rec in packed.split("\x1e"):
        f = rec.split("\x1f")
        if len(f) != 4:
            break
        rows.append((int(f[0]), f[1], f[2], f[3] or None))
    if len(rows) != count:  # a separator inside a field after all: read row by row
        return conn.execute(_PENDING, (after_id, limit)).fetchall()
    # group_concat's order is SQLite's (the subquery's ORDER BY, not guaranteed by the
    # documentation before 3.44): the outbox's order is, so sort (linear when already sorted)
    rows.sort()
    return rows


def acknowledge(ids: list[int]) -> Any:
    """A write function that deletes the rows the broker acknowledged (PUBACK/PUBCOMP).

    A row replaced meanwhile (a newer state or bucket value) has a new id and stays.
    """

    def fn(conn: sqlite3.Connection) -> int:
        n = 0
        for i in range(0, len(ids), 500):
            chunk = ids[i:i + 500]
            n += conn.execute(f"DELETE FROM nb_outbox WHERE id IN ({','.join('?' * len(chunk))})",
                              chunk).rowcount
        return n

    fn.background = True  # type: ignore[attr-defined]  # bookkeeping, not ingest load (Store.busy_s)
    return fn


def housekeeping(conn: sqlite3.Connection) -> None:
    """Empty nb_removed: rows left by bucket deletes that no insert followed (retention).

    Safe at any time: a rebuild's delete and insert run in one transaction, and this runs in
    another."""
    conn.execute("DELETE FROM nb_removed")


def status(conn: sqlite3.Connection) -> dict[str, Any]:
    """Depth, oldest entry and drop count of the outbox (a read function)."""
    depth = conn.execute("SELECT COUNT(*) FROM nb_outbox").fetchone()[0]
    oldest = conn.execute("SELECT id, key, t, created_at FROM nb_outbox ORDER BY id LIMIT 1"
                          ).fetchone()
    dropped = conn.execute("SELECT value FROM nb_stats WHERE key = 'dropped'").fetchone()
    installed = conn.execute("SELECT COUNT(*) FROM sqlite_master WHERE type = 'trigger' AND "
                             "name = 'nb_report'").fetchone()[0]
    out: dict[str, Any] = {"depth": depth, "dropped": dropped[0] if dropped else 0,
                           "recording": bool(installed), "oldest": None}
    if oldest is not None:
        out["oldest"] = {"id": oldest[0], "key": oldest[1], "t": oldest[2],
                         "queued_at": oldest[3], "age_s": round(max(0.0, time.time() - oldest[3]), 3)}
    return out


def energy_totals(conn: sqlite3.Connection) -> dict[str, float]:
    """Each node's exported energy total, Wh (never decreasing)."""
    return {s: wh for s, wh in conn.execute("SELECT source, exported_wh FROM nb_energy")}
