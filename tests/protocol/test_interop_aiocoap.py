"""protocol.coap on the wire against real aiocoap peers over UDP on 127.0.0.1.

1. Our datagram (coap + report) to an aiocoap server whose /dp resource parses it.
2. aiocoap's client, and the `aiocoap-client` command, against a minimal server built from
   protocol.coap (decode, response_for, Dedup, encode): the sans-I/O pieces the node uses.
"""

import asyncio
import os
import socket
import sys

import aiocoap
import aiocoap.resource as resource
import pytest
from aiocoap.numbers import Code

from protocol import cbor, coap, report
from protocol.lwm2m import CF_CBOR, CF_SENML_CBOR

REPORT = (123456, 1763776800, 48213, 37.25, 40, 9504000, 0)


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Dp(resource.Resource):
    def __init__(self):
        super().__init__()
        self.seen = []

    async def render_post(self, request):
        reports, _ = report.parse_send(request.payload)
        self.seen.append((request.opt.uri_query, reports))
        return aiocoap.Message(code=Code.CHANGED)


class UdpPeer(asyncio.DatagramProtocol):
    """One client socket (so retransmissions come from the same address)."""

    def __init__(self):
        self.queue = asyncio.Queue()

    def datagram_received(self, d, addr):
        self.queue.put_nowait(d)

    async def exchange(self, data: bytes, timeout: float = 5.0) -> bytes:
        self.transport.sendto(data)
        return await asyncio.wait_for(self.queue.get(), timeout)

    def connection_made(self, transport):
        self.transport = transport


async def udp_peer(port: int):
    loop = asyncio.get_running_loop()
    transport, peer = await loop.create_datagram_endpoint(UdpPeer, remote_addr=("127.0.0.1", port))
    return transport, peer


async def test_our_send_to_an_aiocoap_server():
    site = resource.Site()
    dp = Dp()
    site.add_resource(["dp"], dp)
    port = free_udp_port()
    ctx = await aiocoap.Context.create_server_context(site, bind=("127.0.0.1", port), transports=["udp6"])
    try:
        m = coap.Message(coap.CON, coap.POST, 0x7D34, b"\x5a\x01")
        m.set_path("/dp")
        m.add_option(coap.URI_QUERY, "ep=node-0001")
        m.add_option(coap.CONTENT_FORMAT, CF_SENML_CBOR)
        m.payload = report.encode_reports([REPORT])
        data = coap.encode(m)
        transport, peer = await udp_peer(port)
        try:
            ack = coap.decode(await peer.exchange(data))
            # a retransmission (same MID, same source) is answered again, not processed twice
            again = coap.decode(await peer.exchange(data))
        finally:
            transport.close()
        assert (ack.mtype, ack.code, ack.mid, ack.token) == (coap.ACK, coap.CHANGED, 0x7D34, b"\x5a\x01")
        assert again.code == coap.CHANGED and again.mid == 0x7D34
        assert len(dp.seen) == 1
        assert dp.seen[0][0] == ("ep=node-0001",)
        assert dp.seen[0][1][0]["seq"] == 123456 and dp.seen[0][1][0]["w"] == 37.25
    finally:
        await ctx.shutdown()


class MiniServer(asyncio.DatagramProtocol):
    """A node-like server made only of protocol.coap pieces."""

    def __init__(self):
        self.dedup = coap.Dedup(capacity=16)
        self.level = 40
        self.handled = 0
        self.now_ms = 0
        self.next_mid = 0x4000

    def connection_made(self, transport):
        self.transport = transport

    def datagram_received(self, data, addr):
        self.now_ms += 1
        try:
            req = coap.decode(data)
        except coap.CoAPError as e:
            if e.mid is not None and e.mtype == coap.CON:
                self.transport.sendto(coap.encode(coap.rst_for(e.mid)), addr)
            return
        if not req.is_request():
            return
        cached = self.dedup.lookup(addr, req.mid, self.now_ms)
        if cached is not None:
            if cached:  # else PENDING: still being handled, drop the duplicate
                self.transport.sendto(cached, addr)
            return
        self.dedup.remember(addr, req.mid, None, self.now_ms)
        self.handled += 1
        self.next_mid += 1
        if req.path() != ["3311", "0", "5851"]:
            resp = coap.response_for(req, coap.NOT_FOUND, mid=self.next_mid)
        elif req.code == coap.GET:
            resp = coap.response_for(req, coap.CONTENT, cbor.dumps(self.level), CF_CBOR, mid=self.next_mid)
        elif req.code == coap.PUT:
            self.level = cbor.loads(req.payload)
            resp = coap.response_for(req, coap.CHANGED, mid=self.next_mid)
        else:
            resp = coap.response_for(req, coap.METHOD_NOT_ALLOWED, mid=self.next_mid)
        out = coap.encode(resp)
        self.dedup.remember(addr, req.mid, out, self.now_ms)
        self.transport.sendto(out, addr)


@pytest.fixture
async def mini_server():
    loop = asyncio.get_running_loop()
    transport, proto = await loop.create_datagram_endpoint(MiniServer, local_addr=("127.0.0.1", 0))
    try:
        yield transport.get_extra_info("sockname")[1], proto
    finally:
        transport.close()


async def test_aiocoap_client_against_our_codec(mini_server):
    port, proto = mini_server
    ctx = await aiocoap.Context.create_client_context(transports=["udp6"])
    try:
        uri = f"coap://127.0.0.1:{port}/3311/0/5851"
        r = await asyncio.wait_for(ctx.request(aiocoap.Message(code=Code.GET, uri=uri)).response, 10)
        assert r.code == Code.CONTENT and int(r.opt.content_format) == CF_CBOR
        assert cbor.loads(r.payload) == 40
        put = aiocoap.Message(code=Code.PUT, uri=uri, payload=cbor.dumps(70))
        put.opt.content_format = CF_CBOR
        r = await asyncio.wait_for(ctx.request(put).response, 10)
        assert r.code == Code.CHANGED and proto.level == 70
        non = aiocoap.Message(code=Code.GET, uri=uri, transport_tuning=aiocoap.Unreliable)
        r = await asyncio.wait_for(ctx.request(non).response, 10)
        assert r.code == Code.CONTENT and r.mtype == aiocoap.NON and cbor.loads(r.payload) == 70
        missing = aiocoap.Message(code=Code.GET, uri=f"coap://127.0.0.1:{port}/9/9")
        r = await asyncio.wait_for(ctx.request(missing).response, 10)
        assert r.code == Code.NOT_FOUND
    finally:
        await ctx.shutdown()


async def test_duplicates_and_garbage_against_our_codec(mini_server):
    port, proto = mini_server
    req = coap.Message(coap.CON, coap.GET, 0x1111, b"\x07").set_path("/3311/0/5851")
    transport, peer = await udp_peer(port)
    try:
        first = await peer.exchange(coap.encode(req))
        second = await peer.exchange(coap.encode(req))
        rst = coap.decode(await peer.exchange(b"\x42\x01\x22\x22\xab"))  # truncated token
    finally:
        transport.close()
    assert first == second and proto.handled == 1
    assert coap.decode(first).code == coap.CONTENT
    assert rst.mtype == coap.RST and rst.mid == 0x2222


async def test_aiocoap_client_command_against_our_codec(mini_server):
    port, _ = mini_server
    exe = os.path.join(os.path.dirname(sys.executable), "aiocoap-client")
    proc = await asyncio.create_subprocess_exec(
        exe,
        f"coap://127.0.0.1:{port}/3311/0/5851",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), 30)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode == 0, err.decode()
    # aiocoap-client prints the CBOR payload raw when stdout is not a terminal
    assert out.rstrip(b"\n") == cbor.dumps(40) or b"40" in out, out
