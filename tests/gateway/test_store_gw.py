"""gateway/store: group commit, savepoint isolation, idempotent ingest, disk full, corrupt file,
migrations, backup, retention, reads."""

import asyncio
import sqlite3
import threading

import pytest

from gateway.store import Store, StoreCorrupt, StoreError, StorePathError, StoreUnavailable
from gateway.store.schema import MIGRATIONS

T0 = 1_768_000_000.0  # 2026-01-09T23:06:40Z


def reports(n, start_seq=1, t0=T0, period=60.0, wh0=1000):
    return [{"seq": s, "t": t0 + period * (s - 1), "wh": wh0 + s, "w": 40.0, "level": 100,
             "on_time": 60 * s, "faults": 0, "rel_time": False}
            for s in range(start_seq, start_seq + n)]


@pytest.fixture
async def store(tmp_path):
    s = await Store.open(str(tmp_path / "slgw.db"), timezone="Europe/Paris")
    try:
        yield s
    finally:
        await s.close()


async def test_pragmas_wal_and_synchronous_full(store):
    mode, sync = await store.write(lambda c: (c.execute("PRAGMA journal_mode").fetchone()[0],
                                              c.execute("PRAGMA synchronous").fetchone()[0]))
    assert mode == "wal" and sync == 2  # 2 = FULL
    assert await store.read(lambda c: c.execute("SELECT MAX(version) FROM schema_version"
                                                ).fetchone()[0]) == len(MIGRATIONS)


async def test_group_commit_groups_queued_writes(store):
    gate = threading.Event()

    def blocker(conn):
        gate.wait(10)
        conn.execute("INSERT INTO meta(key, value) VALUES ('blocker', '1')")

    commits0 = store.commits
    first = asyncio.create_task(store.write(blocker))
    await asyncio.sleep(0.05)  # the writer is now inside blocker's group
    others = [asyncio.create_task(store.write(
        lambda c, i=i: c.execute("INSERT INTO meta(key, value) VALUES (?, ?)", (f"k{i}", str(i)))))
        for i in range(100)]
    await asyncio.sleep(0.05)
    gate.set()
    await asyncio.gather(first, *others)
    assert store.commits - commits0 == 2  # one for the blocker, ONE for the 100 queued writes
    n = await store.read(lambda c: c.execute("SELECT COUNT(*) FROM meta WHERE key LIKE 'k%'"
                                             ).fetchone()[0])
    assert n == 100


async def test_failing_write_rolls_back_only_its_own_work(store):
    gate = threading.Event()

    def blocker(conn):
        gate.wait(10)

    def good(i):
        return lambda c: c.execute("INSERT INTO meta(key, value) VALUES (?, 'ok')", (f"g{i}",))

    def bad(conn):
        conn.execute("INSERT INTO meta(key, value) VALUES ('bad', 'half-done')")
        raise RuntimeError("boom")

    t0 = asyncio.create_task(store.write(blocker))
    await asyncio.sleep(0.05)
    tasks = [asyncio.create_task(store.write(good(0))), asyncio.create_task(store.write(bad)),
             asyncio.create_task(store.write(good(1)))]
    await asyncio.sleep(0.05)
    gate.set()
    await t0
    res = await asyncio.gather(*tasks, return_exceptions=True)
    assert isinstance(res[1], RuntimeError) and str(res[1]) == "boom"
    keys = await store.read(lambda c: sorted(r[0] for r in c.execute(
        "SELECT key FROM meta WHERE key IN ('g0', 'g1', 'bad')")))
    assert keys == ["g0", "g1"]


async def test_write_is_visible_to_an_independent_connection_on_return(store, tmp_path):
    await store.ingest_reports("n1", reports(5), received_at=T0 + 600)
    c = sqlite3.connect(str(tmp_path / "slgw.db"))
    try:
        assert c.execute("SELECT COUNT(*) FROM readings").fetchone()[0] == 5
    finally:
        c.close()


async def test_ingest_is_idempotent_and_replay_changes_nothing(store):
    r = await store.ingest_reports("n1", reports(50), received_at=T0 + 4000)
    assert (r.stored, r.duplicates) == (50, 0)
    await store.refresh()

    def snapshot(c):
        return (c.execute("SELECT * FROM readings ORDER BY source, seq").fetchall(),
                c.execute("SELECT * FROM buckets ORDER BY source, start").fetchall(),
                c.execute("SELECT * FROM energy_day").fetchall(),
                c.execute("SELECT wh, last_report, level FROM nodes").fetchall())

    before = await store.read(snapshot)
    # replay: everything, and a mix of old and new in one pack
    r = await store.ingest_reports("n1", reports(50)[::-1], received_at=T0 + 9000)
    assert (r.stored, r.duplicates) == (0, 50)
    await store.refresh()
    assert await store.read(snapshot) == before
    r = await store.ingest_reports("n1", reports(3, start_seq=49), received_at=T0 + 9000)
    assert (r.stored, r.duplicates) == (1, 2)


async def test_node_live_columns_follow_the_newest_report(store):
    await store.ingest_reports("n1", reports(10, start_seq=11), received_at=T0 + 2000)
    # an older report (lower seq) arriving late does not overwrite the live state
    await store.ingest_reports("n1", [{"seq": 5, "t": T0 - 3600, "wh": 5, "level": 20}],
                               received_at=T0 + 2000)
    row = await store.read(lambda c: c.execute(
        "SELECT wh, level, last_report, last_seq, modbus_slot, kind FROM nodes WHERE id='n1'"
    ).fetchone())
    assert row == (1020.0, 100.0, T0 + 1140, 20, 0, "node")
    # after a clock correction that steps back, the next report (higher seq) is the live state
    await store.ingest_reports("n1", [{"seq": 21, "t": T0 - 600, "wh": 1021, "level": 40}],
                               received_at=T0 + 2000)
    row = await store.read(lambda c: c.execute(
        "SELECT wh, level, last_report, last_seq FROM nodes WHERE id='n1'").fetchone())
    assert row == (1021.0, 40.0, T0 - 600, 21)


async def test_modbus_slots_are_assigned_once_in_order(store):
    for n in ("a", "b", "c"):
        await store.ingest_reports(n, reports(1), received_at=T0 + 60)
    await store.ingest_reports("m", reports(1), kind="meter", received_at=T0 + 60)
    await store.ingest_reports("a", reports(1, start_seq=2), received_at=T0 + 120)
    slots = await store.read(lambda c: c.execute(
        "SELECT id, modbus_slot FROM nodes ORDER BY id").fetchall())
    assert slots == [("a", 0), ("b", 1), ("c", 2), ("m", None)]


async def test_invalid_report_stores_nothing(store):
    bad = reports(3)
    bad[1]["level"] = 250
    with pytest.raises(ValueError, match="level"):
        await store.ingest_reports("n1", bad, received_at=T0)
    for b in ({"seq": -1, "t": T0, "wh": 1}, {"seq": 1, "t": T0}, {"seq": 1, "t": T0, "wh": "9"},
              {"seq": True, "t": T0, "wh": 1}, {"seq": 1, "t": float("nan"), "wh": 1}):
        with pytest.raises(ValueError):
            await store.ingest_reports("n1", [b], received_at=T0)
    assert await store.read(lambda c: c.execute("SELECT COUNT(*) FROM readings").fetchone()[0]) == 0


async def test_relative_and_implausible_times_are_kept_as_estimated(store):
    now = T0 + 10_000
    await store.ingest_reports("n1", [
        {"seq": 1, "t": -120, "wh": 10},                      # 120 s before receipt
        {"seq": 2, "t": now - 60, "wh": 11, "rel_time": True},  # resolved by the parser
        {"seq": 3, "t": 86400.0 * 3, "wh": 12},               # node clock at 1970
        {"seq": 4, "t": now + 10 * 86400, "wh": 13},          # far future
    ], received_at=now)
    rows = await store.read(lambda c: c.execute("SELECT seq, t, rel_time FROM readings ORDER BY seq"
                                                ).fetchall())
    assert rows == [(1, now - 120, 1), (2, now - 60, 1), (3, now, 1), (4, now, 1)]


async def test_disk_full_fails_cleanly_then_recovers(store):
    await store.ingest_reports("n1", reports(20), received_at=T0 + 2000)
    pages = await store.write(lambda c: c.execute("PRAGMA page_count").fetchone()[0])
    await store.write(lambda c: c.execute(f"PRAGMA max_page_count = {pages}"))
    with pytest.raises(StoreUnavailable, match="free disk space"):
        await store.ingest_reports("n1", reports(2000, start_seq=21), received_at=T0 + 200_000)
    # the store keeps serving reads and keeps what it had acknowledged
    assert await store.read(lambda c: c.execute("SELECT COUNT(*) FROM readings").fetchone()[0]) == 20
    await store.write(lambda c: c.execute("PRAGMA max_page_count = 1073741823"))
    r = await store.ingest_reports("n1", reports(2000, start_seq=21), received_at=T0 + 200_000)
    assert r.stored == 2000
    assert await store.read(lambda c: c.execute("SELECT COUNT(*) FROM readings").fetchone()[0]) == 2020


async def test_corrupt_file_gives_a_clear_error(tmp_path):
    p = tmp_path / "slgw.db"
    p.write_bytes(b"this is not a database, it is a shopping list\n" * 100)
    with pytest.raises(StoreCorrupt) as e:
        await Store.open(str(p))
    assert str(p) in str(e.value) and "backup" in str(e.value)
    # a real database whose pages were overwritten in the middle
    q = tmp_path / "damaged.db"
    s = await Store.open(str(q))
    await s.ingest_reports("n1", reports(3000), received_at=T0 + 200_000)
    await s.close()
    data = bytearray(q.read_bytes())
    data[:100] = b"\x00" * 100  # header gone
    q.write_bytes(bytes(data))
    with pytest.raises(StoreCorrupt):
        await Store.open(str(q))


async def test_unusable_path_names_the_path_and_the_real_cause(tmp_path):
    # a directory where the file should be
    d = tmp_path / "slgw.db"
    d.mkdir()
    with pytest.raises(StorePathError) as e:
        await Store.open(str(d))
    assert str(d) in str(e.value) and "is a directory" in str(e.value)
    assert "free disk space" not in str(e.value)
    # a directory that takes no new files: sysfs refuses even root (chmod 555 would not)
    with pytest.raises(StorePathError) as e:
        await Store.open("/sys/slgw-test.db")
    assert "/sys/slgw-test.db" in str(e.value) and "Permission denied" in str(e.value)
    assert "free disk space" not in str(e.value)


async def test_missing_directory_and_newer_schema(tmp_path):
    with pytest.raises(StorePathError, match="does not exist"):
        await Store.open(str(tmp_path / "nope" / "slgw.db"))
    p = tmp_path / "future.db"
    s = await Store.open(str(p))
    await s.write(lambda c: c.execute("INSERT INTO schema_version VALUES (99, 0)"))
    await s.close()
    with pytest.raises(StoreError, match="newer"):
        await Store.open(str(p))


async def test_online_backup_while_writing(store, tmp_path):
    await store.ingest_reports("n1", reports(500), received_at=T0 + 40_000)
    writer = asyncio.create_task(store.ingest_reports("n2", reports(500), received_at=T0 + 40_000))
    await store.backup(str(tmp_path / "backup.db"))
    await writer
    b = sqlite3.connect(str(tmp_path / "backup.db"))
    try:
        assert b.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        assert b.execute("SELECT COUNT(*) FROM readings WHERE source='n1'").fetchone()[0] == 500
        assert b.execute("SELECT COUNT(*) FROM readings WHERE source='n2'").fetchone()[0] in (0, 500)
    finally:
        b.close()


async def test_retention_prunes_raw_and_buckets_but_keeps_rollups(store):
    await store.ingest_reports("n1", reports(3000, period=600), received_at=T0 + 2_000_000)
    await store.refresh()
    now = T0 + 3000 * 600
    day_before = await store.read(lambda c: c.execute("SELECT SUM(wh) FROM energy_day").fetchone()[0])
    out = await store.prune(now, retention_raw_days=10, retention_bucket_days=5)
    assert out["readings"] > 0 and out["buckets"] > 0
    oldest = await store.read(lambda c: c.execute("SELECT MIN(t) FROM readings").fetchone()[0])
    assert oldest >= now - 10 * 86400
    assert await store.read(lambda c: c.execute("SELECT SUM(wh) FROM energy_day").fetchone()[0]
                            ) == pytest.approx(day_before)


async def test_close_flushes_pending_writes_and_refuses_later_ones(tmp_path):
    p = str(tmp_path / "slgw.db")
    s = await Store.open(p)
    tasks = [asyncio.create_task(s.ingest_reports(f"n{i}", reports(5), received_at=T0 + 600))
             for i in range(20)]
    await asyncio.gather(*tasks)
    await s.close()
    with pytest.raises(StoreError):
        await s.write(lambda c: None)
    s2 = await Store.open(p)
    try:
        assert await s2.read(lambda c: c.execute("SELECT COUNT(*) FROM readings").fetchone()[0]) == 100
        # close() ran the aggregation: nothing left dirty
        assert await s2.read(lambda c: c.execute("SELECT COUNT(*) FROM dirty").fetchone()[0]) == 0
    finally:
        await s2.close()


async def test_without_receive_time_absolute_times_are_trusted(store):
    # a meter polled on a simulated clock running ahead of the real one
    future = 4_000_000_000.0
    await store.ingest_reports("m", [{"seq": 1, "t": future, "wh": 1.0}], kind="meter")
    assert await store.read(lambda c: c.execute("SELECT t, rel_time FROM readings").fetchone()
                            ) == (future, 0)


async def test_ingest_calls_of_one_group_are_merged_with_exact_results(store):
    gate = threading.Event()
    await store.ingest_reports("a", reports(5), received_at=T0 + 600)
    blocker = asyncio.create_task(store.write(lambda c: gate.wait(10)))
    await asyncio.sleep(0.05)
    commits0 = store.commits
    calls = [store.ingest_reports("a", reports(5), received_at=T0 + 600),  # all duplicates
             store.ingest_reports("a", reports(5, start_seq=4), received_at=T0 + 900),  # 3 new
             store.ingest_reports("b", reports(7), received_at=T0 + 900),
             store.ingest_reports("b", reports(2, start_seq=7), received_at=T0 + 900)]
    tasks = [asyncio.create_task(c) for c in calls]
    await asyncio.sleep(0.05)
    gate.set()
    await blocker
    res = await asyncio.gather(*tasks)
    assert [(r.stored, r.duplicates) for r in res] == [(0, 5), (3, 2), (7, 0), (1, 1)]
    assert store.commits - commits0 == 2  # the blocker's group, then ONE for the four calls
    rows = await store.read(lambda c: c.execute(
        "SELECT id, wh, last_report, modbus_slot FROM nodes ORDER BY id").fetchall())
    assert rows == [("a", 1008.0, T0 + 7 * 60, 0), ("b", 1008.0, T0 + 7 * 60, 1)]


async def test_a_failing_merged_group_fails_every_caller_and_stores_nothing(store):
    await store.ingest_reports("a", reports(5), received_at=T0 + 600)
    pages = await store.write(lambda c: c.execute("PRAGMA page_count").fetchone()[0])
    gate = threading.Event()
    blocker = asyncio.create_task(store.write(lambda c: gate.wait(10)))
    await asyncio.sleep(0.05)
    limit = asyncio.create_task(store.write(lambda c: c.execute(f"PRAGMA max_page_count = {pages}")))
    tasks = [asyncio.create_task(store.ingest_reports(f"n{i}", reports(300), received_at=T0 + 90_000))
             for i in range(20)]
    await asyncio.sleep(0.05)
    gate.set()
    await blocker
    # SQLite rolls the whole transaction back on SQLITE_FULL: the pragma's group-mate fails too
    # (the pragma itself is not transactional and stays in force)
    await asyncio.gather(limit, return_exceptions=True)
    res = await asyncio.gather(*tasks, return_exceptions=True)
    assert all(isinstance(r, StoreUnavailable) for r in res), res
    assert await store.read(lambda c: c.execute("SELECT COUNT(*) FROM readings").fetchone()[0]) == 5
    await store.write(lambda c: c.execute("PRAGMA max_page_count = 1073741823"))


async def test_reads_see_only_committed_data(store):
    inside = threading.Event()
    release = threading.Event()

    def slow(conn):
        conn.execute("INSERT INTO meta(key, value) VALUES ('uncommitted', '1')")
        inside.set()
        release.wait(10)

    w = asyncio.create_task(store.write(slow))
    await asyncio.get_running_loop().run_in_executor(None, inside.wait, 10)
    seen = await store.read(lambda c: c.execute(
        "SELECT COUNT(*) FROM meta WHERE key = 'uncommitted'").fetchone()[0])
    release.set()
    await w
    assert seen == 0
    assert await store.read(lambda c: c.execute(
        "SELECT COUNT(*) FROM meta WHERE key = 'uncommitted'").fetchone()[0]) == 1
    with pytest.raises(sqlite3.OperationalError):  # read connections are read-only
        await store.read(lambda c: c.execute("DELETE FROM meta"))


async def test_close_checkpoints_the_wal(tmp_path):
    import os

    p = str(tmp_path / "slgw.db")
    s = await Store.open(p)
    await s.ingest_reports("n1", reports(500), received_at=T0 + 40_000)
    assert os.path.getsize(p + "-wal") > 0
    await s.close()
    assert not os.path.exists(p + "-wal") or os.path.getsize(p + "-wal") == 0


async def test_the_writer_survives_a_failing_begin(store):
    # a write function that leaves a transaction half-done in a way SQLite refuses to continue
    def breaks_savepoints(conn):
        conn.execute("COMMIT")  # ends the group's transaction behind the writer's back

    with pytest.raises(Exception):  # noqa: B017 - any error, but an error to this caller
        await store.write(breaks_savepoints)
    # the writer is still alive and writes still work
    await store.ingest_reports("n1", reports(3), received_at=T0 + 600)
    assert await store.read(lambda c: c.execute("SELECT COUNT(*) FROM readings").fetchone()[0]) == 3


async def test_live_columns_of_a_group_with_new_and_known_nodes(tmp_path):
    """One commit group holding known and new nodes, two calls for one node (the newer seq
    wins, a missing power keeps the last one) and an older, late report (ignored)."""
    import asyncio

    from gateway.store import Store

    s = await Store.open(str(tmp_path / "g.db"))
    try:
        t0 = 1_768_000_000

        def rep(seq, w=42.0):
            return {"seq": seq, "t": t0 + seq, "wh": 100.0 + seq, "w": w, "level": 50,
                    "on_time": 10, "faults": 0, "rel_time": False}

        await s.ingest_reports("known", [rep(5)], received_at=t0 + 100)
        await asyncio.gather(
            s.ingest_reports("known", [rep(7, w=7.0)], received_at=t0 + 100),
            s.ingest_reports("known", [rep(8, w=None)], received_at=t0 + 100),
            s.ingest_reports("known", [rep(6, w=6.0)], received_at=t0 + 100),
            s.ingest_reports("new1", [rep(1)], received_at=t0 + 100),
            s.ingest_reports("new2", [rep(2), rep(3)], received_at=t0 + 100))
        rows = await s.read(lambda c: c.execute(
            "SELECT id, last_seq, wh, power_w, modbus_slot FROM nodes ORDER BY id").fetchall())
        assert rows[0] == ("known", 8, 108.0, 7.0, 0)
        assert [r[:3] for r in rows[1:]] == [("new1", 1, 101.0), ("new2", 3, 103.0)]
        assert sorted(r[4] for r in rows) == [0, 1, 2]  # max + 1, no slot twice
    finally:
        await s.close()


async def _dirty_count(s):
    return await s.read(lambda c: c.execute("SELECT COUNT(*) FROM dirty").fetchone()[0])


async def test_background_aggregation_waits_while_busy_then_catches_up(tmp_path):
    s = await Store.open(str(tmp_path / "slgw.db"), aggregate_interval_s=0.05)
    s.AGG_BUSY_FRACTION = -1.0  # every interval counts as busy (robust on a loaded machine)
    s.AGG_MAX_DEFER_S = 0.6
    try:
        seq = 1
        loop = asyncio.get_running_loop()
        start = loop.time()
        while loop.time() - start < 0.4:  # a steady stream of Sends, shorter than the cap
            await s.ingest_reports("n1", reports(1, start_seq=seq, wh0=0), received_at=T0 + 86400)
            seq += 1
            await asyncio.sleep(0.005)
        hours = await s.read(lambda c: c.execute("SELECT COUNT(*) FROM energy_hour").fetchone()[0])
        assert s.deferred >= 3 and hours == 0 and s.busy_s > 0  # it waited: nothing aggregated yet
        assert await _dirty_count(s) == 1
        while loop.time() - start < 1.2:  # still busy, past the cap: it runs anyway
            await s.ingest_reports("n1", reports(1, start_seq=seq, wh0=0), received_at=T0 + 86400)
            seq += 1
            await asyncio.sleep(0.005)
        assert await s.read(lambda c: c.execute("SELECT COUNT(*) FROM energy_hour").fetchone()[0])
        await asyncio.sleep(0.3)  # idle: the next tick rebuilds what is left
        assert await _dirty_count(s) == 0
    finally:
        await s.close()


async def test_refresh_in_chunks_rebuilds_everything_dirty_at_its_start(store):
    store.REFRESH_CHUNK = 3
    for i in range(10):
        await store.ingest_reports(f"n{i}", reports(5), received_at=T0 + 86400)
    assert await store.refresh() == 10
    assert await _dirty_count(store) == 0
    per_source = await store.read(lambda c: c.execute(
        "SELECT source, SUM(wh) FROM buckets GROUP BY source").fetchall())
    assert sorted(per_source) == [(f"n{i}", 4.0) for i in range(10)]
