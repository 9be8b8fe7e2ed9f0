"""Durable ingest of /dp reports through aiocoap + the gateway store, against a bare aiocoap
server that only decodes the payload and answers, measured in the same run.

    .venv/bin/python bench/gateway_ingest.py [--duration 2.5] [--rounds 8] [--commit-interval-ms 5]

Each server runs in its own process (as in the field notes' aiocoap figures); this process is a
raw-UDP load generator (CoAP datagrams built with protocol/coap.py, 32 requests in flight, one
endpoint per slot, every request a new report so every one is stored). Figures:

1. live: one report per Send; durable store server vs bare server (ratio; goal >= 90 %).
   Every acknowledged report is checked to be in the database afterwards, and the store runs
   WAL with synchronous=FULL.
2. backlog drain: Sends packed with as many reports as fit 1024 bytes (SPEC §3.2, by
   protocol.report.pack_reports, as the node does), reports/s
   against the live message rate (goal >= 10x).
3. CPU per report: server CPU time (user + sys, getrusage) over the live window / reports,
   and what 10,000 nodes x 1 report/min costs (share of one core).

Server entry (used by the benchmark itself): ``--serve bare|store --port P --db PATH``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import socket
import sqlite3
import statistics
import struct
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from protocol import coap  # noqa: E402
from protocol.lwm2m import CF_SENML_CBOR  # noqa: E402
from protocol.report import encode_reports, pack_reports  # noqa: E402

IN_FLIGHT = 32
T0 = 1_768_000_000


# --- server side ---------------------------------------------------------------------------
async def serve(mode: str, port: int, db: str, commit_ms: float = 0.0,
                transport: str | None = None) -> None:
    import aiocoap
    import aiocoap.resource

    from gateway.ingest import Ingestor
    from gateway.store import Store
    from protocol.report_parse import parse_send

    store = ingestor = None
    sync = None
    if mode == "store":
        store = await Store.open(db, aggregate_interval_s=5.0, commit_interval_ms=commit_ms)
        ingestor = Ingestor(store)
        sync = await store.write(lambda c: c.execute("PRAGMA synchronous").fetchone()[0])

    handoff = _Handoff(db, asyncio.get_running_loop()) if mode == "handoff" else None

    class Dp(aiocoap.resource.Resource):
        async def render_post(self, request):
            ep = None
            for q in request.opt.uri_query:
                if q.startswith("ep="):
                    ep = q[3:]
            now = time.time()
            if handoff is not None:
                await handoff.durable()
            if ingestor is None:
                # decode exactly as the gateway does (the protocol's one parser)
                try:
                    parse_send(request.payload, now)
                except ValueError:
                    return aiocoap.Message(code=aiocoap.BAD_REQUEST)
                return aiocoap.Message(code=aiocoap.CHANGED)
            ans = await ingestor.handle_payload(ep, request.payload, now=now)
            msg = aiocoap.Message(code=aiocoap.numbers.codes.Code(ans.coap_code))
            if ans.max_age is not None:
                msg.opt.max_age = ans.max_age
            return msg

    site = aiocoap.resource.Site()
    site.add_resource(["dp"], Dp())
    ctx = await aiocoap.Context.create_server_context(
        site, bind=("127.0.0.1", port), transports=[transport] if transport else None)
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    print("READY", flush=True)
    while True:
        line = (await reader.readline()).decode().strip()
        if line == "STATS" or not line:
            ru = resource.getrusage(resource.RUSAGE_SELF)
            stats = {"cpu": ru.ru_utime + ru.ru_stime, "sys": ru.ru_stime, "synchronous": sync,
                     "commits": store.commits if store else 0, "writes": store.writes if store else 0}
            print(json.dumps(stats), flush=True)
        if line == "STOP" or not line:
            break
    await ctx.shutdown()
    if store is not None:
        await store.close()
    print("STOPPED", flush=True)


class _Handoff:
    """The skeleton of slgw's write path with no database: the answer waits until a writer
    thread has appended 4 KB to a file and fsynced it (one group per wake-up, as the store's
    writer groups commits), and the thread wakes the event loop with call_soon_threadsafe. The
    bare server plus this is the ceiling of any design that acknowledges after an fsync done
    in a thread of the server's own process."""

    def __init__(self, path: str, loop: asyncio.AbstractEventLoop) -> None:
        import queue
        import threading

        self.loop = loop
        self.q: queue.SimpleQueue = queue.SimpleQueue()
        self.fd = os.open(path + ".handoff", os.O_CREAT | os.O_WRONLY | os.O_APPEND, 0o600)
        threading.Thread(target=self._writer, daemon=True).start()

    def durable(self) -> asyncio.Future:
        fut = self.loop.create_future()
        self.q.put(fut)
        return fut

    def _writer(self) -> None:
        import queue

        block = b"\0" * 4096
        while True:
            group = [self.q.get()]
            while True:
                try:
                    group.append(self.q.get_nowait())
                except queue.Empty:
                    break
            os.write(self.fd, block)
            os.fsync(self.fd)
            self.loop.call_soon_threadsafe(_resolve_all, group)


def _resolve_all(futs: list) -> None:
    for f in futs:
        if not f.done():
            f.set_result(None)


# --- load generator --------------------------------------------------------------------------
# The generator must not be what limits a run: encoding every pack with protocol.report (and
# pack_reports sizing it report by report) cost ~0.5 ms per Send, which capped packed runs at
# ~2,000 Sends/s even against the bare server. So each Send is made from a template: one pack
# encoded by protocol.report as the node encodes it, whose varying fields (seq, t, wh, on_time)
# are then patched in place. Every varying field keeps one CBOR width for the whole run
# (seq and wh 2-byte uints, t and on_time 4-byte uints), so the layout never shifts.
SEQ_BASE = 256  # first seq of a run; seq must stay below 0x10000 - 1000 (its CBOR width)


def _report(s: int) -> tuple:
    return (s, T0 + 60 * s, 1000 + s, 42.5, 100, 100_000 + 60 * s, 0)


class PackTemplate:
    """A Send payload of ``per_send`` reports (or as many as fit 1024 bytes), made by patching
    one protocol.report encoding: ``make(first_seq)`` gives the payload of reports
    ``first_seq .. first_seq + n - 1``, byte for byte what ``encode_reports`` gives."""

    def __init__(self, per_send: int) -> None:
        reps = [_report(SEQ_BASE + i) for i in range(per_send)]
        if per_send > 1:
            reps = pack_reports(reps)[0]  # as the node packs its backlog: up to 1024 bytes
        self.n = len(reps)
        self.template = encode_reports(reps)
        assert len(self.template) <= 1024, "a pack must fit one datagram (SPEC §3.2)"
        self.fields = []  # (offset of the value bytes, struct format, function of s)
        for i, (sq, t, wh, _w, _lvl, on, _f) in enumerate(reps):
            for value, fmt, fn in ((sq, ">H", lambda s: s), (t, ">I", lambda s: T0 + 60 * s),
                                   (wh, ">H", lambda s: 1000 + s),
                                   (on, ">I", lambda s: 100_000 + 60 * s)):
                # CBOR head 0x19 = uint with 2 bytes following, 0x1a = 4 bytes
                pat = (b"\x19" if fmt == ">H" else b"\x1a") + struct.pack(fmt, value)
                at = self.template.find(pat)
                assert at >= 0 and self.template.find(pat, at + 1) < 0, "template field not unique"
                self.fields.append((at + 1, fmt, fn, i))

    def make(self, first: int) -> bytes:
        assert SEQ_BASE <= first and first + self.n < 0x10000 - 1000, "seq left its CBOR width"
        buf = bytearray(self.template)
        for at, fmt, fn, i in self.fields:
            struct.pack_into(fmt, buf, at, fn(first + i))
        return bytes(buf)


class Load(asyncio.DatagramProtocol):
    """32 slots; each slot is one endpoint that sends its next Send when the last is answered."""

    def __init__(self, prefix: str, per_send: int) -> None:
        self.prefix = prefix
        self.per_send = per_send
        self.pack = PackTemplate(per_send)
        self.transport = None
        self.mid = 0
        self.pending: dict[int, tuple[int, list[int], bytes, float]] = {}
        self.seq = [SEQ_BASE - 1] * IN_FLIGHT
        self.heads = []  # per slot: the CoAP header and options, payload marker included
        for slot in range(IN_FLIGHT):
            m = coap.Message(coap.CON, coap.POST, 0, b"\0\0")
            m.set_path("/dp")
            m.add_option(coap.URI_QUERY, f"ep={prefix}{slot:03d}")
            m.add_option(coap.CONTENT_FORMAT, CF_SENML_CBOR)
            self.heads.append(coap.encode(m) + b"\xff")
        self.acked: list[tuple[str, int]] = []
        self.reports_acked = 0
        self.messages_acked = 0
        self.other_codes: dict[str, int] = {}
        self.running = True
        self.separate = 0  # responses that came after an empty ACK

    def connection_made(self, transport) -> None:
        self.transport = transport
        for slot in range(IN_FLIGHT):
            self.send_next(slot)

    def datagram(self, slot: int, mid: int, first: int) -> bytes:
        """The CON POST /dp of ``slot`` with message ID and token ``mid``, reports from ``first``."""
        head = bytearray(self.heads[slot])
        head[2:4] = head[4:6] = mid.to_bytes(2, "big")
        return bytes(head) + self.pack.make(first)

    def send_next(self, slot: int) -> None:
        if not self.running:
            return
        first = self.seq[slot] + 1
        seqs = list(range(first, first + self.pack.n))
        self.seq[slot] = seqs[-1]
        self.mid = (self.mid + 1) & 0xFFFF
        data = self.datagram(slot, self.mid, first)
        self.pending[self.mid] = (slot, seqs, data, time.monotonic())
        self.transport.sendto(data)

    def datagram_received(self, data, addr) -> None:
        if len(data) >= 6 and data[0] == 0x62 and data[1] == coap.CHANGED:
            # the usual answer, a piggybacked 2.04 with our 2-byte token: no full decode
            p = self.pending.pop(int.from_bytes(data[4:6], "big"), None)
            if p is not None:
                self._acked(p)
            return
        msg = coap.decode(data)
        if msg.mtype == coap.ACK and msg.code == coap.EMPTY:
            # aiocoap acknowledged first and will send the response separately (its answer
            # took longer than its empty-ACK delay): stop retransmitting, keep waiting.
            p = self.pending.get(msg.mid)
            if p is not None:
                self.pending[msg.mid] = (p[0], p[1], None, p[3])
            return
        if msg.mtype == coap.CON:  # a separate response: acknowledge it
            self.transport.sendto(coap.encode(coap.Message(coap.ACK, coap.EMPTY, msg.mid)))
        key = int.from_bytes(bytes(msg.token), "big") if msg.token else msg.mid
        p = self.pending.pop(key, None)
        if p is None:
            return
        self.separate += msg.mtype != coap.ACK
        if msg.code == coap.CHANGED:
            self._acked(p)
            return
        k = coap.code_str(msg.code)
        self.other_codes[k] = self.other_codes.get(k, 0) + 1
        self.send_next(p[0])

    def _acked(self, p: tuple) -> None:
        slot, seqs, _data, _t = p
        ep = f"{self.prefix}{slot:03d}"
        self.acked.extend((ep, s) for s in seqs)
        self.reports_acked += len(seqs)
        self.messages_acked += 1
        self.send_next(slot)

    def retransmit(self) -> None:
        now = time.monotonic()
        for mid, (slot, seqs, data, t) in list(self.pending.items()):
            if data is not None and now - t > 1.0:
                self.pending[mid] = (slot, seqs, data, now)
                self.transport.sendto(data)


def free_port() -> int:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


class Server:
    def __init__(self, mode: str, db: str, commit_ms: float = 0.0,
                 transport: str | None = None) -> None:
        self.port = free_port()
        self.proc = subprocess.Popen([sys.executable, os.path.abspath(__file__), "--serve", mode,
                                      "--port", str(self.port), "--db", db,
                                      "--commit-interval-ms", str(commit_ms)]
                                     + (["--transport", transport] if transport else []),
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                                     cwd=ROOT)
        line = self.proc.stdout.readline()
        if line.strip() != "READY":
            self.proc.kill()
            raise RuntimeError(f"{mode} server did not start: {line!r}")

    def stats(self) -> dict:
        self.proc.stdin.write("STATS\n")
        self.proc.stdin.flush()
        return json.loads(self.proc.stdout.readline())

    def stop(self) -> None:
        try:
            self.proc.stdin.write("STOP\n")
            self.proc.stdin.flush()
            self.proc.wait(timeout=60)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()


async def run_load(port: int, prefix: str, per_send: int, duration: float, server: Server,
                   load: Load | None = None) -> dict:
    """Drive `server` for `duration` s with `load` (default: a Load(prefix, per_send))."""
    loop = asyncio.get_running_loop()
    load = load or Load(prefix, per_send)
    transport, _ = await loop.create_datagram_endpoint(lambda: load, remote_addr=("127.0.0.1", port))
    try:
        await asyncio.sleep(min(1.0, duration / 4))  # warm-up
        r0, m0, s0, c0 = load.reports_acked, load.messages_acked, server.stats(), time.monotonic()
        end = c0 + duration
        while time.monotonic() < end:
            await asyncio.sleep(0.2)
            load.retransmit()
        r1, m1, s1, c1 = load.reports_acked, load.messages_acked, server.stats(), time.monotonic()
        load.running = False
        t_wait = time.monotonic() + 3
        while load.pending and time.monotonic() < t_wait:
            await asyncio.sleep(0.05)
            load.retransmit()
    finally:
        transport.close()
    wall = c1 - c0
    reports = r1 - r0
    cpu = s1["cpu"] - s0["cpu"]
    return {"reports_per_s": reports / wall, "messages_per_s": (m1 - m0) / wall,
            "cpu_per_report_ms": 1000 * cpu / max(reports, 1),
            "cpu_per_message_ms": 1000 * cpu / max(m1 - m0, 1),
            "sys_per_message_ms": 1000 * (s1["sys"] - s0["sys"]) / max(m1 - m0, 1),
            "cpu_share": (s1["cpu"] - s0["cpu"]) / wall,
            "commits": s1["commits"] - s0["commits"], "writes": s1["writes"] - s0["writes"],
            "acked": load.acked, "other_codes": load.other_codes, "separate": load.separate,
            "synchronous": s1.get("synchronous"),
            # the event-loop thread's share, where the server reports it (slgw: /proc task stat)
            "loop_cpu_per_message_ms": (1000 * (s1["loop_cpu"] - s0["loop_cpu"]) / max(m1 - m0, 1)
                                        if "loop_cpu" in s1 else None)}


def verify(db: str, acked: list[tuple[str, int]]) -> tuple[int, int, str]:
    conn = sqlite3.connect(db)
    try:
        stored = set(conn.execute("SELECT source, seq FROM readings"))
        mode = conn.execute("PRAGMA journal_mode").fetchone()[0]
    finally:
        conn.close()
    missing = [a for a in acked if a not in stored]
    return len(acked), len(missing), mode


async def bench(duration: float, rounds: int, commit_ms: float) -> None:
    """Both servers run side by side; the load alternates between them in short slices, so
    each bare/store pair sees the same background load (this machine is shared)."""
    tmp = tempfile.mkdtemp(prefix="slgw-bench-")
    db = os.path.join(tmp, "store.db")
    bare_srv = Server("bare", os.path.join(tmp, "unused.db"))
    store_srv = Server("store", db, commit_ms)
    runs: dict[str, list[dict]] = {"bare": [], "store": [], "backlog": []}
    acked: list[tuple[str, int]] = []
    try:
        for rnd in range(rounds):
            order = [("bare", bare_srv, 1), ("store", store_srv, 1), ("backlog", store_srv, 16)]
            if rnd % 2:
                order = order[1:2] + order[:1] + order[2:]
            for kind, srv, per in order:
                r = await run_load(srv.port, f"{kind}{rnd}-", per, duration, srv)
                if kind == "backlog":
                    r["per_pack"] = r["reports_per_s"] / max(r["messages_per_s"], 1e-9)
                runs[kind].append(r)
                if kind != "bare":
                    acked += r["acked"]
                if r["other_codes"]:
                    print(f"  {kind}: non-2.04 answers {r['other_codes']}")
            b, st, bl = runs["bare"][-1], runs["store"][-1], runs["backlog"][-1]
            print(f"slice {rnd + 1}: bare {b['messages_per_s']:.0f} msg/s "
                  f"({b['cpu_per_message_ms']:.3f} ms CPU/msg), store {st['messages_per_s']:.0f} "
                  f"msg/s ({st['cpu_per_message_ms']:.3f} ms CPU/msg) = "
                  f"{100 * st['messages_per_s'] / b['messages_per_s']:.0f} %, backlog "
                  f"{bl['reports_per_s']:.0f} reports/s ({bl['cpu_per_report_ms']:.3f} ms CPU/report)",
                  flush=True)
    finally:
        bare_srv.stop()
        store_srv.stop()
    n, missing, mode = verify(db, acked)
    sync = {2: "FULL", 3: "EXTRA"}.get(runs["store"][-1]["synchronous"], "NOT FULL")

    def med(kind: str, key: str) -> float:
        return statistics.median(r[key] for r in runs[kind])

    ratio = statistics.median(s_["messages_per_s"] / b_["messages_per_s"]
                              for s_, b_ in zip(runs["store"], runs["bare"], strict=True))
    b, st = med("bare", "messages_per_s"), med("store", "messages_per_s")
    bc, sc = med("bare", "cpu_per_message_ms"), med("store", "cpu_per_message_ms")
    bl, blc = med("backlog", "reports_per_s"), med("backlog", "cpu_per_report_ms")
    drain = statistics.median(k["reports_per_s"] / s_["messages_per_s"]
                              for k, s_ in zip(runs["backlog"], runs["store"], strict=True))
    commits = sum(r["commits"] for r in runs["store"])
    writes = sum(r["writes"] for r in runs["store"])
    field_rate = 10_000 / 60
    print()
    print(f"live ingest, 1 report per Send, {IN_FLIGHT} in flight, {rounds} alternating slices of "
          f"{duration:.0f} s (medians), commit_interval_ms={commit_ms:g}:")
    print(f"  bare aiocoap (decode + answer): {b:7.0f} msg/s, {bc:.3f} ms server CPU/msg")
    print(f"  aiocoap + durable store:        {st:7.0f} msg/s, {sc:.3f} ms server CPU/msg")
    print(f"  ratio: {100 * ratio:.0f} % by throughput (median of paired slices), "
          f"{100 * bc / sc:.0f} % by server CPU cost (goal >= 90 %)")
    print(f"  group commit: {writes / max(commits, 1):.1f} writes per COMMIT; journal {mode}, "
          f"synchronous={sync}")
    print(f"  acknowledged reports checked in the database: {n}, missing: {missing}")
    per_pack = med("backlog", "per_pack")
    print(f"backlog drain, packs filled to 1024 bytes ({per_pack:.1f} reports each): {bl:.0f} reports/s = {drain:.1f}x the live message "
          f"rate by throughput, {sc / blc:.1f}x by server CPU cost (goal >= 10x)")
    print(f"CPU per report (server): live {sc:.3f} ms, packed {blc:.3f} ms; 10,000 nodes x 1/min = "
          f"{field_rate:.0f} reports/s -> {100 * field_rate * sc / 1000:.1f} % of one core here "
          f"({100 * field_rate * blc / 1000:.1f} % when packed)")
    if missing:
        raise SystemExit("FAIL: acknowledged reports missing from the database")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--duration", type=float, default=2.5, help="seconds per slice")
    ap.add_argument("--rounds", type=int, default=8, help="alternating slices per server")
    ap.add_argument("--serve", choices=("bare", "store", "handoff"))
    ap.add_argument("--port", type=int)
    ap.add_argument("--db")
    ap.add_argument("--transport", help="aiocoap server transport (default: aiocoap's own choice)")
    ap.add_argument("--commit-interval-ms", type=float, default=None,
                    help="the store's [store] commit_interval_ms")
    a = ap.parse_args()
    if a.serve:
        asyncio.run(serve(a.serve, a.port, a.db, a.commit_interval_ms or 0.0, a.transport))
    else:
        from gateway.config import SCHEMA

        ms = SCHEMA["store"]["commit_interval_ms"][1] if a.commit_interval_ms is None \
            else a.commit_interval_ms
        asyncio.run(bench(a.duration, a.rounds, ms))


if __name__ == "__main__":
    main()
