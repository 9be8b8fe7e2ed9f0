"""The gateway's SQLite store: one writer thread with group commit, pooled readers, backup,
retention and background aggregation.

Shape (datasette's): every write is a function ``fn(conn)`` queued to ONE writer thread. The
writer takes everything queued, opens one ``BEGIN IMMEDIATE`` transaction, runs each function
inside its own SAVEPOINT (an exception rolls back only that function's work and is raised to
its caller), then COMMITs once. WAL mode with ``synchronous=FULL``: the awaitable returned by
``write`` resolves only after that COMMIT reached the disk, so one fsync covers every write of
the group and durability does not cost throughput. Reads run on separate connections in a
small thread pool and see committed data only.

Errors: a failure to write (disk full, I/O error, read-only file) raises ``StoreUnavailable``
to every caller of the failed group; the store keeps running and later writes succeed once the
cause is gone. A file that is not a usable database raises ``StoreCorrupt`` at open.
"""

from __future__ import annotations

import asyncio
import logging
import os
import queue
import sqlite3
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from . import schema
from .readings import IngestResult, IngestWrite, ingest_fn, ingest_many, mark_dirty, validate_report

log = logging.getLogger(__name__)
T = TypeVar("T")

# SQLite primary result codes that mean "cannot write now" rather than "bad request".
_UNAVAILABLE_CODES = {5, 6, 7, 8, 10, 13, 14}  # BUSY LOCKED NOMEM READONLY IOERR FULL CANTOPEN
_CORRUPT_CODES = {11, 26}  # CORRUPT NOTADB
_STOP = object()


class StoreError(Exception):
    """Base of the store's own errors."""


class StoreUnavailable(StoreError):
    """The store cannot write now (disk full, I/O error); retry later. Nothing was stored."""


class StoreCorrupt(StoreError):
    """The database file is not a usable SQLite database."""


class StorePathError(StoreError):
    """``[store] path`` cannot hold the database (a directory, a read-only place): this does
    not fix itself, so the service refuses to start (exit 5) instead of retrying."""


def _path_problem(path: str) -> str | None:
    """Why ``path`` cannot hold a WAL database, in the operating system's words, or None.

    SQLite only says "unable to open database file"; this asks the OS the same questions
    SQLite did: can the file be opened read-write, can its directory take new files (SQLite
    creates ``path-wal`` and ``path-shm`` beside the database)."""
    if os.path.isdir(path):
        return f"{path} is a directory; [store] path must name a file (e.g. {path}/slgw.db)"
    created = not os.path.exists(path)
    try:
        os.close(os.open(path, os.O_RDWR | os.O_CREAT, 0o640))
    except OSError as e:
        return f"cannot open {path} for writing: {e.strerror} (errno {e.errno})"
    if created:  # leave nothing behind: the probe only asks
        os.unlink(path)
    d = os.path.dirname(os.path.abspath(path))
    probe = os.path.join(d, f".{os.path.basename(path)}.probe-{os.getpid()}")
    try:
        os.close(os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        os.unlink(probe)
    except OSError as e:
        return (f"directory {d} does not take new files: {e.strerror} (errno {e.errno}); SQLite "
                f"creates {os.path.basename(path)}-wal and -shm beside the database")
    return None


def _classify(e: BaseException) -> BaseException:
    code = getattr(e, "sqlite_errorcode", None)
    if isinstance(e, sqlite3.Error) and code is not None:
        if code & 0xFF in _UNAVAILABLE_CODES:
            return StoreUnavailable(f"store cannot write: {e} (free disk space or check the "
                                    "storage device; writes resume by themselves)")
        if code & 0xFF in _CORRUPT_CODES:
            return StoreCorrupt(f"database is corrupt: {e}")
    return e


def _connect(path: str) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=30)
    conn.execute("PRAGMA busy_timeout = 30000")
    return conn


class Store:
    """The gateway database. Make it with ``await Store.open(path)``; end with ``await close()``."""

    GROUP_PAUSE_S = 0.0005  # a pause in the commit window that brings no new write ends it

    def __init__(self, path: str, commit_interval_ms: float, readers: int, timezone: str) -> None:
        self.path = path
        self.commit_interval_s = commit_interval_ms / 1000.0
        self.timezone = timezone
        # SimpleQueue: put/get in C, no Python-level Condition (each Send puts once)
        self._q: queue.SimpleQueue = queue.SimpleQueue()
        self._writer: threading.Thread | None = None
        self._wconn: sqlite3.Connection | None = None
        self._readpool = ThreadPoolExecutor(max_workers=readers, thread_name_prefix="slgw-read")
        self._local = threading.local()
        self._rconns: list[sqlite3.Connection] = []
        self._rlock = threading.Lock()
        self._closed = False
        self._agg_task: asyncio.Task | None = None
        self._last_group = 0
        self.commits = 0  # groups committed (for benches and tests)
        self.writes = 0  # write functions committed
        self.busy_s = 0.0  # writer time spent in commit groups (written by the writer only)
        self.background_s = 0.0  # ... in groups of writes marked ``fn.background = True`` only
        self.deferred = 0  # background aggregations put off because the writer was busy

    # --- life cycle ------------------------------------------------------------------------
    @classmethod
    async def open(cls, path: str, *, commit_interval_ms: float = 0.0, readers: int = 2,
                   timezone: str = "UTC", aggregate_interval_s: float | None = None) -> Store:
        """Open (creating and migrating if needed) the database at ``path`` and start the writer.

        ``aggregate_interval_s`` starts a background task that rebuilds dirty buckets that
        often (None = only on ``refresh()``). Raises StoreCorrupt for a file that is not a
        usable database, StoreUnavailable if it cannot be opened for writing.
        """
        self = cls(path, commit_interval_ms, readers, timezone)
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, self._open_sync)
        self._writer = threading.Thread(target=self._writer_main, name="slgw-writer", daemon=True)
        self._writer.start()
        await self.write(self._check_rollup_tz)
        if aggregate_interval_s:
            self._agg_task = asyncio.create_task(self._aggregate_loop(aggregate_interval_s))
        return self

    def _open_sync(self) -> None:
        d = os.path.dirname(os.path.abspath(self.path))
        if not os.path.isdir(d):
            raise StorePathError(f"[store] path {self.path!r} cannot be used: directory {d} does "
                                 "not exist; create it or set [store] path (--store-path)")
        conn = None
        try:
            conn = _connect(self.path)
            mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if mode.lower() != "wal":
                raise StoreUnavailable(f"{self.path}: cannot enable WAL mode (got {mode})")
            conn.execute("PRAGMA synchronous = FULL")
            conn.execute("PRAGMA foreign_keys = ON")
            schema.migrate(conn)
        except RuntimeError as e:  # a database from a newer slgw
            conn.close()
            raise StoreError(f"{self.path}: {e}") from e
        except sqlite3.DatabaseError as e:
            if conn is not None:
                conn.close()
            err = _classify(e)
            if isinstance(err, StoreUnavailable):
                problem = _path_problem(self.path)
                if problem:
                    raise StorePathError(f"[store] path {self.path!r} cannot be used: {problem}; "
                                         "choose another path (--store-path) or fix its "
                                         "permissions") from e
                raise err from e
            raise StoreCorrupt(f"{self.path} is not a usable SQLite database ({e}); move it away "
                               "to start with an empty store, or restore a backup made with "
                               "`slgw backup`") from e
        self._wconn = conn

    async def close(self) -> None:
        """Flush pending writes, checkpoint the WAL into the database and close everything."""
        if self._closed:
            return
        if self._agg_task:
            self._agg_task.cancel()
            try:
                await self._agg_task
            except (asyncio.CancelledError, Exception):
                pass
        try:
            await self.refresh()
        except StoreError as e:
            log.error("final aggregation failed: %s", e)
        self._closed = True
        fut = asyncio.get_running_loop().create_future()
        self._q.put((_STOP, fut, asyncio.get_running_loop()))
        await fut
        self._readpool.shutdown(wait=True)
        with self._rlock:
            for c in self._rconns:
                c.close()

    # --- writes ----------------------------------------------------------------------------
    async def write(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``fn(conn)`` in the writer, grouped with other writes; resolve after COMMIT.

        Raises what ``fn`` raised (its own work rolled back), or StoreUnavailable if the group
        could not be committed.
        """
        if self._closed:
            raise StoreError("store is closed")
        loop = asyncio.get_running_loop()
        fut = loop.create_future()
        self._q.put((fn, fut, loop))
        return await fut

    def _writer_main(self) -> None:
        conn = self._wconn
        assert conn is not None
        stop = None
        while stop is None:
            batch = [self._q.get()]
            # Under load (the last group had company) let more writes join while they keep
            # arriving, up to commit_interval: one fsync for more of them. Stop as soon as a
            # short pause brings nothing new (callers are waiting for this very commit), and
            # never wait when idle. Plain sleeps: get(timeout=...) would wake us per write.
            if self.commit_interval_s and self._last_group > 1 and batch[0][0] is not _STOP:
                deadline = time.monotonic() + self.commit_interval_s
                seen = self._q.qsize()
                while (left := deadline - time.monotonic()) > 0:
                    time.sleep(min(self.GROUP_PAUSE_S, left))
                    now_queued = self._q.qsize()
                    if now_queued == seen:
                        break
                    seen = now_queued
            while True:
                try:
                    batch.append(self._q.get_nowait())
                except queue.Empty:
                    break
            work = []
            for item in batch:
                if item[0] is _STOP:
                    stop = item
                else:
                    work.append(item)
            self._last_group = len(work)
            if work:
                t0 = time.perf_counter()
                try:
                    self._run_group(conn, work)
                except Exception as e:  # a bug must not kill the only writer: report, go on
                    log.exception("store writer: unexpected failure in a commit group")
                    _fail([(fut, loop) for _fn, fut, loop in work], StoreError(f"store bug: {e}"))
                    try:
                        if conn.in_transaction:
                            conn.execute("ROLLBACK")
                    except sqlite3.Error:
                        pass
                # a group of only background writes (the MQTT publisher deleting acknowledged
                # rows) is not load: counted apart, so the aggregation and the publisher's
                # YieldToIngest do not hold back for their own bookkeeping
                if all(getattr(fn, "background", False) for fn, _f, _l in work):
                    self.background_s += time.perf_counter() - t0
                else:
                    self.busy_s += time.perf_counter() - t0
        try:
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        except sqlite3.Error as e:
            log.warning("WAL checkpoint at close failed: %s", e)
        conn.close()
        _fn, fut, loop = stop
        loop.call_soon_threadsafe(_resolve, fut, None, None)

    def _run_group(self, conn: sqlite3.Connection, work: list) -> None:
        """Run one group of writes in one transaction; never raises (the writer must live)."""
        # Each call: (fn, targets, merged). A merged call stands for several ingest calls and
        # returns one result per target.
        calls = [(fn, [(fut, loop)], False) for fn, fut, loop in work]
        ingests = [i for i, c in enumerate(calls) if type(c[0]) is IngestWrite]
        if len(ingests) > 1:
            # The group's ingest calls cannot fail one by one (rows are validated before
            # queueing; inserts ignore duplicates), only together: run them as one function,
            # in the place of the first one, so writes queued before it still run before it.
            merged = (_MergedIngest([calls[i][0] for i in ingests]),
                      [calls[i][1][0] for i in ingests], True)
            first, merged_ids = ingests[0], set(ingests)
            calls = calls[:first] + [merged] + [c for i, c in enumerate(calls)
                                                 if i > first and i not in merged_ids]
        if len(calls) == 1:
            self._run_single(conn, *calls[0])
            return
        done: list = []  # (fut, loop, result) awaiting COMMIT
        try:
            for fn, targets, is_merged in calls:
                if not conn.in_transaction:
                    conn.execute("BEGIN IMMEDIATE")
                conn.execute("SAVEPOINT w")
                try:
                    result = fn(conn)
                except BaseException as e:  # noqa: BLE001 - handed to the caller
                    err = _classify(e)
                    if conn.in_transaction:
                        conn.execute("ROLLBACK TO w")
                        conn.execute("RELEASE w")
                    else:
                        # SQLite rolled the whole transaction back (disk full, I/O error):
                        # the earlier functions of this group lost their work too.
                        _fail([(f, lp) for f, lp, _r in done], _unavailable(err))
                        done = []
                    _fail(targets, err)
                    continue
                conn.execute("RELEASE w")
                results = result if is_merged else [result]
                done.extend((f, lp, r) for (f, lp), r in zip(targets, results, strict=True))
            if conn.in_transaction:
                conn.execute("COMMIT")
        except sqlite3.Error as e:  # BEGIN, SAVEPOINT, RELEASE or COMMIT failed
            err = _unavailable(_classify(e))
            try:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
            except sqlite3.Error:
                pass
            unresolved = [(f, lp) for f, lp, _r in done]
            started = {id(f) for f, _lp in unresolved}
            for _fn, targets, _m in calls:
                unresolved += [(f, lp) for f, lp in targets if id(f) not in started]
            _fail(unresolved, err)
            return
        self._committed(done)

    def _run_single(self, conn: sqlite3.Connection, fn: Callable, targets: list,
                    is_merged: bool) -> None:
        """A group that is one call (alone, or the group's ingests merged, the usual case
        under load): no SAVEPOINT, since a failure rolls back the whole transaction, which
        holds only this call's work. Three statements instead of five: each one is a GIL
        hand-off between this thread and the busy event loop."""
        try:
            conn.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as e:
            _fail(targets, _unavailable(_classify(e)))
            return
        try:
            result = fn(conn)
        except BaseException as e:  # noqa: BLE001 - handed to the caller
            err = _classify(e)
            try:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
            except sqlite3.Error:
                pass
            _fail(targets, err)
            return
        try:
            conn.execute("COMMIT")
        except sqlite3.Error as e:
            try:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
            except sqlite3.Error:
                pass
            _fail(targets, _unavailable(_classify(e)))
            return
        results = result if is_merged else [result]
        self._committed([(f, lp, r) for (f, lp), r in zip(targets, results, strict=True)])

    def _committed(self, done: list) -> None:
        """Resolve the futures of a committed group: (fut, loop, result) each."""
        if not done:
            return
        self.commits += 1
        self.writes += len(done)
        # One wake-up per event loop for the whole group, not one per write.
        by_loop: dict = {}
        for fut, loop, result in done:
            by_loop.setdefault(loop, []).append((fut, result, None))
        for loop, items in by_loop.items():
            loop.call_soon_threadsafe(_resolve_all, items)

    # --- reads -----------------------------------------------------------------------------
    async def read(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``fn(conn)`` on a read connection (one consistent snapshot) in the thread pool."""
        if self._closed:
            raise StoreError("store is closed")
        return await asyncio.get_running_loop().run_in_executor(self._readpool, self._run_read, fn)

    def _run_read(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = _connect(self.path)
            conn.execute("PRAGMA query_only = ON")
            self._local.conn = conn
            with self._rlock:
                self._rconns.append(conn)
        conn.execute("BEGIN")
        try:
            return fn(conn)
        finally:
            conn.execute("COMMIT")

    # --- ingestion ---------------------------------------------------------------------------
    async def ingest_reports(self, source: str, reports: list[dict], *, kind: str = "node",
                             received_at: float | None = None) -> IngestResult:
        """Store reports of one source, idempotent on (source, seq); durable when it returns.

        ``received_at`` (Unix s, the gateway clock) resolves relative times and bounds
        implausible ones (see readings.py); None trusts the reports' absolute times.

        Raises ValueError (nothing stored) if any report is invalid, StoreUnavailable if the
        store cannot write now.
        """
        if kind not in ("node", "meter"):
            raise ValueError("kind must be 'node' or 'meter'")
        if received_at is None:
            # No receive time given (e.g. the gateway's own meter poller on a simulated
            # clock): the reports' absolute times are trusted.
            now = max([time.time()] + [r["t"] for r in reports if isinstance(r, dict)
                                       and isinstance(r.get("t"), int | float) and r["t"] > 0])
        else:
            now = received_at
        rows = [validate_report(r, now) for r in reports]
        return await self.ingest_rows(source, rows, kind=kind, now=now)

    async def ingest_rows(self, source: str, rows: list[tuple], *, kind: str = "node",
                          now: float) -> IngestResult:
        """Store rows that ``validate_report`` returned (the caller checked them further, e.g.
        gateway/plausibility.py); idempotent on (source, seq), durable when it returns.

        Raises StoreUnavailable if the store cannot write now.
        """
        if not rows:
            return IngestResult(0, 0)
        return await self.write(ingest_fn(source, rows, kind, now))

    async def add_meter_event(self, source: str, t: float, kind: str, note: str = "") -> None:
        """Record a meter replacement or reset at ``t``; the source's buckets are rebuilt."""
        if kind not in ("replacement", "reset"):
            raise ValueError("kind must be 'replacement' or 'reset'")

        def fn(conn: sqlite3.Connection) -> None:
            conn.execute("INSERT INTO meter_events(source, t, kind, note) VALUES (?, ?, ?, ?)",
                         (source, t, kind, note))
            mark_dirty(conn, source, t, t)

        await self.write(fn)

    # --- aggregation, retention, backup -------------------------------------------------------
    def _check_rollup_tz(self, conn: sqlite3.Connection) -> None:
        from ..energy.rebuild import ensure_rollup_tz

        ensure_rollup_tz(conn, self.timezone)

    # Sources rebuilt per transaction. The writer is the only one: a rebuild of every dirty
    # source in one transaction (after a mass restore, hundreds of sources with days of
    # backlog: seconds of work) would hold every Send's acknowledgement for that long. In
    # chunks, ingest commits run between them.
    REFRESH_CHUNK = 16

    async def refresh(self) -> int:
        """Rebuild the buckets of every source that is dirty now; returns how many.

        Sources dirtied while it runs are left for the next call (a query that refreshes
        first sees everything stored before it started).
        """
        from ..energy.rebuild import dirty_sources, rebuild_sources

        todo = await self.read(dirty_sources)
        total = 0
        for i in range(0, len(todo), self.REFRESH_CHUNK):
            chunk = todo[i:i + self.REFRESH_CHUNK]
            total += await self.write(lambda conn, c=chunk: rebuild_sources(conn, self.timezone, c))
        return total

    # Background aggregation uses the writer's spare time. While Sends keep the writer busy
    # (a backlog drain after a mass restore) it waits, at most AGG_MAX_DEFER_S: buckets are
    # derived data, every energy query refreshes first, and each reading costs the same to
    # aggregate later, while the nodes can empty their outboxes sooner.
    AGG_BUSY_FRACTION = 0.5
    AGG_MAX_DEFER_S = 60.0

    async def _aggregate_loop(self, interval: float) -> None:
        last_run = time.monotonic()
        busy_seen = self.busy_s
        while True:
            await asyncio.sleep(interval)
            busy, busy_seen = (self.busy_s - busy_seen) / interval, self.busy_s
            if busy > self.AGG_BUSY_FRACTION and time.monotonic() - last_run < self.AGG_MAX_DEFER_S:
                self.deferred += 1
                continue
            try:
                await self.refresh()
            except StoreError as e:
                log.error("aggregation failed, will retry in %.0f s: %s", interval, e)
            except Exception:  # never let the loop die silently
                log.exception("aggregation failed, will retry in %.0f s", interval)
            last_run = time.monotonic()
            busy_seen = self.busy_s  # the refresh's own writes do not count as load

    async def prune(self, now: float, retention_raw_days: int, retention_bucket_days: int) -> dict:
        """Delete raw readings and 15-minute buckets older than their retention (0 = keep).

        Hour and day roll-ups are kept. Returns the number of rows deleted per table.
        """

        def fn(conn: sqlite3.Connection) -> dict:
            out = {"readings": 0, "buckets": 0}
            if retention_raw_days > 0:
                out["readings"] = conn.execute("DELETE FROM readings WHERE t < ?",
                                               (now - retention_raw_days * 86400,)).rowcount
            if retention_bucket_days > 0:
                out["buckets"] = conn.execute("DELETE FROM buckets WHERE start < ?",
                                              (now - retention_bucket_days * 86400,)).rowcount
            return out

        return await self.write(fn)

    async def backup(self, path: str) -> None:
        """Write a consistent online copy of the database to ``path`` (atomically replaced),
        marked as a backup (gateway.backup.BACKUP_APP_ID). The caller checks ``path`` first
        (gateway.backup.resolve); the temporary file is a new one, never an existing name."""
        from gateway.backup import BACKUP_APP_ID

        def run() -> None:
            fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), prefix=".slgw-backup-",
                                       suffix=".tmp")
            os.close(fd)
            src = _connect(self.path)
            try:
                dst = sqlite3.connect(tmp)
                try:
                    src.backup(dst, pages=1024)
                    dst.execute("PRAGMA journal_mode = DELETE")
                    dst.execute(f"PRAGMA application_id = {BACKUP_APP_ID}")
                    dst.commit()
                finally:
                    dst.close()
                os.replace(tmp, path)
            except BaseException:
                if os.path.exists(tmp):
                    os.unlink(tmp)
                raise
            finally:
                src.close()

        await asyncio.get_running_loop().run_in_executor(None, run)


class _MergedIngest:
    """The ingest calls of one commit group, run as one write function."""

    def __init__(self, writes: list[IngestWrite]) -> None:
        self.writes = writes

    def __call__(self, conn: sqlite3.Connection) -> list[IngestResult]:
        return ingest_many(conn, self.writes)


def _unavailable(err: BaseException) -> StoreUnavailable:
    return err if isinstance(err, StoreUnavailable) else StoreUnavailable(f"store cannot write: {err}")


def _fail(targets: list, err: BaseException) -> None:
    """Hand ``err`` to every (future, loop) in ``targets``."""
    for fut, loop in targets:
        loop.call_soon_threadsafe(_resolve, fut, None, err)


def _resolve_all(items: list) -> None:
    for fut, result, err in items:
        _resolve(fut, result, err)


def _resolve(fut: asyncio.Future, result: Any, err: BaseException | None) -> None:
    if fut.done():
        return
    if err is not None:
        fut.set_exception(err)
    else:
        fut.set_result(result)
