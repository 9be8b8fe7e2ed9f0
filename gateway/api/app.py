"""Routes of the HTTP/JSON API (aiohttp). See openapi.py for the contract and docs/api.md.

`make_app(gw)` takes the running service's parts (gateway.service.Gateway): store, registry,
command queue, clock, config, the Modbus handle. Errors are JSON `{"error": {code, message}}`
with 400 (bad input), 401 (token), 403 (read-only token), 404 (unknown node/target), 503 (store unavailable), 500.

Tokens (decision): when `[api] token` (the operator's) is set, every route except
/openapi.json needs `Authorization: Bearer <token>`; `[api] read_token`, if set, opens the GET
routes only (403 elsewhere). Config loading refuses a non-loopback bind without a long
operator token, and `check_bind` repeats that rule here so the API can never serve a network
unprotected. Connection limits: gateway/api/guard.py.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import math
import sqlite3
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from gateway.api.openapi import document
from gateway.backup import BackupRefused
from gateway.commands import CommandError, NotFoundError
from gateway.config import token_problem
from gateway.ota.api import ROUTES as FIRMWARE_ROUTES
from gateway.store import StoreError
from gateway.timefmt import iso_times
from gateway.web import is_web

log = logging.getLogger("slgw.api")
GW = web.AppKey("gw", object)
DEFAULT_WAIT = 5.0
DEFAULT_LIMIT, MAX_LIMIT = 1000, 100_000  # commands per answer


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str):
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


def check_bind(host: str, token: str, read_token: str = "") -> None:
    """Refuse to serve a non-loopback address without a long operator token (the rule
    load_config applies, checked again where the socket is opened). Raises ValueError."""
    problem = token_problem(host, token, read_token)
    if problem:
        raise ValueError(f"the API cannot start on {host}: {problem}")


def _err(status: int, code: str, message: str) -> web.Response:
    return web.json_response({"error": {"code": code, "message": message}}, status=status)


@web.middleware
async def errors_and_auth(request: web.Request,
                          handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
                          ) -> web.StreamResponse:
    gw = request.app[GW]
    token, read_token = gw.config.api.token, gw.config.api.read_token
    if token and request.path != "/openapi.json" and not is_web(request.path):
        given = request.headers.get("Authorization", "").encode()
        if hmac.compare_digest(given, f"Bearer {token}".encode()):
            pass  # the operator token: every route
        elif read_token and hmac.compare_digest(given, f"Bearer {read_token}".encode()):
            if request.method not in ("GET", "HEAD"):
                return _err(403, "forbidden", "this token is read-only ([api] read_token); "
                            "commands, schedules and backups need the operator token")
        else:
            return _err(401, "unauthorized", "missing or wrong bearer token "
                        "(Authorization: Bearer <[api] token or read_token>)")
    try:
        if request.body_exists:
            await _read_body(request, gw.config.api.header_timeout_s)
        return await handler(request)
    except ApiError as exc:
        resp = _err(exc.status, exc.code, exc.message)
        if exc.status == 408:
            resp.force_close()
        return resp
    except CommandError as exc:
        return _err(400, "bad_request", str(exc))
    except NotFoundError as exc:
        return _err(404, "not_found", str(exc))
    except (StoreError, sqlite3.OperationalError) as exc:
        log.error("API request %s failed: store unavailable (%s); check disk space", request.path, exc)
        return _err(503, "unavailable", f"store unavailable: {exc}")
    except web.HTTPException as exc:
        if is_web(request.path):
            raise  # the web view's redirects and HTML pages
        return _err(exc.status, "not_found" if exc.status == 404 else "bad_request", exc.reason)
    except Exception as exc:
        log.exception("API request %s %s failed unexpectedly; please report this", request.method,
                      request.path)
        return _err(500, "internal", f"internal error: {type(exc).__name__}")


async def _read_body(request: web.Request, timeout: float) -> None:
    """Read the whole body within `timeout`: a body sent a byte at a time would otherwise hold
    its connection, which the connection cap (guard.py) never closes while a request is being
    handled. Raises ApiError 408."""
    try:
        await asyncio.wait_for(request.read(), timeout)
    except TimeoutError:
        raise ApiError(408, "timeout", f"the request body did not arrive within {timeout:g} s "
                       "([api] header_timeout_s); the connection is closed") from None


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def _finite(text: str) -> float:
    v = float(text)
    if not math.isfinite(v):  # 1e999 parses to inf
        raise ValueError(f"number {text} is out of range")
    return v


async def _body(request: web.Request) -> dict[str, Any]:
    # strict JSON (RFC 8259): no NaN/Infinity, no number that overflows to inf
    try:
        body = json.loads(await request.text(), parse_constant=_no_constant, parse_float=_finite)
    except ValueError as exc:
        raise ApiError(400, "bad_request", f"the body must be a JSON object ({exc})") from None
    except Exception:
        raise ApiError(400, "bad_request", "the body must be a JSON object") from None
    if not isinstance(body, dict):
        raise ApiError(400, "bad_request", "the body must be a JSON object")
    return body


def _wait(body: dict[str, Any]) -> float:
    w = body.get("wait", DEFAULT_WAIT)
    if isinstance(w, bool) or not isinstance(w, int | float) or not 0 <= w <= 60:
        raise ApiError(400, "bad_request", "wait must be 0-60 seconds")
    return float(w)


def _summary(commands: list[dict[str, Any]]) -> dict[str, int]:
    return dict(Counter(c["state"] for c in commands))


def _batch(result: dict[str, Any]) -> web.Response:
    result["summary"] = _summary(result["commands"])
    return web.json_response(result)


def _target(body: dict[str, Any]) -> str:
    t = body.get("target")
    if not isinstance(t, str) or not t:
        raise ApiError(400, "bad_request", "target (node id, group:NAME, cabinet:NAME, all) required")
    return t


# --- handlers -------------------------------------------------------------------------------
async def health(request: web.Request) -> web.Response:
    gw = request.app[GW]
    return web.json_response(await gw.health())


async def _with_holds(gw: Any, nodes: list[dict[str, Any]]) -> None:
    """Add each node's active hold (an override or a manual level) and when it ends."""
    holds = await gw.commands.holds(gw.clock.now())
    for n in nodes:
        n["hold"] = holds.get(n["id"])


async def list_nodes(request: web.Request) -> web.Response:
    gw = request.app[GW]
    group, cabinet = request.query.get("group"), request.query.get("cabinet")
    nodes = await gw.registry.list_nodes(group=group, cabinet=cabinet)
    if not nodes and (group is not None or cabinet is not None):  # a typo is not an empty group
        label = f"group:{group}" if group is not None else f"cabinet:{cabinet}"
        raise ApiError(404, "not_found", f"no node matches {label!r} (`slgw nodes` lists the "
                       "groups and cabinets)")
    await _with_holds(gw, nodes)
    return web.json_response({"nodes": nodes})


async def show_node(request: web.Request) -> web.Response:
    gw = request.app[GW]
    node_id = request.match_info["id"]
    node = await gw.registry.show(node_id)
    if node is None:
        raise ApiError(404, "not_found", f"no node {node_id!r}")
    await _with_holds(gw, [node])
    commands = await gw.commands.list(node=node_id, limit=20)
    schedule = await gw.commands.schedule(node_id)
    if schedule is None and node["group"]:
        schedule = await gw.commands.schedule("group:" + node["group"])
    return web.json_response({"node": node, "commands": commands, "schedule": schedule})


async def set_level(request: web.Request) -> web.Response:
    gw = request.app[GW]
    body = await _body(request)
    return _batch(await gw.commands.submit(_target(body), "level", {"level": body.get("level")},
                                           wait=_wait(body)))


async def on_off(request: web.Request) -> web.Response:
    gw = request.app[GW]
    body = await _body(request)
    return _batch(await gw.commands.submit(_target(body), "on_off", {"on": body.get("on")},
                                           wait=_wait(body)))


async def override(request: web.Request) -> web.Response:
    gw = request.app[GW]
    body = await _body(request)
    payload = {"level": body.get("level"), "seconds": body.get("seconds")}
    return _batch(await gw.commands.submit(_target(body), "override", payload, wait=_wait(body)))


async def push_schedule(request: web.Request) -> web.Response:
    gw = request.app[GW]
    body = await _body(request)
    return _batch(await gw.commands.submit(request.match_info["target"], "schedule",
                                           {"steps": body.get("steps")}, wait=_wait(body)))


async def show_schedule(request: web.Request) -> web.Response:
    gw = request.app[GW]
    target = request.match_info["target"]
    sched = await gw.commands.schedule(target)
    if sched is None:
        raise ApiError(404, "not_found", f"no schedule was pushed to {target!r}")
    return web.json_response(sched)


async def list_commands(request: web.Request) -> web.Response:
    gw = request.app[GW]
    q = request.query
    try:
        limit = int(q.get("limit", str(DEFAULT_LIMIT)))
    except ValueError:
        limit = -1
    if not 1 <= limit <= MAX_LIMIT:
        raise ApiError(400, "bad_request", f"limit must be an integer 1..{MAX_LIMIT}")
    cmds = await gw.commands.list(batch=q.get("batch"), node=q.get("node"), state=q.get("state"),
                                  limit=limit)
    if q.get("batch") and not cmds:
        raise ApiError(404, "not_found", f"no batch {q['batch']!r}")
    return web.json_response({"commands": cmds, "summary": _summary(cmds)})


async def energy(request: web.Request) -> web.Response:
    gw = request.app[GW]
    q = request.query
    chosen = [k for k in ("node", "group", "cabinet") if q.get(k)]
    if len(chosen) > 1:
        raise ApiError(400, "bad_request", "give at most one of node, group, cabinet")
    try:
        result = await gw.energy(node=q.get("node"), group=q.get("group"), cabinet=q.get("cabinet"),
                                 start=q.get("from"), end=q.get("to"), by=q.get("by", "day"))
    except ValueError as exc:
        raise ApiError(400, "bad_request", str(exc)) from None
    except LookupError as exc:  # an unknown node, group or cabinet
        raise ApiError(404, "not_found", str(exc)) from None
    return web.json_response(iso_times(result))


async def savings(request: web.Request) -> web.Response:
    gw = request.app[GW]
    try:
        q = request.query
        result = await gw.savings(start=q.get("from"), end=q.get("to"), node=q.get("node"),
                                  group=q.get("group"), cabinet=q.get("cabinet"))
    except ValueError as exc:
        raise ApiError(400, "bad_request", str(exc)) from None
    except LookupError as exc:
        raise ApiError(404, "not_found", str(exc)) from None
    return web.json_response(iso_times(result))


async def faults(request: web.Request) -> web.Response:
    gw = request.app[GW]
    nodes = await gw.registry.list_nodes()
    return web.json_response({"faults": [n for n in nodes if n["fault_flags"]]})


async def backup(request: web.Request) -> web.Response:
    gw = request.app[GW]
    body = await _body(request)
    path = body.get("path")
    if path is not None and not isinstance(path, str):
        raise ApiError(400, "bad_request", "path must be a string (or absent)")
    try:
        return web.json_response(await gw.backup(path))
    except BackupRefused as exc:
        raise ApiError(400, "bad_request", f"backup refused: {exc}") from None
    except (OSError, sqlite3.Error) as exc:
        raise ApiError(400, "bad_request", f"cannot write backup to {path}: {exc}") from None


async def rotate_key(request: web.Request) -> web.Response:
    """POST /api/keys/rotate {"node", "wait"}: a new OSCORE key for one node (docs/cli.md)."""
    from gateway.coap.client import NodeRefused
    gw = request.app[GW]
    body = await _body(request)
    node, wait = body.get("node"), body.get("wait", 30.0)
    if not isinstance(node, str) or not isinstance(wait, int | float) or not 0 < wait <= 300:
        raise ApiError(400, "bad_request", "body must be {\"node\": ID, \"wait\": 0-300 s}")
    try:
        return web.json_response(await gw.rotate_key(node, float(wait)))
    except LookupError as exc:
        raise ApiError(404, "not_found", str(exc).strip("'\"")) from None
    except RuntimeError as exc:
        raise ApiError(400, "bad_request", str(exc)) from None
    except NodeRefused as exc:
        raise ApiError(502, "node_refused", f"{node} refused its new key ({exc}); its current "
                       "key stays in force") from None


async def meters(request: web.Request) -> web.Response:
    gw = request.app[GW]
    return web.json_response({"meters": iso_times(gw.meters_status())})


async def northbound(request: web.Request) -> web.Response:
    from gateway.northbound import status
    return web.json_response(await status(request.app[GW]))


async def openapi(request: web.Request) -> web.Response:
    return web.json_response(document())


ROUTES = [
    ("GET", "/api/health", health),
    ("GET", "/api/nodes", list_nodes),
    ("GET", "/api/nodes/{id}", show_node),
    ("POST", "/api/set-level", set_level),
    ("POST", "/api/on-off", on_off),
    ("POST", "/api/override", override),
    ("GET", "/api/schedules/{target}", show_schedule),
    ("PUT", "/api/schedules/{target}", push_schedule),
    ("GET", "/api/commands", list_commands),
    ("GET", "/api/energy", energy),
    ("GET", "/api/savings", savings),
    ("GET", "/api/faults", faults),
    ("POST", "/api/backup", backup),
    ("GET", "/api/meters", meters),
    ("GET", "/api/northbound", northbound),
    ("POST", "/api/keys/rotate", rotate_key),
    ("GET", "/openapi.json", openapi),
    *FIRMWARE_ROUTES,  # gateway/ota/api.py
]


def make_app(gw: Any) -> web.Application:
    """Build the aiohttp application for a running gateway."""
    app = web.Application(middlewares=[errors_and_auth], client_max_size=1 << 20)
    app[GW] = gw
    for method, path, handler in ROUTES:
        app.router.add_route(method, path, handler)
    if gw.config.web.enabled:  # the web view (gateway/web, docs/web.md) on the same port
        from gateway.web.views import routes
        routes(app)
    return app
