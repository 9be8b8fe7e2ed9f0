"""Start and stop child processes by their own process id: the demo and the HIL suite use it.

Processes are started in their own session (so a SIGKILL to the group takes their children
too), their output goes to log files in a work directory, and `stop_all()` sends SIGTERM,
waits, then SIGKILLs whatever is left.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def free_port(kind: int = socket.SOCK_DGRAM) -> int:
    """A port that is free on 127.0.0.1 right now (UDP by default)."""
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Proc:
    """One started process, its log, and how to stop it."""

    def __init__(self, name: str, popen: subprocess.Popen, log: Path) -> None:
        self.name = name
        self.popen = popen
        self.log = log

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def kill(self) -> None:
        """SIGKILL the process (a power cut), and reap it."""
        if self.alive():
            try:
                os.killpg(self.popen.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.popen.wait(timeout=10)

    def terminate(self, timeout: float = 10.0) -> int | None:
        """SIGTERM, then SIGKILL after `timeout`; returns the exit code."""
        if self.alive():
            try:
                os.killpg(self.popen.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                self.popen.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        return self.popen.returncode

    def tail(self, n: int = 40) -> str:
        try:
            return "".join(self.log.read_text(errors="replace").splitlines(True)[-n:])
        except OSError:
            return ""


class ProcessGroup:
    """Starts processes for one test and stops all of them."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.procs: list[Proc] = []

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
        env["PYTHONPATH"] = str(ROOT)
        env["PYTHONUNBUFFERED"] = "1"
        return env

    def start(self, name: str, argv: list[str], *, stdout_pipe: bool = False) -> Proc:
        log = self.workdir / f"{name}.log"
        logf = open(log, "ab")
        popen = subprocess.Popen(
            argv, cwd=self.workdir, env=self.env(), start_new_session=True,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE if stdout_pipe else logf, stderr=logf,
        )
        logf.close()
        proc = Proc(name, popen, log)
        self.procs.append(proc)
        return proc

    def stop_all(self) -> None:
        for proc in reversed(self.procs):
            proc.terminate(timeout=5)

    def dump_logs(self) -> str:
        return "\n".join(f"--- {p.name} (pid {p.pid}, rc {p.popen.returncode})\n{p.tail()}" for p in self.procs)


def wait_for(predicate, timeout: float, interval: float = 0.2, what: str = "condition"):
    """Poll `predicate` until it returns a truthy value; raise TimeoutError naming `what`."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what} (last: {last!r})")


