"""The gateway's CoAP client (Read, Write, Execute, Observe) against an aiocoap server that
plays a node, plus its failure modes: refused, unreachable (ICMP) and silent (timeout)."""

from __future__ import annotations

import asyncio
import socket
import time

import aiocoap
import cbor2
import pytest
from aiocoap import Code, resource
from slgw_harness import free_port

from gateway.coap.client import NodeClient, NodeRefused, NodeUnreachable


class Level(resource.ObservableResource):
    def __init__(self) -> None:
        super().__init__()
        self.value = 40

    async def render_get(self, request):
        return aiocoap.Message(payload=cbor2.dumps(self.value), content_format=60)

    def set(self, v: int) -> None:
        self.value = v
        self.updated_state()


class Reboot(resource.Resource):
    def __init__(self) -> None:
        super().__init__()
        self.count = 0

    async def render_post(self, request):
        self.count += 1
        return aiocoap.Message(code=Code.CHANGED)


@pytest.fixture
async def node():
    site = resource.Site()
    level, reboot = Level(), Reboot()
    site.add_resource(["3311", "0", "5851"], level)
    site.add_resource(["3", "0", "4"], reboot)
    port = free_port(socket.SOCK_DGRAM)
    ctx = await aiocoap.Context.create_server_context(site, bind=("127.0.0.1", port),
                                                      transports=["simplesocketserver"])
    try:
        yield f"127.0.0.1:{port}", level, reboot
    finally:
        await ctx.shutdown()


@pytest.fixture
async def client():
    ctx = await aiocoap.Context.create_client_context(transports=["simple6"])
    try:
        yield NodeClient(ctx, limit=4, timeout=2.0)
    finally:
        await ctx.shutdown()


async def test_read_execute_observe(node, client):
    addr, level, reboot = node
    assert await client.read(addr, "/3311/0/5851") == 40
    await client.execute(addr, "/3/0/4")
    assert reboot.count == 1
    with pytest.raises(NodeRefused) as exc:
        await client.write(addr, "/3/0/4", 1)  # Write to an execute-only resource
    assert exc.value.code == "4.05"
    with pytest.raises(NodeRefused) as exc:
        await client.read(addr, "/9/9/9")
    assert exc.value.code == "4.04"

    seen = []
    obs = client.observe(addr, "/3311/0/5851")
    async for v in obs:
        seen.append(v)
        if len(seen) == 1:
            level.set(70)
        elif len(seen) == 2:
            level.set(0)
        else:
            break
    await obs.aclose()
    assert seen == [40, 70, 0]


async def test_unreachable_and_silent_nodes(client):
    # nothing listens: the ICMP port-unreachable ends the request well before the timeout
    closed = free_port(socket.SOCK_DGRAM)
    t0 = time.monotonic()
    with pytest.raises(NodeUnreachable):
        await client.write(f"127.0.0.1:{closed}", "/3311/0/5851", 10)
    assert time.monotonic() - t0 < 2.0
    # a socket that never answers: the request is cancelled at the timeout
    silent = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    silent.bind(("127.0.0.1", 0))
    try:
        with pytest.raises(NodeUnreachable, match="no answer"):
            await client.write(f"127.0.0.1:{silent.getsockname()[1]}", "/3311/0/5851", 10)
    finally:
        silent.close()
    with pytest.raises(NodeUnreachable):
        await client.write(None, "/3311/0/5851", 10)


class Slow(resource.Resource):
    """Counts Writes in progress across all the simulated nodes that share it."""

    def __init__(self, counter: dict, delay: float = 0.05) -> None:
        super().__init__()
        self.c = counter
        self.delay = delay

    async def render_put(self, request):
        self.c["active"] += 1
        self.c["peak"] = max(self.c["peak"], self.c["active"])
        await asyncio.sleep(self.delay)
        self.c["active"] -= 1
        return aiocoap.Message(code=Code.CHANGED)


async def test_one_request_at_a_time_per_node(client):
    # aiocoap sends the next request to a peer once the previous one was ACKed (empty ACK, the
    # answer to come separately: RFC 7252 NSTART), so three Writes reached one node's handler
    # at once; under OSCORE that races a rebooted node's Echo exchange (RFC 8613 B.1.2)
    counter = {"active": 0, "peak": 0}
    site = resource.Site()
    site.add_resource(["3311", "0", "5851"], Slow(counter, 0.4))  # past aiocoap's empty-ACK delay
    port = free_port(socket.SOCK_DGRAM)
    ctx = await aiocoap.Context.create_server_context(site, bind=("127.0.0.1", port), transports=["udp6"])
    try:
        await asyncio.gather(*(client.write(f"127.0.0.1:{port}", "/3311/0/5851", v) for v in range(3)))
        assert counter["peak"] == 1 and not client._per_node
    finally:
        await ctx.shutdown()


async def test_concurrency_is_bounded(client):
    # one request at a time per node (above), so the bound that matters is across nodes:
    # 8 nodes, a limit of 4.
    counter = {"active": 0, "peak": 0}
    ctxs, ports = [], []
    try:
        for _ in range(8):
            site = resource.Site()
            site.add_resource(["3311", "0", "5851"], Slow(counter))
            port = free_port(socket.SOCK_DGRAM)
            ctxs.append(await aiocoap.Context.create_server_context(
                site, bind=("127.0.0.1", port), transports=["simplesocketserver"]))
            ports.append(port)
        await asyncio.gather(*(client.write(f"127.0.0.1:{p}", "/3311/0/5851", 1)
                               for p in ports * 2))
        assert counter["peak"] == 4  # the client's limit, reached and never passed
    finally:
        for ctx in ctxs:
            await ctx.shutdown()


async def test_a_value_given_late_is_read_when_the_nodes_turn_comes(client):
    # the time Write waits its turn behind the node's earlier request (up to its timeout when
    # that one is lost): a time read before the wait reached the node that much too old
    silent = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    silent.bind(("127.0.0.1", 0))
    address = f"127.0.0.1:{silent.getsockname()[1]}"
    state = {"first_done": False, "read_after_first": None}

    async def first() -> None:
        try:
            await client.write(address, "/3311/0/5851", 1, mtype=aiocoap.NON, timeout=0.3)
        finally:
            state["first_done"] = True

    def now() -> int:
        state["read_after_first"] = state["first_done"]
        return 1767286800 + state["first_done"]

    try:
        t1 = asyncio.create_task(first())
        await asyncio.sleep(0)
        with pytest.raises(NodeUnreachable):
            await client.write(address, "/3/0/13", now, mtype=aiocoap.NON, timeout=0.3)
        with pytest.raises(NodeUnreachable):
            await t1
        assert state["read_after_first"] is True
        silent.setblocking(False)
        sent = [aiocoap.Message.decode(silent.recv(2048)) for _ in range(2)]
        assert sent[1].payload == b"1767286801"
        assert sent[1].opt.content_format == 0
    finally:
        silent.close()
