"""`slnode emulate`: run the real node firmware in the MicroPython Unix port.

    slnode emulate --id ID --gateway coap://HOST:PORT --flash DIR [--config node.toml]
                   [--clock-start ISO8601] [--clock-speed N] [--clock-anchor UNIX]
                   [--truth FILE] [--count K] [--time-valid] [--port P] [--heap SIZE]
                   [--mpy] [--ack-timeout MS] [--report-period S] [--truth-period S]
                   [--oscore-keys DIR] [--romfs IMG]

One `micropython` process (the one next to ``sys.executable``, i.e. the venv's) runs
``firmware/emulator.py`` with ``MICROPYPATH`` set to the repository root; ``--count K`` runs K
nodes in it as asyncio tasks, ids ``ID-000`` .. ``ID-<K-1>`` each with its own flash
subdirectory ``DIR/<id>/`` (with K = 1 the id is ID and the flash is DIR itself).

Simulated clock (shared with the gateway): ``sim_unix = clock_start + (real_now - anchor) *
speed``; the anchor defaults to this launcher's start, and is handed to the child so both agree.
The node's RTC is invalid at boot (like an ESP32 after a power loss) until the gateway writes
/3/0/13, unless ``--time-valid``.

Config: with ``--config`` the TOML is validated with firmware/config.py (the node's own
validator; errors exit 2) and written to each node's ``config.json`` with the id and gateway of
the command line. Without it, an existing ``config.json`` in the flash dir is left as it is (so
a corrupt one can be tested: the node falls back to safe defaults and raises configError); a
missing one is created from the defaults.

OSCORE (``--oscore-keys DIR``, SPEC §10): a node whose flash has no ``oscore.json`` gets a fresh
security context there (as ``slnode provision`` makes), and ``DIR/<id>.oscore.json`` (mode 0600)
is written from the flash's key file for ``slgw keys import``. A flash that already holds keys
keeps them (its sequence-number record is on the same flash, so nothing is reused). Without
the option a node runs with whatever its flash holds (no key file: unprotected, said at boot).

Truth (``--truth FILE``): the emulator appends one JSON line per node per report period (and
at exit) with ``id``, ``t`` (the simulated Unix time), ``wh`` (the emulated meter's TRUE
cumulative Wh), ``level`` (the lamp's actual level), ``w``, ``seq`` (last report seq),
``time_valid`` and ``faults``.

Stopping: the MicroPython Unix port has no ``signal`` module, so this launcher turns SIGTERM
(and SIGINT) into closing the child's stdin; the emulator watches stdin through its asyncio
poller, persists its counters and exits 0. If the launcher itself is SIGKILLed, the pipe closes
as well, so no orphan keeps running. SIGKILL of the micropython process is a power cut: a
restart on the same flash directory resumes.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
import tomllib
from datetime import UTC, datetime

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
EXIT_OK, EXIT_FAIL, EXIT_INPUT = 0, 1, 2
RESET_EXIT = 75  # firmware/boot_select.py: the node asked for a reset (--slots)


class EmulateError(Exception):
    """Bad input for slnode emulate (exit 2)."""

    exit_code = EXIT_INPUT


def micropython_path() -> str:
    """The micropython launcher of this venv (next to sys.executable)."""
    return os.path.join(os.path.dirname(sys.executable), "micropython")


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Add the `slnode emulate` options to ``p``."""
    p.add_argument("--id", required=True, help="node id (endpoint name); with --count, the prefix")
    p.add_argument("--gateway", required=True, help="gateway address, coap://HOST:PORT")
    p.add_argument("--flash", required=True, help="directory that plays the node's flash (kept across runs)")
    p.add_argument("--config", help="node.toml to validate and install as config.json")
    p.add_argument("--clock-start", help="simulated time at the anchor, ISO 8601 (default: now)")
    p.add_argument("--clock-speed", type=float, default=1.0, help="simulated seconds per real second")
    p.add_argument("--clock-anchor", type=float, help="real Unix time where the simulated clock starts")
    p.add_argument("--truth", help="append ground-truth JSON lines to this file")
    p.add_argument("--count", type=int, default=1, help="number of nodes in one interpreter")
    p.add_argument("--time-valid", action="store_true", help="start with valid wall-clock time")
    p.add_argument("--port", type=int, default=0, help="UDP port of the first node (default: any)")
    p.add_argument("--heap", help="MicroPython heap size, e.g. 256k (the code alone takes ~150 KB as .mpy)")
    p.add_argument("--mpy", action="store_true",
                   help="run the mpy-cross build of firmware/ and protocol/ (as on the device) instead of the sources")
    p.add_argument("--romfs", metavar="IMG",
                   help="run the code of this ROMFS image (slnode build --romfs), mounted at /rom outside the heap as on an ESP32")
    p.add_argument("--ack-timeout", type=int, default=2000, help="CoAP ACK_TIMEOUT in ms (RFC 7252 default 2000)")
    p.add_argument("--report-period", type=int, help="override the config's report_period (s)")
    p.add_argument("--uart", action="append", default=[],
                   help="serial line (pty) of node i's Modbus meter; repeat for nodes 0, 1, ...")
    p.add_argument("--truth-period", type=float, help="simulated seconds between truth lines (default: the report period)")
    p.add_argument("--slots", action="store_true",
                   help="boot through the boot selector (firmware/boot_select.py, installed as the flash's "
                        "main.py) with two update slots, as a device flashed by slnode does: over-the-air "
                        "updates work and a reset restarts the process (one node only)")
    p.add_argument("--ota-trial", type=float, metavar="S",
                   help="seconds a trial boot has to pass its health check (default 300, docs/ota.md)")
    p.add_argument("--oscore-keys", metavar="DIR",
                   help="give each node OSCORE keys (kept on its flash) and write DIR/<id>.oscore.json for slgw keys import")


def parse_iso(s: str) -> float:
    """ISO 8601 to Unix seconds; a time without a zone is UTC."""
    try:
        d = datetime.fromisoformat(s.replace("Z", "+00:00"))
    except ValueError as e:
        raise EmulateError(f"--clock-start: not an ISO 8601 time: {s!r}") from e
    if d.tzinfo is None:
        d = d.replace(tzinfo=UTC)
    return d.timestamp()


def node_ids(base: str, count: int) -> list[str]:
    if count == 1:
        return [base]
    return [f"{base}-{i:03d}" for i in range(count)]


def _validate_toml(path: str) -> dict:
    sys.path.insert(0, ROOT) if ROOT not in sys.path else None
    from firmware import config

    try:
        with open(path, "rb") as f:
            src = tomllib.load(f)
    except (OSError, tomllib.TOMLDecodeError) as e:
        raise EmulateError(f"--config {path}: {e}") from e
    cfg, errors = config.validate(src)
    if errors:
        raise EmulateError(f"--config {path}: " + "; ".join(errors))
    return cfg


def prepare(args) -> dict:
    """Check the arguments, create the flash dirs and config.json files.

    Returns the JSON-able spec handed to firmware/emulator.py. Raises EmulateError.
    """
    sys.path.insert(0, ROOT) if ROOT not in sys.path else None
    from firmware import config

    if args.count < 1 or args.count > 1000:
        raise EmulateError("--count must be 1..1000")
    if getattr(args, "slots", False) and args.count != 1:
        raise EmulateError("--slots runs one node per process: use --count 1 (and one process per node)")
    if args.clock_speed <= 0:
        raise EmulateError("--clock-speed must be > 0")
    try:
        config.parse_gateway(args.gateway)
    except ValueError as e:
        raise EmulateError(f"--gateway: {e}") from e
    ids = node_ids(args.id, args.count)
    last_truth = _last_truth(args.truth) if args.truth else {}
    for i in ids:
        if not config.valid_id(i):
            raise EmulateError(f"--id: {i!r} is not a valid node id (1-63 of A-Z a-z 0-9 . _ -)")
    base_cfg = _validate_toml(args.config) if args.config else None
    now = time.time()
    anchor = args.clock_anchor if args.clock_anchor is not None else now
    start = parse_iso(args.clock_start) if args.clock_start else anchor
    nodes = []
    used_sids: set[bytes] = set()
    for n, nid in enumerate(ids):
        flash = os.path.abspath(args.flash if args.count == 1 else os.path.join(args.flash, nid))
        os.makedirs(flash, exist_ok=True)
        cpath = os.path.join(flash, "config.json")
        if base_cfg is not None or not os.path.exists(cpath):
            cfg = dict(base_cfg) if base_cfg is not None else config.defaults()
            cfg["id"] = nid
            cfg["gateway"] = args.gateway
            if args.report_period:
                cfg["report_period"] = args.report_period
            tmp = cpath + ".tmp"
            with open(tmp, "w") as f:
                f.write(config.dumps(cfg))
            os.replace(tmp, cpath)
        if getattr(args, "oscore_keys", None):
            _node_keys(flash, nid, args.oscore_keys, used_sids)
        nodes.append({"id": nid, "flash": flash, "port": args.port + n if args.port else 0,
                      "truth_wh": last_truth.get(nid, {}).get("wh", 0.0),
                      "uart": args.uart[n] if n < len(args.uart) else None})
    return {
        "nodes": nodes,
        "gateway": args.gateway,
        "clock_start": start,
        "clock_anchor": anchor,
        "clock_speed": args.clock_speed,
        "time_valid": bool(args.time_valid),
        "truth": os.path.abspath(args.truth) if args.truth else None,
        "ack_timeout_ms": args.ack_timeout,
        "report_period": args.report_period,
        "truth_period": args.truth_period,
        "slots": bool(getattr(args, "slots", False)),
        "ota_trial_s": getattr(args, "ota_trial", None),
    }


def _node_keys(flash: str, nid: str, keys_dir: str, used: set[bytes]) -> None:
    """Keys for one emulated node: the flash's oscore.json (made if absent) and the gateway's
    ``<id>.oscore.json`` beside the others in ``keys_dir`` (0600)."""
    from pathlib import Path

    from tools.slnode import provision

    kpath = os.path.join(flash, "oscore.json")
    if os.path.exists(kpath):
        try:
            with open(kpath) as f:
                node = json.load(f)
            gateway = {"ep": nid, "master_secret_hex": node["ms"], "master_salt_hex": node["salt"],
                       "node_sender_id_hex": node["sid"], "gateway_sender_id_hex": node["rid"],
                       "alg": "AES-CCM-16-64-128", "hkdf": "sha256"}
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise EmulateError(f"{kpath}: not a valid key file ({type(e).__name__}); remove it to make new keys") from e
        used.add(bytes.fromhex(node["sid"]))
    else:
        node, gateway = provision.new_keys(nid, used)
        tmp = kpath + ".tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump(node, f)
        os.replace(tmp, kpath)
    os.makedirs(keys_dir, mode=0o700, exist_ok=True)
    try:
        provision.write_key_file(Path(keys_dir) / f"{nid}.oscore.json", gateway)
    except provision.ProvisionError as e:
        raise EmulateError(str(e)) from e


def _last_truth(path: str) -> dict:
    """The last truth line of each node id in ``path``: after a SIGKILL (a power cut) the
    emulated meter's register resumes from what it had counted (the lamp is dark while the
    process is dead, so nothing is consumed in between)."""
    out: dict = {}
    try:
        with open(path) as f:
            for line in f:
                try:
                    d = json.loads(line)
                except ValueError:
                    continue  # a line torn by the kill
                if isinstance(d, dict) and "id" in d:
                    out[d["id"]] = d
    except OSError:
        pass
    return out


def build_command(spec: dict, heap: str | None = None, mpy_dir: str | None = None,
                  romfs: str | None = None) -> tuple[list[str], dict]:
    """The micropython command line and environment that run ``spec`` (for tests too).

    ``mpy_dir``: a directory holding firmware/ and protocol/ compiled by mpy-cross (as on the
    device); the emulator then runs from it instead of the sources, whatever the cwd.
    ``romfs``: a ROMFS image (tools/slnode/romfs.py) the emulator runs from instead; the process
    prints where each firmware/protocol module came from at exit (romfs.loaded_from).
    """
    cmd = [micropython_path()]
    if heap:
        cmd += ["-X", "heapsize=" + heap]
    # The spec goes in a file: this micropython build aborts ("FATAL: uncaught NLR") on any
    # command-line argument longer than about 256 bytes.
    spec_path = os.path.join(spec["nodes"][0]["flash"] if len(spec["nodes"]) == 1 else
                             os.path.dirname(spec["nodes"][0]["flash"]), "emulator-spec.json")
    with open(spec_path, "w") as f:
        json.dump(spec, f)
    if romfs:
        from tools.slnode import romfs as romfsmod

        return romfsmod.command(os.path.abspath(romfs), romfsmod.EMULATOR, os.path.dirname(spec_path),
                                heap or "1m", spec_path)
    env = dict(os.environ)
    if spec.get("slots"):
        # the device's layout: /main.py is the boot selector; the factory application is what
        # MICROPYPATH holds (the sources, or the mpy build); updates land in <flash>/app/{a,b}
        flash = spec["nodes"][0]["flash"]
        main_py = os.path.join(flash, "main.py")
        with open(os.path.join(ROOT, "firmware", "boot_select.py"), "rb") as f:
            data = f.read()
        with open(main_py + ".tmp", "wb") as f:
            f.write(data)
        os.replace(main_py + ".tmp", main_py)
        cmd += [main_py, spec_path]
        env["MICROPYPATH"] = (mpy_dir or ROOT) + ":.frozen"
    elif mpy_dir:
        # The Unix port puts '' (the cwd) first on sys.path: from a cwd holding the sources
        # (the repository root), firmware/*.py would shadow the .mpy build and be compiled
        # on import (more heap, not what runs on the device). Drop it, whatever the cwd.
        cmd += ["-c", "import sys;sys.path.remove('');from firmware.emulator import main;main()", spec_path]
        env["MICROPYPATH"] = mpy_dir + ":.frozen"
    else:
        cmd += [os.path.join(ROOT, "firmware", "emulator.py"), spec_path]
        env["MICROPYPATH"] = ROOT + ":.frozen"
    return cmd, env


def compile_mpy(out_dir: str) -> str:
    """Compile firmware/ and protocol/ with mpy-cross (bytecode for this port) into out_dir."""
    mpy_cross = os.path.join(os.path.dirname(sys.executable), "mpy-cross")
    for pkg in ("firmware", "firmware/hal", "protocol"):
        src = os.path.join(ROOT, pkg)
        dst = os.path.join(out_dir, pkg)
        os.makedirs(dst, exist_ok=True)
        for name in sorted(os.listdir(src)):
            if name.endswith(".py"):
                subprocess.run([mpy_cross, "-o", os.path.join(dst, name[:-3] + ".mpy"), os.path.join(src, name)],
                               check=True, cwd=ROOT)
    return out_dir


def run(args) -> int:
    """Run the emulator until SIGTERM/SIGINT; returns the exit status."""
    spec = prepare(args)
    mpy_dir = compile_mpy(os.path.join(os.path.abspath(args.flash), ".mpy-build")) if args.mpy else None
    heap = args.heap
    if heap is None and args.count > 20:
        # ~12 KB per node plus ~150 KB of code (docs/performance.md), with room for garbage
        heap = f"{512 + 32 * args.count}k"
    cmd, env = build_command(spec, heap, mpy_dir, getattr(args, "romfs", None))
    # Own session: a terminal's Ctrl-C or a process-group SIGTERM (timeout, systemd) reaches
    # only this launcher, which stops the child cleanly through its stdin.
    child = subprocess.Popen(cmd, env=env, stdin=subprocess.PIPE, cwd=ROOT, start_new_session=True)
    stopping: list[float] = []

    def stop(signum, frame):
        stopping.append(time.time())
        try:
            child.stdin.close()  # the emulator's cue to persist and exit
        except OSError:
            pass

    old = {s: signal.signal(s, stop) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        while True:
            try:
                rc = child.wait(timeout=0.5)
                if rc == RESET_EXIT and spec.get("slots") and not stopping:
                    # the node reset itself (an update, a rollback, a crash): boot it again
                    child = subprocess.Popen(cmd, env=env, stdin=subprocess.PIPE, cwd=ROOT, start_new_session=True)
                    continue
                break
            except subprocess.TimeoutExpired:
                if stopping and time.time() - stopping[0] > 15:
                    child.kill()  # the child did not stop in time
    finally:
        for s, h in old.items():
            signal.signal(s, h)
        if child.poll() is None:
            child.kill()
            child.wait()
    return rc if rc >= 0 else EXIT_FAIL


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="slnode emulate", description=__doc__.split("\n\n")[0])
    add_arguments(p)
    args = p.parse_args(argv)
    try:
        return run(args)
    except EmulateError as e:
        print(f"slnode emulate: error: {e}", file=sys.stderr)
        return e.exit_code


if __name__ == "__main__":
    sys.exit(main())
