"""Durable ingest through the whole `slgw serve` (LwM2M /dp resource with every SPEC §8 check,
registry lookup, ingest, store) against a bare aiocoap server that only decodes and answers,
in the same run.

    .venv/bin/python bench/gateway_service_ingest.py [--duration 5] [--rounds 2]

Reuses bench/gateway_ingest.py's raw-UDP load generator (32 CON Sends in flight, one endpoint
per slot) and its bare server; the endpoints Register first, as real nodes do. Every
acknowledged report is checked in the database after a graceful stop. Server CPU of slgw is
read from /proc/<pid>/stat.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from bench.gateway_ingest import IN_FLIGHT, Server, free_port, run_load, verify  # noqa: E402
from protocol import coap  # noqa: E402
from protocol.lwm2m import CF_LINK_FORMAT  # noqa: E402

TICK = os.sysconf("SC_CLK_TCK")


class Slgw:
    """`slgw serve` with the small interface run_load needs (.port, .stats())."""

    def __init__(self, db: str) -> None:
        self.port = free_port()
        api = free_port()
        self.db = db
        self.log = open(db + ".log", "wb")
        self.proc = subprocess.Popen(
            [os.path.join(os.path.dirname(sys.executable), "slgw"), "serve", "--store-path", db,
             "--coap-port", str(self.port), "--api-port", str(api), "--log-level", "WARNING"],
            stdout=self.log, stderr=subprocess.STDOUT, cwd=ROOT)
        for _ in range(200):
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{api}/api/health", timeout=1).read()
                return
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError("slgw did not start")

    def stats(self) -> dict:
        with open(f"/proc/{self.proc.pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        utime, stime = int(fields[11]) / TICK, int(fields[12]) / TICK
        return {"cpu": utime + stime, "sys": stime, "commits": 0, "writes": 0}

    def register(self, prefix: str) -> None:
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.settimeout(5)
        try:
            for slot in range(IN_FLIGHT):
                m = coap.Message(coap.CON, coap.POST, slot + 1, b"\x01", None, b"</3311/0>")
                m.set_path("/rd")
                for q in (f"ep={prefix}{slot:03d}", "lt=3600", "lwm2m=1.1", "b=U"):
                    m.add_option(coap.URI_QUERY, q)
                m.add_option(coap.CONTENT_FORMAT, CF_LINK_FORMAT)
                s.sendto(coap.encode(m), ("127.0.0.1", self.port))
                assert coap.decode(s.recv(2048)).code == coap.CREATED
        finally:
            s.close()

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()


async def bench(duration: float, rounds: int) -> None:
    tmp = tempfile.mkdtemp(prefix="slgw-bench-")
    bare, svc, packed = [], [], []
    acked_total = missing_total = 0
    for rnd in range(rounds):
        s = Server("bare", os.path.join(tmp, "unused.db"))
        try:
            bare.append(await run_load(s.port, f"b{rnd}-", 1, duration, s))
        finally:
            s.stop()
        db = os.path.join(tmp, f"svc{rnd}.db")
        g = Slgw(db)
        acked = []
        try:
            g.register(f"live{rnd}-")
            g.register(f"pack{rnd}-")
            r = await run_load(g.port, f"live{rnd}-", 1, duration, g)
            svc.append(r)
            acked += r["acked"]
            r = await run_load(g.port, f"pack{rnd}-", 10, duration, g)
            packed.append(r)
            acked += r["acked"]
        finally:
            g.stop()
        n, missing, mode = verify(db, acked)
        acked_total += n
        missing_total += missing
        for name, x in (("bare", bare[-1]), ("slgw", svc[-1]), ("packed", packed[-1])):
            if x["other_codes"]:
                print(f"  {name}: non-2.04 answers {x['other_codes']}")
        print(f"round {rnd + 1}: bare {bare[-1]['messages_per_s']:.0f} msg/s, slgw "
              f"{svc[-1]['messages_per_s']:.0f} msg/s ({svc[-1]['cpu_per_message_ms']:.3f} ms CPU/msg), "
              f"packed {packed[-1]['reports_per_s']:.0f} reports/s; {n} acknowledged, {missing} "
              f"missing, journal {mode}", flush=True)

    def med(runs: list[dict], key: str) -> float:
        return statistics.median(r[key] for r in runs)

    b, s = med(bare, "messages_per_s"), med(svc, "messages_per_s")
    bc, sc = med(bare, "cpu_per_message_ms"), med(svc, "cpu_per_message_ms")
    p = med(packed, "reports_per_s")
    print()
    print(f"slgw serve, live ingest, 1 report per Send, {IN_FLIGHT} in flight, {duration:.0f} s x "
          f"{rounds} rounds (medians):")
    print(f"  bare aiocoap (decode + answer): {b:7.0f} msg/s, {bc:.3f} ms server CPU/msg")
    print(f"  slgw serve (durable):           {s:7.0f} msg/s, {sc:.3f} ms server CPU/msg")
    print(f"  ratio: {100 * s / b:.0f} % by throughput, {100 * bc / sc:.0f} % by server CPU cost")
    print(f"  packs of 10: {p:.0f} reports/s = {p / s:.1f}x the live message rate")
    print(f"  acknowledged reports checked in the database: {acked_total}, missing: {missing_total}")
    if missing_total:
        raise SystemExit("FAIL: acknowledged reports missing from the database")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--duration", type=float, default=5.0)
    ap.add_argument("--rounds", type=int, default=2)
    a = ap.parse_args()
    asyncio.run(bench(a.duration, a.rounds))


if __name__ == "__main__":
    main()
