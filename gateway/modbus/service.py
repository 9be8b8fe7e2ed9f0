"""The Modbus part of the gateway: meters polled into the store, and the SCADA bridge.

The service calls ``start_modbus(config, store, submit_command)`` once (gateway/service.py)
and gets a handle with ``status()`` (for GET /api/meters and ``slgw meters``) and
``stop()``. Meter readings enter the store like node reports: source ``meter:<name>``,
kind ``meter``, with the meter's ``cabinet`` set on its nodes row, so the 15-minute
aggregation and the circuit check (gateway/energy) treat it as the cabinet's reference.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from .bridge import Bridge, SubmitCommand
from .bus import Bus
from .config import MeterConfig, parse_meters, parse_server
from .poller import LineScheduler, MeterPoller

log = logging.getLogger(__name__)


class ModbusHandle:
    """What start_modbus returns: the running pollers and bridge."""

    def __init__(self, lines: list[LineScheduler], bridge: Bridge | None) -> None:
        self.lines = lines
        self.bridge = bridge

    @property
    def pollers(self) -> list[MeterPoller]:
        """Every meter's poller, in config order within each line."""
        return [p for line in self.lines for p in line.pollers]

    def status(self) -> list[dict]:
        """Each meter's name, cabinet, import_wh, power_w, status, last_poll and error counters."""
        return [p.status_dict() for p in self.pollers]

    def bridge_status(self) -> dict | None:
        """The bridge server's address and counters, or None when it is off."""
        if self.bridge is None:
            return None
        return {"bind": self.bridge.cfg.bind, "port": self.bridge.port,
                "writable": self.bridge.cfg.writable, **self.bridge.counters}

    async def stop(self) -> None:
        """Stop polling (closing every line) and the bridge server."""
        for line in self.lines:
            await line.stop()
        if self.bridge is not None:
            await self.bridge.stop()


def store_sink(store: Any) -> Callable[[MeterConfig, dict], Awaitable[None]]:
    """A poller sink that ingests each reading as a meter report (idempotent on seq)."""

    async def sink(meter: MeterConfig, reading: dict) -> None:
        report = {"seq": reading["seq"], "t": reading["t"], "wh": reading["wh"], "w": reading["w"]}
        await store.ingest_reports(meter.source, [report], kind="meter")

    return sink


async def register_meters(store: Any, meters: list[MeterConfig], now: float) -> None:
    """Create each meter's nodes row (kind 'meter') and set its cabinet from the config."""
    from gateway.store.readings import ensure_source

    def fn(conn: sqlite3.Connection) -> None:
        for m in meters:
            ensure_source(conn, m.source, "meter", now)
            conn.execute("UPDATE nodes SET cabinet = ? WHERE id = ?", (m.cabinet, m.source))

    await store.write(fn)


async def start_modbus(config: Any, store: Any, submit_command: SubmitCommand | None, *,
                       registry: Any = None, clock: Any = None,
                       sink: Callable[[MeterConfig, dict], Awaitable[None]] | None = None) -> ModbusHandle:
    """Validate the Modbus config, start polling every meter, and start the bridge if enabled.

    ``registry`` (gateway.nodes.Registry) and ``clock`` (gateway.clock.Clock) are optional:
    with them the bridge reports the registry's live online state and the readings carry the
    (possibly simulated) gateway time; without, online is derived from the nodes table and
    time is the real clock. ``sink`` replaces the store as the readings' destination (tests).

    Raises:
        ModbusConfigError: an invalid meter, profile or server setting (names the meter/key).
    """
    base = Path(os.path.dirname(os.path.abspath(config.source))) if getattr(config, "source", None) else None
    meters = [m for m in parse_meters(getattr(config, "modbus_raw", None), base) if m.enabled]
    server_cfg = parse_server(getattr(config, "modbus_server_raw", None))
    now: Callable[[], float] = clock.now if clock is not None else time.time
    # pymodbus logs every timeout and bad frame at ERROR; the bus counts and reports them
    # once per state change with what to do, which is what a journal reader needs.
    logging.getLogger("pymodbus").setLevel(logging.CRITICAL)
    if meters and sink is None:
        await register_meters(store, meters, now())
    buses: dict[str, Bus] = {}
    by_bus: dict[str, list[MeterPoller]] = {}
    the_sink = sink or store_sink(store)
    for m in meters:
        bus = buses.get(m.bus_key) or buses.setdefault(m.bus_key, Bus.for_meter(m))
        bus.silence = max(bus.silence, m.silence)
        by_bus.setdefault(m.bus_key, []).append(MeterPoller(m, bus, the_sink, now))
    lines = [LineScheduler(buses[k], ps) for k, ps in by_bus.items()]
    bridge = None
    if server_cfg.enabled:
        offline_after = getattr(getattr(config, "nodes", None), "offline_after_s", 0.0) or 0.0
        is_online = registry.is_online if registry is not None else None
        bridge = Bridge(server_cfg, store, submit_command, clock=now, is_online=is_online,
                        offline_after_s=offline_after)
        await bridge.start()
    for line in lines:
        line.start()
    if meters:
        log.info("modbus: polling %d meter(s) on %d line(s): %s", len(meters), len(lines),
                 ", ".join(f"{m.name} ({m.profile.name}, {m.bus_key} unit {m.unit}, every {m.period:g} s)"
                           for m in meters))
    return ModbusHandle(lines, bridge)
