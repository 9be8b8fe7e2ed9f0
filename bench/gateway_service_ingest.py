"""Durable ingest through the whole `slgw serve` (LwM2M /dp resource with every SPEC §8 check,
registry lookup, ingest, store) against a bare aiocoap server that only decodes and answers,
in the same run.

    .venv/bin/python bench/gateway_service_ingest.py [--duration 5] [--rounds 3]

Reuses bench/gateway_ingest.py's raw-UDP load generator (32 CON Sends in flight, one endpoint
per slot) and its bare server; the endpoints Register first, as real nodes do. Every
acknowledged report is checked in the database after a graceful stop. Server CPU of slgw is
read from /proc/<pid>/stat. Each round also feeds the bare server the same backlog packs: how
far a server that stores nothing gets above its own live rate is the ceiling for the drain
ratio in this harness.
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

    def __init__(self, db: str, extra: list[str] | None = None) -> None:
        self.port = free_port()
        api = free_port()
        self.db = db
        self.log = open(db + ".log", "wb")
        self.proc = subprocess.Popen(
            [os.path.join(os.path.dirname(sys.executable), "slgw"), "serve", "--store-path", db,
             "--coap-port", str(self.port), "--api-port", str(api), "--log-level", "WARNING",
             "--coap-security", "none", *(extra or [])],
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
        with open(f"/proc/{self.proc.pid}/task/{self.proc.pid}/stat") as f:  # the event loop's thread
            lf = f.read().rsplit(")", 1)[1].split()
        return {"cpu": utime + stime, "sys": stime, "commits": 0, "writes": 0,
                "loop_cpu": (int(lf[11]) + int(lf[12])) / TICK}

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
                r = coap.decode(s.recv(2048))
                if r.mtype == coap.ACK and r.code == coap.EMPTY:  # answer comes separately
                    r = coap.decode(s.recv(2048))
                    s.sendto(coap.encode(coap.Message(coap.ACK, coap.EMPTY, r.mid)),
                             ("127.0.0.1", self.port))
                assert r.code == coap.CREATED, coap.code_str(r.code)
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


async def bench(duration: float, rounds: int, bare_transport: str | None,
                commit_ms: float | None, slgw_args: list[str] | None = None) -> None:
    """Both servers run side by side; the load alternates between them slice by slice (bare,
    slgw live, slgw packed; bare and slgw swap places every other round), so each pair sees
    the same background load on this shared machine. Ratios are medians of the pairs."""
    tmp = tempfile.mkdtemp(prefix="slgw-bench-")
    bare, svc, packed, bare_packed = [], [], [], []
    db = os.path.join(tmp, "svc.db")
    # The bare server on the transport slgw uses for an IPv4 bind (gateway/coap/transport.py):
    # aiocoap's default udp6 costs more per datagram, which would flatter the ratio.
    s = Server("bare", os.path.join(tmp, "unused.db"), transport=bare_transport)
    # the bare server plus slgw's hand-off skeleton (answer after a writer thread's fsync, no
    # database): the ceiling of acknowledging after a commit made in a thread of the process
    h = None
    handoff = []
    g = None
    acked = []
    try:
        h = Server("handoff", os.path.join(tmp, "handoff"), transport=bare_transport)
        g = Slgw(db, ([] if commit_ms is None else ["--store-commit-interval-ms", str(commit_ms)])
                 + (slgw_args or []))
        for rnd in range(rounds):
            g.register(f"live{rnd}-")
            g.register(f"pack{rnd}-")
            order = [("bare", s), ("slgw", g)]
            if rnd % 2:
                order.reverse()
            for kind, srv in order:
                r = await run_load(srv.port, f"{'b' if kind == 'bare' else 'live'}{rnd}-", 1,
                                   duration, srv)
                (bare if kind == "bare" else svc).append(r)
                if kind == "slgw":
                    acked += r["acked"]
            # backlog packs filled to 1,024 bytes by pack_reports, as the node packs them
            r = await run_load(g.port, f"pack{rnd}-", 16, duration, g)
            packed.append(r)
            acked += r["acked"]
            # the ceiling: the bare server (decode + answer, nothing stored) fed the same packs
            bare_packed.append(await run_load(s.port, f"bpack{rnd}-", 16, duration, s))
            handoff.append(await run_load(h.port, f"h{rnd}-", 1, duration, h))
            for name, x in (("bare", bare[-1]), ("slgw", svc[-1]), ("packed", packed[-1])):
                if x["other_codes"]:
                    print(f"  {name}: non-2.04 answers {x['other_codes']}")
            print(f"round {rnd + 1}: bare {bare[-1]['messages_per_s']:.0f} msg/s "
                  f"({bare[-1]['cpu_per_message_ms']:.3f} ms CPU/msg), slgw "
                  f"{svc[-1]['messages_per_s']:.0f} msg/s ({svc[-1]['cpu_per_message_ms']:.3f} ms "
                  f"CPU/msg) = {100 * svc[-1]['messages_per_s'] / bare[-1]['messages_per_s']:.0f} %, "
                  f"packed {packed[-1]['reports_per_s']:.0f} reports/s "
                  f"({packed[-1]['reports_per_s'] / packed[-1]['messages_per_s']:.1f} per Send, "
                  f"{packed[-1]['cpu_per_message_ms']:.3f} ms CPU/Send) = "
                  f"{packed[-1]['reports_per_s'] / svc[-1]['messages_per_s']:.1f}x live; bare packed "
                  f"{bare_packed[-1]['reports_per_s']:.0f} reports/s = "
                  f"{bare_packed[-1]['reports_per_s'] / bare[-1]['messages_per_s']:.1f}x bare live",
                  flush=True)
    finally:
        s.stop()
        if h is not None:
            h.stop()
        if g is not None:
            g.stop()
    n, missing, mode = verify(db, acked)

    def med(runs: list[dict], key: str) -> float:
        return statistics.median(r[key] for r in runs)

    def spread(xs: list[float]) -> str:
        return f"{min(xs):.0f}-{max(xs):.0f}"

    ratios = [100 * x["messages_per_s"] / y["messages_per_s"] for x, y in zip(svc, bare, strict=True)]
    cpu_ratios = [100 * y["cpu_per_message_ms"] / x["cpu_per_message_ms"]
                  for x, y in zip(svc, bare, strict=True)]
    drains = [p["reports_per_s"] / x["messages_per_s"] for p, x in zip(packed, svc, strict=True)]
    drain_cpu = [x["cpu_per_message_ms"] / p["cpu_per_report_ms"] for p, x in zip(packed, svc, strict=True)]
    b, sv = med(bare, "messages_per_s"), med(svc, "messages_per_s")
    bc, sc = med(bare, "cpu_per_message_ms"), med(svc, "cpu_per_message_ms")
    p = med(packed, "reports_per_s")
    per = statistics.median(x["reports_per_s"] / x["messages_per_s"] for x in packed)
    print()
    print(f"slgw serve, live ingest, 1 report per Send, {IN_FLIGHT} in flight, {rounds} alternating "
          f"rounds of {duration:g} s per server (medians):")
    print(f"  bare aiocoap (decode + answer, transport {bare_transport or 'udp6'}): {b:7.0f} msg/s, "
          f"{bc:.3f} ms server CPU/msg")
    print(f"  slgw serve (durable):           {sv:7.0f} msg/s, {sc:.3f} ms server CPU/msg")
    print(f"  ratio: {statistics.median(ratios):.0f} % by throughput (pairs {spread(ratios)} %), "
          f"{statistics.median(cpu_ratios):.0f} % by server CPU cost (pairs {spread(cpu_ratios)} %)"
          " (goal >= 90 %)")
    print(f"  backlog packs ({per:.1f} reports per Send): {p:.0f} reports/s = "
          f"{statistics.median(drains):.1f}x the live message rate by throughput (pairs "
          f"{min(drains):.1f}-{max(drains):.1f}), {statistics.median(drain_cpu):.1f}x by server "
          "CPU cost (goal >= 10x)")
    ceil = [bp["reports_per_s"] / x["messages_per_s"] for bp, x in zip(bare_packed, bare, strict=True)]
    print(f"  slgw's event-loop thread: {statistics.median(x['loop_cpu_per_message_ms'] for x in svc):.3f} "
          f"ms CPU per live Send, {statistics.median(x['loop_cpu_per_message_ms'] for x in packed):.3f} "
          "per pack (the rest of the server CPU above is the writer and other threads)")
    hr = [100 * x["messages_per_s"] / y["messages_per_s"] for x, y in zip(handoff, bare, strict=True)]
    print(f"  bare + hand-off skeleton (answer after a writer thread's fsync, no database): "
          f"{med(handoff, 'messages_per_s'):.0f} msg/s = {statistics.median(hr):.0f} % of bare "
          f"(pairs {spread(hr)} %), {med(handoff, 'cpu_per_message_ms'):.3f} ms CPU/msg")
    print(f"  ceiling: the bare server fed the same packs: {med(bare_packed, 'reports_per_s'):.0f} "
          f"reports/s = {statistics.median(ceil):.1f}x its own live rate (pairs {min(ceil):.1f}-"
          f"{max(ceil):.1f}); slgw packed / bare packed: "
          f"{100 * p / med(bare_packed, 'reports_per_s'):.0f} %")
    print(f"  acknowledged reports checked in the database: {n}, missing: {missing}, journal {mode}")
    if missing:
        raise SystemExit("FAIL: acknowledged reports missing from the database")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--duration", type=float, default=5.0)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--bare-transport", default="simplesocketserver",
                    help="aiocoap transport of the bare server ('default' = aiocoap's choice, udp6)")
    ap.add_argument("--commit-interval-ms", type=float, default=None,
                    help="slgw's [store] commit_interval_ms (default: the config default)")
    ap.add_argument("--slgw-arg", action="append", default=[], metavar="ARG",
                    help="extra argument for `slgw serve` (repeat; e.g. --slgw-arg=--store-"
                    "aggregate-interval-s=60)")
    a = ap.parse_args()
    asyncio.run(bench(a.duration, a.rounds, None if a.bare_transport == "default" else a.bare_transport,
                      a.commit_interval_ms, a.slgw_arg))


if __name__ == "__main__":
    main()
