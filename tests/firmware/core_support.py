"""Helpers for the firmware-core tests: run MicroPython scripts, locate tools.

Every process started here is stopped by its own pid (``run_mp`` uses a timeout; ``Proc``
kills in ``__exit__``).
"""

import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
if ROOT not in sys.path:  # firmware/ is not an installed package
    sys.path.insert(0, ROOT)
BIN = os.path.dirname(sys.executable)
MICROPYTHON = os.path.join(BIN, "micropython")
MP_CORE = os.path.join(ROOT, "tests", "firmware", "mp_core")


def mp_env(extra=None):
    env = dict(os.environ)
    env["MICROPYPATH"] = ROOT + ":.frozen"
    if extra:
        env.update(extra)
    return env


def run_mp(script, args=(), timeout=60, heap=None, stdin=None, env=None):
    """Run a MicroPython script (a path, or source text); return CompletedProcess (text)."""
    cmd = [MICROPYTHON]
    if heap:
        cmd += ["-X", "heapsize=" + heap]
    if os.path.exists(script):
        cmd.append(script)
    else:
        cmd += ["-c", script]
    cmd += [str(a) for a in args]
    return subprocess.run(
        cmd, env=mp_env(env), capture_output=True, text=True, timeout=timeout, cwd=ROOT, input=stdin
    )


def check_mp(script, args=(), timeout=60, heap=None, stdin=None, env=None):
    """Run a MicroPython script and assert it exited 0; return its stdout."""
    r = run_mp(script, args, timeout=timeout, heap=heap, stdin=stdin, env=env)
    assert r.returncode == 0, f"micropython failed (rc={r.returncode})\nstdout:\n{r.stdout[-4000:]}\nstderr:\n{r.stderr[-4000:]}"
    return r.stdout


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
