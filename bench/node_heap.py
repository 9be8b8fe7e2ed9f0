"""Heap the node firmware's code takes once imported, three ways, against an empty baseline.

    python -m bench node_heap
    NODE_HEAP_MICROPYTHON32=/path/to/micropython python -m bench node_heap   # + a 32-bit interpreter

MicroPython keeps module objects (globals dicts, functions, classes, interned names) in the
heap even when the bytecode stays in flash, so "fits in 64 KB" depends on how code is stored:
  * source .py files (compiled at import: what `slnode emulate` does by default),
  * the .mpy build that `slnode build` ships (bytecode copied into the heap at import),
  * the ROMFS image that `slnode build --romfs` ships (tools/slnode/romfs.py), mounted with
    ``vfs.VfsRom`` over a buffer outside the MicroPython heap, the way an ESP32 maps its romfs
    partition: bytecode executes in place.
Each figure is ``gc.mem_alloc()`` after ``gc.collect()`` once every module a node imports is
loaded, minus the same figure with nothing imported (the baseline of the same run). The
per-module split of the ROMFS run shows where the footprint is. Every probe prints the file
each module came from and the run fails if one did not come from the build it measures (the
Unix port puts '' (the cwd) first on sys.path, where sources would shadow a build).

Then the smallest ``-X heapsize`` that carries a node through 24 simulated hours, from the
ROMFS image: the run of tests/firmware/test_node_memory.py (7200x, 15-min reports delivered to
an aiocoap LwM2M peer, a sun-based night programme written over CoAP, Reads) repeated in a
bisection over the heap size (4 KB steps; about a minute). A run passes when the emulator lives
through the day without MemoryError or traceback and without a datagram dropped for lack of
memory (firmware/endpoint.py survives those, but it is not a clean run), the peer got every
report, and it stops cleanly. ``NODE_HEAP_MPY_DAY=1`` bisects the .mpy build as well. The
modules that run really loaded are checked against ``MODULES`` (so the import figures above
count exactly the code a node uses) and against the image (each one from /rom).

All of that runs on the venv's interpreter, the MicroPython Unix port from PyPI: 64-bit, where a
heap block is 32 B and a pointer 8 B (an ESP32: 16 B and 4 B). ``NODE_HEAP_MICROPYTHON32``
names a 32-bit `micropython` binary (the Unix port built with ``MICROPY_FORCE_32BIT=1``; neither
PyPI nor Debian has one, so this is for a machine where someone built it): the import figures of
both builds and the 24 h bisection of the ROMFS build are then measured on it too. A separate
binary cannot see this process's buffer, so there the image is read into one bytearray before
the baseline (subtracted from the import figure) and the bisection adds its size to the heap
(reported without it): a close stand-in for a partition outside the heap (the heap's
allocation tables grow by ~2 % of the image's size). Without the variable the result says that
no 32-bit interpreter was measured. CI does not run this bench.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tools.slnode import build, emulate, romfs

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
    "firmware.boot_select", "firmware.ota", "firmware.node", "firmware.emulator",
]
# What an ESP32 node loads instead (firmware/main.py: the ESP32 HAL and the USB console, no
# emulator): measured here with empty stand-ins for the built-in ``machine`` and ``network``
# modules, imported before the baseline (their attributes are only touched when the HAL is built).
MODULES_ESP32 = [m for m in MODULES if m not in ("firmware.hal.emulated", "firmware.emulator")] + [
    "firmware.hal.esp32", "firmware.console", "firmware.main"]

# After each import: "@name bytes" and the qstr pool line of micropython.qstr_info(); at the end,
# where each module came from ("@file name path"), once the measurements are taken.
_PROBE = """
import gc, micropython, sys
if '' in sys.path:
    sys.path.remove('')
%s
gc.collect()
print("@baseline", gc.mem_alloc())
micropython.qstr_info()
for name in %r:
    __import__(name)
    gc.collect()
    print("@" + name, gc.mem_alloc())
    micropython.qstr_info()
for name in %r:
    print("@file", name, getattr(sys.modules[name], "__file__", "-"))
"""
_STUBS = "sys.path.append(%r)\nimport machine, network"

# For a separate micropython binary (NODE_HEAP_MICROPYTHON32): the ROMFS image read into one
# bytearray of the heap (before the baseline), mounted at /rom; argv: script, image, -, rest.
_INHEAP_BOOT = """
import sys, os, vfs
_f = open(sys.argv[1], "rb")
_b = bytearray(os.stat(sys.argv[1])[6])
_f.readinto(_b)
_f.close()
vfs.mount(vfs.VfsRom(_b), "/rom")
del _b, _f
sys.path[:] = ["/rom", ".frozen"]
"""
ENV_32 = "NODE_HEAP_MICROPYTHON32"


def probe(modules: list[str], prologue: str = "") -> str:
    return _PROBE % (prologue, modules, [m for m in modules if m.split(".")[0] in ("firmware", "protocol")])


def _parse_probe(text: str, origin: str) -> dict:
    """{"baseline", "total", "qstrs", "qstr_pool_bytes", "qstr_str_bytes", "modules": {name: bytes}}.
    Raises RuntimeError if a firmware/protocol module was not loaded from ``origin`` (a path
    prefix) as an .mpy file (or as .py when ``origin`` is the source tree)."""
    rows = []
    for name, val, q in re.findall(r"@(\S+) (\d+)\nqstr pool: (.*)", text):
        rows.append((name, int(val), {k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", q)}))
    if not rows:
        raise RuntimeError(text[-2000:])
    files = dict(re.findall(r"@file (\S+) (\S+)", text))
    ext = ".py" if origin == ROOT else ".mpy"
    wrong = {m: f for m, f in files.items() if not (f.startswith(origin + "/") and f.endswith(ext))}
    if wrong or not files:
        raise RuntimeError(f"measured the build in {origin} but these modules came from elsewhere: {wrong}")
    base, last = rows[0], rows[-1]
    mods = {rows[i][0]: rows[i][1] - rows[i - 1][1] for i in range(1, len(rows))}
    q0, q1 = base[2], last[2]
    return {"baseline": base[1], "total": last[1] - base[1], "modules": mods,
            "qstrs": q1["n_qstr"] - q0["n_qstr"],
            "qstr_pool_bytes": (q1["n_total_bytes"] - q1["n_str_data_bytes"]) - (q0["n_total_bytes"] - q0["n_str_data_bytes"]),
            "qstr_str_bytes": q1["n_str_data_bytes"] - q0["n_str_data_bytes"]}


def _run_mp(path_env: str, script: str, binary: str | None = None) -> dict:
    env = dict(os.environ, MICROPYPATH=path_env + ":.frozen")
    r = subprocess.run([binary or os.path.join(BIN, "micropython"), "-X", "heapsize=1m", "-c", script], env=env,
                       capture_output=True, text=True, timeout=60, cwd="/")
    if r.returncode:
        raise RuntimeError(r.stderr)
    return _parse_probe(r.stdout, path_env)


def _run_rom(img: str, d: str, script: str) -> dict:
    cmd, env = romfs.command(img, script, d, "1m")
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=60, cwd=ROOT, env=env)
    if r.returncode:
        raise RuntimeError(r.stderr + r.stdout[-2000:])
    return _parse_probe(r.stdout, "/rom")


def _run_rom_inheap(binary: str, img: str, d: str, script: str) -> dict:
    boot = os.path.join(d, "inheap-probe.py")
    with open(boot, "w") as f:
        f.write(_INHEAP_BOOT + script)
    r = subprocess.run([binary, "-X", "heapsize=1m", boot, img, "-"], capture_output=True, text=True, timeout=60,
                       cwd="/", env=dict(os.environ, MICROPYPATH=".frozen"))
    if r.returncode:
        raise RuntimeError(r.stderr + r.stdout[-2000:])
    return _parse_probe(r.stdout, "/rom")


def build_images(d: str) -> tuple[str, str]:
    """The two shipped builds in ``d``: (the .mpy build directory of `slnode build`, the ROMFS
    image of `slnode build --romfs`)."""
    mpy = os.path.join(d, "mpy")
    build.build(Path(mpy), quiet=True)
    rom = romfs.build(Path(d) / "romfs", quiet=True)
    return mpy, str(rom.out / rom.manifest["romfs"]["image"])


async def _day(command, heap_k: int, work: str, grace: float = 20) -> dict:
    """One node, ``heap_k`` KB of heap, through 24 simulated hours (see the module docstring).
    ``command(spec, heap_k)`` gives the (cmd, env) that run the emulator; ``grace``: real seconds
    after the day's end for the last reports. Returns {"ok", "why", "peak", "live", "modules"}
    (modules: {name: file} of ROMFS runs, else None)."""
    sys.path.insert(0, os.path.join(ROOT, "tests", "firmware"))
    import aiocoap
    from app_support import Proc, emulator_spec, free_udp_port, write_toml
    from lwm2m_peer import Peer

    os.makedirs(work)
    port = free_udp_port()
    peer = await Peer.start(port)
    toml = write_toml(os.path.join(work, "node.toml"), report_period=900, lifetime=86400, jitter=5, rated_w=60,
                      lat=48.85, lon=2.35, tz="CET-1CEST,M3.5.0,M10.5.0/3")
    spec = emulator_spec(os.path.join(work, "flash"), "lamp-m", port, config=toml, speed=SPEED,
                         clock_start="2025-03-01T12:00:00Z", time_valid=True, ack_timeout=50)
    cmd, env = command(spec, heap_k)
    log_path = os.path.join(work, "node.log")
    log = open(log_path, "ab")
    proc = Proc(cmd, env=env, stdin=subprocess.PIPE, stdout=log, stderr=subprocess.STDOUT, cwd="/")
    why = None
    try:
        t0 = time.monotonic()
        await asyncio.wait_for(peer.registered.wait(), 15 + grace)
        sched = [[1, 0, 100], [0, 1350, 40], [0, 0, 0], [0, 300, 40], [2, 0, 0]]
        if await peer.write("/10250/0/2", sched) != aiocoap.CHANGED:
            why = "schedule write refused"
        for _ in range(5):
            await peer.read("/3311/0/5851")
            await peer.read("/3311/0", accept=112)
            await asyncio.sleep(0.5)
        await asyncio.sleep(max(0.0, 24 * 3600 / SPEED - (time.monotonic() - t0)))
        await peer.wait_for(lambda: len(peer.reports) >= 92 or proc.p.poll() is not None, grace)
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
    return {"ok": why is None, "why": why, "peak": int(m.group(1)) if m else None,
            "live": int(m.group(2)) if m else None, "modules": romfs.loaded_from(text) or None}


def smallest_day_heap(label: str, command, code_bytes: int, d: str) -> dict:
    """Bisect ``-X heapsize`` (STEP_K resolution) for the 24 h run started by ``command``
    (see ``_day``); ``code_bytes`` (the import footprint) sets the first bracket."""
    trials = {}

    def trial(k):
        if k in trials:
            return trials[k]["ok"]
        r = asyncio.run(_day(command, k, os.path.join(d, f"day-{label}-{k}k")))
        trials[k] = r
        print(f"  {label}: 24 h at heapsize={k}k: {'pass' if r['ok'] else r['why']}", file=sys.stderr)
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
    mods = best["modules"]
    if mods is not None:
        wrong = {m: f for m, f in mods.items() if not (f.startswith("/rom/") and f.endswith(".mpy"))}
        if wrong:
            raise RuntimeError(f"the ROMFS day ran modules from outside the image: {wrong}")
    return {
        "smallest_heapsize_k": hi,
        "fails_at_k": lo if lo != hi else None,
        "failure_below": trials[lo]["why"] if lo != hi else None,
        "at_smallest_peak_bytes": best["peak"],
        "at_smallest_live_after_collect_bytes": best["live"],
        "live_above_code_bytes": best["live"] - code_bytes if best["live"] else None,
        "trials": {f"{k}k": ("pass" if r["ok"] else r["why"]) for k, r in sorted(trials.items())},
        "modules_loaded": sorted(mods) if mods is not None else None,
    }


def _romfs_cmd(img: str):
    return lambda spec, k: emulate.build_command(spec, f"{k}k", romfs=img)


def _mpy_cmd(mpy_dir: str):
    return lambda spec, k: emulate.build_command(spec, f"{k}k", mpy_dir=mpy_dir)


def _inheap_cmd(binary: str, img: str, work: str):
    """The emulator from ``img`` read into the heap of ``binary``: heapsize k + the image."""
    extra_k = os.path.getsize(img) // 1024 + 1
    boot = os.path.join(work, "inheap-emulator.py")
    with open(boot, "w") as f:
        f.write(_INHEAP_BOOT + romfs.EMULATOR)

    def command(spec, k):
        cmd, env = emulate.build_command(spec, f"{k}k", romfs=img)  # writes the spec file
        spec_path = cmd[-1]
        return [binary, "-X", f"heapsize={k + extra_k}k", boot, img, "-", spec_path], dict(os.environ, MICROPYPATH=".frozen")

    return command


def interpreter_word_bits(binary: str) -> int:
    r = subprocess.run([binary, "-c", "import sys\nprint(sys.maxsize)"], capture_output=True, text=True, timeout=30,
                       cwd="/")
    if r.returncode:
        raise RuntimeError(f"{binary} did not run: {r.stderr.strip()}")
    return int(r.stdout.strip()).bit_length() + 1


def measure_other(binary: str, mpy: str, img: str, d: str, day: bool = True) -> dict:
    """Import figures of both shipped builds, and the ROMFS 24 h bisection, on ``binary``."""
    bits = interpreter_word_bits(binary)
    p = probe(MODULES)
    m = _run_mp(mpy, p, binary)
    r = _run_rom_inheap(binary, img, d, p)
    out = {
        "binary": binary,
        "word_bits": bits,
        "empty_interpreter_baseline_bytes": m["baseline"],
        "import_from_mpy_bytes": m["total"],
        "import_from_romfs_bytes": r["total"],
        "romfs_vs_mpy": round(r["total"] / m["total"], 3),
        "modules_romfs": dict(sorted(r["modules"].items(), key=lambda kv: -kv[1])),
        "romfs_note": "image read into one heap bytearray before the baseline (not counted)",
    }
    if day:
        work = os.path.join(d, f"w{bits}")
        os.makedirs(work, exist_ok=True)
        res = smallest_day_heap(f"romfs-{bits}bit", _inheap_cmd(binary, img, work), r["total"] + r["baseline"], d)
        res.pop("modules_loaded")
        out["day_24h_romfs"] = res
    return out


def interpreter_32(mpy_dir: str, img: str, d: str, day: bool = True) -> dict | str:
    """measure_other() on the binary named by NODE_HEAP_MICROPYTHON32, or why nothing was measured."""
    binary = os.environ.get(ENV_32)
    if not binary:
        return (f"not measured: no 32-bit interpreter here. Set {ENV_32} to a `micropython` built with "
                "MICROPY_FORCE_32BIT=1 (the Unix port's C sources; not on PyPI or Debian)")
    bits = interpreter_word_bits(binary)
    if bits != 32:
        return f"not measured: {binary} is a {bits}-bit interpreter, not 32-bit"
    return measure_other(binary, mpy_dir, img, d, day)


def run() -> dict:
    src = _run_mp(ROOT, probe(MODULES))
    with tempfile.TemporaryDirectory() as d:
        mpy_dir, img = build_images(d)
        mpy = _run_mp(mpy_dir, probe(MODULES))
        rom = _run_rom(img, d, probe(MODULES))
        stubs = os.path.join(d, "stubs")
        os.makedirs(stubs)
        for name in ("machine", "network"):
            open(os.path.join(stubs, name + ".py"), "w").close()
        esp = _run_rom(img, d, probe(MODULES_ESP32, _STUBS % stubs))
        rom_size = os.path.getsize(img)
        day = smallest_day_heap("romfs", _romfs_cmd(img), rom["total"] + rom["baseline"], d)
        day_mpy = None
        if os.environ.get("NODE_HEAP_MPY_DAY"):  # the .mpy build too (another ~90 s)
            day_mpy = smallest_day_heap("mpy", _mpy_cmd(mpy_dir), mpy["total"] + mpy["baseline"], d)
            day_mpy.pop("modules_loaded")
        other = interpreter_32(mpy_dir, img, d)
    loaded = set(day.pop("modules_loaded") or ()) - {"firmware", "firmware.hal", "protocol"}  # packages
    return {
        "command": "python -m bench node_heap",
        "interpreter": "venv micropython (Unix port from PyPI), 64-bit",
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
        "interpreter_32bit": other,
    }


if __name__ == "__main__":
    print(json.dumps(run(), indent=2))
