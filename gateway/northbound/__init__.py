"""Northbound: the gateway's data handed to MQTT through a durable outbox (issue 13).

Rooms: ``outbox`` (SQL triggers that queue announcements in the transaction that stores the
data; reads, acknowledgements, status), ``publisher`` (the aiomqtt connection that empties it),
``commands`` (level/override commands from a configured topic), ``discovery`` (Home Assistant
discovery and ThingsBoard telemetry). ``start_northbound`` is the service's one call site.
Topics and JSON schemas: docs/northbound.md.
"""

from __future__ import annotations

import logging
from typing import Any

log = logging.getLogger("slgw.northbound")


async def start_northbound(gw: Any) -> Any:
    """Start the publisher of the running Gateway ``gw`` if ``[mqtt] enabled``; returns it or None.

    With MQTT off the outbox triggers are dropped (nothing more is queued; queued messages
    stay for a later start with it on). Raises publisher.NorthboundConfigError for settings
    that cannot work (the service exits 5).
    """
    from . import outbox

    cfg = gw.config.mqtt
    if not cfg.enabled:
        waiting = await gw.store.write(outbox.uninstall)
        if waiting:
            log.info("northbound: [mqtt] is off; %d messages stay in the outbox until it is on "
                     "again", waiting)
        return None
    from .publisher import Publisher

    async def health() -> dict[str, Any]:
        h = await gw.health()
        return {"nodes_online": h.get("nodes_online"), "clock": h.get("clock"),
                "reports": (h.get("coap_stats") or {}).get("reports")}

    pub = Publisher(gw.store, cfg, health=health)
    if cfg.commands:
        from .commands import CommandListener
        listener = CommandListener(pub, gw)
        pub.add_listener(listener.on_connect, listener.on_message)
    await pub.start()
    return pub


async def status(gw: Any) -> dict[str, Any]:
    """``slgw northbound status`` / GET /api/northbound: connection, outbox depth, oldest
    entry, last error (times as ISO 8601 UTC). With MQTT off: ``enabled`` false and the outbox."""
    from gateway.timefmt import iso

    from . import outbox

    if gw.northbound is not None:
        doc = await gw.northbound.status()
    else:
        doc = {"enabled": False, "connected": False, "outbox": await gw.store.read(outbox.status),
               "last_error": None}
    for k in ("connected_since", "last_error_at"):
        if doc.get(k) is not None:
            doc[k] = iso(doc[k])
    oldest = doc["outbox"].get("oldest")
    if oldest:
        for k in ("t", "queued_at"):
            if oldest.get(k) is not None:
                oldest[k] = iso(oldest[k])
    return doc
