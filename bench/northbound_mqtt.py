"""Northbound MQTT (issue 13): publish throughput through the durable outbox against publishing
the same messages straight to the broker, in the same run; and the backlog drain after a
one-hour broker outage of a 2,000-node gateway.

    .venv/bin/python bench/northbound_mqtt.py [--messages 20000] [--nodes 2000]
        [--report-period 900] [--outage-s 3600] [--rounds 3]

Needs `mosquitto` (Debian package; `make sysdeps`). One broker on a free loopback port with its
own config, stopped by pid at the end.

1. Throughput. An outbox is filled with ``--messages`` report rows (through the store's real
   ingest, triggers on). Then, alternating ``--rounds`` times: (a) straight: one client
   publishes those very payloads at QoS 1 with the same in-flight window (256) and the same
   lean path as the Publisher (paho under aiomqtt, PUBACKs counted in a callback), and waits
   for every PUBACK; (b) outbox: the gateway's Publisher drains a copy of the filled database:
   reads rows in order, publishes, deletes each acknowledged row in batches (durable). Best
   round of each; the ratio is outbox / straight messages per second.
2. Backlog drain. ``--nodes`` nodes report every ``--report-period`` s during ``--outage-s``
   (the reports are stored by the real ingest while the broker is away; the 15-minute buckets
   rebuilt as the service does); then the Publisher drains the whole outbox: seconds, messages
   per second, and the gateway's CPU per message (process time / messages), from which the
   publisher's share of a core at that fleet's live rate follows.
3. The whole gateway (``--service-s`` > 0): two ``slgw serve``, MQTT on (to the broker) and
   off, driven in turn by bench/gateway_ingest.py's raw-UDP load (32 CON Sends in flight, live
   Sends of one report, then backlog packs of 16): Sends/s and server CPU per Send of each,
   alternating ``--rounds`` times; the CPU at a 2,000-node fleet's live rate follows.
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

import aiomqtt  # noqa: E402

from gateway.config import MqttConfig  # noqa: E402
from gateway.northbound import outbox  # noqa: E402
from gateway.northbound.publisher import Publisher  # noqa: E402
from gateway.store import Store  # noqa: E402

WINDOW = 256
T0 = 1_767_225_600.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_broker(workdir: str) -> tuple[subprocess.Popen, int]:
    exe = shutil.which("mosquitto") or shutil.which("mosquitto", path="/usr/sbin")
    if not exe:
        raise SystemExit("mosquitto is not installed (make sysdeps)")
    port = free_port()
    conf = os.path.join(workdir, "mosquitto.conf")
    with open(conf, "w") as f:
        f.write(f"listener {port} 127.0.0.1\nallow_anonymous true\nuser {getpass.getuser()}\n"
                "persistence false\nlog_dest none\nmax_inflight_messages 0\n"
                "set_tcp_nodelay true\n")
    proc = subprocess.Popen([exe, "-c", conf], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(100):
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return proc, port
        except OSError:
            time.sleep(0.05)
    proc.kill()
    raise SystemExit("mosquitto did not start")


def mqtt_cfg(port: int) -> object:
    cfg = MqttConfig()
    cfg.enabled, cfg.port, cfg.gateway_id, cfg.topic_prefix = True, port, "bench", "bench"
    cfg.health_interval_s = 3600.0
    cfg.reconnect_max_s = 0.5
    cfg.inflight = WINDOW
    return cfg


async def fill_reports(path: str, nodes: int, per_node: int, period: float,
                       triggers: bool = True) -> int:
    """Store ``per_node`` reports for each node through the real ingest (triggers on), one
    call per node per report time (as live Sends would), then rebuild the buckets."""
    store = await Store.open(path, timezone="UTC")
    try:
        if triggers:
            await store.write(lambda c: outbox.install(c, 10_000_000))
        now = T0 + per_node * period + 60
        for k in range(per_node):
            t = T0 + k * period
            await asyncio.gather(*(store.ingest_reports(
                f"sl-{n:05d}", [{"seq": k + 1, "t": t + n % 60, "wh": 1000.0 + k * 10.0 + n % 7,
                                 "w": 40.0, "level": 50, "on_time": t - T0, "faults": 0,
                                 "rel_time": False}], received_at=now) for n in range(nodes)))
        await store.refresh()
        return (await store.read(outbox.status))["depth"]
    finally:
        await store.close()


async def straight(port: int, msgs: list[tuple[str, bytes]]) -> float:
    """Publish msgs at QoS 1, WINDOW in flight, wait for every PUBACK. Returns seconds.

    The same lean path as the Publisher (paho's publish under aiomqtt, PUBACKs counted in its
    on_publish callback), without the outbox: the fair baseline. Timed from the connection,
    as the drain is."""
    t0 = time.perf_counter()
    async with aiomqtt.Client("127.0.0.1", port, identifier="bench-straight",
                              max_inflight_messages=0) as c:  # as the Publisher: window ours
        paho = c._client  # noqa: SLF001 - as gateway/northbound/publisher.py
        inflight: set[int] = set()
        room, done = asyncio.Event(), asyncio.Event()
        acked = [0]

        def on_publish(_c, _u, mid, *_rest) -> None:
            inflight.discard(mid)
            acked[0] += 1
            if len(inflight) < WINDOW:
                room.set()
            if acked[0] == len(msgs):
                done.set()

        paho.on_publish = on_publish
        for topic, body in msgs:
            while len(inflight) >= WINDOW:
                room.clear()
                await room.wait()
            info = paho.publish(topic, body, 1, False)
            inflight.add(info.mid)
        await done.wait()
        return time.perf_counter() - t0


async def drain(path: str, port: int) -> tuple[float, float, int]:
    """Drain the outbox at ``path`` with the gateway's Publisher. Returns (s, cpu s, messages)."""
    store = await Store.open(path, timezone="UTC")
    try:
        n = (await store.read(outbox.status))["depth"]
        pub = Publisher(store, mqtt_cfg(port))
        await store.write(lambda c: outbox.install(c, 10_000_000))  # start() does it: not timed
        cpu0, t0 = time.process_time(), time.perf_counter()
        await pub.start()
        while pub.published < n:
            await asyncio.sleep(0.01)
        elapsed, cpu = time.perf_counter() - t0, time.process_time() - cpu0
        await pub.stop()
        assert (await store.read(outbox.status))["depth"] == 0
        return elapsed, cpu, n
    finally:
        await store.close()


async def rows_as_messages(path: str) -> list[tuple[str, bytes]]:
    store = await Store.open(path, timezone="UTC")
    try:
        rows = await store.read(lambda c: outbox.pending(c, 0, 10**9))
    finally:
        await store.close()
    # the same bytes the Publisher sends (envelope included)
    return [(f"bench/bench/{topic}", (f'{{"id":"bench/{key}","gateway":"bench","rev":{i},'
                                       + payload[1:]).encode()) for i, key, topic, payload in rows]


def copy_db(src: str, dst: str) -> None:
    import sqlite3
    s, d = sqlite3.connect(src), sqlite3.connect(dst)
    s.backup(d)
    s.close()
    d.close()


async def main(args: argparse.Namespace) -> None:
    work = tempfile.mkdtemp(prefix="bench-northbound-")
    broker, port = start_broker(work)
    try:
        # 0. what the outbox costs the store: the same reports and bucket rebuilds, triggers
        # off and on, alternating
        best = {False: None, True: None}
        for r in range(args.rounds):
            for trig in (False, True):
                t0 = time.perf_counter()
                await fill_reports(os.path.join(work, f"ingest-{r}-{trig}.db"), 200, 20, 60.0, trig)
                el = time.perf_counter() - t0
                best[trig] = el if best[trig] is None else min(best[trig], el)
        print(f"store cost (200 nodes x 20 Sends of one report, then the bucket rebuild; best of "
              f"{args.rounds}): without outbox {best[False]:.2f} s, with {best[True]:.2f} s "
              f"({4000 / best[False]:,.0f} -> {4000 / best[True]:,.0f} Sends/s, ratio "
              f"{best[False] / best[True]:.2f}x)", flush=True)
        # 1. throughput: one node set, --messages report rows (no rebuild: reports only)
        src = os.path.join(work, "tput.db")
        nodes = 100
        await fill_reports(src, nodes, args.messages // nodes, 60.0)
        msgs = await rows_as_messages(src)
        best_s, best_o, cpu_o = None, None, None
        ratios = []
        for r in range(args.rounds):
            dst = os.path.join(work, f"tput-{r}.db")
            copy_db(src, dst)
            s = len(msgs) / await straight(port, msgs)
            el, cpu, n = await drain(dst, port)
            o = n / el
            ratios.append(o / s)
            print(f"round {r + 1}: straight {s:,.0f} msg/s, outbox {o:,.0f} msg/s "
                  f"(ratio {o / s:.2f})", flush=True)
            best_s = max(best_s or 0, s)
            if best_o is None or o > best_o:
                best_o, cpu_o = o, cpu / n
        print(f"throughput ({len(msgs):,} messages of {sum(len(b) for _t, b in msgs) // len(msgs)} "
              f"bytes, QoS 1, {WINDOW} in flight, best of {args.rounds}): straight "
              f"{best_s:,.0f} msg/s, through the durable outbox {best_o:,.0f} msg/s, ratio "
              f"{best_o / best_s:.2f}x, median of the rounds' ratios "
              f"{sorted(ratios)[len(ratios) // 2]:.2f}x (goal >= 0.8x); outbox CPU "
              f"{cpu_o * 1e6:.0f} us/message")
        # 2. backlog after an outage
        per_node = max(1, int(args.outage_s // args.report_period))
        path = os.path.join(work, "backlog.db")
        t0 = time.perf_counter()
        depth = await fill_reports(path, args.nodes, per_node, args.report_period)
        fill_s = time.perf_counter() - t0
        el, cpu, n = await drain(path, port)
        live_rate = args.nodes / args.report_period * (n / (args.nodes * per_node))
        print(f"backlog: {args.nodes:,} nodes x {per_node} reports ({args.outage_s / 3600:g} h "
              f"outage, one report per {args.report_period:g} s) = {depth:,} messages (reports, "
              f"buckets, states; stored in {fill_s:.1f} s): drained in {el:.1f} s, "
              f"{n / el:,.0f} msg/s, CPU {cpu / n * 1e6:.0f} us/message; live at that fleet "
              f"({live_rate:,.1f} msg/s) the publisher needs {live_rate * cpu / n * 100:.2f} % "
              "of a core")
        if args.service_s > 0:
            await service(work, port, args)
    finally:
        broker.terminate()
        broker.wait(10)
        shutil.rmtree(work, ignore_errors=True)


async def service(work: str, port: int, args: argparse.Namespace) -> None:
    """Part 3: slgw serve with MQTT on and off under the same load, alternating."""
    from bench.gateway_ingest import run_load
    from bench.gateway_service_ingest import Slgw

    on = Slgw(os.path.join(work, "on.db"), ["--mqtt-enabled", "true", "--mqtt-port", str(port),
                                            "--mqtt-gateway-id", "svc"])
    off = Slgw(os.path.join(work, "off.db"))
    res: dict = {(k, m): [] for k in ("on", "off") for m in (1, 16)}
    try:
        for rnd in range(args.rounds):
            order = [("off", off), ("on", on)] if rnd % 2 == 0 else [("on", on), ("off", off)]
            for kind, g in order:
                g.register(f"n{rnd}-")
                for per_send in (1, 16):
                    r = await run_load(g.port, f"n{rnd}-", per_send, args.service_s, g)
                    res[(kind, per_send)].append(r)
            print(f"service round {rnd + 1}: " + ", ".join(
                f"{k} {'live' if m == 1 else 'packs'} {res[(k, m)][-1]['messages_per_s']:,.0f} "
                f"Sends/s ({res[(k, m)][-1]['cpu_per_message_ms'] * 1000:.0f} us CPU/Send)"
                for k in ("off", "on") for m in (1, 16)), flush=True)
    finally:
        on.stop()
        off.stop()
    for m, name in ((1, "live Sends of 1 report"), (16, "backlog packs of 16")):
        best = {k: max(res[(k, m)], key=lambda r: r["messages_per_s"]) for k in ("off", "on")}
        cpu = {k: min(r["cpu_per_message_ms"] for r in res[(k, m)]) for k in ("off", "on")}
        print(f"slgw serve, {name}, best of {args.rounds}: MQTT off "
              f"{best['off']['messages_per_s']:,.0f} Sends/s, on {best['on']['messages_per_s']:,.0f} "
              f"({best['on']['messages_per_s'] / best['off']['messages_per_s']:.2f}x); server CPU "
              f"per Send {cpu['off'] * 1000:.0f} -> {cpu['on'] * 1000:.0f} us")
        if m == 1:
            rate = args.nodes / args.report_period
            print(f"  at {args.nodes:,} nodes reporting every {args.report_period:g} s ({rate:.1f} "
                  f"Sends/s): {rate * cpu['off'] / 10:.2f} % -> {rate * cpu['on'] / 10:.2f} % "
                  "of a core (CPU per Send x rate; the publisher's own sending included)")


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--messages", type=int, default=20000)
    ap.add_argument("--nodes", type=int, default=2000)
    ap.add_argument("--report-period", type=float, default=900.0)
    ap.add_argument("--outage-s", type=float, default=3600.0)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--service-s", type=float, default=0.0,
                    help="seconds per load slice for part 3 (slgw serve, MQTT on/off); 0 = skip")
    asyncio.run(main(ap.parse_args()))
