"""The LwM2M server side: `/rd` (Register, Update, De-register, SPEC §2) and `/dp` (Send,
SPEC §3-4), with every error of SPEC §8.

One root resource dispatches on the whole path, so unknown paths and methods get the SPEC's
4.04/4.05 rather than aiocoap's defaults, and every unexpected exception becomes a 5.00 and a
log line instead of a traceback. Malformed datagrams never reach this code: aiocoap answers
them with RST or drops them (SPEC §8, first row).

What a Send costs: parse (gateway.ingest.parse_payload: the protocol's one parser, protocol.report_parse.parse_send), then `sink(ep, reports, attrs, now)`
(the service's glue to gateway.ingest.Ingestor), which makes the pack durable before it
returns and says what to answer (a gateway.ingest.Answer: 2.04, 4.00 for a value out of range,
5.03 with Max-Age when the store cannot write, so the node keeps its outbox).
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import re
import time
from collections.abc import Awaitable, Callable
from typing import Any

import aiocoap
from aiocoap import resource
from aiocoap.numbers.codes import Code

from gateway.coap.security import endpoint_of
from gateway.ingest import parse_payload
from gateway.nodes.registry import RegistrationRefused
from gateway.ota.serve import render_fw
from gateway.store import StoreUnavailable
from protocol import linkformat, lwm2m

log = logging.getLogger("slgw.coap")

EP_RE = re.compile(r"^[A-Za-z0-9._-]{1,63}$")
MIN_LIFETIME, MAX_LIFETIME = 60, 86400
RETRY_AFTER_S = 30  # Max-Age of a 5.03: how long a node waits before resending
# Critical options this server understands (RFC 7252 §5.4.1: any other critical one is 4.02):
# If-Match 1, Uri-Host 3, If-None-Match 5, Uri-Port 7, Uri-Path 11, Uri-Query 15, Accept 17,
# Block2 23, Block1 27.
KNOWN_CRITICAL = frozenset((1, 3, 5, 7, 11, 15, 17, 23, 27))


class BadRequest(Exception):
    """A request answered with a 4.xx; `code` is the aiocoap Code, `reason` a short text."""

    def __init__(self, code: Code, reason: str):
        super().__init__(reason)
        self.code = code
        self.reason = reason


class RateLimitedLog:
    """Log odd requests and datagrams by kind: at most one line per kind per `interval` s.

    A kind is the answer code and the reason with paths and numbers blanked ("4.04 no
    resource /*"), never the source host or the path: a flood of garbage from many addresses,
    or to many paths, must not fill the journal. The first one of a kind is logged in full;
    the rest of its interval is counted, and one summary line per interval says how many were
    suppressed, from how many hosts, and the last example: written when the interval ends
    (a timer on the running event loop, `flush()`), or at the next one of that kind. Memory
    is one entry per kind.
    """

    _BLANK = re.compile(r"/\S*|\d+")

    def __init__(self, interval: float = 60.0, clock: Callable[[], float] = time.monotonic):
        self.interval = interval
        self.clock = clock
        # kind -> [start of interval, suppressed count, hosts seen (capped), last example]
        self._seen: dict[Any, list] = {}
        self._timer: asyncio.TimerHandle | None = None

    def bad(self, host: str, code: str, reason: str) -> bool:
        """Record one bad request; return True if a line was logged."""
        kind = code + " " + self._BLANK.sub("*", reason.split(":")[0])
        now = self.clock()
        entry = self._seen.get(kind)
        if entry is not None and now - entry[0] < self.interval:
            if not entry[1]:
                self._schedule_flush(entry[0] + self.interval - now)
            entry[1] += 1
            if len(entry[2]) < 1000:
                entry[2].add(host)
            entry[3] = (host, reason)
            return False
        self._seen[kind] = [now, 0, set(), None]
        if entry is not None and entry[1]:
            self._summary(kind, entry, now)
            return True
        log.warning("bad request from %s answered %s: %s; the request changed nothing (more of "
                    "this kind are summarised once per %.0f s). If this is one of our nodes, check "
                    "its firmware version and config", host, code, reason, self.interval)
        return True

    def flush(self) -> int:
        """Write the summary of every kind whose interval has ended with requests suppressed;
        return how many lines were written."""
        now = self.clock()
        n = 0
        for kind, entry in list(self._seen.items()):
            if len(entry) == 4 and entry[1] and now - entry[0] >= self.interval:
                self._summary(kind, entry, now)
                self._seen[kind] = [now, 0, set(), None]
                n += 1
        return n

    def _summary(self, kind: str, entry: list, now: float) -> None:
        ex_host, ex_reason = entry[3]
        log.warning("bad requests answered %s: %d more of this kind from %s%d host(s) in the "
                    "last %.0f s, suppressed (last: bad request from %s: %s); they changed "
                    "nothing. If these are our nodes, check their firmware version and config",
                    kind.split(" ", 1)[0], entry[1], "at least " if len(entry[2]) >= 1000 else "",
                    len(entry[2]), now - entry[0], ex_host, ex_reason)

    def _schedule_flush(self, delay: float) -> None:
        if self._timer is not None:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # no loop (a unit test): the next request of the kind summarises
            return
        self._timer = loop.call_later(max(0.0, delay) + 0.05, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        self.flush()
        now = self.clock()
        due = [e[0] + self.interval - now for e in self._seen.values() if len(e) == 4 and e[1]]
        if due:
            self._schedule_flush(min(due))

    def unavailable(self, reason: str, host: str) -> None:
        """Log a 5.03 (store cannot write), at most once per interval."""
        now = self.clock()
        entry = self._seen.get(("", "5.03"))
        if entry is not None and now - entry[0] < self.interval:
            entry[1] += 1
            return
        n = entry[1] if entry else 0
        self._seen[("", "5.03")] = [now, 0]
        log.error("the store cannot write (%s): Sends are answered 5.03 with Max-Age %d s, so "
                  "nodes keep their reports and retry; nothing is lost. Free disk space or check "
                  "the storage device [store] path (%d more 5.03 since the last message)",
                  reason, RETRY_AFTER_S, n)


def peer_address(remote: Any) -> str:
    """"host:port" of a request's source ("[h]:port" for IPv6; v4-mapped shown as IPv4)."""
    addr = getattr(remote, "sockaddr", None) or getattr(remote, "address", None)
    if not addr:
        return remote.hostinfo
    host, port = addr[0], addr[1]
    if ":" in host:  # IPv6 (the common IPv4 case costs no parsing: this runs per request)
        try:
            ip = ipaddress.ip_address(host.split("%")[0])
        except ValueError:
            return f"[{host}]:{port}"
        if ip.version == 6 and ip.ipv4_mapped:
            return f"{ip.ipv4_mapped}:{port}"
        return f"[{host}]:{port}"
    return f"{host}:{port}"


def _query(request: aiocoap.Message) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in request.opt.uri_query:
        k, _, v = item.partition("=")
        if k in out:
            raise BadRequest(Code.BAD_REQUEST, f"query parameter {k} given twice")
        out[k] = v
    return out


def _lifetime(q: dict[str, str], default: int | None) -> int | None:
    if "lt" not in q:
        return default
    lt = q["lt"]
    if not lt.isdigit() or not MIN_LIFETIME <= int(lt) <= MAX_LIFETIME:
        # LwM2M sets no floor; ours bounds Update traffic (SPEC §2 says why). Say it is policy.
        raise BadRequest(Code.BAD_REQUEST, f"lt must be {MIN_LIFETIME}-{MAX_LIFETIME} s (gateway policy; LwM2M has no floor)")
    return int(lt)


def _reply(code: Code, text: str = "", **kw: Any) -> aiocoap.Message:
    msg = aiocoap.Message(code=code, payload=text.encode("utf-8")[:64], **kw)
    if text:
        msg.opt.content_format = lwm2m.CF_TEXT
    return msg


SendSink = Callable[[str, list, dict, float], Awaitable[Any]]
Probe = Callable[[str], Awaitable[bool]]


class LwM2MServer(resource.Resource):
    """Root resource handling /rd, /rd/<reg-id> and /dp.

    `registry` is a gateway.nodes.Registry; `sink` makes a Send durable (see module
    docstring); `on_registered(ep)` and `on_reports(ep, reports)` are called after the
    response is decided (command delivery, time sync), must not block, and are optional.

    `security` "oscore": every request to /rd and /dp must be OSCORE-protected by a node's
    context (else 4.01) and the endpoint is the context's (SPEC "OSCORE", gateway side).
    "none": the endpoint comes from ?ep= and the source address; `probe(address)` (True when
    something answers there) then guards a live registration against a Register for the same
    endpoint from another address.
    """

    def __init__(self, registry: Any, sink: SendSink, clock: Any, *,
                 on_registered: Callable[[str, bool], Any] | None = None,
                 on_reports: Callable[[str, list], Any] | None = None,
                 default_lifetime: int = lwm2m.DEFAULT_LIFETIME,
                 security: str = "oscore", probe: Probe | None = None):
        super().__init__()
        self.security = security
        self.probe = probe
        self.registry = registry
        self.sink = sink
        self.clock = clock
        self.on_registered = on_registered
        self.on_reports = on_reports
        self.default_lifetime = default_lifetime
        self.firmware: Any = None  # gateway.ota.rollout.FirmwareService: serves /fw (SPEC §13)
        self.badlog = RateLimitedLog()
        self.stats = {"register": 0, "update": 0, "deregister": 0, "send": 0, "reports": 0,
                      "bad": 0, "unavailable": 0, "error": 0, "unauthorized": 0, "forbidden": 0}

    async def needs_blockwise_assembly(self, request: aiocoap.Message) -> bool:
        return False  # a larger payload is refused with 4.13 (SPEC §1), not reassembled

    async def render(self, request: aiocoap.Message) -> aiocoap.Message:
        host = peer_address(request.remote)
        try:
            return await self._dispatch(request, host)
        except BadRequest as exc:
            self.stats["bad"] += 1
            if exc.code == Code.UNAUTHORIZED:
                self.stats["unauthorized"] += 1
            elif exc.code == Code.FORBIDDEN:
                self.stats["forbidden"] += 1
            self.badlog.bad(host.rsplit(":", 1)[0], str(exc.code.dotted), exc.reason)
            return _reply(exc.code, exc.reason)
        except StoreUnavailable as exc:
            self.stats["unavailable"] += 1
            self.badlog.unavailable(str(exc), host)
            return _reply(Code.SERVICE_UNAVAILABLE, "store unavailable", max_age=RETRY_AFTER_S)
        except Exception:
            self.stats["error"] += 1
            log.exception("unexpected failure handling %s %s from %s: answered 5.00; please "
                          "report this with the lines above", request.code,
                          request.get_request_uri(), host)
            return _reply(Code.INTERNAL_SERVER_ERROR, "internal error")

    async def _dispatch(self, request: aiocoap.Message, host: str) -> aiocoap.Message:
        for opt in request.opt.option_list():
            num = int(opt.number)
            if num & 1 and num not in KNOWN_CRITICAL:
                raise BadRequest(Code.BAD_OPTION, f"unknown critical option {num}")
        if len(request.payload) > lwm2m.MAX_PAYLOAD:
            raise BadRequest(Code.REQUEST_ENTITY_TOO_LARGE, f"payload over {lwm2m.MAX_PAYLOAD} bytes")
        path = request.opt.uri_path
        auth = None
        if self.security == "oscore" and path and path[0] in ("rd", "dp"):
            auth = endpoint_of(request.remote)
            if auth is None:
                raise BadRequest(Code.UNAUTHORIZED, "OSCORE required: protect the request with "
                                 "this node's key (slgw keys import)")
        if path == ("rd",):
            if request.code != Code.POST:
                raise BadRequest(Code.METHOD_NOT_ALLOWED, "/rd takes POST (Register)")
            return await self._register(request, host, auth)
        if len(path) == 2 and path[0] == "rd":
            if auth is not None and self.registry.endpoint_of_reg(path[1]) not in (None, auth):
                raise BadRequest(Code.FORBIDDEN, "registration of another endpoint")
            if request.code == Code.POST:
                return await self._update(request, path[1], host)
            if request.code == Code.DELETE:
                return await self._deregister(path[1], host)
            raise BadRequest(Code.METHOD_NOT_ALLOWED, "/rd/<id> takes POST or DELETE")
        if path == ("dp",):
            if request.code != Code.POST:
                raise BadRequest(Code.METHOD_NOT_ALLOWED, "/dp takes POST (Send)")
            return await self._send(request, host, auth)
        if path and path[0] == "fw" and self.firmware is not None:  # bundles (gateway/ota/serve.py)
            return await render_fw(request, self.firmware.bundles,
                                   self.security != "oscore" or endpoint_of(request.remote) is not None,
                                   self.firmware.pacer)
        raise BadRequest(Code.NOT_FOUND, "no resource /{}".format("/".join(path)))

    # --- /rd -----------------------------------------------------------------------------
    async def _register(self, request: aiocoap.Message, host: str,
                        auth: str | None) -> aiocoap.Message:
        q = _query(request)
        ep = q.get("ep", auth or "")
        if auth is not None and ep != auth:
            raise BadRequest(Code.FORBIDDEN, f"this key registers {auth} only")
        if not EP_RE.match(ep):
            raise BadRequest(Code.BAD_REQUEST, "ep must be 1-63 of [A-Za-z0-9._-]")
        # 1.0 clients are managed too (Register, Write, Execute are the same); they cannot Send.
        if q.get("lwm2m") not in ("1.0", lwm2m.LWM2M_VERSION):
            raise BadRequest(Code.BAD_REQUEST, f"lwm2m={lwm2m.LWM2M_VERSION} or 1.0 required")
        if q.get("b", "U") != "U":
            raise BadRequest(Code.BAD_REQUEST, "binding must be U")
        lifetime = _lifetime(q, self.default_lifetime)
        cf = request.opt.content_format
        if cf is not None and cf != lwm2m.CF_LINK_FORMAT:
            raise BadRequest(Code.UNSUPPORTED_CONTENT_FORMAT, "Register body must be link-format (40)")
        try:
            links = linkformat.parse(request.payload)
        except ValueError as exc:
            raise BadRequest(Code.BAD_REQUEST, f"link-format: {exc}") from None
        was = self.registry.is_registered(ep)
        if auth is None and was:
            await self._guard_takeover(ep, host)
        try:
            reg_id = await self.registry.register(ep, lifetime, host, links)
        except RegistrationRefused as exc:  # registration limits (issue 11): nothing written
            self.stats["refused"] = self.stats.get("refused", 0) + 1
            self.badlog.bad(host.rsplit(":", 1)[0], "5.03", f"Register refused: {exc}")
            return _reply(Code.SERVICE_UNAVAILABLE, str(exc), max_age=exc.retry_after)
        except ValueError as exc:
            raise BadRequest(Code.BAD_REQUEST, str(exc)) from None
        self.stats["register"] += 1
        log.info("node %s registered from %s (reg-id %s, lifetime %d s, %d objects)%s", ep, host,
                 reg_id, lifetime, len(links), " replacing its previous registration" if was else "")
        if self.on_registered:
            self.on_registered(ep, True)
        return aiocoap.Message(code=Code.CREATED, location_path=("rd", reg_id))

    async def _guard_takeover(self, ep: str, host: str) -> None:
        """Unprotected mode: refuse a Register for `ep` from a new address while its
        registration is alive and something still answers at the old address (the real node);
        a node that rebooted onto a new port or address leaves nothing answering there."""
        old = self.registry.address(ep)
        if not old or old == host or not self.registry.is_online(ep) or self.probe is None:
            return
        if await self.probe(old):
            raise BadRequest(Code.FORBIDDEN, f"{ep} is registered and answering at another "
                             "address")
        log.warning("node %s registers from %s; its registration at %s is alive but nothing "
                    "answers there any more, so the new address replaces it", ep, host, old)

    async def _update(self, request: aiocoap.Message, reg_id: str, host: str) -> aiocoap.Message:
        q = _query(request)
        lifetime = _lifetime(q, None)
        if q.get("b", "U") != "U":
            raise BadRequest(Code.BAD_REQUEST, "binding must be U")
        links = None
        if request.payload:
            try:
                links = linkformat.parse(request.payload)
            except ValueError as exc:
                raise BadRequest(Code.BAD_REQUEST, f"link-format: {exc}") from None
        ep = await self.registry.update(reg_id, host, lifetime, links)
        if ep is None:
            raise BadRequest(Code.NOT_FOUND, "unknown registration; Register again")
        self.stats["update"] += 1
        log.debug("node %s updated its registration from %s", ep, host)
        if self.on_registered:
            self.on_registered(ep, False)
        return aiocoap.Message(code=Code.CHANGED)

    async def _deregister(self, reg_id: str, host: str) -> aiocoap.Message:
        ep = await self.registry.deregister(reg_id)
        if ep is None:
            raise BadRequest(Code.NOT_FOUND, "unknown registration")
        self.stats["deregister"] += 1
        log.info("node %s de-registered (from %s); it is offline until it registers again", ep, host)
        return aiocoap.Message(code=Code.DELETED)

    # --- /dp -----------------------------------------------------------------------------
    async def _send(self, request: aiocoap.Message, host: str,
                    auth: str | None) -> aiocoap.Message:
        cf = request.opt.content_format
        if cf not in (lwm2m.CF_SENML_CBOR, lwm2m.CF_SENML_JSON):
            raise BadRequest(Code.UNSUPPORTED_CONTENT_FORMAT, "Send must be senml+cbor (112) or senml+json (110)")
        q = _query(request)
        ep = q.get("ep")
        if auth is not None:  # the key is the identity: ?ep= and the address are ignored
            ep = auth
            if not self.registry.is_registered(ep):
                raise BadRequest(Code.NOT_FOUND, "endpoint not registered; Register first")
        elif ep is not None:
            if not EP_RE.match(ep):
                raise BadRequest(Code.BAD_REQUEST, "ep must be 1-63 of [A-Za-z0-9._-]")
            if not self.registry.is_registered(ep):
                raise BadRequest(Code.NOT_FOUND, "endpoint not registered; Register first")
        else:
            ep = self.registry.endpoint_at(host)
            if ep is None:
                raise BadRequest(Code.NOT_FOUND, "no registration at this address; Register first")
        now = self.clock.now()
        try:
            reports, attrs = parse_payload(bytes(request.payload), now, cf)
        except ValueError as exc:  # CBORError, SenMLError are ValueErrors (SPEC §8)
            raise BadRequest(Code.BAD_REQUEST, f"report: {exc}") from None
        answer = await self.sink(ep, reports, attrs, now)
        if answer.code[0] == 4:
            raise BadRequest(Code(answer.coap_code), answer.diagnostic or "bad report")
        if answer.code[0] == 5:
            self.stats["unavailable" if answer.code == (5, 3) else "error"] += 1
            return _reply(Code(answer.coap_code), answer.diagnostic, max_age=answer.max_age)
        self.registry.seen(ep, reported=bool(reports))
        self.stats["send"] += 1
        self.stats["reports"] += len(reports)
        if self.on_reports and reports:
            self.on_reports(ep, reports)
        return aiocoap.Message(code=Code.CHANGED)
