"""The firmware core runs a simulated 24 h in a 64 KB MicroPython heap.

Modules are precompiled with mpy-cross (bytecode, as they are precompiled or frozen on the
device), then tests/firmware/mp_core/mem_day.py drives light, schedule, pulse meter, durable
counters, seq allocator and outbox through a day (12 h of it without a gateway) under
``micropython -X heapsize=64k``.
"""

import glob
import os
import subprocess

from core_support import BIN, MICROPYTHON, MP_CORE, ROOT


def compile_tree(dest):
    """Compile the firmware core, protocol/lwm2m.py and mem_day.py to .mpy under ``dest``."""
    core = ["durable", "faults", "light", "meter", "modbus_rtu", "outbox", "schedule", "sun", "tzrule"]
    srcs = [os.path.join(ROOT, "firmware", m + ".py") for m in core]
    srcs += glob.glob(os.path.join(ROOT, "firmware", "hal", "*.py"))
    srcs += [p for p in (os.path.join(ROOT, "firmware", "__init__.py"), os.path.join(ROOT, "protocol", "__init__.py"),
                         os.path.join(ROOT, "protocol", "lwm2m.py")) if os.path.exists(p)]
    for src in srcs:
        rel = os.path.relpath(src, ROOT)[:-3] + ".mpy"
        out = os.path.join(dest, rel)
        os.makedirs(os.path.dirname(out), exist_ok=True)
        subprocess.run([os.path.join(BIN, "mpy-cross"), "-o", out, src], check=True, capture_output=True, timeout=60)
    subprocess.run([os.path.join(BIN, "mpy-cross"), "-o", os.path.join(dest, "mem_day.mpy"),
                    os.path.join(MP_CORE, "mem_day.py")], check=True, capture_output=True, timeout=60)
    return dest


def run_day(mpy_dir, flash, heap):
    env = dict(os.environ, MICROPYPATH=str(mpy_dir) + ":.frozen")
    return subprocess.run([MICROPYTHON, "-X", "heapsize=" + heap, "-m", "mem_day", str(flash)], env=env,
                          capture_output=True, text=True, timeout=120, cwd=str(mpy_dir))


def test_core_day_in_64k_heap(tmp_path):
    mpy = compile_tree(tmp_path / "mpy")
    flash = tmp_path / "flash"
    flash.mkdir()
    r = run_day(mpy, flash, "64k")
    assert r.returncode == 0, r.stdout + r.stderr
    done = r.stdout.split()
    assert done[0] == "done"
    reports, pending, code, live, _free, wh, pulses = (int(x) for x in done[1:8])
    assert reports == 96 and pending == 0  # a report per 15 min, all delivered after the gateway returned
    assert wh == pulses > 0  # the energy counter kept every pulse
    assert live < 16 * 1024, live  # runtime data (code aside) stays small


def test_too_small_heap_fails_loudly(tmp_path):
    # the control: the same day in a 24 KB heap must fail with MemoryError, not pass silently
    mpy = compile_tree(tmp_path / "mpy")
    flash = tmp_path / "flash"
    flash.mkdir()
    r = run_day(mpy, flash, "24k")
    assert r.returncode != 0 and "MemoryError" in r.stderr
