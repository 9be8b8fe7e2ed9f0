"""How many CoAP requests/s the emulated node firmware serves, against a bare baseline.

    python -m bench node_endpoint

One CPython load generator (raw UDP, 32 CON GET /3311/0/5851 in flight, Message IDs unique)
drives, for ``SECONDS`` each:
  * baseline: a bare MicroPython UDP loop that answers every datagram with a fixed ACK
    (recvfrom/sendto, no CoAP parsing), in the same interpreter build;
  * the real firmware (firmware/emulator.py) with 1 node, then 20 nodes in one interpreter
    (requests spread over their ports), each answering through endpoint -> resources -> node.
Figures: requests/s, the ratio to the baseline, and the emulator's heap peak with 20 nodes.
"""

from __future__ import annotations

import json
import os
import select
import socket
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from protocol import coap  # noqa: E402
from tools.slnode import emulate  # noqa: E402

SECONDS = 3.0
WINDOW = 32

_BARE = """
import socket
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(socket.getaddrinfo("127.0.0.1", %d)[0][-1])
while True:
    d, a = s.recvfrom(1280)
    if d == b"stop":
        break
    s.sendto(b"\\x60\\x45" + d[2:4], a)
"""


def _free_ports(n: int) -> int:
    """A base port with n free consecutive UDP ports."""
    for base in range(20000 + os.getpid() % 20000, 60000, 97):
        socks = []
        try:
            for i in range(n):
                s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                socks.append(s)
                s.bind(("127.0.0.1", base + i))
            return base
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
    raise RuntimeError("no free port range")


def load(ports: list[int], seconds: float = SECONDS) -> float:
    """Requests/s answered, WINDOW in flight, spread round-robin over ``ports``."""
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", 0))
    s.setblocking(False)
    req = coap.Message(coap.CON, coap.GET, 0, b"\x01")
    req.set_path("/3311/0/5851")
    template = bytearray(coap.encode(req))
    mid = 0
    inflight = {}
    done = 0
    k = 0

    def send():
        nonlocal mid, k
        mid = (mid + 1) & 0xFFFF
        template[2] = mid >> 8
        template[3] = mid & 0xFF
        port = ports[k % len(ports)]
        k += 1
        s.sendto(template, ("127.0.0.1", port))
        inflight[mid] = time.monotonic()

    # warm up: wait until every port answers
    for p in ports:
        for _ in range(200):
            s.sendto(template, ("127.0.0.1", p))
            if select.select([s], [], [], 0.05)[0]:
                while True:
                    try:
                        s.recvfrom(2048)
                    except BlockingIOError:
                        break
                break
    t0 = time.monotonic()
    end = t0 + seconds
    for _ in range(WINDOW):
        send()
    while True:
        now = time.monotonic()
        if now >= end:
            break
        r, _, _ = select.select([s], [], [], 0.05)
        if r:
            while True:
                try:
                    data, _ = s.recvfrom(2048)
                except BlockingIOError:
                    break
                m = (data[2] << 8) | data[3]
                if inflight.pop(m, None) is not None:
                    done += 1
                    send()
        # re-send what was lost (UDP buffers overflow under load)
        for m, t in list(inflight.items()):
            if now - t > 0.5:
                del inflight[m]
                send()
    s.close()
    return done / (time.monotonic() - t0)


def _bare() -> float:
    port = _free_ports(1)
    mp = emulate.micropython_path()
    p = subprocess.Popen([mp, "-c", _BARE % port], cwd=ROOT)
    try:
        return load([port])
    finally:
        p.kill()
        p.wait()


def _node(count: int) -> tuple[float, str]:
    base = _free_ports(count)
    with tempfile.TemporaryDirectory() as d:
        import argparse

        ap = argparse.ArgumentParser()
        emulate.add_arguments(ap)
        args = ap.parse_args(["--id", "b", "--gateway", "coap://127.0.0.1:9", "--flash", d, "--count", str(count),
                              "--port", str(base), "--time-valid", "--report-period", "3600"])
        spec = emulate.prepare(args)
        for n in spec["nodes"]:  # never register during the bench (jitter 1 h)
            cfgp = os.path.join(n["flash"], "config.json")
            cfg = json.load(open(cfgp))
            cfg["jitter"] = 3600
            json.dump(cfg, open(cfgp, "w"))
        cmd, env = emulate.build_command(spec)
        p = subprocess.Popen(cmd, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=ROOT)
        try:
            rate = load([base + i for i in range(count)])
            p.stdin.close()
            out = p.stdout.read()
            p.wait(timeout=20)
        finally:
            if p.poll() is None:
                p.kill()
                p.wait()
        heap = [x for x in out.splitlines() if "heap peak" in x]
        return rate, heap[-1] if heap else "?"


def run() -> dict:
    bare = _bare()
    one, _ = _node(1)
    many, heap = _node(20)
    return {
        "command": "python -m bench node_endpoint",
        "bare_micropython_udp_answers_per_s": round(bare),
        "node_1_requests_per_s": round(one),
        "node_1_vs_bare": round(one / bare, 3),
        "nodes_20_requests_per_s": round(many),
        "nodes_20_vs_bare": round(many / bare, 3),
        "nodes_20_heap": heap,
        "window": WINDOW,
        "seconds_each": SECONDS,
    }


if __name__ == "__main__":
    print(json.dumps(run(), indent=2))
