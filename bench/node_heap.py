"""Heap the node firmware's code takes once imported, three ways, against an empty baseline.

    python -m bench node_heap

MicroPython keeps module objects (globals dicts, functions, classes, interned names) in the
heap even when the bytecode stays in flash, so "fits in 64 KB" depends on how code is stored:
  * source .py files (compiled at import: what `slnode emulate` does by default),
  * .mpy files from mpy-cross (what `slnode build` ships; bytecode copied into the heap),
  * a ROMFS image (`mpremote romfs build`), mounted with ``vfs.VfsRom`` over a buffer that
    lives outside the MicroPython heap, the way an ESP32 maps a ROMFS partition: bytecode
    executes in place.
Each figure is ``gc.mem_alloc()`` after ``gc.collect()`` once every module a node imports is
loaded, minus the same figure with nothing imported (the baseline of the same run). The
per-module split of the ROMFS run shows where the footprint is.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.dirname(sys.executable)
MODULES = [
    "protocol.lwm2m", "protocol.cbor", "protocol.coap", "protocol.senml", "protocol.linkformat",
    "protocol.report", "firmware.config", "firmware.endpoint", "firmware.resources", "firmware.durable",
    "firmware.light", "firmware.meter", "firmware.sun", "firmware.tzrule", "firmware.schedule",
    "firmware.outbox", "firmware.faults", "firmware.hal.emulated", "firmware.parts", "firmware.node",
    "firmware.emulator",
]

_PROBE = """
import gc
gc.collect()
base = gc.mem_alloc()
out = {"baseline": base}
prev = base
for name in %r:
    __import__(name)
    gc.collect()
    now = gc.mem_alloc()
    out[name] = now - prev
    prev = now
out["total"] = prev - base
print(out)
"""

_ROM_RUNNER = """
import ctypes, sys
from micropython_run import run_main
img = open(sys.argv[1], "rb").read()
buf = ctypes.create_string_buffer(img, len(img))
sys.exit(run_main(["micropython", "-X", "heapsize=1m", sys.argv[2], str(ctypes.addressof(buf)), str(len(img))]))
"""

_ROM_BOOT = """
import sys, uctypes, vfs
vfs.mount(vfs.VfsRom(uctypes.bytearray_at(int(sys.argv[1]), int(sys.argv[2]))), "/rom")
sys.path.insert(0, "/rom")
"""


def _run_mp(path_env: str, script: str) -> dict:
    env = dict(os.environ, MICROPYPATH=path_env + ":.frozen")
    r = subprocess.run([os.path.join(BIN, "micropython"), "-X", "heapsize=1m", "-c", script], env=env,
                       capture_output=True, text=True, timeout=60, cwd="/")
    if r.returncode:
        raise RuntimeError(r.stderr)
    return json.loads(r.stdout.strip().replace("'", '"'))


def run() -> dict:
    from tools.slnode import emulate

    probe = _PROBE % (MODULES,)
    src = _run_mp(ROOT, probe)
    with tempfile.TemporaryDirectory() as d:
        mpy = _run_mp(emulate.compile_mpy(os.path.join(d, "mpy")), probe)
        tree = os.path.join(d, "rom")
        for pkg in ("firmware", "protocol"):
            shutil.copytree(os.path.join(ROOT, pkg), os.path.join(tree, pkg),
                            ignore=shutil.ignore_patterns("__pycache__", "*.md", "vectors", "*.json"))
        img = os.path.join(d, "fw.romfs")
        subprocess.run([os.path.join(BIN, "mpremote"), "romfs", "-o", img, "build", tree], check=True,
                       capture_output=True, timeout=120)
        runner = os.path.join(d, "run.py")
        boot = os.path.join(d, "boot.py")
        open(runner, "w").write(_ROM_RUNNER)
        open(boot, "w").write(_ROM_BOOT + probe)
        r = subprocess.run([sys.executable, runner, img, boot], capture_output=True, text=True, timeout=60, cwd="/",
                           env=dict(os.environ, MICROPYPATH=".frozen"))
        if r.returncode:
            raise RuntimeError(r.stderr)
        rom = json.loads(r.stdout.strip().replace("'", '"'))
        rom_size = os.path.getsize(img)
    top = sorted(((v, k) for k, v in rom.items() if k not in ("baseline", "total")), reverse=True)[:6]
    return {
        "command": "python -m bench node_heap",
        "empty_interpreter_baseline_bytes": src["baseline"],
        "import_from_source_bytes": src["total"],
        "import_from_mpy_bytes": mpy["total"],
        "import_from_romfs_bytes": rom["total"],
        "romfs_image_bytes": rom_size,
        "romfs_vs_mpy": round(rom["total"] / mpy["total"], 3),
        "largest_modules_romfs": {k: v for v, k in top},
    }


if __name__ == "__main__":
    print(json.dumps(run(), indent=2))
