"""Registrations of nodes (SPEC §2) and what the gateway knows about each node.

The `nodes` table (store migration 1) is the durable truth; this class keeps a small in-memory
index (reg-id -> endpoint, endpoint -> address/lifetime/last_seen) so that `/dp` and Update
lookups cost no query. Registrations survive a gateway restart: the index is rebuilt from the
table at start, so a node's Update after a restart is answered 2.04, not 4.04.

Online (decision): a node is online while its registration is alive, i.e. its last Register,
Update or Send is less than its lifetime old (or `[nodes] offline_after_s` when set); a
De-register makes it offline at once. Active faults are the flags of its last report.
Modbus slots are assigned max+1 at first registration and never change (issue 5).

Limits (issue 11; `[nodes]` max_nodes, max_pending, new_per_s, pending_expire_s): a node the
gateway knows (registered now, or that has ever stored a report) may always Register again,
whatever the load. A *new* endpoint is admitted only while (1) the rate of new endpoints stays
under `new_per_s` (a token bucket, bursts of 10 s worth), (2) fewer than `max_pending`
registered endpoints have not reported yet, and (3) fewer than `max_nodes` are registered;
otherwise Register is refused with `RegistrationRefused` (the CoAP layer answers 5.03 with
Max-Age, and a genuine new node retries) and nothing is written. So a flood of new endpoint
names costs no store write once the bucket is empty, cannot evict or slow a known node, and at
worst delays the commissioning of new ones. A registered endpoint that has not stored a report
`pending_expire_s` after its Register expires: its registration is dropped, and its row deleted
when it holds nothing (no readings, no commands).
"""

from __future__ import annotations

import logging
import secrets
import sqlite3
import time
from datetime import UTC, datetime
from typing import Any

from protocol import lwm2m

log = logging.getLogger("slgw.nodes")


def iso(t: float | None) -> str | None:
    """Unix seconds -> "2026-01-15T17:00:00Z" (None stays None)."""
    if t is None:
        return None
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def summarize_links(links: list[tuple[str, dict[str, Any]]]) -> tuple[list[int], list[int]]:
    """The object ids and advertised content formats of a Register body (LwM2M Core 1.1
    §6.2.1): ``</>;rt="oma.lwm2m";ct=112,</3/0>,...`` -> ([3, ...], [112]).

    ``ct`` may be one number or a quoted space-separated list; a root other than "/" (an
    alternate path, ``</lwm2m>;rt="oma.lwm2m"``) is stripped from the object links.
    """
    root, formats, objects = "", [], set()
    for target, attrs in links:
        if attrs.get("rt") == "oma.lwm2m":
            root = target.rstrip("/")
            ct = attrs.get("ct")
            for tok in str(ct).split() if ct is not None else ():
                if tok.isdigit():
                    formats.append(int(tok))
    for target, _attrs in links:
        if root and not target.startswith(root + "/"):
            continue
        first = target[len(root):].strip("/").split("/")[0]
        if first.isdigit() and int(first) <= 65535:
            objects.add(int(first))
    return sorted(objects), formats


def _ints(text: str | None) -> list[int] | None:
    return None if text is None else [int(x) for x in text.split(",") if x]


class RegistrationRefused(Exception):
    """A new endpoint's Register refused by the limits; retry after `retry_after` s."""

    def __init__(self, reason: str, retry_after: int) -> None:
        super().__init__(reason)
        self.retry_after = retry_after


class Registry:
    """Registrations and node metadata on top of the store.

    `store` offers `await write(fn)` / `await read(fn)` with fn(conn); `clock` offers now().
    The limits on new endpoints are described in the module docstring.
    """

    SWEEP_EVERY_S = 60.0  # monotonic: how often register() looks for expired pending entries

    def __init__(self, store: Any, clock: Any, *, offline_after_s: float = 0.0,
                 default_lifetime: int = lwm2m.DEFAULT_LIFETIME, max_nodes: int = 10000,
                 max_pending: int = 1000, new_per_s: float = 20.0,
                 pending_expire_s: float = 3600.0):
        self.store = store
        self.clock = clock
        self.offline_after_s = offline_after_s
        self.default_lifetime = default_lifetime
        self.max_nodes = max_nodes
        self.max_pending = max_pending
        self.new_per_s = new_per_s
        self.pending_expire_s = pending_expire_s
        self._by_reg: dict[str, str] = {}
        self._info: dict[str, dict[str, Any]] = {}
        self._by_addr: dict[str, str] = {}
        self._reported: set[str] = set()  # nodes that stored a report: always admitted
        self._admitting: set[str] = set()  # new endpoints admitted, their Register in progress
        self._tokens = self._burst = max(1.0, new_per_s * 10)
        self._tokens_at = time.monotonic()
        self._last_sweep = 0.0
        self.refused = 0  # new endpoints' Registers refused by the limits (API health)
        self.expired = 0  # pending registrations expired

    @classmethod
    def from_config(cls, store: Any, clock: Any, nodes: Any) -> Registry:
        """Built from a gateway.config ``[nodes]`` section."""
        return cls(store, clock, offline_after_s=nodes.offline_after_s,
                   default_lifetime=nodes.default_lifetime, max_nodes=nodes.max_nodes,
                   max_pending=nodes.max_pending, new_per_s=nodes.new_per_s,
                   pending_expire_s=nodes.pending_expire_s)

    async def load(self) -> None:
        """Rebuild the in-memory index from the nodes table (call once at start)."""
        def q(conn: sqlite3.Connection) -> tuple[list[tuple], list[tuple]]:
            regs = conn.execute("SELECT id, reg_id, address, lifetime, last_seen, objects, formats, "
                                "registered_at FROM nodes WHERE kind = 'node' AND reg_id IS NOT "
                                "NULL").fetchall()
            reported = conn.execute("SELECT id FROM nodes WHERE kind = 'node' AND last_seq IS NOT "
                                    "NULL").fetchall()
            return regs, reported
        regs, reported = await self.store.read(q)
        self._reported = {r[0] for r in reported}
        for ep, reg_id, address, lifetime, last_seen, objects, formats, registered_at in regs:
            self._remember(ep, reg_id, address, lifetime or self.default_lifetime, last_seen or 0,
                           _ints(objects), _ints(formats), registered_at or last_seen or 0)
        log.info("registry loaded: %d registered nodes", len(self._by_reg))
        await self.expire_pending()

    def _remember(self, ep: str, reg_id: str, address: str, lifetime: int, seen: float,
                  objects: list[int] | None = None, formats: list[int] | None = None,
                  registered_at: float | None = None) -> None:
        old = self._info.get(ep)
        if old:
            self._by_reg.pop(old["reg_id"], None)
            if self._by_addr.get(old["address"]) == ep:
                self._by_addr.pop(old["address"], None)
        self._info[ep] = {"reg_id": reg_id, "address": address, "lifetime": lifetime,
                          "last_seen": seen, "objects": objects, "formats": formats or [],
                          "registered_at": seen if registered_at is None else registered_at}
        self._by_reg[reg_id] = ep
        if address:
            self._by_addr[address] = ep

    def _forget(self, ep: str) -> dict[str, Any] | None:
        info = self._info.pop(ep, None)
        if info:
            self._by_reg.pop(info["reg_id"], None)
            if self._by_addr.get(info["address"]) == ep:
                self._by_addr.pop(info["address"], None)
        return info

    # --- limits (module docstring) ----------------------------------------------------------
    def pending(self) -> int:
        """Registered endpoints that have not stored a report yet (and new ones being
        registered now: admitted, their write not committed yet)."""
        return sum(1 for ep in self._info if ep not in self._reported) + len(self._admitting)

    async def _admit_new(self, ep: str) -> None:
        """Raise RegistrationRefused unless a new endpoint may register now."""
        mono = time.monotonic()
        self._tokens = min(self._burst, self._tokens + (mono - self._tokens_at) * self.new_per_s)
        self._tokens_at = mono
        if self._tokens < 1:
            self.refused += 1
            raise RegistrationRefused(f"too many new endpoints (over {self.new_per_s:g}/s); "
                                      "retry later", 30)
        since = mono - self._last_sweep
        if since >= self.SWEEP_EVERY_S or since >= 1.0 and self.pending() >= self.max_pending:
            await self.expire_pending()
        if self.pending() >= self.max_pending:
            self.refused += 1
            raise RegistrationRefused(f"{self.max_pending} new endpoints wait for their first "
                                      "report; retry later", 60)
        if len(self._info) + len(self._admitting) >= self.max_nodes:
            self.refused += 1
            raise RegistrationRefused(f"the gateway serves at most {self.max_nodes} nodes", 300)
        self._tokens -= 1

    async def expire_pending(self) -> int:
        """Drop registrations that stored no report within `pending_expire_s` of their
        Register; delete their rows when they hold nothing. Returns how many expired."""
        mono = time.monotonic()
        periodic = mono - self._last_sweep >= self.SWEEP_EVERY_S
        self._last_sweep = mono
        horizon = self.clock.now() - self.pending_expire_s
        stale = [ep for ep, info in self._info.items()
                 if ep not in self._reported and info["registered_at"] < horizon]

        def tx(conn: sqlite3.Connection) -> None:
            for i in range(0, len(stale), 500):
                chunk = stale[i:i + 500]
                marks = ",".join("?" * len(chunk))
                conn.execute(f"UPDATE nodes SET reg_id = NULL WHERE id IN ({marks})", chunk)
            # every never-reporting, unregistered row that holds nothing (earlier floods too)
            conn.execute("DELETE FROM nodes WHERE kind = 'node' AND reg_id IS NULL AND last_seq "
                         "IS NULL AND COALESCE(registered_at, created_at, 0) < ? AND NOT EXISTS "
                         "(SELECT 1 FROM commands c WHERE c.node = nodes.id) AND NOT EXISTS "
                         "(SELECT 1 FROM readings r WHERE r.source = nodes.id)", (horizon,))

        if stale or periodic:
            await self.store.write(tx)
        for ep in stale:
            self._forget(ep)
        if stale:
            self.expired += len(stale)
            log.warning("%d registration(s) expired without a single report in %.0f s (e.g. %s); "
                        "a real node among them registers again on its next Update",
                        len(stale), self.pending_expire_s, ", ".join(sorted(stale)[:3]))
        return len(stale)

    # --- registration interface (SPEC §2) --------------------------------------------------
    async def register(self, ep: str, lifetime: int, address: str,
                       links: list[tuple[str, dict[str, Any]]] | None = None) -> str:
        """Record a Register from `address` with its parsed link-format body `links`; return
        the new reg-id.

        Raises RegistrationRefused for a new endpoint over the limits, ValueError when the name
        belongs to a meter, and the store's errors.
        """
        if ep not in self._info and ep not in self._reported and ep not in self._admitting:
            await self._admit_new(ep)
            self._admitting.add(ep)
            try:
                return await self._register(ep, lifetime, address, links)
            finally:
                self._admitting.discard(ep)
        return await self._register(ep, lifetime, address, links)

    async def _register(self, ep: str, lifetime: int, address: str,
                        links: list[tuple[str, dict[str, Any]]] | None) -> str:
        reg_id = secrets.token_hex(4)
        now = self.clock.now()
        objects, formats = summarize_links(links) if links is not None else (None, [])
        obj_text = None if objects is None else ",".join(map(str, objects))
        fmt_text = ",".join(map(str, formats))

        def tx(conn: sqlite3.Connection) -> None:
            row = conn.execute("SELECT kind FROM nodes WHERE id = ?", (ep,)).fetchone()
            if row is not None and row[0] != "node":
                raise ValueError(f"endpoint name {ep!r} is taken by a {row[0]}")
            conn.execute(
                "INSERT INTO nodes (id, kind, address, reg_id, lifetime, registered_at, last_seen,"
                " created_at, objects, formats, modbus_slot) VALUES (?, 'node', ?, ?, ?, ?, ?, ?, ?, ?,"
                " (SELECT COALESCE(MAX(modbus_slot), -1) + 1 FROM nodes)) "
                "ON CONFLICT(id) DO UPDATE SET address = excluded.address,"
                " reg_id = excluded.reg_id, lifetime = excluded.lifetime,"
                " registered_at = excluded.registered_at, last_seen = excluded.last_seen,"
                " objects = excluded.objects, formats = excluded.formats,"
                " modbus_slot = COALESCE(nodes.modbus_slot, excluded.modbus_slot)",
                (ep, address, reg_id, lifetime, now, now, now, obj_text, fmt_text))

        await self.store.write(tx)
        self._remember(ep, reg_id, address, lifetime, now, objects, formats, now)
        return reg_id

    async def update(self, reg_id: str, address: str, lifetime: int | None,
                     links: list[tuple[str, dict[str, Any]]] | None = None) -> str | None:
        """Record an Update (with a new object list when `links` is given, Core 1.1 §6.2.2);
        return the endpoint, or None for an unknown reg-id."""
        ep = self._by_reg.get(reg_id)
        if ep is None:
            return None
        info = self._info[ep]
        lt = lifetime or info["lifetime"]
        now = self.clock.now()
        objects, formats = info["objects"], info["formats"]
        if links:
            objects, new_formats = summarize_links(links)
            formats = new_formats or formats

        def tx(conn: sqlite3.Connection) -> None:
            conn.execute("UPDATE nodes SET address = ?, lifetime = ?, last_seen = ? WHERE id = ?",
                         (address, lt, now, ep))
            if links:
                conn.execute("UPDATE nodes SET objects = ?, formats = ? WHERE id = ?",
                             (",".join(map(str, objects)), ",".join(map(str, formats)), ep))

        await self.store.write(tx)
        self._remember(ep, reg_id, address, lt, now, objects, formats, info["registered_at"])
        return ep

    async def deregister(self, reg_id: str) -> str | None:
        """Remove a registration; return the endpoint, or None for an unknown reg-id."""
        ep = self._by_reg.get(reg_id)
        if ep is None:
            return None

        def tx(conn: sqlite3.Connection) -> None:
            conn.execute("UPDATE nodes SET reg_id = NULL WHERE id = ?", (ep,))

        await self.store.write(tx)
        self._forget(ep)
        return ep

    def seen(self, ep: str, reported: bool = False) -> None:
        """Note traffic from a node (a Send) without a store write: keeps it online.
        `reported`: the Send stored reports, so the node is known from now on (never expires,
        always admitted)."""
        info = self._info.get(ep)
        if info:
            info["last_seen"] = max(info["last_seen"], self.clock.now())
        if reported:
            self._reported.add(ep)

    # --- lookups ------------------------------------------------------------------------------
    def is_registered(self, ep: str) -> bool:
        return ep in self._info

    def endpoint_of_reg(self, reg_id: str) -> str | None:
        """The endpoint a registration id belongs to, or None."""
        return self._by_reg.get(reg_id)

    def endpoint_at(self, address: str) -> str | None:
        """The endpoint registered from `address` (the standard LwM2M Send fallback)."""
        return self._by_addr.get(address)

    def objects(self, ep: str) -> list[int] | None:
        """The object ids `ep` registered, or None when not known (not registered, or
        registered before this gateway recorded them)."""
        info = self._info.get(ep)
        return info["objects"] if info else None

    def formats(self, ep: str) -> list[int]:
        """The content formats `ep` advertised in its Register (`ct`), maybe []."""
        info = self._info.get(ep)
        return info["formats"] if info else []

    def address(self, ep: str) -> str | None:
        info = self._info.get(ep)
        return info["address"] if info else None

    def is_online(self, ep: str, now: float | None = None) -> bool:
        info = self._info.get(ep)
        if not info:
            return False
        now = self.clock.now() if now is None else now
        horizon = self.offline_after_s or info["lifetime"]
        return now - info["last_seen"] <= horizon

    def online_endpoints(self) -> list[str]:
        now = self.clock.now()
        return [ep for ep in self._info if self.is_online(ep, now)]

    async def resolve_target(self, target: str) -> list[str]:
        """Node ids for a target: an id, `group:NAME`, `cabinet:NAME` or `all`. May be []."""
        if target == "all":
            sql, args = "SELECT id FROM nodes WHERE kind = 'node' ORDER BY id", ()
        elif target.startswith("group:"):
            sql, args = "SELECT id FROM nodes WHERE kind = 'node' AND grp = ? ORDER BY id", (target[6:],)
        elif target.startswith("cabinet:"):
            sql, args = ("SELECT id FROM nodes WHERE kind = 'node' AND cabinet = ? ORDER BY id",
                         (target[8:],))
        else:
            sql, args = "SELECT id FROM nodes WHERE kind = 'node' AND id = ?", (target,)
        rows = await self.store.read(lambda conn: conn.execute(sql, args).fetchall())
        return [r[0] for r in rows]

    async def list_nodes(self, group: str | None = None, cabinet: str | None = None,
                         ids: list[str] | None = None) -> list[dict[str, Any]]:
        """Every node (kind 'node') as a JSON-ready dict, sorted by id."""
        sql = "SELECT * FROM nodes WHERE kind = 'node'"
        args: list[Any] = []
        if group is not None:
            sql += " AND grp = ?"
            args.append(group)
        if cabinet is not None:
            sql += " AND cabinet = ?"
            args.append(cabinet)
        if ids is not None:
            sql += " AND id IN ({})".format(",".join("?" * len(ids)))
            args += ids
        sql += " ORDER BY id"

        def q(conn: sqlite3.Connection) -> list[dict[str, Any]]:
            cur = conn.execute(sql, args)
            cols = [d[0] for d in cur.description]
            return [dict(zip(cols, r, strict=True)) for r in cur.fetchall()]

        now = self.clock.now()
        return [node_json(r, self.is_online(r["id"], now)) for r in await self.store.read(q)]

    async def show(self, ep: str) -> dict[str, Any] | None:
        rows = await self.list_nodes(ids=[ep])
        return rows[0] if rows else None


def _whole(v: float | None, always: bool = False) -> float | int | None:
    """An integer where the contract says integer (docs/cli.md): the store keeps REALs, so a
    level of 40 came back as 40.0. `always` rounds (levels, seconds); otherwise only an
    integral value becomes an int (a node may report fractional Wh)."""
    if v is None:
        return None
    if always or float(v).is_integer():
        return int(round(v))
    return v


def node_json(row: dict[str, Any], online: bool) -> dict[str, Any]:
    """The public shape of one node (docs/cli.md, `slgw nodes --json`)."""
    flags = int(row.get("faults") or 0)
    return {
        "id": row["id"],
        "address": row.get("address"),
        "online": online,
        "registered": row.get("reg_id") is not None,
        "lifetime": row.get("lifetime"),
        "registered_at": iso(row.get("registered_at")),
        "last_seen": iso(row.get("last_seen")),
        "last_report": iso(row.get("last_report")),
        "group": row.get("grp"),
        "cabinet": row.get("cabinet"),
        "lat": row.get("lat"),
        "lon": row.get("lon"),
        "rated_w": row.get("rated_w"),
        "default_level": row.get("default_level"),
        "fw": row.get("fw"),
        "tz": row.get("tz"),
        "level": _whole(row.get("level"), always=True),
        "power_w": row.get("power_w"),
        "wh": _whole(row.get("wh")),
        "on_time": _whole(row.get("on_time"), always=True),
        "faults": lwm2m.fault_names(flags),
        "fault_flags": flags,
        "modbus_slot": row.get("modbus_slot"),
        "objects": _ints(row.get("objects")),
        # reports refused as implausible (issue 11): how many, the last reason and when
        "implausible_reports": int(row.get("implausible") or 0),
        "implausible_last": ({"at": iso(row.get("implausible_at")),
                              "reason": row.get("implausible_reason")}
                             if row.get("implausible_reason") else None),
    }
