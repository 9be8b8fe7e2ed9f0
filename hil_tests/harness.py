"""Process harness for the hardware-in-the-loop suite: every process it starts, it stops.

Processes are started in their own session (so a SIGKILL to the group takes their children
too), their output goes to log files in the test's temporary directory, and `stop_all()`
sends SIGTERM, waits, then SIGKILLs whatever is left, by process id. The pytest fixtures in
conftest.py call `stop_all()` in a finalizer, so a failing test stops them too.
"""

from __future__ import annotations

import json
import socket

from tools.procs import BIN, ROOT, Proc, ProcessGroup, free_port, wait_for  # noqa: F401


def read_json_line(proc: Proc, timeout: float = 10.0) -> dict:
    """Read the first JSON line a process prints on its piped stdout."""
    import selectors

    sel = selectors.DefaultSelector()
    sel.register(proc.popen.stdout, selectors.EVENT_READ)
    if not sel.select(timeout):
        raise TimeoutError(f"{proc.name} printed nothing in {timeout}s:\n{proc.tail()}")
    return json.loads(proc.popen.stdout.readline())


def control(port: int, cmd: dict, timeout: float = 2.0) -> dict:
    """Send one command to a relay's control port and return its answer."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(timeout)
        s.sendto(json.dumps(cmd).encode(), ("127.0.0.1", port))
        return json.loads(s.recv(65536))
