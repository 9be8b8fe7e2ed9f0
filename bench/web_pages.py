"""Time to serve each page of the web view for one town's real size (2,134 lamps, 40 cabinets),
from the real `slgw serve`, against `GET /api/nodes` (the JSON of the same lamps) in the same run.

    .venv/bin/python bench/web_pages.py [--nodes 2134] [--days 31] [--repeat 5]

The store is made by bench/gateway_query.py's generator (energy roll-ups and buckets in the
gateway's own schema), with a position, a level, a firmware version and a last report added to
every lamp and a programme pushed to every group. Each page is fetched `repeat` times over one
keep-alive connection; the median wall time is printed, and its ratio to /api/nodes.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import random
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from bench.gateway_query import generate  # noqa: E402
from gateway.timefmt import iso  # noqa: E402

PROGRAMME = [[1, 0, 100], [0, 1350, 40], [0, 0, 0], [0, 300, 40], [2, 0, 0]]


def dress(path: str, end: float) -> None:
    """Positions on a grid around Paris, levels, firmware versions, last reports, schedules."""
    rnd = random.Random(14)
    conn = sqlite3.connect(path, isolation_level=None)
    ids = [r[0] for r in conn.execute("SELECT id FROM nodes WHERE kind = 'node' ORDER BY id")]
    conn.execute("BEGIN")
    for i, nid in enumerate(ids):
        conn.execute("UPDATE nodes SET lat = ?, lon = ?, level = ?, power_w = ?, fw = ?, "
                     "last_report = ?, last_seen = ?, default_level = 100, faults = ?, last_seq = 1 "
                     "WHERE id = ?",
                     (48.85 + (i // 50) * 0.0004, 2.35 + (i % 50) * 0.0006,
                      rnd.choice([0, 40, 100]), rnd.uniform(0, 120), rnd.choice(["0.1.0", "0.2.0"]),
                      end - rnd.uniform(0, 600), end - rnd.uniform(0, 600),
                      4 if rnd.random() < 0.01 else 0, nid))
    for g in range(20):
        conn.execute("INSERT INTO schedules VALUES (?, ?, ?)", (f"group:grp-{g:02d}",
                                                                 json.dumps(PROGRAMME), end))
    conn.execute("COMMIT")
    conn.close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def fetch(conn: http.client.HTTPConnection, path: str) -> int:
    conn.request("GET", path)
    r = conn.getresponse()
    body = r.read()
    if r.status != 200:
        raise RuntimeError(f"{path}: {r.status} {body[-600:]!r}")
    return len(body)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--nodes", type=int, default=2134)
    ap.add_argument("--days", type=int, default=31)
    ap.add_argument("--repeat", type=int, default=5)
    a = ap.parse_args()
    tmp = tempfile.mkdtemp(prefix="slgw-webbench-")
    path = os.path.join(tmp, "town.db")
    end, _counts = generate(path, a.nodes, a.days)
    dress(path, end)
    port = free_port()
    log = open(os.path.join(tmp, "slgw.log"), "wb")
    gw = subprocess.Popen([os.path.join(os.path.dirname(sys.executable), "slgw"), "serve",
                           "--store-path", path, "--coap-security", "none", "--coap-port",
                           str(free_port()), "--api-port", str(port), "--clock-start",
                           iso(end - 1800), "--site-latitude", "48.85", "--site-longitude", "2.35",
                           "--nodes-offline-after-s", "100000"], stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
                fetch(conn, "/api/health")
                break
            except OSError:
                if time.monotonic() > deadline or gw.poll() is not None:
                    raise RuntimeError("slgw did not start") from None
                time.sleep(0.2)
        pages = ["/api/nodes", "/web/", "/web/lamps", "/web/lamps?cabinet=cab-03",
                 "/web/lamps/sl-00042", "/api/nodes/sl-00042", "/web/map", "/web/energy?by=day",
                 "/web/energy?by=month", "/web/energy?by=15min&sel=cabinet:cab-03",
                 "/web/energy?by=15min"]
        out = {}
        for p in pages:
            fetch(conn, p)  # warm: first-use imports and caches
            ts = []
            for _ in range(a.repeat):
                t = time.perf_counter()
                size = fetch(conn, p)
                ts.append(time.perf_counter() - t)
            out[p] = (statistics.median(ts) * 1000, size)
        base = out["/api/nodes"][0]
        print(f"{a.nodes} lamps, {a.days} days of roll-ups; median of {a.repeat}, one keep-alive "
              "connection")
        print(f"{'page':45} {'ms':>8} {'x /api/nodes':>13} {'KiB':>8}")
        for p, (ms, size) in out.items():
            print(f"{p:45} {ms:8.1f} {ms / base:13.2f} {size / 1024:8.1f}")
    finally:
        gw.terminate()
        gw.wait(20)
        log.close()


if __name__ == "__main__":
    main()
