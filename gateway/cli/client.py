"""A minimal HTTP/JSON client of the gateway API for the CLI (standard library only, so the
CLI starts fast and needs no event loop)."""

from __future__ import annotations

import json
import urllib.error
import urllib.parse
import urllib.request
from typing import Any


class ApiFailure(Exception):
    """The API answered an error (`status` is the HTTP status, `code` the error code)."""

    def __init__(self, status: int, code: str, message: str):
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


class Unreachable(Exception):
    """The service could not be reached at all."""


class ApiClient:
    def __init__(self, base_url: str, token: str = "", timeout: float = 60.0):
        self.base = base_url.rstrip("/")
        self.token = token
        self.timeout = timeout

    def call(self, method: str, path: str, query: dict[str, Any] | None = None,
             body: dict[str, Any] | None = None) -> Any:
        """Send one request and return the decoded JSON. Raises ApiFailure, Unreachable."""
        url = self.base + urllib.parse.quote(path, safe="/:")
        if query:
            q = {k: v for k, v in query.items() if v is not None}
            if q:
                url += "?" + urllib.parse.urlencode(q)
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(url, data=data, method=method)
        if data is not None:
            req.add_header("Content-Type", "application/json")
        if self.token:
            req.add_header("Authorization", f"Bearer {self.token}")
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                return json.loads(resp.read() or b"null")
        except urllib.error.HTTPError as exc:
            try:
                err = json.loads(exc.read())["error"]
                raise ApiFailure(exc.code, err.get("code", ""), err.get("message", "")) from None
            except (ValueError, KeyError, TypeError):
                raise ApiFailure(exc.code, "http", f"HTTP {exc.code} {exc.reason}") from None
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise Unreachable(f"cannot reach the gateway at {self.base}: {reason}") from None
