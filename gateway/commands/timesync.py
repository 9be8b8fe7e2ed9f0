"""Setting nodes' clocks (SPEC §6): Write /3/0/13 after each Register, and when a report's time
is relative (the node has no valid time) or drifts more than 30 s from the gateway's clock, in
stored Sends and in Sends refused for their time (gateway/service.py _ingest).

Only while `clock.trusted()`: a real clock must be NTP-synchronised (a Raspberry Pi boots with a
stale time and must never push it to a town's nodes); a simulated clock is trusted. Writes to
one node are at most one per `min_interval` seconds, so a backlog of old reports does not turn
into a storm of writes. Failures are logged and retried at the next trigger (a report, an
Update, a Register); time writes are not queued (the next Register or report triggers a fresh one with a fresh time).

A time Write is sent NON (once, no CoAP retransmission): a retransmitted CON carries the time
of its first transmission, up to MAX_TRANSMIT_WAIT (93 s) stale, and a node set that far back
stamps its next reports earlier than those it sent before (on an accelerated clock, hours).
A lost one is simply retried at the next trigger. ``min_interval`` is measured on the
gateway's clock (simulated or real), so a drifting node is corrected after that much of its
own time, also on an accelerated clock.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from aiocoap.numbers.types import NON

from gateway.coap.client import NodeClient, NodeRefused, NodeUnreachable
from gateway.commands.model import PATH_TIME

log = logging.getLogger("slgw.timesync")
DRIFT_S = 30.0
WRITE_TIMEOUT_S = 5.0  # a NON Write gets its answer within a round trip, or was lost


class TimeSync:
    """Decides when to set a node's time and does it (in background tasks)."""

    def __init__(self, client: NodeClient, clock: Any, registry: Any, *, drift_s: float = DRIFT_S,
                 min_interval: float = 60.0):
        self.client = client
        self.clock = clock
        self.registry = registry
        self.drift_s = drift_s
        self.min_interval = min_interval
        self._last: dict[str, float] = {}
        self._tasks: set[asyncio.Task] = set()
        self._untrusted_logged = False
        self.writes = 0
        self.skipped_untrusted = 0

    def needs_sync(self, reports: list[dict[str, Any]], now: float) -> bool:
        """True if the newest report shows no valid node time or a drift over drift_s."""
        if not reports:
            return False
        newest = reports[-1]
        if newest.get("rel_time"):
            return True
        t = newest.get("t")
        return t is not None and abs(t - now) > self.drift_s

    def after_register(self, ep: str, registered: bool) -> None:
        """Hook for a Register (registered=True) or Update (False): sync on Register, and on
        an Update while this node's time was never set or its last time Write failed (a NON
        Write can be lost, e.g. one that reaches a client before it listens; a client that
        never Sends would otherwise wait for its next Register)."""
        if registered:
            self._spawn(ep, force=True)
        elif ep not in self._last:
            self._spawn(ep, force=False)

    def after_reports(self, ep: str, reports: list[dict[str, Any]]) -> None:
        """Hook for a stored Send: sync if its newest report shows drift."""
        if self.needs_sync(reports, self.clock.now()):
            self._spawn(ep, force=False)

    def _spawn(self, ep: str, force: bool) -> None:
        if not self.clock.trusted():
            self.skipped_untrusted += 1
            if not self._untrusted_logged:
                self._untrusted_logged = True
                log.warning("the gateway clock is not NTP-synchronised: not setting nodes' time "
                            "(they hold their default level until it is). Check `timedatectl` "
                            "and the NTP server")
            return
        if self._untrusted_logged:
            self._untrusted_logged = False
            log.info("the gateway clock is synchronised again: setting nodes' time resumes")
        now = self.clock.now()
        if not force and abs(now - self._last.get(ep, -1e18)) < self.min_interval:
            return
        self._last[ep] = now
        task = asyncio.create_task(self._write(ep))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _write(self, ep: str) -> None:
        address = self.registry.address(ep)
        try:
            if not self.clock.trusted():  # re-check: trust may have been lost meanwhile
                return
            # the time is read when the node's turn comes, not before a wait in its queue
            await self.client.write(address, PATH_TIME, lambda: int(self.clock.now()), mtype=NON,
                                    timeout=WRITE_TIMEOUT_S)
            self.writes += 1
            log.debug("set the time of node %s", ep)
        except (NodeUnreachable, NodeRefused) as exc:
            log.warning("could not set the time of node %s (%s); will retry at its next report, "
                        "Update or Register", ep, exc)
            self._last.pop(ep, None)

    async def stop(self) -> None:
        for t in list(self._tasks):
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
