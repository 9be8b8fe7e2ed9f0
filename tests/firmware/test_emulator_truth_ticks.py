"""The emulator's truth ticks keep to a grid of simulated time (issue 16, HIL load sensitivity).

``Emulator.truth_ticks`` runs in the real `micropython` on a HAL clock this test drives: every
wake-up comes LATE simulated seconds after it was due, as on a loaded host (the event loop
busy with the nodes' control loops, the interpreter waiting for a core). Ticks scheduled
period after period added that lateness to every interval (in the HIL suite 120-s ticks came
every 141 s on a loaded host, and the scenarios' line counts failed); on the grid each tick
is late by its own latency only. A stall of several periods gives one late line and the grid
goes on, with no burst of stale lines.
"""

import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from core_support import run_mp  # noqa: E402

SCRIPT = """
import asyncio, json
from firmware.emulator import Emulator

PERIOD, LATE, STALL_AT, STALL, END = %r, %r, %r, %r, %r


class Done(Exception):
    pass


class Hal:
    t = 1000.0

    def sim_unix(self):
        return self.t

    async def sleep_ms(self, ms):
        self.t += max(ms, 0) / 1000 + LATE
        if STALL_AT <= self.t < STALL_AT + PERIOD:
            self.t += STALL
        if self.t > END:
            raise Done()
        await asyncio.sleep_ms(0)


class Node:
    p = 1
    cfg = {"id": "n"}
    hal = Hal()


class Em(Emulator):
    def __init__(self):  # only what truth_ticks uses: no sockets, no flash
        self.nodes = [Node()]
        self.spec = {"truth_period": PERIOD}
        self.truth_file = True
        self.lines = []

    def write_truth(self, node, event="report"):
        self.lines.append([event, node.hal.t])


em = Em()
try:
    asyncio.run(em.truth_ticks())
except Done:
    pass
print(json.dumps(em.lines))
"""


def ticks(period, late, stall_at=0.0, stall=0.0, end=1000.0 + 100 * 120.0):
    r = run_mp(SCRIPT % (period, late, stall_at, stall, end), timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    lines = json.loads(r.stdout.strip().splitlines()[-1])
    assert lines[0][0] == "boot"
    return [t for ev, t in lines if ev == "tick"]


def test_a_late_host_makes_ticks_late_never_fewer():
    # 17 s late at each wake-up (17 real ms at 1200x, what a loaded host gave)
    t = ticks(120.0, 17.0)
    assert len(t) == 99  # one per period of the 12,000 s run, the first at 120 + 17 (drifting: 87)
    gaps = [b - a for a, b in zip(t, t[1:], strict=False)]
    assert max(abs(g - 120.0) for g in gaps) < 1e-6, gaps[:5]  # drifting: every gap 137 s


def test_a_stall_of_whole_periods_gives_one_late_line_then_the_grid_again():
    t = ticks(120.0, 1.0, stall_at=5000.0, stall=500.0)
    gaps = [b - a for a, b in zip(t, t[1:], strict=False)]
    assert len([g for g in gaps if g > 121.0]) == 1, gaps  # the stall, once
    # every line but the stalled one on the grid: no stale lines for the periods it swallowed,
    # and the ticks after it at their times again (drifting: all shifted by the stall)
    off_grid = [x for x in t if min((x - t[0]) % 120.0, 120.0 - (x - t[0]) % 120.0) > 1e-6]
    assert len(off_grid) == 1 and 5000.0 < off_grid[0] < 5000.0 + 500.0 + 240.0, off_grid
    assert len(t) == 99 - 4  # the stall swallowed four slots, nothing else went missing
