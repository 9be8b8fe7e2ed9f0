"""The simulated clock every process of one HIL test shares.

    sim_unix = start + (real_unix_now - anchor) * speed

The same ``start`` (ISO 8601 and Unix seconds), ``anchor`` (a real Unix time) and ``speed`` are
passed to the gateway (``--clock-start/--clock-anchor/--clock-speed``), to every node process
(``slnode emulate`` takes the same flags) and to the meter emulators (``--speed``: a meter
integrates its load at ``speed`` simulated seconds per real second), so they all agree on time.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime


def iso(unix: float) -> str:
    """Unix seconds as an ISO 8601 UTC string ("2026-12-15T15:00:00Z")."""
    return datetime.fromtimestamp(unix, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_iso(text: str) -> float:
    """ISO 8601 to Unix seconds (a time without a zone is UTC)."""
    d = datetime.fromisoformat(text.replace("Z", "+00:00"))
    if d.tzinfo is None:
        d = d.replace(tzinfo=UTC)
    return d.timestamp()


class SimClock:
    """One test's simulated clock. ``start`` is an ISO 8601 time or Unix seconds."""

    def __init__(self, start: str | float, speed: float = 1.0, anchor: float | None = None) -> None:
        self.start = parse_iso(start) if isinstance(start, str) else float(start)
        self.speed = float(speed)
        # a little in the future, so processes that start later still see the clock from `start`
        self.anchor = time.time() if anchor is None else float(anchor)

    def now(self) -> float:
        """Simulated Unix time now."""
        return self.start + (time.time() - self.anchor) * self.speed

    def real_at(self, sim: float) -> float:
        """The real Unix time at which the simulated clock reads ``sim``."""
        return self.anchor + (sim - self.start) / self.speed

    def sleep_until(self, sim: float) -> None:
        """Sleep (really) until the simulated clock reads ``sim``."""
        delay = self.real_at(sim) - time.time()
        if delay > 0:
            time.sleep(delay)

    def sleep(self, sim_seconds: float) -> None:
        """Sleep ``sim_seconds`` of simulated time."""
        time.sleep(max(0.0, sim_seconds / self.speed))

    def flags(self) -> list[str]:
        """The ``--clock-*`` flags shared by ``slgw serve`` and ``slnode emulate``."""
        return ["--clock-start", iso(self.start), "--clock-speed", repr(self.speed),
                "--clock-anchor", repr(self.anchor)]
