"""Event-loop CPU of the gateway's ingest path, without CoAP: what slgw adds on the loop's
thread to every Send, beside aiocoap (which the bare server pays too).

    python -m bench gateway_ingest_path

32 concurrent tasks each take a Send payload (the ingest benches' template: one report, or a
pack of 11 filled to 1,024 bytes), parse it (``gateway.ingest.parse_payload``, i.e. the
protocol's one parser ``protocol.report_parse.parse_send``, as the /dp resource does) and await ``Ingestor.handle_reports`` on a real Store (its writer thread, WAL,
synchronous=FULL). ``time.thread_time()`` of the event loop's thread over the run, per Send:
the loop's own cost, however busy the machine, since the writer runs on another thread. The
baseline in the same run is parse alone (what a decoding bare server pays).
"""

from __future__ import annotations

import asyncio
import os
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from bench.gateway_ingest import SEQ_BASE, PackTemplate  # noqa: E402
from gateway.ingest import Ingestor, parse_payload  # noqa: E402
from gateway.store import Store  # noqa: E402

TASKS = 32
SENDS = 6400


async def _measure(per_send: int) -> dict:
    tpl = PackTemplate(per_send)
    with tempfile.TemporaryDirectory() as d:
        store = await Store.open(os.path.join(d, "bench.db"))
        try:
            ing = Ingestor(store)
            per_task = 20 + SENDS // TASKS
            # made before timing: the template's patching is the generator's cost, not the loop's
            todo = [[tpl.make(SEQ_BASE + k * tpl.n) for k in range(per_task)] for _ in range(TASKS)]

            async def worker(slot: int, count: int) -> None:
                for _ in range(count):
                    payload = todo[slot].pop(0)
                    now = time.time()
                    reports, _attrs = parse_payload(payload, now)
                    answer = await ing.handle_reports(f"ep{slot}", reports, received_at=now)
                    assert answer.code == (2, 4), answer

            await asyncio.gather(*(worker(s, 20) for s in range(TASKS)))  # warm-up
            c0, w0 = time.thread_time(), time.perf_counter()
            await asyncio.gather(*(worker(s, SENDS // TASKS) for s in range(TASKS)))
            c1, w1 = time.thread_time(), time.perf_counter()
            payloads = [tpl.make(SEQ_BASE + i * tpl.n) for i in range(SENDS // 4)]
            p0 = time.thread_time()
            for p in payloads:
                parse_payload(p, time.time())
            p1 = time.thread_time()
        finally:
            await store.close()
    n = SENDS // TASKS * TASKS
    return {"reports_per_send": tpl.n,
            "loop_cpu_us_per_send": round(1e6 * (c1 - c0) / n, 1),
            "parse_alone_us_per_send": round(1e6 * (p1 - p0) / len(payloads), 1),
            "wall_us_per_send": round(1e6 * (w1 - w0) / n, 1)}


def run() -> dict:
    live = asyncio.run(_measure(1))
    packed = asyncio.run(_measure(16))
    for r in (live, packed):
        r["loop_cpu_beyond_parse_us"] = round(r["loop_cpu_us_per_send"] - r["parse_alone_us_per_send"], 1)
        # the parser's share of the loop's whole ingest cost, both taken in this run
        r["parse_share_of_loop"] = round(r["parse_alone_us_per_send"] / r["loop_cpu_us_per_send"], 3)
    return {"command": "python -m bench gateway_ingest_path", "live": live, "packed": packed,
            "packed_over_live_loop_cpu": round(packed["loop_cpu_us_per_send"] / live["loop_cpu_us_per_send"], 2)}


if __name__ == "__main__":
    import json

    print(json.dumps(run(), indent=2))
