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

Then the smallest ``-X heapsize`` that carries a node through 24 simulated hours, from the
ROMFS image: the run of tests/firmware/test_node_memory.py (7200x, 15-min reports delivered to
an aiocoap LwM2M peer, a sun-based night programme written over CoAP, Reads) repeated in a
bisection over the heap size (4 KB steps; about a minute). A run passes when the emulator lives
through the day without MemoryError or traceback and without a datagram dropped for lack of
memory (firmware/endpoint.py survives those, but it is not a clean run), the peer got every
report, and it stops cleanly. ``NODE_HEAP_MPY_DAY=1`` bisects the .mpy build (what `slnode build`
ships today) as well. The modules that run really loaded are checked against ``MODULES`` (so the import
figures above count exactly the code a node uses).
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.dirname(sys.executable)
SPEED = 7200.0  # simulated seconds per real second in the 24 h run
STEP_K = 4  # bisection resolution, KB
# Every module an emulated node loads (checked against a real run: see smallest_day_heap), in an
# order where each one's own cost is what is added (dependencies first). asyncio is frozen into
# the interpreter (as on the ESP32), but its module objects are built in the heap at import.
# protocol.linkformat is not here: only the gateway parses link-format; the node's Register
# body is a constant string.
MODULES = [
    "asyncio", "protocol.lwm2m", "protocol.cbor", "protocol.coap_exchange", "protocol.coap", "protocol.senml",
    "protocol.report", "firmware.config", "firmware.endpoint", "firmware.resources", "firmware.durable",
    "firmware.light", "firmware.meter", "firmware.sun", "firmware.tzrule", "firmware.schedule",
    "firmware.outbox", "firmware.faults", "firmware.hal.base", "firmware.hal.emulated", "firmware.parts",
    "firmware.node", "firmware.emulator",
]
# What an ESP32 node loads instead (firmware/main.py: the ESP32 HAL and the USB console, no
# emulator): measured here with empty stand-ins for the built-in ``machine`` and ``network``
# modules, imported before the baseline (their attributes are only touched when the HAL is built).
MODULES_ESP32 = [m for m in MODULES if m not in ("firmware.hal.emulated", "firmware.emulator")] + [
    "firmware.hal.esp32", "firmware.console", "firmware.main"]

# After each import: "@name bytes" and the qstr pool line of micropython.qstr_info().
_PROBE = """
import gc, micropython, sys
%s
gc.collect()
print("@baseline", gc.mem_alloc())
micropython.qstr_info()
for name in %r:
    __import__(name)
    gc.collect()
    print("@" + name, gc.mem_alloc())
    micropython.qstr_info()
"""
_STUBS = "sys.path.append(%r)\nimport machine, network"


def _parse_probe(text: str) -> dict:
    """{"baseline", "total", "qstrs", "qstr_pool_bytes", "qstr_str_bytes", "modules": {name: bytes}}."""
    rows = []
    for name, val, q in re.findall(r"@(\S+) (\d+)\nqstr pool: (.*)", text):
        rows.append((name, int(val), {k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", q)}))
    if not rows:
        raise RuntimeError(text[-2000:])
    base, last = rows[0], rows[-1]
    mods = {rows[i][0]: rows[i][1] - rows[i - 1][1] for i in range(1, len(rows))}
    q0, q1 = base[2], last[2]
    return {"baseline": base[1], "total": last[1] - base[1], "modules": mods,
            "qstrs": q1["n_qstr"] - q0["n_qstr"],
            "qstr_pool_bytes": (q1["n_total_bytes"] - q1["n_str_data_bytes"]) - (q0["n_total_bytes"] - q0["n_str_data_bytes"]),
            "qstr_str_bytes": q1["n_str_data_bytes"] - q0["n_str_data_bytes"]}


# CPython launcher: the image in a ctypes buffer (outside the MicroPython heap, like a flash
# partition mapped into the address space), then micropython in-process on the boot script.
_ROM_RUNNER = """
import ctypes, sys
from micropython_run import run_main
img = open(sys.argv[1], "rb").read()
buf = ctypes.create_string_buffer(img, len(img))
heap = sys.argv[3] if len(sys.argv) > 3 else "1m"
sys.exit(run_main(["micropython", "-X", "heapsize=" + heap, sys.argv[2], str(ctypes.addressof(buf)), str(len(img))]
                  + sys.argv[4:]))
"""

_ROM_BOOT = """
import sys, uctypes, vfs
vfs.mount(vfs.VfsRom(uctypes.bytearray_at(int(sys.argv[1]), int(sys.argv[2]))), "/rom")
sys.path.insert(0, "/rom")
"""

# the emulator from the image; at exit, which firmware/protocol modules the run loaded
_ROM_EMULATOR = """
sys.argv[:] = ["emulator", sys.argv[3]]
from firmware import emulator
emulator.main()
print("modules:", " ".join(sorted(m for m in sys.modules if m.split(".")[0] in ("firmware", "protocol")
                                  and m not in ("firmware", "protocol", "firmware.hal"))))
"""


def _run_mp(path_env: str, script: str) -> dict:
    env = dict(os.environ, MICROPYPATH=path_env + ":.frozen")
    r = subprocess.run([os.path.join(BIN, "micropython"), "-X", "heapsize=1m", "-c", script], env=env,
                       capture_output=True, text=True, timeout=60, cwd="/")
    if r.returncode:
        raise RuntimeError(r.stderr)
    return _parse_probe(r.stdout)


def _run_rom(img: str, d: str, script: str) -> dict:
    boot = os.path.join(d, "probe.py")
    with open(boot, "w") as f:
        f.write(_ROM_BOOT + script)
    r = subprocess.run(_rom_cmd(img, boot, "1m"), capture_output=True, text=True, timeout=60, cwd="/",
                       env=dict(os.environ, MICROPYPATH=".frozen"))
    if r.returncode:
        raise RuntimeError(r.stderr + r.stdout[-2000:])
    return _parse_probe(r.stdout)


def build_romfs(d: str) -> str:
    """Build the ROMFS image of firmware/ and protocol/ in ``d`` (as `mpremote romfs build`
    does for the device); returns its path."""
    tree = os.path.join(d, "rom")
    for pkg in ("firmware", "protocol"):
        shutil.copytree(os.path.join(ROOT, pkg), os.path.join(tree, pkg),
                        ignore=shutil.ignore_patterns("__pycache__", "*.md", "vectors", "*.json"))
    img = os.path.join(d, "fw.romfs")
    subprocess.run([os.path.join(BIN, "mpremote"), "romfs", "-o", img, "build", tree], check=True,
                   capture_output=True, timeout=120)
    with open(os.path.join(d, "run.py"), "w") as f:
        f.write(_ROM_RUNNER)
    return img


def _rom_cmd(img: str, boot: str, heap: str, *args: str) -> list[str]:
    return [sys.executable, os.path.join(os.path.dirname(img), "run.py"), img, boot, heap, *args]


async def _day(code: str, heap_k: int, work: str) -> dict:
    """One node, ``heap_k`` KB of heap, through 24 simulated hours (see the module docstring).
    ``code``: the ROMFS image (``*.romfs``) or a directory of mpy-cross output. Returns
    {"ok", "why", "peak", "live", "modules"} (modules: ROMFS runs only)."""
    sys.path.insert(0, os.path.join(ROOT, "tests", "firmware"))
    import aiocoap
    from app_support import Proc, emulator_spec, free_udp_port, write_toml
    from lwm2m_peer import Peer

    from tools.slnode import emulate

    os.makedirs(work)
    port = free_udp_port()
    peer = await Peer.start(port)
    toml = write_toml(os.path.join(work, "node.toml"), report_period=900, lifetime=86400, jitter=5, rated_w=60,
                      lat=48.85, lon=2.35, tz="CET-1CEST,M3.5.0,M10.5.0/3")
    spec = emulator_spec(os.path.join(work, "flash"), "lamp-m", port, config=toml, speed=SPEED,
                         clock_start="2025-03-01T12:00:00Z", time_valid=True, ack_timeout=50)
    if code.endswith(".romfs"):
        spec_path = emulate.build_command(spec)[0][-1]
        boot = os.path.join(work, "boot.py")
        with open(boot, "w") as f:
            f.write(_ROM_BOOT + _ROM_EMULATOR)
        cmd, env = _rom_cmd(code, boot, f"{heap_k}k", spec_path), dict(os.environ, MICROPYPATH=".frozen")
    else:
        cmd, env = emulate.build_command(spec, f"{heap_k}k", code)
    log_path = os.path.join(work, "node.log")
    log = open(log_path, "ab")
    proc = Proc(cmd, env=env, stdin=subprocess.PIPE, stdout=log, stderr=subprocess.STDOUT, cwd="/")
    why = None
    try:
        t0 = time.monotonic()
        await asyncio.wait_for(peer.registered.wait(), 15)
        sched = [[1, 0, 100], [0, 1350, 40], [0, 0, 0], [0, 300, 40], [2, 0, 0]]
        if await peer.write("/10250/0/2", sched) != aiocoap.CHANGED:
            why = "schedule write refused"
        for _ in range(5):
            await peer.read("/3311/0/5851")
            await peer.read("/3311/0", accept=112)
            await asyncio.sleep(0.5)
        await asyncio.sleep(max(0.0, 24 * 3600 / SPEED - (time.monotonic() - t0)))
        await peer.wait_for(lambda: len(peer.reports) >= 92 or proc.p.poll() is not None, 20)
        if proc.p.poll() is not None:
            why = "exited during the day"
        elif len(peer.reports) < 92:
            why = f"only {len(peer.reports)} reports"
        proc.p.stdin.close()
        if proc.p.wait(timeout=20) != 0 and why is None:
            why = "unclean stop"
    except Exception as e:  # any failure of the run (node dead, no answer) fails the trial
        why = why or f"{type(e).__name__}: {e}"
    finally:
        proc.kill()
        log.close()
        await peer.stop()
    text = open(log_path, errors="replace").read()
    if why is None and ("MemoryError" in text or "Traceback" in text):
        why = "MemoryError" if "MemoryError" in text else "traceback"
    drops = text.count("no memory for a datagram")
    if why is None and drops:  # the node survives these (endpoint.py), but the run was not clean
        why = f"{drops} datagrams dropped for lack of memory"
    m = re.search(r"heap peak (\d+) bytes, after collect (\d+) in use", text)
    mods = re.search(r"modules: (.*)", text)
    return {"ok": why is None, "why": why, "peak": int(m.group(1)) if m else None,
            "live": int(m.group(2)) if m else None, "modules": mods.group(1).split() if mods else None}


def smallest_day_heap(img: str, code_bytes: int, d: str) -> dict:
    """Bisect ``-X heapsize`` (STEP_K resolution) for the 24 h run of ``img`` (a ROMFS image
    or an .mpy directory, see ``_day``)."""
    trials = {}

    def trial(k):
        if k in trials:
            return trials[k]["ok"]
        r = asyncio.run(_day(img, k, os.path.join(d, f"day-{os.path.basename(img)}-{k}k")))
        trials[k] = r
        print(f"  24 h at heapsize={k}k: {'pass' if r['ok'] else r['why']}", file=sys.stderr)
        return r["ok"]

    lo = code_bytes // 1024 + 8  # below this the code alone leaves no room
    hi = lo + 32
    while not trial(hi):
        lo, hi = hi, hi + 32
        if hi > 1024:
            raise RuntimeError(f"24 h run fails even with {lo}k: {trials[lo]!r}")
    if trial(lo):
        hi = lo  # passes already at the low bracket
    while hi - lo > STEP_K:
        mid = (lo + hi) // 2 // STEP_K * STEP_K
        if mid <= lo:
            break
        if trial(mid):
            hi = mid
        else:
            lo = mid
    best = trials[hi]
    return {
        "smallest_heapsize_k": hi,
        "fails_at_k": lo if lo != hi else None,
        "failure_below": trials[lo]["why"] if lo != hi else None,
        "at_smallest_peak_bytes": best["peak"],
        "at_smallest_live_after_collect_bytes": best["live"],
        "live_above_code_bytes": best["live"] - code_bytes if best["live"] else None,
        "trials": {f"{k}k": ("pass" if r["ok"] else r["why"]) for k, r in sorted(trials.items())},
        "modules_loaded": best["modules"],
    }


def run() -> dict:
    from tools.slnode import emulate

    probe = _PROBE % ("", MODULES)
    src = _run_mp(ROOT, probe)
    with tempfile.TemporaryDirectory() as d:
        mpy = _run_mp(emulate.compile_mpy(os.path.join(d, "mpy")), probe)
        img = build_romfs(d)
        rom = _run_rom(img, d, probe)
        stubs = os.path.join(d, "stubs")
        os.makedirs(stubs)
        for name in ("machine", "network"):
            open(os.path.join(stubs, name + ".py"), "w").close()
        esp = _run_rom(img, d, _PROBE % (_STUBS % stubs, MODULES_ESP32))
        rom_size = os.path.getsize(img)
        day = smallest_day_heap(img, rom["total"] + rom["baseline"], d)
        day_mpy = None
        if os.environ.get("NODE_HEAP_MPY_DAY"):  # the .mpy build too (another ~90 s)
            day_mpy = smallest_day_heap(os.path.join(d, "mpy"), mpy["total"] + mpy["baseline"], d)
            day_mpy.pop("modules_loaded")
    loaded = set(day.pop("modules_loaded") or ())
    return {
        "command": "python -m bench node_heap",
        "empty_interpreter_baseline_bytes": src["baseline"],
        "import_from_source_bytes": src["total"],
        "import_from_mpy_bytes": mpy["total"],
        "import_from_romfs_bytes": rom["total"],
        "romfs_image_bytes": rom_size,
        "romfs_vs_mpy": round(rom["total"] / mpy["total"], 3),
        "romfs_new_qstrs": rom["qstrs"],
        "romfs_qstr_pool_bytes": rom["qstr_pool_bytes"],
        "romfs_qstr_string_bytes_in_image_not_heap": rom["qstr_str_bytes"],
        "mpy_qstr_pool_plus_string_bytes": mpy["qstr_pool_bytes"] + mpy["qstr_str_bytes"],
        "modules_romfs": dict(sorted(rom["modules"].items(), key=lambda kv: -kv[1])),
        "esp32_module_set_import_from_romfs_bytes": esp["total"],
        "esp32_module_set_romfs": dict(sorted(esp["modules"].items(), key=lambda kv: -kv[1])),
        "modules_loaded_but_not_measured": sorted(loaded - set(MODULES)),
        "modules_measured_but_not_loaded": sorted(set(MODULES) - loaded - {"asyncio"}),
        "day_24h_romfs": day,
        "day_24h_mpy": day_mpy or "set NODE_HEAP_MPY_DAY=1 to bisect the .mpy build too",
    }


if __name__ == "__main__":
    print(json.dumps(run(), indent=2))
