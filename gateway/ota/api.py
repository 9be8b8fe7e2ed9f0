"""HTTP API of firmware updates (docs/api.md "Firmware"): the routes and their OpenAPI paths.

``GET /api/firmware`` status (``?refresh=1`` reads object 5 of every online node first);
``POST /api/firmware/bundles`` ``{"path"}`` adds a build directory that the gateway process can
read (a path on the gateway's machine, as `slgw backup` writes one); ``POST
/api/firmware/rollout`` ``{"target", "bundle", "canary_pct", "halt_pct", "wait"}`` starts a
roll-out (and waits up to ``wait`` s, 0-600, for it to end).
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from gateway.ota.bundles import BundleError
from gateway.ota.rollout import RolloutError


def _app() -> Any:
    import gateway.api.app as app  # app.py lists these routes: imported here, not at the top
    return app


def ApiError(status: int, code: str, message: str) -> Exception:  # noqa: N802 - app.ApiError
    return _app().ApiError(status, code, message)


async def _body(request: web.Request) -> dict[str, Any]:
    return await _app()._body(request)


def _fw(request: web.Request) -> Any:
    fw = request.app[_app().GW].firmware
    if fw is None:
        raise ApiError(503, "unavailable", "the firmware service is not running")
    return fw


async def status(request: web.Request) -> web.Response:
    refresh = request.query.get("refresh", "0") not in ("0", "", "false")
    return web.json_response(await _fw(request).status(refresh=refresh))


async def add_bundle(request: web.Request) -> web.Response:
    body = await _body(request)
    path = body.get("path")
    if not isinstance(path, str) or not path:
        raise ApiError(400, "bad_request", "body must be {\"path\": BUILD_DIR}")
    try:
        return web.json_response(_fw(request).add(path))
    except BundleError as exc:
        raise ApiError(400, "bad_request", str(exc)) from None


async def rollout(request: web.Request) -> web.Response:
    body = await _body(request)
    target, ref = body.get("target"), body.get("bundle")
    canary, halt, wait = body.get("canary_pct", 10), body.get("halt_pct"), body.get("wait", 0)
    if not isinstance(target, str) or not target or not isinstance(ref, str) or not ref:
        raise ApiError(400, "bad_request", "target and bundle (version or hash) are required")
    for name, v in (("canary_pct", canary), ("halt_pct", halt)):
        if v is not None and (isinstance(v, bool) or not isinstance(v, int | float) or not 0 <= v <= 100):
            raise ApiError(400, "bad_request", f"{name} must be a percentage 0-100")
    if isinstance(wait, bool) or not isinstance(wait, int | float) or not 0 <= wait <= 600:
        raise ApiError(400, "bad_request", "wait must be 0-600 seconds")
    fw = _fw(request)
    try:
        ro = await fw.start_rollout(target, ref, float(canary), None if halt is None else float(halt))
    except BundleError as exc:
        raise ApiError(404, "not_found", str(exc)) from None
    except RolloutError as exc:
        code = 404 if str(exc).startswith("no node") else 400
        raise ApiError(code, "not_found" if code == 404 else "bad_request", str(exc)) from None
    if wait:
        ro = await fw.wait(float(wait))
    return web.json_response(ro)


ROUTES = [
    ("GET", "/api/firmware", status),
    ("POST", "/api/firmware/bundles", add_bundle),
    ("POST", "/api/firmware/rollout", rollout),
]


def openapi_paths(op: Any, json_: Any) -> dict[str, Any]:
    """The OpenAPI paths of the routes above (``op``, ``json_``: gateway/api/openapi.py's
    helpers)."""
    node = {"type": "object", "properties": {
        "id": {"type": "string"}, "version": {"type": "string", "nullable": True},
        "slot": {"type": "string", "nullable": True, "description": "factory, a or b; /trial or /safe"},
        "state": {"type": "string", "description": "object 5 State: idle, downloading, downloaded, updating"},
        "result": {"type": "integer", "nullable": True, "description": "object 5 Update Result (1 success, 8 failed...)"},
        "result_text": {"type": "string"}, "why": {"type": "string"},
        "phase": {"type": "string", "description": "the roll-out's step for this node"},
        "bundle": {"type": "string", "nullable": True}}}
    ro = {"type": "object", "nullable": True, "properties": {
        "target": {"type": "string"}, "bundle": {"type": "string"}, "version": {"type": "string"},
        "state": {"type": "string", "enum": ["running", "done", "halted", "interrupted"]},
        "reason": {"type": "string"}, "canary_pct": {"type": "number"}, "halt_pct": {"type": "number"},
        "nodes": {"type": "integer"}, "succeeded": {"type": "integer"}, "failed": {"type": "integer"},
        "skipped": {"type": "integer"}, "waves": {"type": "array", "items": {"type": "object"}}}}
    bundle = {"type": "object", "properties": {
        "bundle": {"type": "string"}, "version": {"type": "string"}, "files": {"type": "integer"},
        "bytes": {"type": "integer"}}}
    return {
        "/api/firmware": {"get": op(
            "Bundles, the last roll-out and every node's update state", json_({
                "type": "object", "properties": {"bundles": {"type": "array", "items": bundle},
                                                 "rollout": ro, "nodes": {"type": "array", "items": node}}}),
            params=[{"name": "refresh", "in": "query", "required": False, "schema": {"type": "string"},
                     "description": "1: read object 5 of every online node first"}],
            op_id="firmwareStatus")},
        "/api/firmware/bundles": {"post": op(
            "Add a `slnode build` output directory (a path the gateway can read) as a bundle", json_(bundle),
            body={"type": "object", "required": ["path"], "properties": {"path": {"type": "string"}}},
            op_id="addBundle")},
        "/api/firmware/rollout": {"post": op(
            "Start a staged roll-out: a canary wave, then doubling waves; halts by itself above halt_pct "
            "failures", json_(ro),
            body={"type": "object", "required": ["target", "bundle"], "properties": {
                "target": {"type": "string"}, "bundle": {"type": "string", "description": "version or hash"},
                "canary_pct": {"type": "number", "minimum": 0, "maximum": 100},
                "halt_pct": {"type": "number", "minimum": 0, "maximum": 100},
                "wait": {"type": "number", "minimum": 0, "maximum": 600}}},
            op_id="startRollout")},
    }
