"""Staged roll-outs of an application bundle, and the per-node update state (docs/ota.md).

A roll-out updates the nodes of a target (a node, ``group:NAME``, ``cabinet:NAME``, ``all``) in
waves: the canary wave (``canary_pct`` of the nodes, at least one), then waves that double in
size. After each wave the failure rate of the nodes updated so far is compared with
``halt_pct``: above it the roll-out halts by itself (state ``halted``, with the reason), and no
further node is touched. Nodes already on the bundle's version are skipped.

One node's update (``update_node``), through the node's OSCORE context like every request
(gateway/coap/client.py), LwM2M Firmware Update object 5 (SPEC §13):
1. Write /5/0/1 = ``coap://<gateway>/fw/<bundle>``; the node pulls the bundle block-wise;
2. read /5/0/3 and /5/0/5 every ``poll_s`` until Downloaded (2), or Idle with a failure result;
3. Execute /5/0/2; the node reboots into the new slot on trial;
4. read /5/0/3, /5/0/5, /3/0/3 (following the node's new address when it registers again)
   until it reports Idle with result 1 and the bundle's version (success), or result 8 and its
   reason /10251/0/1 (rolled back), or ``trial_timeout_s`` passes (failed: "no verdict").
Bandwidth: at most ``max_downloads`` nodes are in step 1-2 at once, whatever the wave size, so
block transfers never take more than that share of the CoAP server from live reports.

State survives a restart: ``<dir>/state.json`` (written atomically) holds the last roll-out and
every node's last known update state. A roll-out that was running when the gateway stopped is
marked ``interrupted``; start it again (nodes already updated are skipped).
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import os
import time
from pathlib import Path
from typing import Any

import cbor2
from aiocoap.numbers.codes import Code

from gateway.coap.client import NodeRefused, NodeUnreachable
from gateway.ota.bundles import BundleError, BundleStore
from gateway.ota.serve import BlockPacer
from protocol import lwm2m

log = logging.getLogger("slgw.firmware")

STATE_NAMES = {0: "idle", 1: "downloading", 2: "downloaded", 3: "updating"}
RESULT_NAMES = {0: "none", 1: "success", 2: "not enough flash", 3: "out of RAM",
                4: "connection lost during download", 5: "integrity check failure",
                6: "unsupported package", 7: "invalid URI", 8: "update failed",
                9: "unsupported protocol"}


READ_TIMEOUT_S = 8.0


class RolloutError(Exception):
    """A roll-out that cannot start (unknown bundle or target, one already running)."""


class FirmwareService:
    """Bundles, roll-outs and per-node update state. ``registry`` and ``client`` are the
    service's (gateway.nodes.Registry, gateway.coap.client.NodeClient); ``uri_host`` is the
    host:port put in Package URIs (the node only uses the path)."""

    def __init__(self, root: str | Path, registry: Any, client: Any, uri_host: str, *,
                 max_downloads: int = 8, max_block_rate: float = 200.0, halt_pct: float = 20.0, poll_s: float = 2.0,
                 download_timeout_s: float = 600.0, trial_timeout_s: float = 600.0):
        self.root = Path(root)
        self.bundles = BundleStore(self.root / "bundles")
        self.registry = registry
        self.client = client
        self.uri_host = uri_host
        self.max_downloads = max_downloads
        self.halt_pct = halt_pct
        self.poll_s = poll_s
        self.download_timeout_s = download_timeout_s
        self.trial_timeout_s = trial_timeout_s
        self.nodes: dict[str, dict[str, Any]] = {}
        self.rollout: dict[str, Any] | None = None
        self._task: asyncio.Task | None = None
        self._downloads = asyncio.Semaphore(max_downloads)
        self.pacer = BlockPacer(max_block_rate)  # gateway/ota/serve.py: blocks/s over all nodes
        self._load()

    # -- state on disk ------------------------------------------------------------------------
    def _load(self) -> None:
        try:
            d = json.loads((self.root / "state.json").read_text())
            self.nodes = d.get("nodes", {})
            self.rollout = d.get("rollout")
        except (OSError, ValueError):
            return
        if self.rollout and self.rollout.get("state") == "running":
            self.rollout["state"] = "interrupted"
            self.rollout["reason"] = "the gateway stopped during the roll-out; start it again"

    def _save(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        tmp = self.root / "state.json.tmp"
        tmp.write_text(json.dumps({"nodes": self.nodes, "rollout": self.rollout}, indent=1, sort_keys=True))
        os.replace(tmp, self.root / "state.json")

    def _node(self, ep: str, **kw: Any) -> dict[str, Any]:
        n = self.nodes.setdefault(ep, {"version": None, "slot": None, "state": "idle", "result": None,
                                        "why": "", "bundle": None, "phase": "", "updated_at": None})
        n.update(kw)
        n["updated_at"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        self._save()
        return n

    # -- API ----------------------------------------------------------------------------------
    def add(self, path: str) -> dict[str, Any]:
        """Store a build directory as a bundle. Raises BundleError."""
        info = self.bundles.add(path)
        log.info("firmware: bundle %s (version %s, %d files) added", info["bundle"][:12], info["version"],
                 info["files"])
        return info

    async def status(self, refresh: bool = False) -> dict[str, Any]:
        """Bundles, the last roll-out, and per node: version, slot, state, last result.
        ``refresh`` reads object 5 of every registered node first."""
        if refresh:
            eps = [ep for ep in self.registry.online_endpoints()]
            await asyncio.gather(*(self._refresh(ep) for ep in eps))
        return {"bundles": self.bundles.list(), "rollout": self.rollout,
                "nodes": [{"id": ep, **v} for ep, v in sorted(self.nodes.items())]}

    async def start_rollout(self, target: str, ref: str, canary_pct: float, halt_pct: float | None = None
                            ) -> dict[str, Any]:
        """Start a roll-out in the background. Returns its record. Raises RolloutError or
        BundleError."""
        if self._task is not None and not self._task.done():
            raise RolloutError("a roll-out is running; wait for it or see `slgw firmware status`")
        sha = self.bundles.find(ref)
        version = self.bundles.summary(sha)["version"]
        eps = await self.registry.resolve_target(target)
        if not eps:
            raise RolloutError(f"no node matches {target!r}")
        if not 0 < canary_pct <= 100:
            raise RolloutError("--canary must be a percentage in (0, 100]")
        halt = self.halt_pct if halt_pct is None else halt_pct
        self.rollout = {"target": target, "bundle": sha, "version": version, "canary_pct": canary_pct,
                        "halt_pct": halt, "state": "running", "reason": "", "waves": [],
                        "nodes": len(eps), "succeeded": 0, "failed": 0, "skipped": 0,
                        "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        self._save()
        self._task = asyncio.create_task(self._run(eps, sha, version))
        return self.rollout

    async def wait(self, timeout: float) -> dict[str, Any] | None:
        """Wait up to ``timeout`` s for the running roll-out to end; returns its record."""
        if self._task is not None:
            try:
                await asyncio.wait_for(asyncio.shield(self._task), timeout)
            except TimeoutError:
                pass
        return self.rollout

    async def stop(self) -> None:
        if self._task is not None and not self._task.done():
            self._task.cancel()
            try:
                await self._task
            except (asyncio.CancelledError, Exception):  # noqa: BLE001 - stopping anyway
                pass
            if self.rollout and self.rollout["state"] == "running":
                self.rollout["state"] = "interrupted"
                self.rollout["reason"] = "the gateway stopped during the roll-out; start it again"
                self._save()

    # -- the roll-out ---------------------------------------------------------------------------
    @staticmethod
    def waves(n: int, canary_pct: float) -> list[int]:
        """Wave sizes for ``n`` nodes: the canary (ceil of the percentage, >= 1), then doubling."""
        sizes = []
        size = max(1, math.ceil(n * canary_pct / 100))
        left = n
        while left > 0:
            take = min(size, left)
            sizes.append(take)
            left -= take
            size *= 2
        return sizes

    async def _run(self, eps: list[str], sha: str, version: str) -> None:
        ro = self.rollout
        assert ro is not None
        try:
            todo = []
            current = await asyncio.gather(*(self._current_version(ep) for ep in eps))
            for ep, cur in zip(eps, current, strict=True):
                if cur == version:
                    ro["skipped"] += 1
                    self._node(ep, version=version, bundle=sha, phase="already on this version")
                else:
                    todo.append(ep)
            i = 0
            for size in self.waves(len(todo), ro["canary_pct"]) if todo else []:
                wave = todo[i:i + size]
                i += size
                ro["waves"].append({"nodes": wave, "state": "running"})
                self._save()
                log.info("firmware: wave %d of the roll-out of %s: %d node(s)", len(ro["waves"]), version,
                         len(wave))
                results = await asyncio.gather(*(self.update_node(ep, sha, version) for ep in wave))
                ok = sum(1 for r in results if r)
                ro["succeeded"] += ok
                ro["failed"] += len(wave) - ok
                ro["waves"][-1]["state"] = "done"
                done = ro["succeeded"] + ro["failed"]
                rate = 100.0 * ro["failed"] / done
                if rate > ro["halt_pct"]:
                    ro["state"] = "halted"
                    ro["reason"] = (f"failure rate {rate:.0f} % after wave {len(ro['waves'])} is above "
                                    f"{ro['halt_pct']:g} %: see `slgw firmware status` for each node's reason")
                    log.warning("firmware: roll-out of %s halted: %s", version, ro["reason"])
                    self._save()
                    return
                self._save()
            ro["state"] = "done"
            log.info("firmware: roll-out of %s done: %d updated, %d failed, %d already on it", version,
                     ro["succeeded"], ro["failed"], ro["skipped"])
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - a bug must not leave "running" forever
            log.exception("firmware: roll-out failed unexpectedly")
            ro["state"] = "halted"
            ro["reason"] = f"internal error: {exc!r}"
        finally:
            ro["finished_at"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
            self._save()

    async def _current_version(self, ep: str) -> str | None:
        addr = self.registry.address(ep)
        if not addr:
            return None
        try:
            v = await self._read(addr, "/3/0/3")
        except (NodeUnreachable, NodeRefused, ValueError):
            return None
        return v if isinstance(v, str) else None

    async def _refresh(self, ep: str) -> None:
        addr = self.registry.address(ep)
        if not addr:
            return
        try:
            obj = await self._read5(addr)
        except (NodeUnreachable, NodeRefused, ValueError):
            return
        self._node(ep, **obj)

    async def _read(self, addr: str, path: str) -> Any:
        # shorter than the commands' 30 s (while a node reboots its old address answers nothing,
        # and the poll must move on to the new one soon), but long enough for two
        # retransmissions (ACK_TIMEOUT 2-3 s, 4-6 s): under 10 % loss a 2 s bound failed every time
        resp = await self.client.request(Code.GET, addr, path, accept=lwm2m.CF_CBOR,
                                         timeout=max(READ_TIMEOUT_S, 4 * self.poll_s))
        try:
            return cbor2.loads(resp.payload)
        except Exception as exc:
            raise ValueError(f"node answered {path} with undecodable CBOR: {exc}") from exc

    async def _read5(self, addr: str) -> dict[str, Any]:
        """Object 5's State and Update Result, the running version, slot and reason."""
        st, res, ver, slot, why = await asyncio.gather(*(self._read(addr, p) for p in (
            "/5/0/3", "/5/0/5", "/3/0/3", "/10251/0/0", "/10251/0/1")))
        return {"state": STATE_NAMES.get(st, str(st)), "result": res, "result_text": RESULT_NAMES.get(res, str(res)),
                "version": ver, "slot": slot, "why": why, "_state": st}

    async def _poll(self, ep: str, until: float, want: Any) -> dict[str, Any] | None:
        """Read object 5 every poll_s until ``want(obj)`` or the deadline; None on timeout."""
        while time.monotonic() < until:
            addr = self.registry.address(ep)
            if addr:
                try:
                    obj = await self._read5(addr)
                except (NodeUnreachable, NodeRefused, ValueError) as exc:
                    log.debug("firmware: %s: reading object 5 failed (%s); trying again", ep, exc)
                    obj = None
                if obj is not None:
                    state = obj.pop("_state")
                    self._node(ep, **obj)
                    if want(state, obj):
                        return obj
            await asyncio.sleep(self.poll_s)
        return None

    async def update_node(self, ep: str, sha: str, version: str) -> bool:
        """Update one node (module docstring). Returns True when it committed ``version``."""
        self._node(ep, bundle=sha, phase="downloading", why="")
        uri = f"coap://{self.uri_host}/fw/{sha}"
        async with self._downloads:
            addr = self.registry.address(ep)
            if not addr:
                self._node(ep, phase="failed", why="not registered")
                return False
            try:
                await self.client.write(addr, "/5/0/1", uri)
            except (NodeUnreachable, NodeRefused) as exc:
                self._node(ep, phase="failed", why=f"Package URI refused: {exc}")
                return False
            obj = await self._poll(ep, time.monotonic() + self.download_timeout_s,
                                   lambda st, o: st == 2 or (st == 0 and o["result"] not in (0, 1)))
        if obj is None:
            self._node(ep, phase="failed", why=f"not downloaded within {self.download_timeout_s:g} s")
            return False
        if obj["state"] != "downloaded":
            self._node(ep, phase="failed")
            return False
        self._node(ep, phase="rebooting on trial")
        deadline = time.monotonic() + self.trial_timeout_s
        for attempt in range(3):
            sent = True
            try:
                await self.client.execute(self.registry.address(ep) or "", "/5/0/2")
            except NodeRefused as exc:
                if attempt == 0:
                    self._node(ep, phase="failed", why=f"Update refused: {exc}")
                    return False
                # a repeated Update refused: the node is already Updating (it had taken the first)
            except NodeUnreachable:
                # the node may have taken it and rebooted before its 2.04 got through (a lost
                # answer): its state says which (Updating at once when taken; still Downloaded
                # when not, then Update is sent again)
                sent = False
            await asyncio.sleep(self.poll_s)
            obj = await self._poll(ep, deadline, lambda st, o, sent=sent: (not sent and st == 2) or
                                   (st == 0 and o["result"] in (1, 8)))
            if sent or obj is None or obj["state"] != "downloaded":
                break
        if obj is None:
            self._node(ep, phase="failed", why=f"no verdict within {self.trial_timeout_s:g} s")
            return False
        if obj["result"] == 1 and obj["version"] == version:
            self._node(ep, phase="committed")
            return True
        self._node(ep, phase="rolled back")
        return False


def bundle_error(exc: BundleError) -> str:
    return str(exc)
