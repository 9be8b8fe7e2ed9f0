"""Helpers for the node-application tests: run scripts under the real `micropython`.

Every process started here is stopped by its own pid (see :class:`Proc`).
"""

import os
import socket
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
# one MicroPython runner and one pid-killing Proc for both halves of the firmware tests
from core_support import MICROPYTHON, ROOT, Proc, mp_env, run_mp  # noqa: E402, F401

MP_APP = os.path.join(ROOT, "tests", "firmware", "mp_app")


def free_udp_port():
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def emulator_spec(flash, node_id="n1", gateway_port=5683, count=1, config=None, truth=None, speed=1.0,
                  clock_start=None, time_valid=False, ack_timeout=2000, report_period=None, port=0,
                  truth_period=None):
    """Build the emulator spec the way `slnode emulate` does (tools/slnode/emulate.prepare)."""
    import argparse

    from tools.slnode import emulate

    p = argparse.ArgumentParser()
    emulate.add_arguments(p)
    argv = ["--id", node_id, "--gateway", f"coap://127.0.0.1:{gateway_port}", "--flash", str(flash),
            "--count", str(count), "--clock-speed", str(speed), "--ack-timeout", str(ack_timeout),
            "--port", str(port)]
    if config:
        argv += ["--config", str(config)]
    if truth:
        argv += ["--truth", str(truth)]
    if clock_start:
        argv += ["--clock-start", clock_start]
    if time_valid:
        argv.append("--time-valid")
    if report_period:
        argv += ["--report-period", str(report_period)]
    if truth_period:
        argv += ["--truth-period", str(truth_period)]
    return emulate.prepare(p.parse_args(argv))


def start_emulator(spec, log_path, heap=None, mpy_dir=None):
    """Start firmware/emulator.py in micropython for ``spec``; returns a Proc (killed by pid)."""
    from tools.slnode import emulate

    cmd, env = emulate.build_command(spec, heap, mpy_dir)
    log = open(log_path, "ab")
    return Proc(cmd, env=env, stdin=subprocess.PIPE, stdout=log, stderr=subprocess.STDOUT)


def stop_emulator(proc, timeout=20):
    """Clean stop (what the launcher does on SIGTERM): close stdin, wait. Returns the exit code."""
    proc.p.stdin.close()
    return proc.p.wait(timeout=timeout)


def read_truth(path):
    import json

    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [json.loads(x) for x in f if x.strip()]


def write_toml(path, **kv):
    """Write a flat node.toml (plus an optional meter table given as a dict)."""
    lines = []
    meter = kv.pop("meter", None)
    for k, v in kv.items():
        if isinstance(v, str):
            lines.append(f'{k} = "{v}"')
        elif isinstance(v, bool):
            lines.append(f"{k} = {'true' if v else 'false'}")
        else:
            lines.append(f"{k} = {v}")
    if meter:
        lines.append("[meter]")
        for k, v in meter.items():
            lines.append(f'{k} = "{v}"' if isinstance(v, str) else f"{k} = {v}")
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")
    return path


def wait_until(cond, timeout, what):
    """Poll ``cond`` every 0.1 s until it returns a true value (returned) or ``timeout`` s pass."""
    end = time.monotonic() + timeout
    while True:
        v = cond()
        if v:
            return v
        if time.monotonic() > end:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)
