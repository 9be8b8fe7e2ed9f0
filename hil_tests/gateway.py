"""The real ``slgw serve`` as a HIL process: simulated clock, temp SQLite store, free ports.

    gw = Gateway(procs, workdir, clock, extra_toml="[[modbus.meters]] ...").start()
    gw.cli("nodes")                 # -> parsed JSON of `slgw --url ... --json nodes`
    gw.kill(); gw.restart()         # SIGKILL (a crash), then the same store and ports again

Security: ``security="oscore"`` (the default) runs the gateway's secure default with its keys in
``gw.keys_dir`` (the town imports its nodes' keys there: hil_tests/town.py ``keys_dir``);
``"none"`` runs unprotected (s8, whose rogue endpoint needs it).

Readiness: ``start()`` returns once ``GET /api/health`` answers. The CoAP port stays the same
across restarts, so nodes (and the relay) keep their gateway address.
"""

from __future__ import annotations

import json
import socket
import sqlite3
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

from hil_tests.harness import BIN, Proc, ProcessGroup, free_port
from hil_tests.sim import SimClock

SLGW = str(BIN / "slgw")


class CliError(AssertionError):
    """`slgw` exited non-zero; carries the exit code and the JSON error document."""

    def __init__(self, argv: list[str], rc: int, out: str, err: str) -> None:
        super().__init__(f"{' '.join(argv)} exited {rc}:\n{out}\n{err}")
        self.rc = rc
        self.out = out
        self.err = err


class Gateway:
    """One gateway service started in a ProcessGroup (stopped by the group's finalizer)."""

    def __init__(self, procs: ProcessGroup, workdir: Path, clock: SimClock, *,
                 extra_toml: str = "", args: tuple[str, ...] = (), aggregate_s: float = 0.5,
                 security: str = "oscore") -> None:
        self.procs = procs
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.clock = clock
        self.store = self.workdir / "slgw.db"
        self.coap_port = free_port()
        self.api_port = free_port(socket.SOCK_STREAM)
        self.url = f"http://127.0.0.1:{self.api_port}"
        self.config = self.workdir / "gateway.toml"
        self.config.write_text(extra_toml)
        self.args = list(args)
        self.aggregate_s = aggregate_s
        self.security = security
        self.keys_dir = self.workdir / "keys"
        self.proc: Proc | None = None
        self.starts = 0

    @property
    def coap_url(self) -> str:
        return f"coap://127.0.0.1:{self.coap_port}"

    def argv(self) -> list[str]:
        return [SLGW, "serve", "--config", str(self.config), "--store-path", str(self.store),
                "--coap-bind", "127.0.0.1", "--coap-port", str(self.coap_port),
                "--api-bind", "127.0.0.1", "--api-port", str(self.api_port),
                "--store-aggregate-interval-s", str(self.aggregate_s),
                "--coap-security", self.security,
                *(["--coap-keys-dir", str(self.keys_dir)] if self.security == "oscore" else []),
                *self.clock.flags(), *self.args]

    def start(self, timeout: float = 30.0) -> Gateway:
        """Start the service and wait until its API answers."""
        self.starts += 1
        self.proc = self.procs.start(f"slgw-{self.starts}", self.argv())
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.proc.alive():
                raise RuntimeError(f"slgw exited {self.proc.popen.returncode}:\n{self.proc.tail()}")
            try:
                with urllib.request.urlopen(self.url + "/api/health", timeout=1):
                    return self
            except urllib.error.HTTPError:
                return self  # it answers
            except OSError:
                time.sleep(0.1)
        raise TimeoutError(f"slgw did not answer on {self.url} within {timeout}s:\n{self.proc.tail()}")

    def kill(self) -> None:
        """SIGKILL the service (a crash or a power cut of the Pi)."""
        assert self.proc is not None
        self.proc.kill()

    def stop(self) -> int | None:
        """SIGTERM (graceful), returns the exit code."""
        assert self.proc is not None
        return self.proc.terminate()

    def restart(self, timeout: float = 30.0) -> Gateway:
        """Start again on the same store and ports (after kill() or stop())."""
        if self.proc is not None and self.proc.alive():
            self.proc.terminate()
        return self.start(timeout)

    def cli(self, *args: str, check: bool = True, timeout: float = 60.0) -> dict:
        """Run ``slgw --url URL --json ARGS`` and return its JSON document.

        With ``check`` a non-zero exit raises CliError (its ``rc`` is the exit code).
        """
        argv = [SLGW, "--url", self.url, "--json", *args]
        r = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env=self.procs.env())
        if check and r.returncode != 0:
            raise CliError(argv, r.returncode, r.stdout, r.stderr)
        try:
            doc = json.loads(r.stdout)
        except ValueError as exc:
            raise CliError(argv, r.returncode, r.stdout, r.stderr) from exc
        if not check:
            doc = {"rc": r.returncode, **doc} if isinstance(doc, dict) else {"rc": r.returncode, "doc": doc}
        return doc

    def oscore(self) -> dict | None:
        """The OSCORE counters of ``/api/health`` (keys, unknown_kid, replays...), None in "none"."""
        with urllib.request.urlopen(self.url + "/api/health", timeout=10) as r:
            return json.loads(r.read())["oscore"]

    def nodes(self) -> dict[str, dict]:
        """``slgw nodes`` as {id: node}."""
        return {n["id"]: n for n in self.cli("nodes")["nodes"]}

    def readings(self, source: str) -> list[dict]:
        """The raw readings the gateway stored for ``source`` (read-only SQLite, WAL-safe while
        the service runs), ordered by seq: ``seq, t, wh, w, level, faults, rel_time, received_at``.
        For checks the API does not expose (seq continuity, arrival order)."""
        conn = sqlite3.connect(f"file:{self.store}?mode=ro", uri=True, timeout=10)
        try:
            conn.row_factory = sqlite3.Row
            rows = conn.execute("SELECT seq, t, wh, w, level, faults, rel_time, received_at FROM readings "
                                "WHERE source = ? ORDER BY seq", (source,)).fetchall()
            return [dict(r) for r in rows]
        finally:
            conn.close()
