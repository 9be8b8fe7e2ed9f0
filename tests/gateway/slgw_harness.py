"""Start and stop the real `slgw serve` for gateway tests: free loopback ports, a temp store,
readiness by polling /api/health, and a stop by pid (SIGTERM, then SIGKILL) in every case."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
SLGW = str(BIN / "slgw")
AIOCOAP_CLIENT = str(BIN / "aiocoap-client")


def free_port(kind: int = socket.SOCK_STREAM) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class SlgwProcess:
    """One `slgw serve` subprocess. Use as a context manager, or call stop() in a finally."""

    def __init__(self, workdir: Path, *extra: str, store: Path | None = None,
                 coap_port: int | None = None, api_port: int | None = None,
                 env: dict[str, str] | None = None, prefix: list[str] | None = None,
                 security: str | None = "none"):
        self.workdir = Path(workdir)
        self.store = store or self.workdir / "slgw.db"
        self.coap_port = coap_port or free_port(socket.SOCK_DGRAM)
        self.api_port = api_port or free_port()
        self.url = f"http://127.0.0.1:{self.api_port}"
        # tests that are not about security run unprotected (issue 11: OSCORE is the default);
        # security=None leaves it to the config, "oscore" tests keys (tests/gateway/test_oscore_*)
        self.extra = (["--coap-security", security] if security else []) + list(extra)
        self.env = env
        self.prefix = prefix or [SLGW]
        self.proc: subprocess.Popen | None = None
        self.log_path = self.workdir / f"slgw-{self.api_port}.log"

    def args(self) -> list[str]:
        return [*self.prefix, "serve", "--store-path", str(self.store), "--coap-bind", "127.0.0.1",
                "--coap-port", str(self.coap_port), "--api-port", str(self.api_port),
                "--store-aggregate-interval-s", "0.5", *self.extra]

    def start(self, wait: float = 20.0) -> SlgwProcess:
        env = dict(os.environ, **(self.env or {}))
        env.pop("NOTIFY_SOCKET", None) if not (self.env and "NOTIFY_SOCKET" in self.env) else None
        self._log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(self.args(), stdout=self._log, stderr=subprocess.STDOUT,
                                     cwd=self.workdir, env=env)
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"slgw exited {self.proc.returncode}:\n{self.log()}")
            try:
                self.api("GET", "/api/health", timeout=1)
                return self
            except urllib.error.HTTPError:  # it answers (e.g. 401 without the token): ready
                return self
            except OSError:
                time.sleep(0.1)
        raise RuntimeError(f"slgw did not become ready in {wait} s:\n{self.log()}")

    def api(self, method: str, path: str, body: dict | None = None, timeout: float = 30,
            token: str | None = None) -> dict:
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.url + path, data=data, method=method)
        if data:
            req.add_header("Content-Type", "application/json")
        if token:
            req.add_header("Authorization", f"Bearer {token}")
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return json.loads(r.read())

    def cli(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
        return subprocess.run([SLGW, "--url", self.url, *args], capture_output=True, text=True,
                              timeout=timeout, cwd=self.workdir)

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def terminate(self, timeout: float = 20) -> int:
        """SIGTERM and wait (graceful stop); SIGKILL if it does not stop in time."""
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        return self.proc.returncode

    def kill9(self) -> None:
        assert self.proc is not None
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            try:
                self.terminate(10)
            finally:
                if self.proc.poll() is None:
                    self.proc.kill()
                    self.proc.wait(5)
        if getattr(self, "_log", None):
            self._log.close()

    def __enter__(self) -> SlgwProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
