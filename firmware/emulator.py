"""MicroPython entry point of ``slnode emulate``: K emulated nodes in ONE interpreter.

    micropython firmware/emulator.py SPEC.json     (written by tools/slnode/emulate.py)

Each node is a firmware.node.Node with its own emulated HAL (firmware/hal/emulated), its own
flash directory and UDP socket, run as an asyncio task. The simulated clock is shared:
``sim_unix = clock_start + (real_now - clock_anchor) * clock_speed``.

Stopping: the Unix port has no ``signal`` module, so the launcher closes our stdin on SIGTERM;
a task waits for stdin through the asyncio poller, then every node persists its counters,
a last truth line is written, and the process exits 0. SIGKILL is a power cut.

Truth lines (``spec["truth"]``), one JSON object per node per report and at exit:
``{"id", "t" (simulated Unix s), "wh" (the emulated meter's TRUE cumulative Wh), "level"
(the lamp's actual level), "w", "seq", "time_valid", "faults", "event"}``.
"""

import asyncio
import json
import sys

from firmware.node import Node
from firmware.parts import make_emulated


class Emulator:
    def __init__(self, spec):
        self.spec = spec
        self.nodes = []
        self.truth_file = None
        if spec.get("truth"):
            self.truth_file = open(spec["truth"], "a")
        for n in spec["nodes"]:
            hal, factory = make_emulated(n["flash"], n["id"], spec, n.get("truth_wh", 0.0))
            node = Node(hal, factory, ack_timeout_ms=spec.get("ack_timeout_ms") or 2000, port=n.get("port") or 0,
                        log=_logger(n["id"]))
            node.truth = self.write_truth
            self.nodes.append(node)

    def write_truth(self, node, event="report"):
        f = self.truth_file
        if f is None:
            return
        h = node.hal
        line = {
            "id": node.cfg["id"] if node.cfg else "?",
            "t": h.sim_unix(),
            "wh": h.truth_wh(),
            "level": node.p.light.actual_level if node.p else 0,
            "w": h.power_w(),
            "seq": node.seq,
            "time_valid": node._part_unix() is not None,
            "faults": node.faults,
            "event": event,
        }
        f.write(json.dumps(line))
        f.write("\n")
        f.flush()

    async def watch_stdin(self):
        ioq = asyncio.core._io_queue
        while True:
            yield ioq.queue_read(sys.stdin)
            try:
                b = sys.stdin.buffer.read(1)
            except (OSError, AttributeError):
                b = b""
            if not b:
                return

    async def main(self):
        tasks = [asyncio.create_task(n.run()) for n in self.nodes]
        await self.watch_stdin()
        for n in self.nodes:
            n.stop()
            self.write_truth(n, "stop")
        for t in tasks:
            t.cancel()
        await asyncio.sleep_ms(20)
        if self.truth_file:
            self.truth_file.close()


def _logger(nid):
    def log(msg):
        print(nid + ": " + msg)

    return log


def main():
    with open(sys.argv[1]) as f:
        spec = json.loads(f.read())
    em = Emulator(spec)
    asyncio.run(em.main())
    print("emulator: stopped cleanly")


if __name__ == "__main__":
    main()
