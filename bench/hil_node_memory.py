"""Memory per emulated node: K nodes of the real firmware in one MicroPython interpreter.

    .venv/bin/python bench/hil_node_memory.py [--small 5] [--large 25] [--seconds 15]

Starts a gateway (simulated clock, 60x) and two `slnode emulate` interpreters, one with
``small`` and one with ``large`` nodes (15-minute reports, so each node also holds a backlog
slot or two). After ``seconds`` it reads each interpreter's peak resident set (VmHWM), stops them
cleanly and reads the live MicroPython heap each one prints at exit (gc.mem_alloc after a
collection). Per-node figures are the difference between the two interpreters divided by the
difference in node count, so the interpreter's own base cost drops out; the base is printed too.
RSS hardly grows with K (one preallocated MicroPython heap inside a CPython launcher), so it is
given as total / K at both sizes.
"""

from __future__ import annotations

import argparse
import re
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from hil_tests.gateway import Gateway  # noqa: E402
from hil_tests.harness import ProcessGroup, wait_for  # noqa: E402
from hil_tests.sim import SimClock  # noqa: E402
from hil_tests.town import Town  # noqa: E402


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--small", type=int, default=5)
    p.add_argument("--large", type=int, default=25)
    p.add_argument("--seconds", type=float, default=15.0)
    a = p.parse_args()
    with tempfile.TemporaryDirectory() as d:
        work = Path(d)
        procs = ProcessGroup(work)
        try:
            clock = SimClock("2026-12-15T16:00:00Z", speed=60)
            # unprotected, as the figures in docs/performance.md were measured (nodes without keys)
            gw = Gateway(procs, work / "gw", clock, security="none").start()
            town = Town(procs, work / "town", clock, gw.coap_url, truth_period=None)
            cfg = {"group": "g", "cabinet": "C", "lat": 45.5, "lon": 4.87, "rated_w": 40.0,
                   "report_period": 900, "jitter": 5, "lifetime": 3600, "tz": "CET-1CEST,M3.5.0,M10.5.0/3"}
            small = town.add_batch("small", [dict(cfg) for _ in range(a.small)])
            large = town.add_batch("large", [dict(cfg) for _ in range(a.large)])
            town.start()
            wait_for(lambda: sum(1 for n in gw.nodes().values() if n["registered"]) == a.small + a.large,
                     timeout=60, what="every node registered")
            time.sleep(a.seconds)
            rss = {b.prefix: b.rss_kb() for b in (small, large)}
            town.stop()
            heap = {}
            for b in (small, large):
                m = re.search(r"heap (\d+) bytes in use for (\d+) nodes", b.proc.log.read_text())
                heap[b.prefix] = int(m.group(1)) if m else None
        finally:
            procs.stop_all()
    n = a.large - a.small
    print(f"interpreter peak RSS: {a.small} nodes {rss['small']} kB, {a.large} nodes {rss['large']} kB")
    if rss["small"] and rss["large"]:
        # the heap is one preallocated block and the launcher is a CPython process loading the
        # Unix port, so RSS hardly grows with K: per node, total / K is the honest figure
        per = (rss["large"] - rss["small"]) / n
        print(f"peak RSS / node: {rss['small'] / a.small:.0f} kB at {a.small} nodes, "
              f"{rss['large'] / a.large:.0f} kB at {a.large} nodes (difference per added node {per:.1f} kB)")
    if heap["small"] and heap["large"]:
        per = (heap["large"] - heap["small"]) / n
        print(f"MicroPython heap: {a.small} nodes {heap['small']} B, {a.large} nodes {heap['large']} B; "
              f"per node {per / 1024:.1f} KiB (base {(heap['small'] - a.small * per) / 1024:.1f} KiB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
