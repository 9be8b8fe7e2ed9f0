"""The persistent command queue and its delivery to nodes.

State machine of one command (table `commands`), every transition committed to the store:

    pending --(node online; attempt starts)--> delivering --(2.04)--> delivered
       ^                                            |--(4.xx, expired, attempts used)--> failed
       |----------(timeout / unreachable)-----------|
    pending --(a newer level/on_off/override, or schedule, for the same node)--> cancelled

Exactly-once in effect: `delivering` is committed *before* the Write and `delivered` after
the 2.04. A gateway that dies in between finds `delivering` rows at start; they go back to
pending and are re-sent, which is safe because every Write is an absolute value (a level, an
override with the same end time, a whole schedule; see model.py), never an increment. A command
marked delivered is never sent again.

Delivery happens when a command is submitted (for online nodes), when a node Registers or
Updates (SPEC §2 "After registering"), and in a periodic sweep. State writes are batched:
one transaction marks a whole group command delivering; each node's outcome is recorded as
soon as it is known (a dead node does not hold the others' `delivered` back for a whole
timeout), and the store's group commit merges the outcomes that arrive together. Requests run concurrently, bounded by the NodeClient's semaphore;
one node's commands go out in order.
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
import sqlite3
from typing import Any

from gateway.coap.client import NodeClient, NodeRefused, NodeUnreachable
from gateway.commands import model
from gateway.commands.model import CommandError

log = logging.getLogger("slgw.commands")

_ACTIVE: CommandQueue | None = None


class NotFoundError(LookupError):
    """A target that names no node (unknown id, empty group)."""


async def submit_command(target: str, kind: str, payload: dict[str, Any]) -> str:
    """Queue a command with the running service's queue and return its batch id.

    The public entry point for other rooms (the Modbus bridge's writes). Raises CommandError
    for an invalid command, NotFoundError for an unknown target, RuntimeError when no queue
    is running.
    """
    if _ACTIVE is None:
        raise RuntimeError("the command queue is not running")
    return (await _ACTIVE.submit(target, kind, payload))["batch"]


class CommandQueue:
    """Queue, persist and deliver commands. See the module docstring for the states."""

    def __init__(self, store: Any, registry: Any, client: NodeClient, clock: Any, *,
                 max_attempts: int = 10, sweep_interval: float = 30.0):
        self.store = store
        self.registry = registry
        self.client = client
        self.clock = clock
        self.max_attempts = max_attempts
        self.sweep_interval = sweep_interval
        self._in_flight: set[int] = set()
        self._locks: dict[str, asyncio.Lock] = {}
        self._tasks: set[asyncio.Task] = set()
        self._sweeper: asyncio.Task | None = None

    # --- lifecycle --------------------------------------------------------------------------
    async def start(self) -> None:
        """Recover commands interrupted by a crash, and start the periodic sweep."""
        global _ACTIVE
        now = self.clock.now()

        def tx(conn: sqlite3.Connection) -> int:
            return conn.execute(
                "UPDATE commands SET state = 'pending', updated_at = ?, reason = 'gateway "
                "restarted during delivery; re-sending (the write is idempotent)' "
                "WHERE state = 'delivering'", (now,)).rowcount

        n = await self.store.write(tx)
        if n:
            log.warning("%d command(s) were being delivered when the gateway stopped; they will "
                        "be re-sent (idempotent writes, same effect)", n)
        _ACTIVE = self
        self._sweeper = asyncio.create_task(self._sweep_loop())

    async def stop(self) -> None:
        """Stop delivering; in-flight attempts are cancelled and stay `delivering` until the
        next start re-sends them."""
        global _ACTIVE
        if _ACTIVE is self:
            _ACTIVE = None
        tasks = list(self._tasks) + ([self._sweeper] if self._sweeper else [])
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def _spawn(self, coro: Any) -> asyncio.Task:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _sweep_loop(self) -> None:
        while True:
            await asyncio.sleep(self.sweep_interval)
            try:
                await self.deliver(None)
            except Exception:
                log.exception("command sweep failed; will retry in %.0f s", self.sweep_interval)

    # --- submission -------------------------------------------------------------------------
    async def submit(self, target: str, kind: str, payload: dict[str, Any],
                     wait: float = 0.0) -> dict[str, Any]:
        """Validate, persist and start delivering a command to `target`.

        Returns {"batch", "target", "kind", "commands": [...]} with each command's state after
        at most `wait` seconds of delivery. Raises CommandError, NotFoundError.
        """
        payload = model.validate(kind, payload)
        nodes = await self.registry.resolve_target(target)
        if not nodes:
            raise NotFoundError(f"no node matches {target!r} (use a node id, group:NAME, "
                                "cabinet:NAME or all)")
        # Refuse up front what a node could only answer 4.04 (it never registered the object):
        # one node or all of them -> an error; a mixed group -> those nodes' commands fail at
        # once, with the reason, and the others are delivered.
        lacking = {n: why for n in nodes if (why := model.lacks_object(kind, self.registry.objects(n)))}
        if len(lacking) == len(nodes):
            node, why = next(iter(lacking.items()))
            more = f" (and {len(nodes) - 1} other node(s) likewise)" if len(nodes) > 1 else ""
            raise model.UnsupportedObject(f"node {node} {why}{more}; command not sent")
        batch = secrets.token_hex(6)
        now = self.clock.now()
        body = json.dumps(payload)
        supersedes = model.LEVEL_KINDS if kind in model.LEVEL_KINDS else (kind,)

        def tx(conn: sqlite3.Connection) -> list[int]:
            marks = ",".join("?" * len(supersedes))
            ids = []
            for node in nodes:
                conn.execute(
                    f"UPDATE commands SET state = 'cancelled', updated_at = ?, reason = ? "
                    f"WHERE node = ? AND state = 'pending' AND kind IN ({marks})",
                    (now, f"superseded by batch {batch}", node, *supersedes))
                why = lacking.get(node)
                conn.execute(
                    "INSERT INTO commands (batch, target, node, kind, payload, state, reason, attempts,"
                    " created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, 0, ?, ?)",
                    (batch, target, node, kind, body, "failed" if why else "pending",
                     f"not sent: the node {why}" if why else None, now, now))
                ids.append(conn.execute("SELECT last_insert_rowid()").fetchone()[0])
            if kind == "schedule":
                conn.execute("INSERT INTO schedules (target, steps, updated_at) VALUES (?, ?, ?) "
                             "ON CONFLICT(target) DO UPDATE SET steps = excluded.steps,"
                             " updated_at = excluded.updated_at",
                             (target, json.dumps(payload["steps"]), now))
            return ids

        ids = set(await self.store.write(tx))
        log.info("command %s queued: %s %s for %s (%d node(s))", batch, kind, body, target,
                 len(nodes))
        online = [n for n in nodes if n not in lacking and self.registry.is_online(n)]
        if online:
            task = self._spawn(self.deliver(online))
            if wait > 0:
                loop = asyncio.get_running_loop()
                deadline = loop.time() + wait
                await asyncio.wait([task], timeout=wait)
                # The periodic sweep may have claimed some of this batch before our own task
                # did (which then skipped them): wait for those deliveries too.
                while self._in_flight & ids and loop.time() < deadline:
                    await asyncio.sleep(0.02)
        return {"batch": batch, "target": target, "kind": kind,
                "commands": await self.list(batch=batch)}

    # --- delivery ---------------------------------------------------------------------------
    async def node_reachable(self, ep: str) -> None:
        """A node Registered or Updated: deliver what waits for it (in the background)."""
        self._spawn(self.deliver([ep]))

    async def deliver(self, nodes: list[str] | None) -> int:
        """Deliver every pending command of `nodes` (None: of every online node); return how
        many were attempted."""
        if nodes is not None and not nodes:
            return 0
        if nodes is None or len(nodes) > 500:  # the sweep: pending is small, nodes may be many
            sql, args = ("SELECT id, node, kind, payload, created_at, attempts FROM commands "
                         "WHERE state = 'pending' ORDER BY id"), []
        else:
            sql = ("SELECT id, node, kind, payload, created_at, attempts FROM commands WHERE "
                   f"state = 'pending' AND node IN ({','.join('?' * len(nodes))}) ORDER BY id")
            args = list(nodes)
        wanted = set(nodes) if nodes is not None else None
        now = self.clock.now()
        rows = [r for r in await self.store.read(lambda conn: conn.execute(sql, args).fetchall())
                if r[0] not in self._in_flight and (r[1] in wanted if wanted is not None
                                                    else self.registry.is_online(r[1], now))]
        if not rows:
            return 0
        ids = [r[0] for r in rows]
        self._in_flight.update(ids)
        try:
            now = self.clock.now()

            def claim(conn: sqlite3.Connection) -> set[int]:
                # only rows still pending (a newer command may have cancelled one meanwhile)
                return {i for i in ids if conn.execute(
                    "UPDATE commands SET state = 'delivering', attempts = attempts + 1,"
                    " updated_at = ? WHERE id = ? AND state = 'pending'", (now, i)).rowcount}

            claimed = await self.store.write(claim)
            per_node: dict[str, list[tuple]] = {}
            for r in rows:
                if r[0] not in claimed:
                    continue
                per_node.setdefault(r[1], []).append(r)
            results = await asyncio.gather(*(self._deliver_and_record(n, rs) for n, rs in per_node.items()))
            outcomes = [o for rs in results for o in rs]
        finally:
            self._in_flight.difference_update(ids)
        for cid, state, reason in outcomes:
            if state == "failed":
                log.warning("command %d failed: %s", cid, reason)
        return len(rows)

    async def _deliver_and_record(self, node: str, rows: list[tuple]) -> list[tuple[int, str, str | None]]:
        # Record each node's outcome as soon as it is known, not when the slowest node of a
        # group command times out: the CLI shows `delivered` at once, and a crash in between
        # re-sends only what was really in flight. The store's group commit still puts the
        # outcomes that arrive together in one transaction.
        outcomes = await self._deliver_node(node, rows)
        await self.store.write(lambda conn: self._record(conn, outcomes))
        self._in_flight.difference_update(r[0] for r in rows)
        return outcomes

    async def _deliver_node(self, node: str, rows: list[tuple]) -> list[tuple[int, str, str | None]]:
        # One node's commands go out in order, even when two deliveries overlap.
        async with self._locks.setdefault(node, asyncio.Lock()):
            return await self._deliver_node_locked(node, rows)

    async def _deliver_node_locked(self, node: str, rows: list[tuple]
                                   ) -> list[tuple[int, str, str | None]]:
        out: list[tuple[int, str, str | None]] = []
        address = self.registry.address(node)
        for i, (cid, _node, kind, body, created_at, attempts) in enumerate(rows):
            try:
                why = model.lacks_object(kind, self.registry.objects(node))
                if why:  # it registered again without the object since the command was queued
                    raise CommandError(f"not sent: the node {why}")
                path, value = model.to_write(kind, json.loads(body), created_at, self.clock.now())
                await self.client.write(address, path, value)
                out.append((cid, "delivered", None))
            except CommandError as exc:
                out.append((cid, "failed", str(exc)))
            except NodeRefused as exc:
                if exc.code.startswith("5") and attempts + 1 < self.max_attempts:
                    out.append((cid, "pending", f"{exc}; will retry"))
                else:
                    out.append((cid, "failed", str(exc)))
            except NodeUnreachable as exc:
                # The node went away: this and its later commands wait for its next Register.
                reason = f"node unreachable ({exc}); will retry when it registers or updates"
                out += [(r[0], "pending", reason) for r in rows[i:]]
                break
            except Exception as exc:  # never leave a command stuck in 'delivering'
                log.exception("unexpected error delivering command %d to %s", cid, node)
                out.append((cid, "pending", f"internal error ({type(exc).__name__}); will retry"))
        return out

    def _record(self, conn: sqlite3.Connection, outcomes: list[tuple[int, str, str | None]]) -> None:
        now = self.clock.now()
        for cid, state, reason in outcomes:
            conn.execute(
                "UPDATE commands SET state = ?, reason = ?, updated_at = ?,"
                " delivered_at = CASE WHEN ? = 'delivered' THEN ? ELSE delivered_at END "
                "WHERE id = ? AND state = 'delivering'", (state, reason, now, state, now, cid))

    # --- queries ----------------------------------------------------------------------------
    async def list(self, batch: str | None = None, node: str | None = None,
                   state: str | None = None, limit: int = 1000) -> list[dict[str, Any]]:
        """Commands, newest first, filtered by batch, node and/or state."""
        sql = "SELECT * FROM commands WHERE 1 = 1"
        args: list[Any] = []
        for col, val in (("batch", batch), ("node", node), ("state", state)):
            if val is not None:
                sql += f" AND {col} = ?"
                args.append(val)
        sql += " ORDER BY id DESC LIMIT ?"
        args.append(limit)

        def q(conn: sqlite3.Connection) -> list[dict[str, Any]]:
            cur = conn.execute(sql, args)
            cols = [d[0] for d in cur.description]
            return [dict(zip(cols, r, strict=True)) for r in cur.fetchall()]

        return [command_json(r) for r in await self.store.read(q)]

    async def holds(self, now: float) -> dict[str, dict[str, Any]]:
        """The hold each node is under now, from the level commands it acknowledged: the newest
        delivered `level` (held LEVEL_HOLD_S from delivery, SPEC §5.3) or `override` (held until
        created_at + seconds, the end the command was given; a cancel ends it). Returns
        {node: {"kind", "level", "until", "batch"}} for holds that have not ended."""
        def q(conn: sqlite3.Connection) -> list[tuple]:
            return conn.execute(
                "SELECT node, kind, payload, created_at, delivered_at, batch FROM commands "
                "WHERE id IN (SELECT MAX(id) FROM commands WHERE state = 'delivered' "
                "AND kind IN ('level', 'override') GROUP BY node)").fetchall()

        from gateway.nodes.registry import iso
        out = {}
        for node, kind, payload, created_at, delivered_at, batch in await self.store.read(q):
            p = json.loads(payload)
            if p.get("level") is None:
                continue  # an override cancel
            until = (delivered_at or created_at) + model.LEVEL_HOLD_S if kind == "level" \
                else created_at + p["seconds"]
            if until > now:
                out[node] = {"kind": kind, "level": p["level"], "until": iso(until), "batch": batch}
        return out

    async def schedule(self, target: str) -> dict[str, Any] | None:
        """The last schedule pushed to `target` (as pushed), or None."""
        rows = await self.store.read(lambda conn: conn.execute(
            "SELECT target, steps, updated_at FROM schedules WHERE target = ?", (target,)).fetchall())
        if not rows:
            return None
        from gateway.nodes.registry import iso
        return {"target": rows[0][0], "steps": json.loads(rows[0][1]), "updated_at": iso(rows[0][2])}


def command_json(row: dict[str, Any]) -> dict[str, Any]:
    """The public shape of one command (docs/cli.md, `slgw commands --json`)."""
    from gateway.nodes.registry import iso
    return {"id": row["id"], "batch": row["batch"], "target": row["target"], "node": row["node"],
            "kind": row["kind"], "payload": json.loads(row["payload"]), "state": row["state"],
            "reason": row["reason"], "attempts": row["attempts"],
            "created_at": iso(row["created_at"]), "updated_at": iso(row["updated_at"]),
            "delivered_at": iso(row["delivered_at"])}
