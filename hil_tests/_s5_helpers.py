"""Helpers of HIL scenarios 5-8 (mass restore, group command, gateway restart, bad neighbours).

- ``CliProbe``: a thread that keeps asking the gateway (``slgw --json nodes`` and
  ``GET /api/health``) while a scenario runs, and records every call's latency and outcome.
- ``ack_bound_s``: RFC 7252 MAX_TRANSMIT_WAIT of the emulated nodes' CoAP endpoint.
- ``first_reports``: each node's first report seqs from its truth file.
"""

from __future__ import annotations

import subprocess
import threading
import time
import urllib.request

from hil_tests.gateway import SLGW, Gateway

# RFC 7252 §4.8 transmission parameters of the node's endpoint (SPEC §1); ACK_TIMEOUT is the
# harness's --ack-timeout (Town.ack_timeout_ms, 500 ms by default).
ACK_RANDOM_FACTOR = 1.5
MAX_RETRANSMIT = 4


def ack_bound_s(ack_timeout_ms: int) -> float:
    """MAX_TRANSMIT_WAIT: the longest a CON request can wait for its ACK, real seconds."""
    return ack_timeout_ms / 1000.0 * (2 ** (MAX_RETRANSMIT + 1) - 1) * ACK_RANDOM_FACTOR


class CliProbe:
    """Poll the gateway's CLI and health endpoint from a thread; latencies in real seconds.

    ``calls``: list of (kind, started_monotonic, latency_s, ok, detail). Every call has a
    timeout of ``timeout`` s (a call that times out is recorded as failed).
    """

    def __init__(self, gw: Gateway, interval: float = 0.5, timeout: float = 20.0) -> None:
        self.gw = gw
        self.interval = interval
        self.timeout = timeout
        self.calls: list[tuple[str, float, float, bool, str]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="cli-probe", daemon=True)

    def start(self) -> CliProbe:
        self._thread.start()
        return self

    def stop(self) -> CliProbe:
        self._stop.set()
        self._thread.join(timeout=self.timeout + 5)
        return self

    def _one(self, kind: str) -> None:
        t0 = time.monotonic()
        ok, detail = False, ""
        try:
            if kind == "cli":
                r = subprocess.run([SLGW, "--url", self.gw.url, "--json", "nodes"], capture_output=True,
                                   text=True, timeout=self.timeout, env=self.gw.procs.env())
                ok = r.returncode == 0 and r.stdout.lstrip().startswith("{")
                detail = f"rc={r.returncode} {r.stderr[-200:]}" if not ok else ""
            else:
                with urllib.request.urlopen(self.gw.url + "/api/health", timeout=self.timeout) as resp:
                    ok = resp.status == 200
                    detail = "" if ok else f"HTTP {resp.status}"
        except Exception as exc:  # noqa: BLE001 - every failure is recorded and asserted on
            detail = repr(exc)
        self.calls.append((kind, t0, time.monotonic() - t0, ok, detail))

    def _run(self) -> None:
        k = 0
        while not self._stop.is_set():
            self._one("cli" if k % 2 == 0 else "health")
            k += 1
            self._stop.wait(self.interval)

    def summary(self) -> dict:
        out = {}
        for kind in ("cli", "health"):
            lat = [c[2] for c in self.calls if c[0] == kind]
            out[kind] = {"calls": len(lat), "failed": sum(1 for c in self.calls if c[0] == kind and not c[3]),
                         "max_s": round(max(lat), 3) if lat else None,
                         "mean_s": round(sum(lat) / len(lat), 3) if lat else None}
        return out

    def failures(self) -> list[tuple]:
        return [c for c in self.calls if not c[3]]


def reports(lines: list[dict]) -> list[dict]:
    """The report truth lines of one node, in order."""
    return [x for x in lines if x["event"] == "report"]


def boot_time(lines: list[dict]) -> float | None:
    """Sim time of the node's (first) boot truth line."""
    for x in lines:
        if x["event"] == "boot":
            return x["t"]
    return None


def gateway_log_errors(gw: Gateway) -> list[str]:
    """ERROR/CRITICAL lines and tracebacks in every log of this test's gateway processes
    (all starts: ``slgw-1``, ``slgw-2`` ...)."""
    bad = []
    for p in gw.procs.procs:
        if not p.name.startswith("slgw-"):
            continue
        for line in p.log.read_text(errors="replace").splitlines():
            if " ERROR " in line or " CRITICAL " in line or line.startswith("Traceback"):
                bad.append(f"{p.name}: {line[:300]}")
    return bad


def cpu_s(pid: int, children: bool = True) -> float:
    """CPU seconds (user + system) used so far by ``pid`` and, with ``children``, its direct
    children (the launcher's micropython interpreter); 0 for a process that is gone."""
    import os

    tick = os.sysconf("SC_CLK_TCK")
    pids = [pid]
    if children:
        try:
            pids += [int(x) for x in open(f"/proc/{pid}/task/{pid}/children").read().split()]
        except OSError:
            pass
    total = 0.0
    for p in pids:
        try:
            fields = open(f"/proc/{p}/stat").read().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / tick  # utime, stime
        except (OSError, IndexError, ValueError):
            pass
    return total
