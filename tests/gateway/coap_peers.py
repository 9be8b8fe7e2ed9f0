"""Test peers for the gateway's CoAP side (not the firmware): an aiocoap node that records the
Writes it receives, a raw-UDP crowd of simulated nodes for group commands, and an in-process
gateway on free ports."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiocoap
import cbor2
from aiocoap import resource
from aiocoap.numbers.codes import Code
from aiocoap.transports.oscore import OSCOREAddress
from slgw_harness import free_port

from gateway.config import load_config
from gateway.service import Gateway
from protocol import coap as pc
from protocol import lwm2m, report


@contextlib.asynccontextmanager
async def gateway(tmp_path: Path, clock: Any = None, **overrides: Any) -> AsyncIterator[Gateway]:
    """An in-process Gateway on free loopback ports with a temp store; stopped on exit."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    ov = {"store.path": str(tmp_path / "gw.db"), "coap.bind": "127.0.0.1",
          "coap.port": free_port(socket.SOCK_DGRAM), "api.port": free_port(),
          "commands.timeout_s": 3.0, "store.aggregate_interval_s": 0.5,
          "coap.security": "none"}  # OSCORE tests pass coap__security="oscore"
    ov.update({k.replace("__", "."): v for k, v in overrides.items()})
    gw = Gateway(load_config(None, ov), clock)
    await gw.start()
    try:
        yield gw
    finally:
        await gw.stop()


def decode_write(path: str, cf: int | None, payload: bytes) -> Any:
    """A Write's value: text/plain (0, a number; "0"/"1" for the on/off boolean) or CBOR (60)."""
    if cf == lwm2m.CF_TEXT:
        text = payload.decode()
        if path == "/3311/0/5850":
            return {"1": True, "0": False}[text]
        return int(text)
    return cbor2.loads(payload)


class _Recorder(resource.Resource):
    def __init__(self, node: AiocoapNode, path: str, code: Code = Code.CHANGED):
        super().__init__()
        self.node, self.path, self.code = node, path, code

    async def render_put(self, request: aiocoap.Message) -> aiocoap.Message:
        if self.node.text_only and request.opt.content_format != lwm2m.CF_TEXT:
            return aiocoap.Message(code=Code.NOT_ACCEPTABLE)  # as Wakaama's client does
        value = decode_write(self.path, request.opt.content_format, request.payload)
        if self.node.oscore_dir is not None and not isinstance(request.remote, OSCOREAddress):
            return aiocoap.Message(code=Code.UNAUTHORIZED)  # as a protected node does
        self.node.writes.append((self.path, request.opt.content_format, value))
        self.node.event.set()
        return aiocoap.Message(code=self.node.answer.get(self.path, self.code))


class _Rotate(resource.Resource):
    """/10250/0/30 of a protected node (SPEC §10.5): store [ms, salt, sid] as a new context and
    use it for everything after this answer (the answer itself goes out under the old one)."""

    def __init__(self, node: AiocoapNode):
        super().__init__()
        self.node = node

    async def render_put(self, request: aiocoap.Message) -> aiocoap.Message:
        if not isinstance(request.remote, OSCOREAddress):
            return aiocoap.Message(code=Code.UNAUTHORIZED)
        code = self.node.answer.get("/10250/0/30", Code.CHANGED)
        if code == Code.CHANGED:
            ms, salt, sid = cbor2.loads(request.payload)
            self.node.use_key(write_node_context(self.node.oscore_dir.parent, ms, salt, sid))
        return aiocoap.Message(code=code)


class AiocoapNode:
    """A test LwM2M client on aiocoap: serves the writable resources and records Writes.

    It registers from the same socket it serves on, as a node does (SPEC §1), so the gateway
    reaches it at the registered address.
    """

    PATHS = ("/3/0/13", "/3311/0/5850", "/3311/0/5851", "/10250/0/2", "/10250/0/4")

    def __init__(self, ep: str, gw_port: int, port: int | None = None,
                 oscore_dir: Path | None = None):
        self.ep, self.gw_port = ep, gw_port
        self.oscore_dir = oscore_dir  # node-side aiocoap context (make_node_key): all protected
        self.retired: list[Any] = []  # contexts replaced by a key rotation
        self.port = port or free_port(socket.SOCK_DGRAM)
        self.writes: list[tuple[str, int, Any]] = []
        self.answer: dict[str, Code] = {}
        self.text_only = False  # refuse single-value Writes in any format but text/plain
        self.event = asyncio.Event()
        self.ctx: aiocoap.Context | None = None
        self.location: str | None = None

    async def start(self) -> AiocoapNode:
        site = resource.Site()
        for p in self.PATHS:
            site.add_resource(tuple(p.strip("/").split("/")), _Recorder(self, p))
        if self.oscore_dir is None:
            self.ctx = await aiocoap.Context.create_server_context(
                site, bind=("127.0.0.1", self.port), transports=["simplesocketserver"])
            return self
        from aiocoap.credentials import CredentialsMap
        from aiocoap.oscore import FilesystemSecurityContext
        from aiocoap.oscore_sitewrapper import OscoreSiteWrapper
        self.secctx = FilesystemSecurityContext(str(self.oscore_dir))
        creds = CredentialsMap({":node": self.secctx})
        self.ctx = await aiocoap.Context.create_server_context(
            None, bind=("127.0.0.1", self.port), transports=["oscore", "simplesocketserver"],
            server_credentials=creds)
        site.add_resource(("10250", "0", "30"), _Rotate(self))
        self.creds = creds
        self.ctx.serversite = OscoreSiteWrapper(site, creds)
        self.ctx.client_credentials[f"coap://127.0.0.1:{self.gw_port}/*"] = self.secctx
        return self

    def use_key(self, node_dir: Path) -> None:
        """Switch to another node-side context (key rotation); the old one is released."""
        from aiocoap.oscore import FilesystemSecurityContext
        old, self.secctx, self.oscore_dir = self.secctx, FilesystemSecurityContext(str(node_dir)), node_dir
        self.creds[":node"] = self.secctx
        self.ctx.client_credentials[f"coap://127.0.0.1:{self.gw_port}/*"] = self.secctx
        self.retired.append(old)  # its answer to /10250/0/30 still goes out under it

    async def request(self, code: Code, path: str, payload: bytes = b"", cf: int | None = None
                      ) -> aiocoap.Message:
        msg = aiocoap.Message(code=code, uri=f"coap://127.0.0.1:{self.gw_port}{path}", payload=payload)
        if cf is not None:
            msg.opt.content_format = cf
        return await asyncio.wait_for(self.ctx.request(msg).response, 20)

    async def register(self, lt: int = 300, links: bytes = b"</3/0>,</3311/0>,</10250/0>") -> aiocoap.Message:
        r = await self.request(Code.POST, f"/rd?ep={self.ep}&lt={lt}&lwm2m=1.1&b=U",
                               links, lwm2m.CF_LINK_FORMAT)
        assert r.code == Code.CREATED, r
        self.location = "/" + "/".join(r.opt.location_path)
        return r

    async def describe(self, group: str = "g", cabinet: str = "c") -> aiocoap.Message:
        body = report.encode_descriptor("1.0", 48.0, 2.0, group, cabinet, 40.0, 100, "UTC")
        return await self.request(Code.POST, f"/dp?ep={self.ep}", body, lwm2m.CF_SENML_CBOR)

    async def send(self, reports: list[tuple]) -> aiocoap.Message:
        return await self.request(Code.POST, f"/dp?ep={self.ep}", report.encode_reports(reports),
                                  lwm2m.CF_SENML_CBOR)

    async def wait_writes(self, n: int, timeout: float = 10.0) -> list:
        async def until() -> None:
            while len(self.writes) < n:
                self.event.clear()
                await self.event.wait()
        await asyncio.wait_for(until(), timeout)
        return self.writes

    async def stop(self) -> None:
        if self.ctx is not None:
            await self.ctx.shutdown()
            self.ctx = None
        for ctx in [getattr(self, "secctx", None), *self.retired]:
            if ctx is not None:
                ctx._destroy()  # persist its sequence number, release the lock
        self.secctx, self.retired = None, []


def write_node_context(parent: Path, ms: bytes, salt: bytes, sid: bytes) -> Path:
    """A node-side aiocoap context directory (Sender ID `sid`, the gateway's is 00)."""
    import json
    n = 0
    while (parent / f"node-{sid.hex()}-{n}").exists():
        n += 1
    node_dir = parent / f"node-{sid.hex()}-{n}"
    node_dir.mkdir(mode=0o700)
    (node_dir / "secret.json").write_text(json.dumps({"secret_hex": ms.hex(), "salt_hex": salt.hex()}))
    (node_dir / "settings.json").write_text(json.dumps({
        "sender-id_hex": sid.hex(), "recipient-id_hex": "00",
        "algorithm": "AES-CCM-16-64-128", "kdf-hashfun": "sha256"}))
    return node_dir


def make_node_key(tmp_path: Path, ep: str, sid: bytes | None = None) -> tuple[Path, Path]:
    """A fresh OSCORE key as `slnode provision` writes it: (the gateway-side
    ``<ep>.oscore.json``, mode 0600; the node side as an aiocoap context directory)."""
    import json
    import os
    sid = sid or os.urandom(4)
    ms, salt = os.urandom(16), os.urandom(8)
    keyfile = tmp_path / f"{ep}.oscore.json"
    keyfile.write_text(json.dumps({
        "ep": ep, "master_secret_hex": ms.hex(), "master_salt_hex": salt.hex(),
        "node_sender_id_hex": sid.hex(), "gateway_sender_id_hex": "00",
        "alg": "AES-CCM-16-64-128", "hkdf": "sha256"}))
    keyfile.chmod(0o600)
    return keyfile, write_node_context(tmp_path, ms, salt, sid)


class _CrowdProtocol(asyncio.DatagramProtocol):
    def __init__(self, crowd: RawCrowd, idx: int):
        self.crowd, self.idx = crowd, idx

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.crowd.on_datagram(self.idx, data, addr)


class RawCrowd:
    """N simulated nodes, one UDP socket each, speaking CoAP through protocol.coap: they
    Register, and answer every PUT with 2.04 (recording it). Cheap enough for hundreds."""

    def __init__(self, n: int, gw_port: int, prefix: str = "sim"):
        self.n, self.gw_port, self.prefix = n, gw_port, prefix
        self.transports: list[asyncio.DatagramTransport] = []
        self.writes: list[list[tuple[str, Any]]] = [[] for _ in range(n)]
        self.pending: dict[tuple[int, int], asyncio.Future] = {}
        self.separate: dict[int, asyncio.Future] = {}  # node -> request answered by an empty ACK
        self.mid = 1

    async def start(self) -> RawCrowd:
        loop = asyncio.get_running_loop()
        for i in range(self.n):
            t, _ = await loop.create_datagram_endpoint(lambda i=i: _CrowdProtocol(self, i),
                                                       local_addr=("127.0.0.1", 0))
            self.transports.append(t)
        return self

    def on_datagram(self, idx: int, data: bytes, addr: Any) -> None:
        try:
            msg = pc.decode(data)
        except ValueError:
            return
        if msg.is_request():
            if msg.code == pc.PUT:
                self.writes[idx].append((msg.path_str(), decode_write(msg.path_str(), msg.content_format(),
                                                                      msg.payload)))
                code = pc.CHANGED
            else:
                code = pc.METHOD_NOT_ALLOWED
            self.transports[idx].sendto(pc.encode(pc.response_for(msg, code)), addr)
        elif msg.mtype == pc.ACK and msg.code == 0:
            # an empty ACK: the server took longer than its EMPTY_ACK_DELAY (a loaded machine)
            # and sends the answer as a separate CON response (RFC 7252 §5.2.2)
            fut = self.pending.pop((idx, msg.mid), None)
            if fut and not fut.done():
                self.separate[idx] = fut
        elif msg.mtype == pc.ACK:
            fut = self.pending.pop((idx, msg.mid), None)
            if fut and not fut.done():
                fut.set_result(msg)
        elif msg.mtype == pc.CON:  # the separate response: acknowledge it, hand it over
            self.transports[idx].sendto(pc.encode(pc.Message(pc.ACK, 0, msg.mid, b"")), addr)
            fut = self.separate.pop(idx, None)
            if fut and not fut.done():
                fut.set_result(msg)

    async def request(self, idx: int, code: int, path: str, query: list[str], payload: bytes,
                      cf: int) -> pc.Message:
        self.mid = (self.mid + 1) & 0xFFFF
        mid = self.mid
        msg = pc.Message(pc.CON, code, mid, b"\x01\x02", None, payload)
        msg.set_path(path)
        for q in query:
            msg.add_option(pc.URI_QUERY, q.encode())
        msg.add_option(pc.CONTENT_FORMAT, cf)
        fut = asyncio.get_running_loop().create_future()
        self.pending[(idx, mid)] = fut
        data = pc.encode(msg)
        for _attempt in range(4):
            if self.separate.get(idx) is not fut:  # once ACKed, wait without resending
                self.transports[idx].sendto(data, ("127.0.0.1", self.gw_port))
            try:
                return await asyncio.wait_for(asyncio.shield(fut), 2.0)
            except TimeoutError:
                continue
        raise TimeoutError(f"node {idx}: no answer to {path}")

    def ep(self, idx: int) -> str:
        return f"{self.prefix}-{idx:04d}"

    async def register_all(self, group: str) -> None:
        async def one(i: int) -> None:
            r = await self.request(i, pc.POST, "/rd", [f"ep={self.ep(i)}", "lt=300", "lwm2m=1.1",
                                                       "b=U"], b"</3311/0>", lwm2m.CF_LINK_FORMAT)
            assert r.code == pc.CREATED
            d = report.encode_descriptor("1.0", 48.0, 2.0, group, "c", 40.0, 100, "UTC")
            r = await self.request(i, pc.POST, "/dp", [f"ep={self.ep(i)}"], d, lwm2m.CF_SENML_CBOR)
            assert r.code == pc.CHANGED
        await asyncio.gather(*(one(i) for i in range(self.n)))

    def close(self) -> None:
        for t in self.transports:
            t.close()
