"""Who is looking at a page: the API's own tokens (gateway/api/app.py), carried by a cookie.

A browser cannot add an `Authorization` header to a link or a form, so signing in turns the
token typed once into a session cookie: ``ROLE.ISSUED.MAC`` where MAC is an HMAC-SHA256 of
``ROLE.ISSUED`` keyed with that role's token (``[api] token`` for "operator", ``[api]
read_token`` for "read"). The token itself is never stored in the browser; changing a token
ends every session made with it; a session ends after ``[web] session_hours``. The cookie is
HttpOnly and SameSite=Strict, and every POST must come from the gateway's own pages (Origin
check), so another site cannot make a signed-in browser send a command.

Roles: "operator" (may command), "read" (signed in with the read token), "open" (no operator
token is configured, so the API itself takes commands from anyone who reaches it; the page
says so), None (not signed in: read-only if ``[web] public``).
"""

from __future__ import annotations

import hashlib
import hmac
import time
from typing import Any

from aiohttp import web

COOKIE = "slgw_session"


def _mac(secret: str, msg: str) -> str:
    return hmac.new(secret.encode(), msg.encode(), hashlib.sha256).hexdigest()


def _secret(api: Any, role: str) -> str:
    return api.token if role == "operator" else api.read_token if role == "read" else ""


def issue(api: Any, role: str, now: float | None = None) -> str:
    """A session cookie value for `role` ("operator" or "read")."""
    msg = f"{role}.{int(time.time() if now is None else now)}"
    return f"{msg}.{_mac(_secret(api, role), msg)}"


def token_role(api: Any, token: str) -> str | None:
    """The role a typed token gives ("operator", "read"), or None (constant-time compare)."""
    given = token.strip().encode()
    if api.token and hmac.compare_digest(given, api.token.encode()):
        return "operator"
    if api.read_token and hmac.compare_digest(given, api.read_token.encode()):
        return "read"
    return None


def role_of(request: web.Request, api: Any, session_hours: float) -> str | None:
    """The role of a request: from `Authorization: Bearer` (scripts, tests) or the cookie."""
    if not api.token:
        return "open"
    auth = request.headers.get("Authorization", "")
    if auth.startswith("Bearer "):
        return token_role(api, auth[7:])
    value = request.cookies.get(COOKIE, "")
    try:
        role, issued, mac = value.split(".")
        age = time.time() - int(issued)
    except ValueError:
        return None
    secret = _secret(api, role)
    if not secret or not 0 <= age <= session_hours * 3600:
        return None
    return role if hmac.compare_digest(mac.encode(), _mac(secret, f"{role}.{issued}").encode()) \
        else None


def can_command(role: str | None) -> bool:
    return role in ("operator", "open")


def same_origin(request: web.Request) -> bool:
    """A POST from the gateway's own page: its Origin (or, without one, its Referer) names
    this host. A request carrying neither (curl, a script with the Bearer token) passes: the
    SameSite=Strict cookie is never sent by a browser from another site."""
    origin = request.headers.get("Origin") or request.headers.get("Referer")
    if not origin:
        return True
    own = f"{request.scheme}://{request.host}"
    return origin == own or origin.startswith(own + "/")
