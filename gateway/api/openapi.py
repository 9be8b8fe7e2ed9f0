"""The OpenAPI 3.0 document of the HTTP API, served at /openapi.json.

Kept as data beside the routes; tests/gateway/test_api.py checks that every route of the app
is described here and every path here is routed, so the two cannot drift.
"""

from __future__ import annotations

from typing import Any

VERSION = "1.0.0"


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict[str, Any], description: str = "OK") -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


ERRORS = {
    "400": _json(_ref("Error"), "invalid request (value out of range, bad query)"),
    "401": _json(_ref("Error"), "missing or wrong bearer token"),
    "403": _json(_ref("Error"), "the read-only token ([api] read_token) on a route that changes "
                 "something"),
    "404": _json(_ref("Error"), "no such node, group, cabinet, target or batch"),
    "408": _json(_ref("Error"), "the request body did not arrive within [api] header_timeout_s"),
    "503": _json(_ref("Error"), "the store cannot be read or written now"),
}


def _q(name: str, description: str, schema: dict | None = None, required: bool = False) -> dict:
    return {"name": name, "in": "query", "required": required, "description": description,
            "schema": schema or {"type": "string"}}


def _p(name: str, description: str) -> dict:
    return {"name": name, "in": "path", "required": True, "description": description,
            "schema": {"type": "string"}}


def _op(summary: str, ok: dict, params: list | None = None, body: dict | None = None,
        op_id: str = "") -> dict:
    op: dict[str, Any] = {"summary": summary, "operationId": op_id,
                          "responses": {"200": ok, **ERRORS}}
    if params:
        op["parameters"] = params
    if body:
        op["requestBody"] = {"required": True,
                             "content": {"application/json": {"schema": body}}}
    return op


# One representation for times in every answer (docs/cli.md "Times"): ISO 8601 UTC with Z.
TIME = {"type": "string", "format": "date-time", "example": "2026-01-15T18:00:00Z"}
TARGET = {"type": "string", "description": "a node id, group:NAME, cabinet:NAME or all"}
WAIT = {"type": "number", "minimum": 0, "maximum": 60,
        "description": "seconds to wait for the first delivery attempt (default 5)"}
RANGE = [_q("from", "start, ISO 8601 date or date-time (UTC if no zone), on a 15-minute "
            "boundary"),
         _q("to", "end (exclusive), ISO 8601, on a 15-minute boundary")]
QUALITIES = ["measured", "interpolated", "estimated", "missing"]

SCHEMAS: dict[str, Any] = {
    "Error": {"type": "object", "required": ["error"], "properties": {
        "error": {"type": "object", "required": ["code", "message"], "properties": {
            "code": {"type": "string", "enum": ["bad_request", "unauthorized", "not_found",
                                                "unavailable", "internal"]},
            "message": {"type": "string"}}}}},
    "Node": {"type": "object", "required": ["id", "address", "online", "last_report"], "properties": {
        "id": {"type": "string"}, "address": {"type": "string", "nullable": True},
        "online": {"type": "boolean"}, "registered": {"type": "boolean"},
        "lifetime": {"type": "integer", "nullable": True},
        "registered_at": {"type": "string", "format": "date-time", "nullable": True},
        "last_seen": {"type": "string", "format": "date-time", "nullable": True},
        "last_report": {"type": "string", "format": "date-time", "nullable": True},
        "group": {"type": "string", "nullable": True}, "cabinet": {"type": "string", "nullable": True},
        "lat": {"type": "number", "nullable": True}, "lon": {"type": "number", "nullable": True},
        "rated_w": {"type": "number", "nullable": True},
        "default_level": {"type": "integer", "nullable": True},
        "fw": {"type": "string", "nullable": True}, "tz": {"type": "string", "nullable": True},
        "level": {"type": "integer", "nullable": True}, "power_w": {"type": "number", "nullable": True},
        "wh": {"type": "number", "nullable": True,
               "description": "an integer when the node reports whole Wh (ours do)"},
        "on_time": {"type": "integer", "nullable": True},
        "faults": {"type": "array", "items": {"type": "string"}},
        "fault_flags": {"type": "integer"},
        "modbus_slot": {"type": "integer", "nullable": True},
        "objects": {"type": "array", "items": {"type": "integer"}, "nullable": True,
                    "description": "LwM2M object ids the node registered (null: not known yet)"},
        "hold": {"type": "object", "nullable": True, "required": ["kind", "level", "until"],
                 "description": "the active hold: an override, or a manual level (24 h); null "
                                "when the schedule is in charge",
                 "properties": {"kind": {"type": "string", "enum": ["level", "override"]},
                                "level": {"type": "integer"}, "until": TIME,
                                "batch": {"type": "string"}}},
        "implausible_reports": {"type": "integer"},
        "implausible_last": {"type": "object", "nullable": True, "properties": {
            "at": {"type": "string", "format": "date-time", "nullable": True},
            "reason": {"type": "string"}}}}},
    "Command": {"type": "object", "properties": {
        "id": {"type": "integer"}, "batch": {"type": "string"}, "target": {"type": "string"},
        "node": {"type": "string"},
        "kind": {"type": "string", "enum": ["level", "on_off", "override", "schedule"]},
        "payload": {"type": "object"},
        "state": {"type": "string", "enum": ["pending", "delivering", "delivered", "failed",
                                             "cancelled"]},
        "reason": {"type": "string", "nullable": True}, "attempts": {"type": "integer"},
        "created_at": {"type": "string", "format": "date-time"},
        "updated_at": {"type": "string", "format": "date-time"},
        "delivered_at": {"type": "string", "format": "date-time", "nullable": True}}},
    "Batch": {"type": "object", "required": ["batch", "commands", "summary"], "properties": {
        "batch": {"type": "string"}, "target": {"type": "string"}, "kind": {"type": "string"},
        "summary": {"type": "object", "additionalProperties": {"type": "integer"},
                    "description": "number of commands per state"},
        "commands": {"type": "array", "items": _ref("Command")}}},
    "Steps": {"type": "array", "maxItems": 16, "description": "SPEC §5.2 [kind, minutes, level]",
              "items": {"type": "array", "minItems": 3, "maxItems": 3,
                        "items": {"type": "integer"}}},
    "Energy": {"type": "object", "required": ["selection", "by", "total_wh", "rows"], "properties": {
        "selection": {"type": "string", "description": "site, node:ID, group:NAME or cabinet:NAME"},
        "by": {"type": "string", "enum": ["15min", "hour", "day", "month"]},
        "timezone": {"type": "string"},
        "start": {**TIME, "nullable": True,
                  "description": "the window answered (what was asked, or the data's)"},
        "end": {**TIME, "nullable": True},
        "total_wh": {"type": "number"}, "quality": {"type": "string", "enum": QUALITIES},
        "rows": {"type": "array", "items": _ref("EnergyRow")},
        "circuit": _ref("Circuit")}},
    "EnergyRow": {"type": "object", "required": ["start", "end", "wh", "quality", "coverage",
                                                 "clipped"], "properties": {
        "start": TIME, "end": TIME, "local": {"type": "string"},
        "wh": {"type": "number"}, "quality": {"type": "string", "enum": QUALITIES},
        "coverage": {"type": "number", "minimum": 0, "maximum": 1,
                     "description": "buckets present / expected in [start, end)"},
        "clipped": {"type": "boolean",
                    "description": "the period was cut to the window; start/end are the cut's"}}},
    "Circuit": {"type": "object", "properties": {
        "cabinet": {"type": "string"}, "start": TIME, "end": TIME,
        "compared": {"type": "object", "nullable": True,
                     "description": "the span every source with data covers, which is compared",
                     "properties": {"start": TIME, "end": TIME}},
        "nodes": {"type": "integer"}, "nodes_wh": {"type": "number"},
        "meters": {"type": "array", "items": {"type": "object"}},
        "meter_wh": {"type": "number", "nullable": True},
        "unaccounted_wh": {"type": "number", "nullable": True},
        "unaccounted_pct": {"type": "number", "nullable": True},
        "quality": {"type": "string", "enum": QUALITIES}}},
    "SavingsFigures": {"type": "object", "properties": {
        "baseline_wh": {"type": "number", "nullable": True},
        "actual_wh": {"type": "number"}, "saved_wh": {"type": "number", "nullable": True},
        "saved_pct": {"type": "number", "nullable": True,
                      "description": "null when coverage is below min_coverage (see withheld)"},
        "coverage": {"type": "number", "nullable": True, "minimum": 0, "maximum": 1,
                     "description": "fraction of the baseline's night hours with data"},
        "withheld": {"type": "string", "nullable": True,
                     "description": "why saved_pct is null, else null"},
        "nodes": {"type": "integer"}}},
    "Savings": {"type": "object", "required": ["baseline", "start", "end", "site", "nodes"],
                "properties": {
        "selection": {"type": "string"}, "baseline": {"type": "string",
                                                      "enum": ["dusk-to-dawn", "reference"]},
        "start": TIME, "end": TIME,
        "night_hours": {"type": "number"}, "min_coverage": {"type": "number"},
        "site": _ref("SavingsFigures"),
        "cabinets": {"type": "array", "items": _ref("SavingsFigures")},
        "nodes": {"type": "array", "items": _ref("SavingsFigures")},
        "without_baseline": {"type": "array", "items": {"type": "string"}}}},
    "Meter": {"type": "object", "properties": {
        "name": {"type": "string"}, "cabinet": {"type": "string", "nullable": True},
        "import_wh": {"type": "number", "nullable": True},
        "power_w": {"type": "number", "nullable": True}, "status": {"type": "string"},
        "last_poll": {**TIME, "nullable": True},
        "missing_registers": {
            "type": "array", "description": "profile registers the meter refuses (exception 2); "
                                            "polled without them (docs/modbus.md)",
            "items": {"type": "object", "properties": {
                "name": {"type": "string"}, "function": {"type": "integer"},
                "address": {"type": "integer"}, "count": {"type": "integer"}}}}}},
}

PATHS: dict[str, Any] = {
    "/api/health": {"get": _op("Service status, clock and counters", _json({
        "type": "object", "required": ["status", "clock"], "properties": {
            "status": {"type": "string"}, "coap": {"type": "string"},
            "clock": {"type": "object", "properties": {
                "now": TIME, "simulated": {"type": "boolean"}, "trusted": {"type": "boolean"}}},
            "nodes_online": {"type": "integer"},
            "coap_stats": {"type": "object", "additionalProperties": {"type": "integer"}},
            "time_writes": {"type": "integer"},
            "oscore": {"type": "object", "nullable": True,
                       "description": "null with [coap] security = none",
                       "additionalProperties": {"type": "integer"}}}}),
                               op_id="health")},
    "/api/nodes": {"get": _op(
        "List nodes with registration, online status, last report and faults",
        _json({"type": "object", "properties": {"nodes": {"type": "array", "items": _ref("Node")}}}),
        [_q("group", "only this group"), _q("cabinet", "only this cabinet")], op_id="listNodes")},
    "/api/nodes/{id}": {"get": _op(
        "One node, with its recent commands and its schedule",
        _json({"type": "object", "properties": {"node": _ref("Node"),
                                                "commands": {"type": "array", "items": _ref("Command")},
                                                "schedule": {"type": "object", "nullable": True}}}),
        [_p("id", "node id")], op_id="showNode")},
    "/api/set-level": {"post": _op(
        "Set the dimming level of a node or group (held 24 h, then the schedule resumes)",
        _json(_ref("Batch")), body={"type": "object", "required": ["target", "level"], "properties": {
            "target": TARGET, "level": {"type": "integer", "minimum": 0, "maximum": 100},
            "wait": WAIT}}, op_id="setLevel")},
    "/api/on-off": {"post": _op(
        "Switch a node or group on (last level) or off", _json(_ref("Batch")),
        body={"type": "object", "required": ["target", "on"], "properties": {
            "target": TARGET, "on": {"type": "boolean"}, "wait": WAIT}}, op_id="onOff")},
    "/api/override": {"post": _op(
        "Hold a level for a duration (SPEC §5.3); level null cancels", _json(_ref("Batch")),
        body={"type": "object", "required": ["target", "level"], "properties": {
            "target": TARGET, "level": {"type": "integer", "minimum": 0, "maximum": 100,
                                        "nullable": True},
            "seconds": {"type": "integer", "minimum": 1, "maximum": 604800}, "wait": WAIT}},
        op_id="override")},
    "/api/schedules/{target}": {
        "get": _op("The schedule last pushed to a target",
                   _json({"type": "object", "properties": {"target": {"type": "string"},
                                                           "steps": _ref("Steps"),
                                                           "updated_at": {"type": "string"}}}),
                   [_p("target", "node id, group:NAME, cabinet:NAME or all")], op_id="showSchedule"),
        "put": _op("Push a schedule to a target", _json(_ref("Batch")),
                   [_p("target", "node id, group:NAME, cabinet:NAME or all")],
                   body={"type": "object", "required": ["steps"],
                         "properties": {"steps": _ref("Steps"), "wait": WAIT}},
                   op_id="pushSchedule")},
    "/api/commands": {"get": _op(
        "Commands and their delivery state, newest first",
        _json({"type": "object", "properties": {
            "commands": {"type": "array", "items": _ref("Command")},
            "summary": {"type": "object", "additionalProperties": {"type": "integer"}}}}),
        [_q("batch", "only this batch"), _q("node", "only this node"),
         _q("state", "only this state"), _q("limit", "at most this many (default 1000)",
                                            {"type": "integer", "minimum": 1, "maximum": 100000})],
        op_id="listCommands")},
    "/api/energy": {"get": _op(
        "Energy of a node, group, cabinet or the site over exactly the window asked (first and "
        "last periods clipped to it); at most 40,000 rows (else 400: use a coarser by)",
        _json(_ref("Energy")),
        [_q("node", "node id"), _q("group", "group"), _q("cabinet", "cabinet"), *RANGE,
         _q("by", "bucket size", {"type": "string", "enum": ["15min", "hour", "day", "month"]})],
        op_id="energy")},
    "/api/savings": {"get": _op(
        "Savings against the baseline ([savings] in the config), per luminaire, cabinet and site; "
        "default period: the 30 days to the last whole quarter hour; a baseline counts only the "
        "night hours with data, and saved_pct is withheld below [savings] min_coverage",
        _json(_ref("Savings")),
        [*RANGE, _q("node", "only this node"), _q("group", "only this group"),
         _q("cabinet", "only this cabinet")], op_id="savings")},
    "/api/faults": {"get": _op(
        "Nodes with active faults (from their last report)",
        _json({"type": "object", "properties": {"faults": {"type": "array", "items": _ref("Node")}}}),
        op_id="faults")},
    "/api/backup": {"post": _op(
        "Online backup of the store into [store] backup_dir on the gateway (no path: a new "
        "timestamped file; else an absolute path inside that directory, never the live "
        "database nor an existing file that is not an slgw backup)",
        _json({"type": "object", "properties": {"path": {"type": "string"},
                                                "bytes": {"type": "integer"}}}),
        body={"type": "object", "properties": {"path": {"type": "string"}}},
        op_id="backup")},
    "/api/meters": {"get": _op(
        "Energy meters polled over Modbus and their status",
        _json({"type": "object", "properties": {"meters": {"type": "array", "items": _ref("Meter")}}}),
        op_id="meters")},
    "/api/northbound": {"get": _op(
        "The MQTT publisher (docs/northbound.md): connected, outbox depth, oldest entry, "
        "messages dropped when the outbox was full, last error",
        _json({"type": "object", "required": ["enabled", "connected", "outbox"], "properties": {
            "enabled": {"type": "boolean"}, "connected": {"type": "boolean"},
            "broker": {"type": "string"}, "gateway_id": {"type": "string"},
            "last_error": {"type": "string", "nullable": True},
            "outbox": {"type": "object", "properties": {
                "depth": {"type": "integer"}, "dropped": {"type": "integer"},
                "recording": {"type": "boolean"},
                "oldest": {"type": "object", "nullable": True}}}}}),
        op_id="northbound")},
    "/api/keys/rotate": {"post": _op(
        "A new OSCORE key for one node, sent to it under its current key (PUT /10250/0/30); "
        "state written = the node answered 2.04, unconfirmed = no answer (both keys stay "
        "accepted until it uses one); 404 no key or not registered, 502 the node refused",
        _json({"type": "object", "properties": {
            "node": {"type": "string"}, "old_node_sender_id": {"type": "string"},
            "node_sender_id": {"type": "string"},
            "state": {"type": "string", "enum": ["written", "unconfirmed"]}}}),
        body={"type": "object", "required": ["node"], "properties": {
            "node": {"type": "string"},
            "wait": {"type": "number", "minimum": 0, "maximum": 300,
                     "description": "seconds to wait for the node's answer (default 30)"}}},
        op_id="rotateKey")},
    "/openapi.json": {"get": {"summary": "This document", "operationId": "openapi",
                              "security": [],
                              "responses": {"200": _json({"type": "object"})}}},
}


def _firmware_paths() -> dict[str, Any]:
    from gateway.ota.api import openapi_paths  # gateway/ota owns its routes and their description
    return openapi_paths(_op, _json)


def document() -> dict[str, Any]:
    """The OpenAPI 3.0.3 document (a fresh dict)."""
    return {
        "openapi": "3.0.3",
        "info": {"title": "slgw: street-lighting gateway API", "version": VERSION,
                 "description": "Local HTTP/JSON API of the street-lighting gateway. Every "
                                "response is JSON; errors are {\"error\": {code, message}}. A "
                                "bearer token is required when the API is bound to anything "
                                "but loopback, or whenever [api] token is set."},
        "servers": [{"url": "/"}],
        "security": [{"bearer": []}],
        "components": {"schemas": SCHEMAS, "securitySchemes": {
            "bearer": {"type": "http", "scheme": "bearer"}}},
        "paths": {**PATHS, **_firmware_paths()},
    }
