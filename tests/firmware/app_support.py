"""Helpers for the node-application tests: run scripts under the real `micropython`.

Every process started here is stopped by its own pid (see :class:`Proc`).
"""

import os
import socket
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
if ROOT not in sys.path:  # firmware/ is not an installed package
    sys.path.insert(0, ROOT)
MICROPYTHON = os.path.join(os.path.dirname(sys.executable), "micropython")
MP_APP = os.path.join(ROOT, "tests", "firmware", "mp_app")


def mp_env():
    env = dict(os.environ)
    env["MICROPYPATH"] = ROOT + ":.frozen"
    return env


def run_mp(script, args=(), timeout=60, heap=None):
    """Run a MicroPython script (path or source text); return CompletedProcess (text)."""
    cmd = [MICROPYTHON]
    if heap:
        cmd += ["-X", "heapsize=" + heap]
    if os.path.exists(script):
        cmd.append(script)
    else:
        cmd += ["-c", script]
    cmd += list(args)
    return subprocess.run(cmd, env=mp_env(), capture_output=True, text=True, timeout=timeout, cwd=ROOT)


def free_udp_port():
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


class Proc:
    """A child process that is always killed by pid on exit of the with-block."""

    def __init__(self, cmd, **kw):
        kw.setdefault("cwd", ROOT)
        self.p = subprocess.Popen(cmd, **kw)
        self.pid = self.p.pid

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.kill()

    def kill(self):
        if self.p.poll() is None:
            try:
                os.kill(self.pid, 9)
            except ProcessLookupError:
                pass
        self.p.wait(timeout=10)
