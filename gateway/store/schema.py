"""Schema migrations of the gateway database: an ordered list, applied once each, recorded in
``schema_version``.

Owns every table of the gateway (the service's nodes/commands/schedules too, so one file
describes the whole database). A new migration is appended to ``MIGRATIONS``; released
migrations are never edited.
"""

from __future__ import annotations

import sqlite3
import time

MIGRATION_1 = """
CREATE TABLE meta(key TEXT PRIMARY KEY, value TEXT);

-- Every data source: luminaire nodes (kind 'node') and energy meters (kind 'meter').
-- modbus_slot is assigned at first registration (max + 1) and never changes.
CREATE TABLE nodes(
    id TEXT PRIMARY KEY,
    kind TEXT NOT NULL DEFAULT 'node' CHECK(kind IN ('node', 'meter')),
    grp TEXT, cabinet TEXT, lat REAL, lon REAL, rated_w REAL, default_level INTEGER,
    fw TEXT, tz TEXT, address TEXT, reg_id TEXT, lifetime INTEGER,
    registered_at REAL, last_seen REAL, last_report REAL,
    level REAL, power_w REAL, wh REAL, on_time REAL,
    faults INTEGER NOT NULL DEFAULT 0,
    modbus_slot INTEGER UNIQUE,
    created_at REAL
);
CREATE INDEX nodes_grp ON nodes(grp);
CREATE INDEX nodes_cabinet ON nodes(cabinet);
CREATE UNIQUE INDEX nodes_reg_id ON nodes(reg_id) WHERE reg_id IS NOT NULL;

-- Raw reports, idempotent on (source, seq). t is the report time (Unix s, UTC);
-- rel_time = 1 when t was resolved by the gateway (relative or implausible node time).
CREATE TABLE readings(
    source TEXT NOT NULL, seq INTEGER NOT NULL, t REAL NOT NULL, wh REAL NOT NULL,
    w REAL, level REAL, on_time REAL, faults INTEGER, rel_time INTEGER NOT NULL DEFAULT 0,
    received_at REAL,
    PRIMARY KEY(source, seq)
) WITHOUT ROWID;
CREATE INDEX readings_time ON readings(source, t);

-- 15-minute energy buckets, UTC, half-open [start, start + 900), rebuilt from readings.
CREATE TABLE buckets(
    source TEXT NOT NULL, start INTEGER NOT NULL, wh REAL NOT NULL,
    quality TEXT NOT NULL CHECK(quality IN ('measured','interpolated','estimated','missing')),
    PRIMARY KEY(source, start)
) WITHOUT ROWID;

-- Roll-ups maintained with the buckets (q: 0 measured, 1 interpolated, 2 estimated,
-- 3 missing; n: number of 15-minute buckets present). Hours are UTC hours; days are local
-- days of the site time zone (meta 'rollup_tz'), start = local midnight as Unix s.
CREATE TABLE energy_hour(
    source TEXT NOT NULL, start INTEGER NOT NULL, wh REAL NOT NULL, q INTEGER NOT NULL,
    n INTEGER NOT NULL, PRIMARY KEY(source, start)
) WITHOUT ROWID;
CREATE TABLE energy_day(
    source TEXT NOT NULL, start INTEGER NOT NULL, wh REAL NOT NULL, q INTEGER NOT NULL,
    n INTEGER NOT NULL, PRIMARY KEY(source, start)
) WITHOUT ROWID;
CREATE INDEX energy_day_start ON energy_day(start);

CREATE TABLE meter_events(
    id INTEGER PRIMARY KEY, source TEXT NOT NULL, t REAL NOT NULL,
    kind TEXT NOT NULL CHECK(kind IN ('replacement', 'reset')), note TEXT
);
CREATE INDEX meter_events_source ON meter_events(source, t);

-- Sources whose buckets must be rebuilt over [t_from, t_to] (written with the readings, so a
-- crash between ingest and aggregation loses nothing).
CREATE TABLE dirty(source TEXT PRIMARY KEY, t_from REAL NOT NULL, t_to REAL NOT NULL);

CREATE TABLE commands(
    id INTEGER PRIMARY KEY, batch TEXT, target TEXT, node TEXT, kind TEXT,
    payload TEXT,
    state TEXT NOT NULL DEFAULT 'pending'
        CHECK(state IN ('pending','delivering','delivered','failed','cancelled')),
    reason TEXT, attempts INTEGER DEFAULT 0,
    created_at REAL, updated_at REAL, delivered_at REAL
);
CREATE INDEX commands_node_state ON commands(node, state);
CREATE INDEX commands_batch ON commands(batch);
CREATE INDEX commands_state ON commands(state);

CREATE TABLE schedules(target TEXT PRIMARY KEY, steps TEXT, updated_at REAL);
"""

# The live columns of a node follow its newest report by seq, not by time: after a clock
# correction that steps back, time alone would freeze them until the clock catches up.
MIGRATION_2 = """
ALTER TABLE nodes ADD COLUMN last_seq INTEGER;
"""

# What a client registered (SPEC §2): its object ids ("3,3311,10250") and the content formats
# its `</>;rt="oma.lwm2m";ct=...` link advertises ("112"), so commands to an object it lacks
# are refused up front and Writes use a format it takes, also after a gateway restart.
MIGRATION_3 = """
ALTER TABLE nodes ADD COLUMN objects TEXT;
ALTER TABLE nodes ADD COLUMN formats TEXT;
"""

# Reports refused as implausible (gateway/plausibility.py, issue 11), per node: how many, and
# the last reason and time, shown by `slgw node show` so an operator finds a broken meter.
MIGRATION_4 = """
ALTER TABLE nodes ADD COLUMN implausible INTEGER NOT NULL DEFAULT 0;
ALTER TABLE nodes ADD COLUMN implausible_reason TEXT;
ALTER TABLE nodes ADD COLUMN implausible_at REAL;
"""

# The northbound outbox (issue 13, gateway/northbound/outbox.py): what is still to be published
# to MQTT, written by triggers in the same transaction as the data it announces, deleted only
# after the broker's PUBACK. key is the message's deterministic id without the gateway
# ("r/NODE/SEQ", "b/NODE/START", "s/NODE", "f/NODE/SEQ"); a newer message with the same key
# replaces a pending one (INSERT OR REPLACE: new id, so it goes at the end). nb_energy holds
# each node's exported energy total (never decreasing); nb_removed the old value of a bucket
# that a rebuild deletes before re-inserting it (emptied after each transaction's use).
MIGRATION_5 = """
CREATE TABLE nb_outbox(
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    key TEXT NOT NULL UNIQUE,
    topic TEXT NOT NULL,
    payload TEXT NOT NULL,
    t REAL,
    created_at REAL NOT NULL
);
CREATE TABLE nb_energy(
    source TEXT PRIMARY KEY, total_wh REAL NOT NULL DEFAULT 0, exported_wh REAL NOT NULL DEFAULT 0
) WITHOUT ROWID;
CREATE TABLE nb_removed(
    source TEXT NOT NULL, start INTEGER NOT NULL, wh REAL NOT NULL, quality TEXT NOT NULL,
    PRIMARY KEY(source, start)
) WITHOUT ROWID;
CREATE TABLE nb_stats(key TEXT PRIMARY KEY, value INTEGER NOT NULL DEFAULT 0);
INSERT INTO nb_stats(key, value) VALUES ('dropped', 0);
"""

MIGRATIONS: list[str] = [MIGRATION_1, MIGRATION_2, MIGRATION_3, MIGRATION_4, MIGRATION_5]


def current_version(conn: sqlite3.Connection) -> int:
    """The schema version of an open database (0 = empty)."""
    row = conn.execute("SELECT name FROM sqlite_master WHERE type='table' AND name='schema_version'"
                       ).fetchone()
    if row is None:
        return 0
    v = conn.execute("SELECT MAX(version) FROM schema_version").fetchone()[0]
    return int(v or 0)


def migrate(conn: sqlite3.Connection) -> int:
    """Apply pending migrations, each in its own transaction. Returns the final version.

    Raises RuntimeError if the database is newer than this code (a downgrade).
    """
    conn.execute("CREATE TABLE IF NOT EXISTS schema_version(version INTEGER PRIMARY KEY, "
                 "applied_at REAL)")
    v = current_version(conn)
    if v > len(MIGRATIONS):
        raise RuntimeError(f"database schema version {v} is newer than this slgw "
                           f"(knows {len(MIGRATIONS)}); upgrade slgw or restore a matching backup")
    for i in range(v, len(MIGRATIONS)):
        conn.execute("BEGIN IMMEDIATE")
        try:
            for stmt in _statements(MIGRATIONS[i]):
                conn.execute(stmt)
            conn.execute("INSERT INTO schema_version VALUES(?, ?)", (i + 1, time.time()))
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
    return len(MIGRATIONS)


def _statements(script: str) -> list[str]:
    """Split a migration script into statements (executescript would commit implicitly)."""
    out, buf = [], []
    for line in script.splitlines():
        if line.strip().startswith("--"):
            continue
        buf.append(line)
        joined = "\n".join(buf)
        if sqlite3.complete_statement(joined):
            out.append(joined.strip())
            buf = []
    if "".join(buf).strip():
        raise ValueError("incomplete statement in migration")
    return out
