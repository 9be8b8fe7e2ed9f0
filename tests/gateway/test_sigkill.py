"""SIGKILL during an ingest burst: every report the gateway acknowledged (2.04) is in the store
after a restart. The load comes from a raw-UDP client with 32 CON requests in flight."""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
import time

from slgw_harness import SlgwProcess

from protocol import coap as pc
from protocol import lwm2m, report

IN_FLIGHT = 32


class Burst(asyncio.DatagramProtocol):
    """Matches answers by token: under load aiocoap may send an empty ACK first and the
    response later as a separate CON (RFC 7252 §5.2.2), which we acknowledge."""

    def __init__(self) -> None:
        self.waiters: dict[bytes, asyncio.Future] = {}
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, addr) -> None:
        try:
            msg = pc.decode(data)
        except ValueError:
            return
        if msg.code == 0:
            return  # empty ACK: the response follows separately
        if msg.mtype == pc.CON and self.transport is not None:
            self.transport.sendto(pc.encode(pc.Message(pc.ACK, 0, msg.mid)))
        fut = self.waiters.pop(msg.token, None)
        if fut is not None and not fut.done():
            fut.set_result(msg)


def request(mid: int, path: str, query: list[str], payload: bytes, cf: int) -> bytes:
    m = pc.Message(pc.CON, pc.POST, mid, mid.to_bytes(2, "big"), None, payload)
    m.set_path(path)
    for q in query:
        m.add_option(pc.URI_QUERY, q)
    m.add_option(pc.CONTENT_FORMAT, cf)
    return pc.encode(m)


async def burst_and_kill(gw: SlgwProcess, kill_after: int) -> set[int]:
    loop = asyncio.get_running_loop()
    transport, proto = await loop.create_datagram_endpoint(
        Burst, remote_addr=("127.0.0.1", gw.coap_port))
    acked: set[int] = set()
    try:
        async def exchange(mid: int, data: bytes, timeout: float = 1.0) -> pc.Message | None:
            fut = loop.create_future()
            proto.waiters[mid.to_bytes(2, "big")] = fut
            transport.sendto(data)
            try:
                return await asyncio.wait_for(fut, timeout)
            except TimeoutError:
                return None

        r = await exchange(1, request(1, "/rd", ["ep=k1", "lt=600", "lwm2m=1.1", "b=U"], b"</3/0>",
                                      lwm2m.CF_LINK_FORMAT), 5)
        assert r is not None and r.code == pc.CREATED
        t0 = int(time.time()) - 86400
        seqs = iter(range(1, 60000))
        killed = asyncio.Event()

        async def worker() -> None:
            for seq in seqs:
                payload = report.encode_reports([(seq, t0 + seq, 1000 + seq, 20.0, 50, seq, 0)])
                mid = 2 + seq
                r = await exchange(mid, request(mid, "/dp", ["ep=k1"], payload, lwm2m.CF_SENML_CBOR))
                if r is None:
                    if killed.is_set():
                        return
                    continue
                assert r.code in (pc.CHANGED, pc.SERVICE_UNAVAILABLE), pc.code_str(r.code)
                if r.code == pc.CHANGED:
                    acked.add(seq)
                if len(acked) >= kill_after and not killed.is_set():
                    os.kill(gw.proc.pid, signal.SIGKILL)  # mid-burst: others are in flight
                    killed.set()

        await asyncio.gather(*(worker() for _ in range(IN_FLIGHT)))
    finally:
        transport.close()
    return acked


async def test_every_acknowledged_report_survives_sigkill(tmp_path):
    gw = SlgwProcess(tmp_path)
    try:
        gw.start()
        acked = await burst_and_kill(gw, kill_after=1500)
        gw.proc.wait(10)
        assert gw.proc.returncode == -signal.SIGKILL
    finally:
        gw.stop()
    assert len(acked) >= 1500

    gw2 = SlgwProcess(tmp_path, store=gw.store, coap_port=gw.coap_port)
    try:
        gw2.start()  # the store recovers its WAL and the service starts again
        con = sqlite3.connect(f"file:{gw.store}?mode=ro", uri=True)
        stored = {s for (s,) in con.execute("SELECT seq FROM readings WHERE source = 'k1'")}
        con.close()
        missing = acked - stored
        assert not missing, f"{len(missing)} acknowledged reports lost, e.g. {sorted(missing)[:5]}"
        # the registration survived too: the node shows in the API
        nodes = gw2.api("GET", "/api/nodes")["nodes"]
        assert [n["id"] for n in nodes] == ["k1"] and nodes[0]["registered"]
    finally:
        gw2.stop()
