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
(the lamp's actual level), "lamp" (the light the emulated lamp really gives, 0..100, from the
HAL's physics), "w", "seq", "time_valid", "faults", "event"}``; ``event`` is "boot", "report", "tick" (every
``truth_period``) or "stop". With ``spec["truth_period"]``
a line per node is also written every that many simulated seconds (event "tick"), so a test
can follow levels between reports; the ticks keep to a grid of simulated time, so a loaded
host makes them late, never fewer.

Fault control from outside (the HIL harness): the JSON file ``emulator-control.json`` next to
the spec file is re-read every 0.2 real s. It holds a list of commands, applied once each in
order (the writer only appends; the list starts empty at each process start, so the harness
removes the file before starting the process)::

    [{"id": "lamp-003", "clock_jump": 3600}, {"id": "*", "fail_lamp": true},
     {"id": "lamp-001", "unplug_meter": true}, {"id": "lamp-002", "net_down": true}]

``clock_jump`` adds seconds to the node's RTC (the truth clock is unaffected); the others flip
the HAL's fault switches (firmware/hal/emulated.py). ``"id": "*"`` means every node here.
"""

import gc

# While the modules below load, collect every 4 KB allocated: the loader's garbage is freed
# early, so module objects pack at the bottom of the heap and the top stays in one piece
# (a node with OSCORE's code, in a heap of its code + 64 KB, found no free 1,280-byte block at
# boot without it: docs/performance.md). main() sets the run-time threshold.
if hasattr(gc, "threshold"):  # MicroPython (the launcher's tests may import this on CPython)
    gc.threshold(4096)

import asyncio  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402

from firmware.node import Node  # noqa: E402
from firmware.parts import make_emulated  # noqa: E402


class Emulator:
    def __init__(self, spec):
        self.spec = spec
        self.nodes = []
        self.truth_file = None
        if spec.get("truth"):
            self.truth_file = open(spec["truth"], "a")
        self.factory = None
        for n in spec["nodes"]:
            hal, self.factory = make_emulated(n["flash"], n["id"], spec, n.get("truth_wh", 0.0), n.get("uart"))
            self.nodes.append(self._make_node(n, hal))
        self.heap_peak = 0
        # Booted by the boot selector (firmware/boot_select.py, one node per process): a reset
        # ends the process (the launcher starts it again, as the board would boot), and an
        # exception out of a node ends it too, for the selector to see (docs/ota.md)
        self.slots = bool(spec.get("slots"))
        self.done = asyncio.Event()
        self.reset = False
        self.crash = None

    def _make_node(self, n, hal):
        spec = self.spec
        ov = {"id": n["id"], "gateway": spec["gateway"]}
        if spec.get("report_period"):
            ov["report_period"] = spec["report_period"]
        if spec.get("ota_trial_s"):
            ov["ota_trial_s"] = spec["ota_trial_s"]
        node = Node(hal, self.factory, ack_timeout_ms=spec.get("ack_timeout_ms") or 2000, port=n.get("port") or 0,
                    log=_logger(n["id"]), overrides=ov)
        node.truth = self.write_truth
        return node

    async def supervise(self, i):
        """Run node ``i``; an Execute /3/0/4 (ResetRequested) boots a fresh Node on the same HAL,
        as the device would after ``machine.reset()`` (RTC kept, outputs reset)."""
        from firmware.hal.base import ResetRequested

        while True:
            node = self.nodes[i]
            try:
                await node.run()
                return
            except ResetRequested:
                if self.slots:
                    self.reset = True
                    self.done.set()
                    return
                node.hal.reboot()
                self.nodes[i] = self._make_node(self.spec["nodes"][i], node.hal)
                print(self.spec["nodes"][i]["id"] + ": rebooted")
            except Exception as e:  # noqa: BLE001 - only with slots; else as before
                if not self.slots:
                    raise
                self.crash = e
                self.done.set()
                return

    async def heap_watch(self):
        """Sample the heap in use every 50 real ms; the peak is printed at exit."""
        import gc

        while True:
            used = gc.mem_alloc()
            if used > self.heap_peak:
                self.heap_peak = used
            await asyncio.sleep_ms(50)

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
            "lamp": h.lamp_level(),
            "w": h.power_w(),
            "seq": node.seq,
            "time_valid": h.rtc_get() is not None,
            "faults": node.faults,
            "event": event,
        }
        if event == "report" and node.last_taken is not None:
            line["report_t"] = node.last_taken[1]  # the time the report carries (node clock)
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

    async def truth_ticks(self):
        """A "boot" truth line per node once booted, then one every ``truth_period`` simulated
        seconds."""
        if not self.nodes or self.truth_file is None:
            return
        pending = list(self.nodes)
        while pending:
            await asyncio.sleep_ms(1)
            for n in [n for n in pending if n.p is not None]:
                self.write_truth(n, "boot")
                pending.remove(n)
        period = self.spec.get("truth_period")
        if not period:
            return
        hal = self.nodes[0].hal
        # on a fixed grid of simulated time, not period after period: a relative sleep drifts
        # by the loop's latency each time (at 1200x, 17 ms real late per tick on a loaded host
        # made 120-s ticks come every 141 s, so the lines a test counts on went missing)
        due = hal.sim_unix()
        while True:
            due += period
            await hal.sleep_ms(int((due - hal.sim_unix()) * 1000))
            for n in self.nodes:
                if n.cfg is not None:
                    self.write_truth(n, "tick")
            late = hal.sim_unix() - due
            if late > period:
                due += late - late % period  # stalled for whole periods: no burst of stale lines

    async def control(self):
        """Apply the fault commands of the control file (see the module docstring)."""
        path = self.spec.get("control")
        if not path:
            return
        applied = 0
        while True:
            await asyncio.sleep_ms(200)
            try:
                with open(path) as f:
                    cmds = json.loads(f.read())
            except (OSError, ValueError):
                continue  # absent, or being replaced
            while applied < len(cmds):
                self.apply(cmds[applied])
                applied += 1

    async def _stdin_done(self):
        await self.watch_stdin()
        self.done.set()

    def apply(self, cmd):
        for n in self.nodes:
            nid = n.cfg["id"] if n.cfg else None
            if cmd.get("id") not in ("*", nid):
                continue
            h = n.hal
            if "clock_jump" in cmd:
                h.clock_jump(cmd["clock_jump"])
            if "fail_lamp" in cmd:
                h.fail_lamp(bool(cmd["fail_lamp"]))
            if "unplug_meter" in cmd:
                h.unplug_meter(bool(cmd["unplug_meter"]))
            if "net_down" in cmd:
                h.net_down = bool(cmd["net_down"])
            print("%s: control %s" % (nid, json.dumps(cmd)))

    async def main(self):
        tasks = [asyncio.create_task(self.supervise(i)) for i in range(len(self.nodes))]
        tasks.append(asyncio.create_task(self.heap_watch()))
        tasks.append(asyncio.create_task(self.truth_ticks()))
        tasks.append(asyncio.create_task(self.control()))
        tasks.append(asyncio.create_task(self._stdin_done()))
        await self.done.wait()
        for n in self.nodes:
            if self.reset or self.crash is not None:
                continue  # a reset or a crash: nothing more is written (the node persisted before)
            n.stop()
            self.write_truth(n, "stop")
        for t in tasks:
            t.cancel()
        await asyncio.sleep_ms(20)
        if self.truth_file:
            self.truth_file.close()
        import gc

        gc.collect()
        print("emulator: heap peak %d bytes, after collect %d in use, %d free" % (
            self.heap_peak, gc.mem_alloc(), gc.mem_free()))


def _logger(nid):
    def log(msg):
        print(nid + ": " + msg)

    return log


def main():
    with open(sys.argv[1]) as f:
        spec = json.loads(f.read())
    if "control" not in spec:
        d = sys.argv[1].rsplit("/", 1)[0] if "/" in sys.argv[1] else "."
        spec["control"] = d + "/emulator-control.json"
    import gc

    from firmware.node import has_keys

    for n in spec["nodes"]:
        if has_keys(lambda name, d=n["flash"]: d + "/" + name):
            import firmware.secure  # noqa: F401 - OSCORE's code in place before the heap fills
            break
    gc.collect()
    gc.threshold(gc.mem_free() // 8)  # keeps the heap unfragmented: see firmware/main.py
    em = Emulator(spec)
    asyncio.run(em.main())
    if em.crash is not None:
        raise em.crash  # firmware/boot_select.py records it and resets
    if em.reset:
        print("emulator: reset")
        sys.exit(75)  # boot_select.RESET_EXIT: the launcher boots the process again
    gc.collect()
    # the live MicroPython heap of all nodes here (the HIL memory bench divides it per node)
    print("emulator: stopped cleanly, heap %d bytes in use for %d nodes" % (gc.mem_alloc(), len(em.nodes)))


if __name__ == "__main__":
    main()
