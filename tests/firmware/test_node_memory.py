"""The node's run-time data in a 64 KB MicroPython heap budget through a simulated 24 hours at
7200x: schedule with sun steps, reports every 15 min delivered to an aiocoap peer, a few Reads
and Writes, no MemoryError, and the heap figures printed.

The code itself does not fit in 64 KB: imported from .mpy files, the module objects of
firmware/ and protocol/ take about 166 KB of heap (140 KB before OSCORE) (about 83 KB even when the bytecode stays in
a memory-mapped ROMFS, as frozen code on the ESP32 does). So the interpreter runs the mpy-cross
build (as on the device) with ``-X heapsize`` = the measured import footprint + 64 KB: what the
node allocates while running must fit in the 64 KB on top of its code. The smallest heap the
day really needs is bisected by ``python -m bench node_heap``. See docs/performance.md.
"""

import asyncio
import os
import re
import subprocess
import sys

import aiocoap

sys.path.insert(0, os.path.dirname(__file__))
from app_support import (  # noqa: E402
    MICROPYTHON,
    emulator_spec,
    free_udp_port,
    mp_env,
    start_emulator,
    stop_emulator,
    write_toml,
)
from lwm2m_peer import Peer  # noqa: E402

from tools.slnode import emulate  # noqa: E402

SPEED = 7200.0


async def test_24_hours_in_64k_heap(tmp_path):
    port = free_udp_port()
    peer = await Peer.start(port)
    toml = write_toml(tmp_path / "node.toml", report_period=900, lifetime=86400, jitter=5, rated_w=60,
                      lat=48.85, lon=2.35, tz="CET-1CEST,M3.5.0,M10.5.0/3")
    spec = emulator_spec(tmp_path / "flash", "lamp-m", port, config=toml, truth=tmp_path / "truth.jsonl",
                         speed=SPEED, clock_start="2025-03-01T12:00:00Z", time_valid=True, ack_timeout=50)
    start, anchor = spec["clock_start"], spec["clock_anchor"]
    peer.time_to_write = lambda: start + (asyncio.get_running_loop().time() * 0 + _now() - anchor) * SPEED
    mpy = emulate.compile_mpy(str(tmp_path / "mpy"))
    # sys.path starts with '' (the cwd, here the repository root, where the sources would shadow
    # the .mpy build): drop it, as the emulator's command line does (emulate.build_command)
    probe = (
        "import sys\nsys.path.remove('')\nimport gc\n"
        "import firmware.emulator, firmware.node, firmware.parts, firmware.schedule\n"
        "import firmware.outbox, firmware.hal.emulated, firmware.sun, firmware.tzrule\n"
        "gc.collect()\nprint(gc.mem_alloc())\n"
        "print(' '.join(getattr(m, '__file__', '') for n, m in sys.modules.items() if n.split('.')[0] in ('firmware', 'protocol')))\n"
    )
    r = subprocess.run([MICROPYTHON, "-X", "heapsize=512k", "-c", probe], env={**mp_env(), "MICROPYPATH": mpy + ":.frozen"},
                       capture_output=True, text=True, timeout=30)
    alloc, files = r.stdout.strip().split("\n")
    assert files and all(f.startswith(mpy) and f.endswith(".mpy") for f in files.split()), files  # the build
    code_bytes = int(alloc)
    heap_k = code_bytes // 1024 + 64
    print(f"imported code: {code_bytes} B of heap; running with heapsize={heap_k}k")
    proc = start_emulator(spec, tmp_path / "node.log", heap=f"{heap_k}k", mpy_dir=mpy)
    try:
        await asyncio.wait_for(peer.registered.wait(), 15)
        sched = [[1, 0, 100], [0, 1350, 40], [0, 0, 0], [0, 300, 40], [2, 0, 0]]
        assert await peer.write("/10250/0/2", sched) == aiocoap.CHANGED
        for _ in range(5):
            code, lvl = await peer.read("/3311/0/5851")
            assert code == aiocoap.CONTENT
            code, _ = await peer.read("/3311/0", accept=112)
            assert code == aiocoap.CONTENT
            await asyncio.sleep(1)
        await asyncio.sleep(max(0, 24 * 3600 / SPEED - 5))
        await peer.wait_for(lambda: len(peer.reports) >= 92, 20)
        assert proc.p.poll() is None
        assert stop_emulator(proc) == 0
    finally:
        proc.kill()
        await peer.stop()
    log = (tmp_path / "node.log").read_text()
    assert "MemoryError" not in log and "Traceback" not in log, log[-2000:]
    m = re.search(r"heap peak (\d+) bytes, after collect (\d+) in use, (\d+) free", log)
    assert m, log[-500:]
    peak, used, free = map(int, m.groups())
    assert used + free <= heap_k * 1024
    print(f"heap {heap_k}k: peak {peak} B (incl. garbage), {used} B live after collect, {free} B free;"
          f" run-time data above the code: {used - code_bytes} B live")
    levels = {r["level"] for r in peer.reports.values()}
    assert {0, 40, 100} <= levels  # the night programme ran: full, 40 %, off


def _now():
    import time

    return time.time()
