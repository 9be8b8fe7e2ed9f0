"""Memory of `slgw serve` under a CoAP request flood (issue 11): RSS before, during and after.

    .venv/bin/python bench/gateway_coap_flood.py [--rate 1500] [--duration 120] [--sources 16]

A raw UDP sender (no aiocoap client: it would cost more than the server) sends CON
`POST /dp?ep=...` requests from unregistered endpoints at a fixed rate, from `--sources`
sockets, each with its own increasing Message ID: every datagram is a new (source, MID) that
aiocoap's duplicate detection must remember. The gateway answers each with a 4.xx. The figure
that matters is the ratio of RSS at the end of the flood to RSS before it, in the same run;
the unit's MemoryMax=256M is the hard ceiling. /api/health is polled during the flood to show
the HTTP API still answers.

`--slgw "CMD ..."` runs another gateway command (e.g. an older checkout with
`PYTHONPATH=/tmp/old python -m gateway.cli.main`) to get the figures before a change.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def free_port(kind: int = socket.SOCK_STREAM) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_mb(pid: int) -> float:
    """Resident set size of a process, MB (from /proc/<pid>/status)."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def request(mid: int, ep: str) -> bytes:
    """A CON POST /dp?ep=<ep> with Content-Format 112 and a 4-byte token (RFC 7252 §3)."""
    token = mid.to_bytes(4, "big")
    q = ("ep=" + ep).encode()
    assert len(q) < 13
    return (bytes((0x44, 0x02, mid >> 8 & 0xFF, mid & 0xFF)) + token
            + b"\xb2dp"                      # Uri-Path (11) "dp"
            + b"\x11\x70"                    # Content-Format (12) = 112
            + bytes((0x30 | len(q),)) + q    # Uri-Query (15)
            + b"\xff\x80")                   # payload: an empty CBOR array


def health_ms(url: str) -> float | None:
    t = time.perf_counter()
    try:
        urllib.request.urlopen(url + "/api/health", timeout=5).read()
    except OSError:
        return None
    return (time.perf_counter() - t) * 1000


def flood(port: int, rate: float, duration: float, sources: int, pid: int, url: str) -> dict:
    socks = []
    for _ in range(sources):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        s.connect(("127.0.0.1", port))
        s.setblocking(False)
        socks.append(s)
    sent = answered = 0
    samples: list[tuple[float, float]] = []
    health: list[float | None] = []
    t0 = time.monotonic()
    next_sample = t0
    while True:
        now = time.monotonic()
        if now - t0 >= duration:
            break
        due = int((now - t0) * rate) - sent
        for _ in range(min(due, 2000)):
            s = socks[sent % sources]
            try:
                s.send(request((sent // sources) & 0xFFFF, f"f{sent % 997}"))
            except BlockingIOError:
                pass
            sent += 1
        for s in socks:
            while True:
                try:
                    s.recv(2048)
                    answered += 1
                except (BlockingIOError, ConnectionRefusedError):
                    break
        if now >= next_sample:
            samples.append((round(now - t0, 1), round(rss_mb(pid), 1)))
            health.append(health_ms(url))
            next_sample += max(1.0, duration / 24)
        time.sleep(0.002)
    for s in socks:
        s.close()
    ok = [h for h in health if h is not None]
    return {"sent": sent, "answered": answered, "rate_sent": round(sent / duration),
            "rss_samples_mb": samples, "health_ok": f"{len(ok)}/{len(health)}",
            "health_max_ms": round(max(ok), 1) if ok else None}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rate", type=float, default=1500.0, help="requests per second")
    ap.add_argument("--duration", type=float, default=120.0, help="seconds of flood")
    ap.add_argument("--sources", type=int, default=16, help="sending sockets (source ports)")
    ap.add_argument("--slgw", default=os.path.join(os.path.dirname(sys.executable), "slgw"),
                    help="gateway command (default: this venv's slgw)")
    a = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="slgw-flood-") as tmp:
        coap, api = free_port(socket.SOCK_DGRAM), free_port()
        url = f"http://127.0.0.1:{api}"
        log = open(os.path.join(tmp, "slgw.log"), "wb")
        proc = subprocess.Popen([*shlex.split(a.slgw), "serve", "--store-path",
                                 os.path.join(tmp, "slgw.db"), "--coap-port", str(coap),
                                 "--api-port", str(api), "--log-level", "WARNING"],
                                stdout=log, stderr=subprocess.STDOUT, cwd=tmp)
        try:
            for _ in range(400):
                if health_ms(url) is not None:
                    break
                time.sleep(0.05)
            else:
                raise SystemExit("slgw did not start")
            time.sleep(1.0)
            before = rss_mb(proc.pid)
            fig = flood(coap, a.rate, a.duration, a.sources, proc.pid, url)
            end = rss_mb(proc.pid)
            peak = max([end] + [m for _t, m in fig["rss_samples_mb"]])
            log.flush()
            lines = open(os.path.join(tmp, "slgw.log"), "rb").read().count(b"\n")
        finally:
            proc.terminate()
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
            log.close()
    print(json.dumps({"rate": a.rate, "duration_s": a.duration, "sources": a.sources,
                      "rss_before_mb": round(before, 1), "rss_peak_mb": round(peak, 1),
                      "rss_end_mb": round(end, 1), "ratio_end_to_before": round(end / before, 2),
                      "log_lines": lines, **fig}, indent=2))


if __name__ == "__main__":
    main()
