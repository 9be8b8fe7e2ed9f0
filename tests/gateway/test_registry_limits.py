"""Registration limits (issue 11): a flood of Registers with new endpoint names, from one raw
UDP socket, against the real gateway (in process, real CoAP on loopback). The known nodes
(aiocoap clients) keep registering and reporting through it; the flood's entries are bounded
and expire; nothing of a refused Register reaches the store."""

from __future__ import annotations

import asyncio
import time

from aiocoap import Code
from coap_peers import AiocoapNode, gateway

from gateway.clock import Clock
from protocol import coap as pc
from protocol import lwm2m

T0 = 1_790_000_000.0


class ManualClock(Clock):
    """A simulated clock that moves only when told (expiry without waiting)."""

    def __init__(self, t: float) -> None:
        super().__init__(start=t)
        self.t = t

    def now(self) -> float:
        return self.t


class Flood(asyncio.DatagramProtocol):
    """One socket sending CON Registers with new endpoint names; collects the answers."""

    def __init__(self) -> None:
        self.answers: dict[int, pc.Message] = {}
        self.got = asyncio.Event()
        self.want = 0

    def datagram_received(self, data: bytes, addr) -> None:
        msg = pc.decode(data)
        if msg.code == 0 or msg.is_request():  # an empty ACK (the answer follows), or the
            return  # gateway's time Write to a registered "node"
        if msg.mtype == pc.CON:  # that separate response: acknowledge it
            self.transport.sendto(pc.encode(pc.Message(pc.ACK, 0, msg.mid, b"")), addr)
        self.answers[int.from_bytes(msg.token, "big")] = msg  # one token per request
        if len(self.answers) >= self.want:
            self.got.set()

    def connection_made(self, transport) -> None:
        self.transport = transport


async def flood(port: int, names: list[str], first_mid: int = 1) -> dict[int, pc.Message]:
    loop = asyncio.get_running_loop()
    tr, proto = await loop.create_datagram_endpoint(Flood, local_addr=("127.0.0.1", 0))
    proto.want = len(names)
    try:
        for k, ep in enumerate(names):
            mid = (first_mid + k) & 0xFFFF
            msg = pc.Message(pc.CON, pc.POST, mid, mid.to_bytes(2, "big"), None, b"</3311/0>")
            msg.set_path("/rd")
            for q in (f"ep={ep}", "lt=300", "lwm2m=1.1"):
                msg.add_option(pc.URI_QUERY, q.encode())
            msg.add_option(pc.CONTENT_FORMAT, lwm2m.CF_LINK_FORMAT)
            tr.sendto(pc.encode(msg), ("127.0.0.1", port))
            if k % 25 == 24:
                await asyncio.sleep(0.005)  # let the server read: the kernel buffer is finite
        # lost datagrams are lost (no retransmission here): wait until the answers stop coming
        last = -1
        while len(proto.answers) != last:
            last = len(proto.answers)
            try:
                await asyncio.wait_for(proto.got.wait(), 1.0)
            except TimeoutError:
                pass
        return proto.answers
    finally:
        tr.close()


def rep(seq, t, wh):
    return (seq, int(t), wh, 40.0, 100, 60 * seq, 0)


async def count_nodes(gw) -> int:
    return await gw.store.read(lambda c: c.execute("SELECT COUNT(*) FROM nodes").fetchone()[0])


async def test_a_flood_of_new_endpoints_is_bounded_and_expires(tmp_path):
    clock = ManualClock(T0)
    async with gateway(tmp_path, clock=clock, nodes__new_per_s=5.0, nodes__max_pending=30,
                       nodes__pending_expire_s=600.0) as gw:
        port = gw.config.coap.port
        real = [await AiocoapNode(f"lamp-{i}", port).start() for i in range(2)]
        try:
            for i, n in enumerate(real):
                await n.register()
                assert (await n.describe()).code == Code.CHANGED
                assert (await n.send([rep(1, T0 - 900, 1000 + i)])).code == Code.CHANGED
            # a new node that registered a moment before the flood, reporting later
            late = await AiocoapNode("lamp-new", port).start()
            real.append(late)
            await late.register()

            names = [f"flood-{k:05d}" for k in range(1500)]
            flood_task = asyncio.create_task(flood(port, names))
            # the known nodes keep working during the flood
            for k in range(5):
                for i, n in enumerate(real[:2]):
                    r = await n.send([rep(2 + k, T0 - 800 + 10 * k, 1001 + i + k)])
                    assert r.code == Code.CHANGED, r
            answers = await flood_task
            codes = [a.code for a in answers.values()]
            created = codes.count(pc.CREATED)
            refused = [a for a in answers.values() if a.code == pc.SERVICE_UNAVAILABLE]
            assert 0 < created <= 30 - 1  # max_pending, lamp-new holds one place
            assert len(refused) == len(answers) - created and refused
            assert all(a.max_age() >= 30 for a in refused)
            assert len(answers) > 1000  # most datagrams were answered (5.03 costs no write)
            # known nodes register again whatever the limits; the store holds only the admitted
            for n in real:
                await n.register()
                assert n.location
            assert await count_nodes(gw) == 3 + created
            assert gw.registry.pending() == 1 + created
            h = await gw.health()
            assert h["registrations"]["refused"] == len(refused) and h["coap_stats"]["refused"]
            # a genuine new node is refused while the flood fills the pending places
            newer = await AiocoapNode("lamp-newer", port).start()
            real.append(newer)
            r = await newer.request(Code.POST, "/rd?ep=lamp-newer&lt=300&lwm2m=1.1&b=U",
                                    b"</3311/0>", lwm2m.CF_LINK_FORMAT)
            assert r.code == Code.SERVICE_UNAVAILABLE and r.opt.max_age >= 30

            # lamp-new reports: known from now on. An hour later the rest of the flood expires.
            assert (await late.send([rep(1, T0 - 60, 7)])).code == Code.CHANGED
            clock.t = T0 + 601
            assert await gw.registry.expire_pending() == created
            assert await count_nodes(gw) == 3
            assert gw.registry.pending() == 0
            rows = await gw.registry.list_nodes()
            assert sorted(n["id"] for n in rows) == ["lamp-0", "lamp-1", "lamp-new"]
            assert all(n["registered"] for n in rows)
            # the places are free again (the rate bucket refills: 5 per second)
            gw.registry._tokens_at = time.monotonic() - 1.0
            assert (await newer.register()).code == Code.CREATED
        finally:
            for n in real:
                await n.stop()


async def test_refused_register_writes_nothing_and_known_node_survives_restart(tmp_path):
    clock = ManualClock(T0)
    async with gateway(tmp_path, clock=clock, nodes__new_per_s=1.0, nodes__max_pending=5) as gw:
        port = gw.config.coap.port
        node = await AiocoapNode("lamp-a", port).start()
        try:
            await node.register()
            assert (await node.send([rep(1, T0 - 60, 5)])).code == Code.CHANGED
            answers = await flood(port, [f"x{k}" for k in range(200)])
            assert sum(a.code == pc.CREATED for a in answers.values()) <= 5
            rows, refused = await count_nodes(gw), gw.registry.refused
            answers = await flood(port, [f"y{k}" for k in range(100)], first_mid=1000)
            assert all(a.code == pc.SERVICE_UNAVAILABLE for a in answers.values())
            assert gw.registry.refused >= refused + len(answers)
            assert await count_nodes(gw) == rows  # refused Registers store nothing
        finally:
            await node.stop()
    # after a gateway restart the node that reported is still known: admitted at once
    async with gateway(tmp_path, clock=clock, coap__port=port, nodes__new_per_s=1.0,
                       nodes__max_pending=1) as gw:
        node = await AiocoapNode("lamp-a", port).start()
        try:
            await flood(port, [f"z{k}" for k in range(50)])
            assert (await node.register()).code == Code.CREATED
        finally:
            await node.stop()

