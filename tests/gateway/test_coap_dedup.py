"""Bounded duplicate detection (issue 11: memory under a request flood). The structure itself,
then the running gateway flooded with new (source, Message ID) pairs: what aiocoap remembers
stays at the configured bound, and a retransmission is still answered from memory."""

from __future__ import annotations

import asyncio
import socket

from coap_peers import gateway

from gateway.coap.dedup import DedupCache


class FakeClock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def test_cache_is_bounded_in_count_and_age():
    clock = FakeClock()
    c = DedupCache(max_entries=1000, lifetime=247.0, clock=clock)
    for i in range(50000):
        assert c.seen(("10.0.0.1", i)) == (False, None)
    assert len(c) == 1000 and c.evicted == 49000
    assert c.seen(("10.0.0.1", 49999))[0] is True  # the newest are remembered
    assert c.seen(("10.0.0.1", 0))[0] is False  # the oldest were forgotten first
    c.store_response(("10.0.0.1", 49999), "answer")
    assert c.seen(("10.0.0.1", 49999)) == (True, "answer")
    clock.t = 246.0
    assert c.seen(("10.0.0.1", 49998))[0] is True
    clock.t = 247.5  # past EXCHANGE_LIFETIME: expired without any timer
    assert c.seen(("10.0.0.2", 1))[0] is False
    assert len(c) == 1


def _con_get(mid: int, path: bytes = b"nothing") -> bytes:
    return bytes((0x42, 0x01, mid >> 8, mid & 0xFF)) + mid.to_bytes(2, "big") \
        + bytes((0xB0 | len(path),)) + path


async def test_flooded_gateway_remembers_at_most_the_bound(tmp_path):
    async with gateway(tmp_path, coap__dedup_entries=200) as gw:
        mms = [ri.token_interface for ri in gw._ctx.request_interfaces
               if hasattr(ri.token_interface, "_recent_messages")]
        assert mms, "no message manager found"
        loop = asyncio.get_running_loop()
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.setblocking(False)
            s.connect(("127.0.0.1", gw.config.coap.port))
            answers = []
            for mid in range(2000):
                s.send(_con_get(mid))
                answers.append(await asyncio.wait_for(loop.sock_recv(s, 1500), 5))
            assert all(a[1] == 0x84 for a in answers)  # 4.04 each
            assert sum(len(mm.slgw_dedup) for mm in mms) == 200
            assert all(len(mm._recent_messages) == 0 for mm in mms)  # aiocoap's own: unused
            assert sum(mm.slgw_dedup.evicted for mm in mms) == 1800
            bad_before = gw.coap.stats["bad"]
            s.send(_con_get(1999))  # a retransmission: answered from memory, not handled again
            again = await asyncio.wait_for(loop.sock_recv(s, 1500), 5)
            assert again == answers[-1]
            assert gw.coap.stats["bad"] == bad_before
