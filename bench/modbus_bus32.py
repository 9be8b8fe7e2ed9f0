"""A bus of 32 SDM630 meters on one RS-485 line (19200 baud, paced relay): full-cycle time,
with and without one dead meter.

Goal: the dead meter adds no more than its own timeout per cycle. Its "own timeout" is the
configured timeout plus the wire time of the request and the expected answer (what the bus
waits before it gives up, see gateway/modbus/bus.py). Baselines in the same run: the wire
limit of 32 full-profile polls, and the cycle of the 31 healthy meters alone.
Run: ``.venv/bin/python bench/modbus_bus32.py``
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench._modbus_common import config, noop_sink, poll_wire_time, process_group, quiet, wait_for  # noqa: E402
from gateway.modbus.planner import plan  # noqa: E402
from gateway.modbus.profiles import load_profile  # noqa: E402
from gateway.modbus.service import start_modbus  # noqa: E402
from tools.meters.harness import start_rtu_line  # noqa: E402
from tools.meters.model import write_control  # noqa: E402

BAUD = 19200
TIMEOUT = 0.1
WINDOW = 15.0
DEAD = 32


async def scenario(bus: str, units: list[int], backoff_max: str, dead_unit: int | None = None) -> dict:
    meters = [{"name": f"m{u}", "profile": "eastron-sdm630", "transport": "rtu", "device": bus,
               "baudrate": BAUD, "unit": u, "period": "1s", "timeout": TIMEOUT, "retries": 1,
               "backoff_max": backoff_max} for u in units]
    h = await start_modbus(config(meters), None, None, sink=noop_sink)
    try:
        ps = {p.cfg.unit: p for p in h.pollers}
        healthy = [p for u, p in ps.items() if u != dead_unit]
        dead = ps.get(dead_unit) if dead_unit else None
        # warm-up: every healthy meter polled once, the dead one in quarantine and past its
        # first back-off steps
        await wait_for(lambda: all(p.counters["ok"] >= 1 for p in healthy)
                       and (dead is None or dead.failures >= 3), 30)
        print(f"  scenario {len(units)} meters, dead {dead_unit}: warmed up", file=sys.stderr, flush=True)
        n0 = sum(p.counters["ok"] for p in healthy)
        pr0 = dead.counters["polls"] if dead else 0
        busy0 = dead.bus_time if dead else 0.0
        t0 = time.monotonic()
        await asyncio.sleep(WINDOW)
        dt = time.monotonic() - t0
        polls = sum(p.counters["ok"] for p in healthy) - n0
        probes = (dead.counters["polls"] - pr0) if dead else 0
        busy = (dead.bus_time - busy0) if dead else 0.0
        cycles = polls / len(healthy)
        assert all(p.status == "ok" for p in healthy)
        return {"meters": len(units), "healthy": len(healthy), "cycle_s": round(dt / cycles, 3),
                "dead_probes_per_cycle": round(probes / cycles, 2) if dead else None,
                "dead_line_time_per_cycle_s": round(busy / cycles, 3) if dead else None,
                "dead_line_time_per_probe_s": round(busy / probes, 3) if probes else None,
                "dead_status": dead.status if dead else None}
    finally:
        await h.stop()
        await asyncio.sleep(0.5)


def main() -> None:
    quiet()
    counts = [r.count for r in plan(load_profile("eastron-sdm630"))]
    wire_poll = poll_wire_time(counts, BAUD)
    own_timeout = TIMEOUT + (8 + 5 + 2 * counts[0]) * 10 / BAUD
    out: dict = {"bench": "modbus_bus32", "baud": BAUD, "window_s": WINDOW,
                 "wire_limit_cycle_32_s": round(32 * wire_poll, 3),
                 "dead_meter_own_timeout_s": round(own_timeout, 3)}
    with process_group() as (group, tmp):
        control = tmp / "control.json"
        write_control(control, {})
        line = start_rtu_line(group, tmp, baud=BAUD, model="sdm630", units="1-32", control=control)
        a = asyncio.run(scenario(line.bus, list(range(1, 33)), "5min"))
        b = asyncio.run(scenario(line.bus, list(range(1, 32)), "5min"))
        write_control(control, {"units": {str(DEAD): {"fault": "unplugged"}}})
        time.sleep(0.2)
        c = asyncio.run(scenario(line.bus, list(range(1, 33)), "3s", DEAD))    # probed about every cycle
        d = asyncio.run(scenario(line.bus, list(range(1, 33)), "5min", DEAD))  # the default back-off
    out["32 healthy"] = {**a, "efficiency_vs_wire_pct": round(100 * 32 * wire_poll / a["cycle_s"], 1)}
    out["31 healthy (baseline)"] = b
    for label, s in (("31 healthy + 1 dead, back-off max 3 s", c), ("31 healthy + 1 dead, default back-off 5 min", d)):
        # what the dead meter costs the line is the time its probes hold it (the line is
        # serial); the cycle difference against the baseline says the same with more noise
        out[label] = {**s, "cycle_minus_baseline_s": round(s["cycle_s"] - b["cycle_s"], 3),
                      "dead_line_time_per_cycle_vs_own_timeout":
                          round(s["dead_line_time_per_cycle_s"] / own_timeout, 2)}
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
