"""Optional views of the same data for platforms that need no code: Home Assistant MQTT
discovery (``[mqtt] ha_discovery``) and ThingsBoard's gateway telemetry (``[mqtt] thingsboard``).

Home Assistant: one device per node, its entities reading the node's retained state message
(``BASE/node/NODE/state``): energy (``device_class: energy``, ``state_class:
total_increasing``, Wh; the exported total never decreases, as HA's long-term statistics
need), power, level and a fault problem sensor; availability from ``BASE/status``. The
configs are retained and sent before the first state of each node on every connection.

ThingsBoard: each report also goes to ``v1/gateway/telemetry`` as
``{NODE: [{"ts": ms, "values": {...}}]}``, with the report's own time. Its outbox row leaves
only when both publications are acknowledged.
"""

from __future__ import annotations

import json
from typing import Any

TB_TOPIC = "v1/gateway/telemetry"

# (entity, component, extra config): value_template reads the state message
_ENTITIES = (
    ("energy", "sensor", {"name": "Energy", "device_class": "energy",
                          "state_class": "total_increasing", "unit_of_measurement": "Wh",
                          "value_template": "{{ value_json.energy_wh }}"}),
    ("power", "sensor", {"name": "Power", "device_class": "power", "state_class": "measurement",
                         "unit_of_measurement": "W", "value_template": "{{ value_json.power_w }}"}),
    ("level", "sensor", {"name": "Level", "unit_of_measurement": "%", "state_class": "measurement",
                         "icon": "mdi:brightness-percent",
                         "value_template": "{{ value_json.level }}"}),
    ("fault", "binary_sensor", {"name": "Fault", "device_class": "problem",
                                "value_template": "{{ 'ON' if value_json.faults else 'OFF' }}"}),
)


def ha_configs(gateway_id: str, base: str, ha_prefix: str, node: str) -> list[tuple[str, bytes]]:
    """The retained discovery messages (topic, payload) of one node's device."""
    uid = f"{gateway_id}_{node}".replace(".", "_")
    device = {"identifiers": [uid], "name": node, "manufacturer": "streetlight-edge",
              "model": "luminaire node", "via_device": f"slgw_{gateway_id}"}
    out = []
    for entity, component, extra in _ENTITIES:
        cfg = {**extra, "unique_id": f"{uid}_{entity}", "object_id": f"{uid}_{entity}",
               "state_topic": f"{base}/node/{node}/state", "device": device,
               "availability_topic": f"{base}/status", "payload_available": "online",
               "payload_not_available": "offline"}
        out.append((f"{ha_prefix}/{component}/{uid}/{entity}/config",
                    json.dumps(cfg, separators=(",", ":")).encode()))
    return out


def thingsboard_telemetry(report: dict[str, Any]) -> bytes:
    """ThingsBoard gateway telemetry for one report message (docs/northbound.md)."""
    values = {k: report[k] for k in ("wh", "w", "level", "on_time", "faults", "seq")
              if report.get(k) is not None}
    return json.dumps({report["node"]: [{"ts": int(round(report["t"] * 1000)), "values": values}]},
                      separators=(",", ":")).encode()
