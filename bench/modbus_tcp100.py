"""100 Modbus TCP meters (emulated SDM630s, each on its own port) polled every second.

Figures: the achieved poll rate against the 100 polls/s asked for, and the gateway-side
CPU (this process: poll loop, pymodbus, decoding and, in the first run, the SQLite store
with its writer thread). Baseline in the same run: a bare pymodbus client issuing the same
two reads back to back, CPU per poll. Run: ``.venv/bin/python bench/modbus_tcp100.py``
"""

from __future__ import annotations

import asyncio
import json
import sys
import tempfile
import time
from pathlib import Path

from pymodbus.client import AsyncModbusTcpClient

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench._modbus_common import config, noop_sink, process_group, quiet, wait_for  # noqa: E402
from gateway.modbus.planner import plan  # noqa: E402
from gateway.modbus.profiles import load_profile  # noqa: E402
from gateway.modbus.service import start_modbus  # noqa: E402
from gateway.store import Store  # noqa: E402
from tools.meters.harness import start_tcp_meters  # noqa: E402

METERS = 100
PROCS = 4
WINDOW = 10.0


async def run(ports: list[int], with_store: bool) -> dict:
    meters = [{"name": f"m{i}", "profile": "eastron-sdm630", "port": p, "period": "1s", "timeout": "1s"}
              for i, p in enumerate(ports)]
    with tempfile.TemporaryDirectory() as d:
        store = await Store.open(str(Path(d) / "slgw.db")) if with_store else None
        try:
            h = await start_modbus(config(meters), store, None, sink=None if with_store else noop_sink)
            try:
                await wait_for(lambda: all(p.counters["ok"] >= 2 for p in h.pollers), 30)
                n0 = sum(p.counters["ok"] for p in h.pollers)
                c0, t0 = time.process_time(), time.monotonic()
                await asyncio.sleep(WINDOW)
                c1, t1 = time.process_time(), time.monotonic()
                n = sum(p.counters["ok"] for p in h.pollers) - n0
                errors = sum(p.counters[k] for p in h.pollers for k in ("timeout", "connection", "garbage"))
            finally:
                await h.stop()
            stored = None
            if store:
                stored = await store.read(lambda c: c.execute("SELECT COUNT(*) FROM readings").fetchone()[0])
        finally:
            if store:
                await store.close()
    dt = t1 - t0
    return {"polls_per_s": round(n / dt, 1), "achieved_pct_of_target": round(100 * n / dt / METERS, 1),
            "cpu_pct_of_one_core": round(100 * (c1 - c0) / dt, 1),
            "cpu_ms_per_poll": round(1000 * (c1 - c0) / n, 3), "errors": errors, "readings_stored": stored}


async def bare(port: int, reads: list[tuple[int, int]], polls: int = 300) -> float:
    client = AsyncModbusTcpClient("127.0.0.1", port=port)
    await client.connect()
    try:
        c0 = time.process_time()
        for _ in range(polls):
            for addr, count in reads:
                rr = await client.read_input_registers(addr, count=count, device_id=1)
                assert not rr.isError()
        return 1000 * (time.process_time() - c0) / polls
    finally:
        client.close()


def main() -> None:
    quiet()
    reads = [(r.address, r.count) for r in plan(load_profile("eastron-sdm630"))]
    with process_group() as (group, _tmp):
        ports: list[int] = []
        for k in range(PROCS):
            _, p = start_tcp_meters(group, f"meters{k}", servers=METERS // PROCS, model="sdm630")
            ports += p
        with_store = asyncio.run(run(ports, True))
        no_store = asyncio.run(run(ports, False))
        base = asyncio.run(bare(ports[0], reads))
    print(json.dumps({
        "bench": "modbus_tcp100", "meters": METERS, "period_s": 1, "window_s": WINDOW,
        "reads_per_poll": [c for _, c in reads],
        "with store": with_store, "without store (noop sink)": no_store,
        "bare pymodbus cpu_ms_per_poll (baseline)": round(base, 3),
        "ratio_cpu_per_poll_ours_without_store_to_bare": round(no_store["cpu_ms_per_poll"] / base, 2),
    }, indent=2))


if __name__ == "__main__":
    main()
