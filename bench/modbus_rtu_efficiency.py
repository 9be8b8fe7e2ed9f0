"""RTU efficiency at 9600 baud through the paced relay (socat pty pair + emulated SDM630).

Figure: full-profile polls per second divided by the wire limit with 3.5-character gaps
(goal >= 85 %). Baselines in the same run: the wire limit (computed from the frames) and a
bare pymodbus serial client issuing the same reads back to back (no silence, no lock).
Run: ``.venv/bin/python bench/modbus_rtu_efficiency.py``
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from pathlib import Path

from pymodbus.client import AsyncModbusSerialClient

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench._modbus_common import config, noop_sink, poll_wire_time, process_group, quiet, wait_for  # noqa: E402
from gateway.modbus.planner import plan  # noqa: E402
from gateway.modbus.profiles import load_profile  # noqa: E402
from gateway.modbus.service import start_modbus  # noqa: E402
from tools.meters.harness import start_rtu_line  # noqa: E402

BAUD = 9600
WINDOW = 8.0


async def ours(bus: str, profile: str) -> float:
    h = await start_modbus(config([{"name": "m", "profile": profile, "transport": "rtu", "device": bus,
                                    "baudrate": BAUD, "period": 0.001, "timeout": "0.5s"}]), None, None,
                           sink=noop_sink)
    try:
        p = h.pollers[0]
        await wait_for(lambda: p.counters["ok"] >= 3, 15)
        n0, t0 = p.counters["ok"], time.monotonic()
        await asyncio.sleep(WINDOW)
        n1, t1 = p.counters["ok"], time.monotonic()
        assert p.counters["timeout"] == 0, p.counters
        return (n1 - n0) / (t1 - t0)
    finally:
        await h.stop()


async def bare(bus: str, reads: list[tuple[int, int]]) -> float:
    client = AsyncModbusSerialClient(bus, baudrate=BAUD, timeout=1, retries=0)
    await asyncio.sleep(0.5)  # let the answer cut off when the poller stopped drain away
    await client.connect()
    client.ctx.transport.sync_serial.reset_input_buffer()
    try:
        n, t0 = 0, time.monotonic()
        while time.monotonic() - t0 < WINDOW:
            for addr, count in reads:
                rr = await client.read_input_registers(addr, count=count, device_id=1)
                assert not rr.isError()
            n += 1
        return n / (time.monotonic() - t0)
    finally:
        client.close()


def main() -> None:
    quiet()
    results = {}
    with process_group() as (group, tmp):
        small = tmp / "ten-registers.toml"
        small.write_text("[device]\nmax_registers = 80\n" + "".join(
            f'[[registers]]\nname = "v{i}"\naddress = {2 * i}\ntype = "float32"\n'
            + ('scale = 1000\nunit = "Wh"\nmap = "import_wh"\n' if i == 0 else "") for i in range(5)))
        line = start_rtu_line(group, tmp, baud=BAUD, model="sdm630")
        for label, prof in (("sdm630 full profile", "eastron-sdm630"), ("10-register read", str(small))):
            reads = [(r.address, r.count) for r in plan(load_profile(prof))]
            limit = 1 / poll_wire_time([c for _, c in reads], BAUD)
            limit_no_gaps = 1 / poll_wire_time([c for _, c in reads], BAUD, gaps=0)
            got = asyncio.run(ours(line.bus, prof))
            raw = asyncio.run(bare(line.bus, reads))
            results[label] = {
                "reads_per_poll": [c for _, c in reads],
                "polls_per_s": round(got, 2),
                "wire_limit_with_gaps_per_s": round(limit, 2),
                "efficiency_vs_limit_pct": round(100 * got / limit, 1),
                "bare_pymodbus_per_s (no silence)": round(raw, 2),
                "wire_limit_back_to_back_per_s": round(limit_no_gaps, 2),
                "ratio_ours_to_bare_pymodbus": round(got / raw, 3),
            }
    print(json.dumps({"bench": "modbus_rtu_efficiency", "baud": BAUD, "window_s": WINDOW, **results}, indent=2))


if __name__ == "__main__":
    main()
