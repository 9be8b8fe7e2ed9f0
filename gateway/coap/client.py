"""CoAP client for requests to nodes: Read (GET), Write (PUT), Execute (POST), Observe.

Nodes are reached at the address of their last Register/Update (SPEC §1). Payloads follow
SPEC §5.1: single values are written as text/plain, opaque ones as CBOR (``encode_value``). Concurrency is bounded by one
semaphore so a group command to hundreds of nodes neither floods the LAN nor opens hundreds
of exchanges at once; a request that gets no answer within `timeout` seconds is cancelled
(which stops aiocoap's retransmissions) and reported as unreachable.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiocoap
import cbor2
from aiocoap.numbers.codes import Code
from aiocoap.numbers.constants import Unreliable
from aiocoap.tokenmanager import TokenManager

from protocol import lwm2m

log = logging.getLogger("slgw.coap.client")


class _SentOnce(Unreliable):
    """NON on the wire, no retransmission (see NodeClient.request). Not a CON sent once: aiocoap
    sends one CON at a time per peer and, when a CON to a peer gets no ACK, drops every CON
    queued for it, the separate answer to that node's own Send too (the node then waited 93 s
    for it: HIL s3 on OSCORE, docs/security.md §4.2)."""

    MAX_RETRANSMIT = 0


class NodeUnreachable(Exception):
    """No answer from the node (timeout, ICMP unreachable, no address)."""


class NodeRefused(Exception):
    """The node answered with an error code; `code` is e.g. "4.00"."""

    def __init__(self, code: str, diagnostic: str = ""):
        super().__init__(f"node answered {code} {diagnostic}".strip())
        self.code = code
        self.diagnostic = diagnostic


def uri(address: str, path: str) -> str:
    """Build `coap://host:port/path` from a stored "host:port" (IPv6 as "[h]:port")."""
    return f"coap://{address}{path}"


def _code_str(code: Code) -> str:
    return code.dotted


def encode_value(value: Any) -> tuple[bytes, int]:
    """The payload and Content-Format of a single-resource Write (SPEC §5.1, §6).

    A number, boolean or string goes as text/plain (0): the LwM2M 1.1 format for one
    resource value (OMA-TS-LightweightM2M-Core 1.1 §7.3, Plain Text; booleans "0"/"1"), which
    any 1.1 client takes whatever else it registered (Wakaama's client refuses CBOR with
    4.06). An opaque value (a schedule, an override: our vendor object 10250, which only our
    nodes have) goes as one CBOR item (60).
    """
    if isinstance(value, bool):
        return (b"1" if value else b"0"), lwm2m.CF_TEXT
    if isinstance(value, int | float | str):
        return str(value).encode(), lwm2m.CF_TEXT
    return cbor2.dumps(value), lwm2m.CF_CBOR


class NodeClient:
    """Sends requests to nodes with bounded concurrency.

    `context` is an aiocoap client context (see transport.choose); `limit` bounds requests in
    flight; `timeout` bounds one request including its retransmissions. One request at a time
    per node: aiocoap lets the next one go once a node sent an empty ACK (RFC 7252 NSTART
    counts only unacknowledged messages), and under OSCORE two interleaved requests to a node
    that just rebooted race through its Echo exchange (RFC 8613 B.1.2: the window starts at the
    first verified resend, so the other request's lower sequence number is refused as a replay
    and a command needed one more attempt). A constrained node is served one at a time anyway. With `credentials`
    (gateway.coap.security.NodeCredentials, set as the context's client credentials) every
    request is OSCORE-protected with the context of the node registered at the address, and a
    node without one is never sent an unprotected request (NodeUnreachable).
    """

    def __init__(self, context: aiocoap.Context, limit: int = 64, timeout: float = 10.0,
                 credentials: Any = None):
        self.context = context
        self.credentials = credentials  # NodeCredentials: every request must be protected
        self.timeout = timeout
        self._sem = asyncio.Semaphore(limit)
        self._per_node: dict[str, list] = {}  # address -> [asyncio.Lock, requests using it]

    async def request(self, method: Code, address: str, path: str,
                      payload: bytes | Callable[[], bytes] = b"",
                      content_format: int | None = None, accept: int | None = None,
                      mtype: aiocoap.numbers.types.Type | None = None, timeout: float | None = None
                      ) -> aiocoap.Message:
        """Send one request and return the 2.xx response.

        ``mtype`` NON sends it once, without retransmissions (for values that go stale, such as
        the time); ``timeout`` overrides the client's. A callable ``payload`` is called when the
        node's turn comes (a time read earlier would be as old as the wait). Raises
        NodeUnreachable on timeout or a network error, NodeRefused on a 4.xx/5.xx.
        """
        self._check_protected(address)
        timeout = self.timeout if timeout is None else timeout
        entry = self._per_node.setdefault(address, [asyncio.Lock(), 0])
        entry[1] += 1
        try:
            # the node's turn first, then a slot: requests queued for one node hold no slot
            async with entry[0], self._sem:
                data = payload() if callable(payload) else payload
                msg = aiocoap.Message(code=method, uri=uri(address, path), payload=data)
                if mtype is not None:
                    msg.mtype = mtype
                    if mtype == aiocoap.NON and self.credentials is not None:
                        # aiocoap's OSCORE does not copy the type to the outer message but copies
                        # the transport tuning, which makes it NON (a CON would hold the peer's
                        # only CON slot, see _SentOnce)
                        msg.transport_tuning = _SentOnce()
                if content_format is not None:
                    msg.opt.content_format = content_format
                if accept is not None:
                    msg.opt.accept = accept
                req = self.context.request(msg)
                try:
                    resp = await asyncio.wait_for(asyncio.shield(req.response), timeout)
                except TimeoutError as exc:
                    self._give_up(req, msg, address)
                    raise NodeUnreachable(f"no answer within {timeout:g} s") from exc
                except asyncio.CancelledError:
                    self._give_up(req, msg, address)
                    raise
                except aiocoap.error.Error as exc:
                    raise NodeUnreachable(str(exc) or type(exc).__name__) from exc
                except OSError as exc:
                    raise NodeUnreachable(str(exc)) from exc
        finally:
            entry[1] -= 1
            if not entry[1]:
                del self._per_node[address]
        if not resp.code.is_successful():
            raise NodeRefused(_code_str(resp.code),
                              resp.payload[:64].decode("utf-8", "replace"))
        return resp

    def _give_up(self, req: Any, msg: aiocoap.Message, address: str) -> None:
        """Stop a request nobody waits for any more. A CON: cancel it (stops aiocoap's
        retransmissions). An OSCORE NON: aiocoap's OSCORE transport waits for the answer to the
        outer NON until the context stops (it does not follow a cancelled request), then logs
        LibraryShutdown errors; so the outer exchange is ended here, which ends the request."""
        if msg.mtype == aiocoap.NON and self.credentials is not None:
            for ri in self.context.request_interfaces:
                if not isinstance(ri, TokenManager):
                    continue
                for pipe in list((ri.outgoing_requests or {}).values()):
                    m = pipe.request
                    # one request at a time per node: the only NON from here to this node
                    if (m.mtype == aiocoap.NON and m.opt.oscore is not None
                            and m.remote is not None and m.remote.hostinfo == address):
                        pipe.add_exception(aiocoap.error.RequestTimedOut())
                        # the request ends with that error; nobody reads it any more
                        req.response.add_done_callback(
                            lambda f: f.cancelled() or f.exception())
                        return
        req.response.cancel()

    def _check_protected(self, address: str) -> None:
        if not address:
            raise NodeUnreachable("no known address (node never registered)")
        if self.credentials is not None and self.credentials.for_address(address) is None:
            raise NodeUnreachable("no OSCORE key for the node registered at this address; import "
                                  "it with `slgw keys import`, the node registers again")

    async def write(self, address: str, path: str, value: Any, **kw: Any) -> None:
        """Write (PUT) one value to `path` in the format of `encode_value` (SPEC §5.1); ``kw``:
        ``mtype``, ``timeout`` of `request`. A callable `value` is called when the node's turn
        comes (see `request`); it must give a value of the same format as its first call
        (checked, ValueError). Raises as `request`."""
        if not callable(value):
            payload, cf = encode_value(value)
            await self.request(Code.PUT, address, path, payload, content_format=cf, **kw)
            return
        cf = encode_value(value())[1]

        def late() -> bytes:
            data, got = encode_value(value())
            if got != cf:
                raise ValueError(f"value for {path} changed format ({cf} to {got})")
            return data
        await self.request(Code.PUT, address, path, late, content_format=cf, **kw)

    async def read(self, address: str, path: str) -> Any:
        """Read (GET) one resource and return its decoded CBOR value. Raises as `request`,
        or ValueError when the answer is not CBOR."""
        resp = await self.request(Code.GET, address, path, accept=lwm2m.CF_CBOR)
        try:
            return cbor2.loads(resp.payload)
        except Exception as exc:
            raise ValueError(f"node answered {path} with undecodable CBOR: {exc}") from exc

    async def execute(self, address: str, path: str) -> None:
        """Execute (POST) a resource such as /3/0/4 (reboot). Raises as `request`."""
        await self.request(Code.POST, address, path)

    async def observe(self, address: str, path: str) -> AsyncIterator[Any]:
        """Observe a resource (RFC 7641): yields each decoded notification until the node
        ends the observation or the caller stops iterating (which cancels it)."""
        self._check_protected(address)
        msg = aiocoap.Message(code=Code.GET, uri=uri(address, path), observe=0)
        req = self.context.request(msg)
        try:
            first = await asyncio.wait_for(req.response, self.timeout)
            if not first.code.is_successful():
                raise NodeRefused(_code_str(first.code))
            yield cbor2.loads(first.payload)
            async for note in req.observation:
                yield cbor2.loads(note.payload)
        except TimeoutError as exc:
            raise NodeUnreachable(f"no answer within {self.timeout:g} s") from exc
        finally:
            if not req.observation.cancelled:
                req.observation.cancel()
