"""Live reports while a roll-out downloads (issue 12: "a roll-out does not starve live
reports; measure both in one run").

The real `slgw serve` (security "none", its own process) holds a real `slnode build` bundle.
Reporters (registered endpoints) each Send one report every 0.5 s and time the 2.04; pullers
fetch the whole bundle block by block (1024-byte Block2, one request in flight each, as a node
does), again and again. Phases of 6 s in one run: with blocks unpaced (``[firmware]
max_block_rate = 0``): reports alone (the baseline), + 8 pullers (`max_downloads`, the default
bound on nodes), + 64 pullers (an unbounded wave); then with the default pacing (200 blocks/s):
+ 8 and + 64 pullers. Figures: report round-trip p50/p95 and their ratio to the baseline, lost
reports, blocks/s served.
The clients are raw UDP with protocol/coap.py (an aiocoap client costs 0.5 ms per request and
would be the bottleneck). Run: ``.venv/bin/python -m bench gateway_ota_reports``.
"""

from __future__ import annotations

import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests" / "gateway"))

from protocol import coap, report  # noqa: E402

PHASE_S = 6.0
REPORTERS = 20


class Client(asyncio.DatagramProtocol):
    """One CoAP client socket: CON requests, piggybacked answers matched by token."""

    def __init__(self) -> None:
        self.waiting: dict[bytes, asyncio.Future] = {}
        self.mid = int.from_bytes(os.urandom(2), "big")

    def datagram_received(self, data: bytes, addr) -> None:
        try:
            m = coap.decode(data)
        except Exception:  # noqa: BLE001 - a bench: ignore what does not parse
            return
        if m.mtype == coap.CON:  # a separate response (a paced block): acknowledge it, as a node does
            self.transport.sendto(coap.encode(coap.Message(mtype=coap.ACK, code=0, mid=m.mid)))
        f = self.waiting.pop(m.token, None)
        if f is not None and not f.done():
            f.set_result(m)

    async def request(self, msg: coap.Message, timeout: float = 2.0) -> coap.Message | None:
        self.mid = (self.mid + 1) & 0xFFFF
        msg.mtype, msg.mid, msg.token = coap.CON, self.mid, os.urandom(4)
        f = asyncio.get_running_loop().create_future()
        self.waiting[msg.token] = f
        self.transport.sendto(coap.encode(msg))
        try:
            return await asyncio.wait_for(f, timeout)
        except TimeoutError:
            self.waiting.pop(msg.token, None)
            return None

    def connection_made(self, transport) -> None:
        self.transport = transport


async def _client(port: int) -> Client:
    loop = asyncio.get_running_loop()
    _t, c = await loop.create_datagram_endpoint(Client, remote_addr=("127.0.0.1", port))
    return c


def _msg(code: int, path: str, query=(), payload=b"", cf=None, block=None) -> coap.Message:
    m = coap.Message(code=code)
    m.set_path(path)
    for q in query:
        m.add_option(coap.URI_QUERY, q)
    if cf is not None:
        m.add_option(coap.CONTENT_FORMAT, coap.uint_bytes(cf))
    if block is not None:
        m.add_option(coap.BLOCK2, coap.uint_bytes(coap.block_value(block, False, 6)))
    m.payload = payload
    return m


async def reporter(port: int, ep: str, rtts: list, lost: list, stop: asyncio.Event) -> None:
    c = await _client(port)
    r = await c.request(_msg(coap.POST, "/rd", ("ep=" + ep, "lt=300", "lwm2m=1.1", "b=U"), b"</3/0>,</3311/0>", 40))
    assert r is not None and r.code == coap.CREATED, r
    d = report.encode_descriptor("1.0", 48.85, 2.35, "g", "c", 100.0, 100, "UTC")
    await c.request(_msg(coap.POST, "/dp", (), d, 112))
    seq, wh = 1, 1000.0
    while not stop.is_set():
        now = int(time.time())
        p = report.encode_reports([(seq, now, wh, 40.0, 100, 3600, 0)])
        t0 = time.perf_counter()
        r = await c.request(_msg(coap.POST, "/dp", (), p, 112))
        if r is None or r.code != coap.CHANGED:
            lost.append(seq)
        else:
            rtts.append(time.perf_counter() - t0)
        seq += 1
        wh += 0.01
        await asyncio.sleep(0.5)


async def puller(port: int, sha: str, files: list[str], blocks: list, stop: asyncio.Event) -> None:
    c = await _client(port)
    while not stop.is_set():
        for rel in files:
            num = 0
            while not stop.is_set():
                r = await c.request(_msg(coap.GET, f"/fw/{sha}/{rel}", block=num))
                if r is None:
                    continue
                blocks.append(1)
                b = r.block2()
                if b is None or not b[1]:
                    break
                num += 1


async def phase(port: int, sha: str, files: list[str], pullers: int) -> dict:
    stop = asyncio.Event()
    rtts: list = []
    lost: list = []
    blocks: list = []
    tasks = [asyncio.create_task(reporter(port, f"bench-{pullers}-{i}", rtts, lost, stop)) for i in range(REPORTERS)]
    tasks += [asyncio.create_task(puller(port, sha, files, blocks, stop)) for _ in range(pullers)]
    await asyncio.sleep(PHASE_S)
    stop.set()
    await asyncio.gather(*tasks, return_exceptions=True)
    rtts.sort()
    return {"pullers": pullers, "reports": len(rtts), "lost": len(lost),
            "p50_ms": round(1000 * statistics.median(rtts), 2) if rtts else None,
            "p95_ms": round(1000 * rtts[int(0.95 * (len(rtts) - 1))], 2) if rtts else None,
            "blocks_per_s": round(len(blocks) / PHASE_S)}


def run() -> dict:
    from slgw_harness import SlgwProcess

    from tools.slnode import build as slbuild

    with tempfile.TemporaryDirectory() as d:
        work = Path(d)
        out = work / "bundle"
        slbuild.build(out, quiet=True)
        files = ["manifest.json"] + sorted(json.loads((out / "manifest.json").read_text())["files"])
        res = []
        for rate, pullers in (("0", (0, 8, 64)), ("200", (8, 64))):
            with SlgwProcess(work, "--firmware-max-block-rate", rate, store=work / f"slgw-{rate}.db") as gw:
                r = gw.cli("--json", "firmware", "add", str(out))
                sha = json.loads(r.stdout)["bundle"]

                async def main(port=gw.coap_port, sha=sha, pullers=pullers) -> list[dict]:
                    return [await phase(port, sha, files, n) for n in pullers]

                for ph in asyncio.run(main()):
                    ph["max_block_rate"] = float(rate)
                    res.append(ph)
    base = res[0]
    for r in res[1:]:
        r["p50_ratio"] = round(r["p50_ms"] / base["p50_ms"], 2)
        r["p95_ratio"] = round(r["p95_ms"] / base["p95_ms"], 2)
    return {"reporters": REPORTERS, "phase_s": PHASE_S, "phases": res}


if __name__ == "__main__":
    print(json.dumps(run(), indent=1))
