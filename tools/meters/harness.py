"""Start emulated meters as processes, for tests, benches and the HIL suite.

Works with any process group that has ``start(name, argv, stdout_pipe=True) -> Proc``
(hil_tests.harness.ProcessGroup): the group stops every process by pid. An RTU line is
two processes: ``socat`` making the pty pair (the poller opens ``bus``) and the emulator
serving the other end through the paced relay.
"""

from __future__ import annotations

import os
import selectors
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any


def _wait_line(proc: Any, prefix: str, timeout: float) -> str:
    sel = selectors.DefaultSelector()
    sel.register(proc.popen.stdout, selectors.EVENT_READ)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not sel.select(max(0.0, deadline - time.monotonic())):
            break
        line = proc.popen.stdout.readline().decode(errors="replace")
        if not line:
            break
        if line.startswith(prefix):
            return line.strip()
    raise TimeoutError(f"{proc.name} did not print {prefix!r} in {timeout}s:\n{proc.tail()}")


def meter_argv(model: str = "sdm630", units: str = "1", *, load_w: float = 1000.0,
               control: Path | None = None, state: Path | None = None, speed: float = 1.0,
               extra: list[str] | None = None) -> list[str]:
    """The emulator's command line without the --tcp/--rtu part."""
    argv = [sys.executable, "-m", "tools.meters", "--model", model, "--units", units,
            "--load-w", str(load_w), "--speed", str(speed)]
    if control:
        argv += ["--control", str(control)]
    if state:
        argv += ["--state", str(state)]
    return argv + list(extra or [])


def start_tcp_meter(group: Any, name: str, port: int = 0, timeout: float = 15.0, **kw: Any) -> tuple[Any, int]:
    """Start a TCP emulator; returns (proc, port)."""
    proc, ports = start_tcp_meters(group, name, port=port, timeout=timeout, **kw)
    return proc, ports[0]


def start_tcp_meters(group: Any, name: str, servers: int = 1, port: int = 0, timeout: float = 15.0,
                     **kw: Any) -> tuple[Any, list[int]]:
    """Start one emulator process with `servers` TCP servers; returns (proc, ports)."""
    extra = list(kw.pop("extra", None) or []) + (["--servers", str(servers)] if servers > 1 else [])
    proc = group.start(name, meter_argv(extra=extra, **kw) + ["--tcp", f"127.0.0.1:{port}"], stdout_pipe=True)
    line = _wait_line(proc, "listening tcp", timeout)
    return proc, [int(p) for p in line.rsplit(":", 1)[1].split(",")]


@dataclass
class RtuLine:
    """A paced RTU line: open ``bus`` as the serial device."""

    bus: str
    socat: Any
    meter: Any


def start_rtu_line(group: Any, workdir: Path, name: str = "rtu", baud: int = 9600,
                   parity: str = "N", timeout: float = 15.0, **kw: Any) -> RtuLine:
    """Start socat (pty pair) and an emulator paced at `baud` on its far end."""
    bus, dev = workdir / f"{name}-bus", workdir / f"{name}-dev"
    socat = group.start(f"{name}-socat", ["socat", f"pty,raw,echo=0,link={bus}",
                                          f"pty,raw,echo=0,link={dev}"])
    deadline = time.monotonic() + timeout
    while not (os.path.exists(bus) and os.path.exists(dev)):
        if time.monotonic() > deadline or not socat.alive():
            raise TimeoutError(f"socat made no pty pair:\n{socat.tail()}")
        time.sleep(0.02)
    meter = group.start(f"{name}-meter", meter_argv(**kw) + ["--rtu", str(dev), "--baud", str(baud),
                                                             "--parity", parity], stdout_pipe=True)
    _wait_line(meter, "listening rtu", timeout)
    return RtuLine(str(bus), socat, meter)
