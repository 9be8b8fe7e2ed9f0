"""A group command to 200 nodes through the real gateway, against a bare aiocoap client sending
the same 200 Writes, measured in the same run.

    .venv/bin/python bench/gateway_group_command.py [--nodes 200] [--rounds 3]

The gateway (`slgw serve`) runs in its own process on free loopback ports with a temp store.
This process simulates the nodes: one UDP socket each, speaking CoAP through protocol/coap.py
(Register, descriptor Send, then answering every Write with 2.04). One round is
`POST /api/set-level {"target": "group:bench", "level": L, "wait": 30}`: the API answers once
the delivery attempt is over, so its latency is the time for all 200 commands to be persisted
as pending, written to the nodes (64 in flight) and persisted as delivered. Every round checks
that every node received the level. Baseline: a bare aiocoap client context PUTting the same
200 Writes with the same concurrency bound (no store, no HTTP). Goal (issue 4): < 2 s.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

import aiohttp  # noqa: E402
import cbor2  # noqa: E402

from protocol import coap as pc  # noqa: E402
from protocol import lwm2m, report  # noqa: E402

CONCURRENCY = 64


def free_port(kind: int) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Node(asyncio.DatagramProtocol):
    def __init__(self, crowd: Crowd, i: int):
        self.crowd, self.i = crowd, i

    def datagram_received(self, data: bytes, addr) -> None:
        self.crowd.received(self.i, data, addr)


class Crowd:
    def __init__(self, n: int, gw_port: int):
        self.n, self.gw_port = n, gw_port
        self.t: list = []
        self.levels = [None] * n
        self.acks: dict = {}
        self.mid = 0

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        for i in range(self.n):
            t, _ = await loop.create_datagram_endpoint(lambda i=i: Node(self, i),
                                                       local_addr=("127.0.0.1", 0))
            self.t.append(t)

    def received(self, i: int, data: bytes, addr) -> None:
        m = pc.decode(data)
        if m.is_request():
            if m.code == pc.PUT and m.path_str() == "/3311/0/5851":
                self.levels[i] = cbor2.loads(m.payload)
            self.t[i].sendto(pc.encode(pc.response_for(m, pc.CHANGED)), addr)
        elif (i, m.mid) in self.acks:
            self.acks.pop((i, m.mid)).set_result(m)

    async def req(self, i: int, path: str, query: list[str], payload: bytes, cf: int) -> pc.Message:
        self.mid = (self.mid + 1) & 0xFFFF
        m = pc.Message(pc.CON, pc.POST, self.mid, b"\x01", None, payload).set_path(path)
        for q in query:
            m.add_option(pc.URI_QUERY, q)
        m.add_option(pc.CONTENT_FORMAT, cf)
        fut = asyncio.get_running_loop().create_future()
        self.acks[(i, self.mid)] = fut
        self.t[i].sendto(pc.encode(m), ("127.0.0.1", self.gw_port))
        return await asyncio.wait_for(fut, 10)

    async def register(self, group: str) -> None:
        desc = report.encode_descriptor("1.0", 48.0, 2.0, group, "K", 40.0, 100, "UTC")

        async def one(i: int) -> None:
            ep = f"bench-{i:04d}"
            r = await self.req(i, "/rd", [f"ep={ep}", "lt=3600", "lwm2m=1.1", "b=U"], b"</3311/0>",
                               lwm2m.CF_LINK_FORMAT)
            assert r.code == pc.CREATED, pc.code_str(r.code)
            r = await self.req(i, "/dp", [f"ep={ep}"], desc, lwm2m.CF_SENML_CBOR)
            assert r.code == pc.CHANGED

        for k in range(0, self.n, 50):  # a paced registration, not a storm
            await asyncio.gather(*(one(i) for i in range(k, min(self.n, k + 50))))

    def addr(self, i: int) -> str:
        return f"127.0.0.1:{self.t[i].get_extra_info('sockname')[1]}"


async def bare_baseline(crowd: Crowd, level: int) -> float:
    import aiocoap
    ctx = await aiocoap.Context.create_client_context(transports=["simple6"])
    sem = asyncio.Semaphore(CONCURRENCY)

    async def put(i: int) -> None:
        async with sem:
            msg = aiocoap.Message(code=aiocoap.PUT, uri=f"coap://{crowd.addr(i)}/3311/0/5851",
                                  payload=cbor2.dumps(level), content_format=lwm2m.CF_CBOR)
            r = await ctx.request(msg).response
            assert r.code.is_successful()

    t0 = time.perf_counter()
    await asyncio.gather(*(put(i) for i in range(crowd.n)))
    dt = time.perf_counter() - t0
    await ctx.shutdown()
    assert crowd.levels == [level] * crowd.n
    return dt


async def bench(n: int, rounds: int) -> dict:
    tmp = tempfile.mkdtemp(prefix="slgw-bench-")
    coap_port, api_port = free_port(socket.SOCK_DGRAM), free_port(socket.SOCK_STREAM)
    slgw = os.path.join(os.path.dirname(sys.executable), "slgw")
    log = open(os.path.join(tmp, "slgw.log"), "wb")
    proc = subprocess.Popen([slgw, "serve", "--store-path", os.path.join(tmp, "gw.db"),
                             "--coap-port", str(coap_port), "--api-port", str(api_port),
                             "--commands-concurrency", str(CONCURRENCY), "--log-level", "WARNING",
                             "--coap-security", "none"],
                            stdout=log, stderr=subprocess.STDOUT)
    crowd = Crowd(n, coap_port)
    url = f"http://127.0.0.1:{api_port}"
    try:
        async with aiohttp.ClientSession() as http:
            for _ in range(200):
                try:
                    async with http.get(url + "/api/health") as r:
                        if r.status == 200:
                            break
                except aiohttp.ClientError:
                    await asyncio.sleep(0.05)
            await crowd.start()
            await crowd.register("bench")
            times = []
            for k in range(rounds):
                level = 10 + k
                t0 = time.perf_counter()
                async with http.post(url + "/api/set-level", json={
                        "target": "group:bench", "level": level, "wait": 30}) as r:
                    doc = await r.json()
                times.append(time.perf_counter() - t0)
                assert doc["summary"] == {"delivered": n}, doc["summary"]
                assert crowd.levels == [level] * n
            base = [await bare_baseline(crowd, 50 + k) for k in range(rounds)]
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
        for t in crowd.t:
            t.close()
        shutil.rmtree(tmp, ignore_errors=True)
    med, bmed = statistics.median(times), statistics.median(base)
    return {"nodes": n, "concurrency": CONCURRENCY, "rounds": rounds,
            "gateway_group_command_s": [round(t, 3) for t in times],
            "gateway_median_s": round(med, 3),
            "bare_aiocoap_200_puts_s": [round(t, 3) for t in base],
            "bare_median_s": round(bmed, 3),
            "ratio_gateway_over_bare": round(med / bmed, 2),
            "goal_under_2s": med < 2.0}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--nodes", type=int, default=200)
    p.add_argument("--rounds", type=int, default=3)
    a = p.parse_args()
    print(json.dumps(asyncio.run(bench(a.nodes, a.rounds)), indent=2))


if __name__ == "__main__":
    main()
