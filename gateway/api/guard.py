"""Connection limits of the HTTP API (issue 11): half-open connections cannot lock it out.

Found: 1,100 connections that never sent a request (or only part of one) held one file
descriptor each until aiohttp's keep-alive timeout (about an hour); past the process's
descriptor limit (1,024 under systemd's default) every accept failed, /api/health was out of
reach and asyncio logged "Too many open files" in a loop. The defences, in layers:

- a header timeout: a connection that has not completed a request within
  ``[api] header_timeout_s`` is closed (aiohttp's keep-alive timer, which also runs from the
  moment a connection opens);
- at most ``[api] max_connections`` open at once, well under the descriptor limit: when a new
  one would pass it, the oldest connection that is waiting for a request is closed (never
  one whose request is being handled), so a fresh client (a monitor's /api/health, the CLI)
  always gets in;
- the descriptor limit itself is raised to its hard limit at start-up
  (``raise_nofile_limit``), and the systemd unit sets ``LimitNOFILE=``;
- one log line per minute summarises closed connections, never one line per connection.
"""

from __future__ import annotations

import asyncio
import logging
import resource
import time
from collections.abc import Callable
from typing import Any

log = logging.getLogger("slgw.api")

NOFILE_TARGET = 65536


def raise_nofile_limit(target: int = NOFILE_TARGET) -> tuple[int, int]:
    """Raise the soft RLIMIT_NOFILE towards min(hard, target); return (soft, hard) after."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = target if hard == resource.RLIM_INFINITY else min(hard, target)
    if soft != resource.RLIM_INFINITY and soft < want:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
            soft = want
        except (ValueError, OSError):
            pass
    return soft, hard


def _waiting_for_request(handler: Any) -> bool:
    """True if an aiohttp RequestHandler has no request being handled (idle, or headers not
    complete). Relies on aiohttp's private `_waiter` (3.x): the future start() awaits for the
    next request; if it is absent the connection counts as busy and is never closed here."""
    waiter = getattr(handler, "_waiter", None)
    return waiter is not None and not waiter.done()


class ConnectionGuard:
    """Caps the open connections of an aiohttp `web.Server` (see the module docstring)."""

    def __init__(self, server: Any, max_connections: int,
                 clock: Callable[[], float] = time.monotonic, log_interval: float = 60.0) -> None:
        self.server = server
        self.max_connections = max_connections
        self.clock = clock
        self.log_interval = log_interval
        self.closed_idle = 0       # total, for tests and health
        self._pending_log = 0      # closed since the last log line
        self._last_log = -float("inf")
        self._timer: asyncio.TimerHandle | None = None
        orig = server.connection_made

        def connection_made(handler: Any, transport: Any) -> None:
            orig(handler, transport)
            self._enforce(handler)

        server.connection_made = connection_made

    def _enforce(self, newest: Any) -> None:
        conns = self.server._connections  # insertion order: oldest first
        excess = len(conns) - self.max_connections
        if excess <= 0:
            return
        victims = []
        for handler in conns:
            if handler is not newest and _waiting_for_request(handler):
                victims.append(handler)
                if len(victims) >= excess:
                    break
        for handler in victims:
            handler.force_close()
            transport = conns.get(handler)
            if transport is not None:
                transport.abort()  # now, not after a flush: the descriptor is what we need
        self.closed_idle += len(victims)
        self._pending_log += len(victims)
        self.log_closed()

    def log_closed(self) -> None:
        """Log the connections closed since the last line, at most once per `log_interval`;
        what is left waits for a timer, so the count of a flood that stopped is logged too."""
        now = self.clock()
        if not self._pending_log:
            return
        if now - self._last_log >= self.log_interval:
            log.warning("HTTP API: closed %d connection(s) that sent no complete request, to stay "
                        "within [api] max_connections = %d (%d closed since start-up). A client "
                        "is opening connections without using them (a scan or an attack?); "
                        "summarised at most once a minute", self._pending_log,
                        self.max_connections, self.closed_idle)
            self._pending_log = 0
            self._last_log = now
        elif self._timer is None:
            delay = self._last_log + self.log_interval - now
            self._timer = asyncio.get_running_loop().call_later(delay + 0.05, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        self.log_closed()
