"""Emulated nodes for the HIL suite: the real firmware in MicroPython, several per interpreter.

    town = Town(procs, workdir, clock, gateway="coap://127.0.0.1:PORT")
    town.add_nodes(plan)           # plan: list of per-node config dicts (id, group, cabinet, ...)
    town.start()                   # one `slnode emulate --count K` process per batch of nodes
    town.power_cut("lamp-a-003")   # SIGKILL that node's interpreter (all its nodes lose power)
    town.restart("lamp-a-003")     # boot it again on the same flash directories
    town.control("lamp-a-003", clock_jump=3600)   # emulated HAL fault switches (see below)
    town.truth()                   # {id: [truth lines...]} read from the truth files

Node ids: a batch of K nodes runs as ``slnode emulate --id PREFIX --count K``, whose ids are
``PREFIX-000`` .. ``PREFIX-<K-1>`` (``node_id(prefix, i)``). Each node's ``config.json`` is
written by the harness before the start, validated with the firmware's own
``firmware.config.validate`` (so a plan with a typo fails loudly), with its own group,
cabinet, location, rated power and report period; the launcher leaves existing configs alone.

Fault switches: ``control(node, **cmd)`` appends ``{"id": node, **cmd}`` to the batch's
``emulator-control.json`` (firmware/emulator.py applies each command once, in order):
``clock_jump=SECONDS`` (the node's RTC jumps; truth time does not), ``fail_lamp=bool``,
``unplug_meter=bool``, ``net_down=bool``. A restart clears the file (a new process).

OSCORE: with ``keys_dir`` (the gateway's keys directory, ``Gateway.keys_dir``) every node gets
its own key before its first boot, made as ``slnode emulate --oscore-keys`` makes them (on its
flash; the launcher keeps them at every restart) and installed with ``slgw keys import`` before
the node speaks (a Register refused for an unknown key would back off 15 x ACK timeout). The
running gateway picks new keys up at the first request under an unknown kid.

Ground truth: every process appends JSON lines to its own ``truth.jsonl`` (firmware/emulator.py):
``{"id", "t", "wh", "level", "lamp", "w", "seq", "time_valid", "faults", "event"}``, at each report
(``event`` "report", with the report's ``seq``), every ``truth_period`` simulated seconds
("tick") and at a clean stop ("stop"). After a power cut the launcher resumes each meter from
the last truth line, so the energy drawn between that line and the kill is missing from the
file: ``Batch.cuts`` records (node, sim time of the kill, last line before it) and
``true_wh(node, line)`` adds those gaps back (power is constant between two lines unless a
fade runs, and truth_period is short).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

from hil_tests.harness import BIN, ROOT, Proc, ProcessGroup
from hil_tests.sim import SimClock

SLNODE = str(BIN / "slnode")
SLGW = str(BIN / "slgw")


def node_id(prefix: str, i: int) -> str:
    """The id ``slnode emulate --id PREFIX --count K`` gives its i-th node."""
    return f"{prefix}-{i:03d}"


def _config_mod():
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    from firmware import config

    return config


class Batch:
    """One interpreter process running K nodes."""

    def __init__(self, town: Town, prefix: str, configs: list[dict]) -> None:
        self.town = town
        self.prefix = prefix
        self.configs = configs
        self.ids = [c["id"] for c in configs]
        self.flash = town.workdir / prefix
        self.truth_path = town.workdir / f"{prefix}.truth.jsonl"
        self.control_path = self.flash / "emulator-control.json"
        self.commands: list[dict] = []
        self.proc: Proc | None = None
        self.starts = 0
        self.cuts: list[tuple[str, float, dict | None]] = []  # (node id, sim time of kill, last line)
        self.down_since: float | None = None  # sim time of the current power cut
        self.started_at = 0.0  # sim time of the current process start

    def write_configs(self) -> None:
        cfgmod = _config_mod()
        self.flash.mkdir(parents=True, exist_ok=True)
        for c in self.configs:
            cfg, errors = cfgmod.validate(c)
            if errors:
                raise ValueError(f"node config {c.get('id')}: " + "; ".join(errors))
            # `slnode emulate --count 1` uses the flash directory itself, K > 1 a subdirectory per id
            d = self.flash / c["id"] if len(self.configs) > 1 else self.flash
            d.mkdir(parents=True, exist_ok=True)
            (d / "config.json").write_text(cfgmod.dumps(cfg))

    def argv(self) -> list[str]:
        t = self.town
        argv = [SLNODE, "emulate", "--id", self.prefix, "--count", str(len(self.ids)),
                "--gateway", t.gateway, "--flash", str(self.flash), "--truth", str(self.truth_path),
                "--ack-timeout", str(t.ack_timeout_ms), *t.clock.flags()]
        if t.truth_period:
            argv += ["--truth-period", repr(float(t.truth_period))]
        if t.heap:
            argv += ["--heap", t.heap]
        if t.time_valid:
            argv.append("--time-valid")
        if t.keys_dir is not None:
            argv += ["--oscore-keys", str(t.workdir / "node-keys")]
        return argv

    def install_keys(self) -> None:
        """Make this batch's keys (as the launcher would) and import them into the gateway."""
        from tools.slnode import emulate

        p = argparse.ArgumentParser()
        emulate.add_arguments(p)
        emulate.prepare(p.parse_args(self.argv()[2:]))
        files = [str(self.town.workdir / "node-keys" / f"{i}.oscore.json") for i in self.ids]
        r = subprocess.run([SLGW, "keys", "import", "--keys-dir", str(self.town.keys_dir), *files],
                           capture_output=True, text=True, timeout=60, env=self.town.procs.env())
        if r.returncode != 0:
            raise RuntimeError(f"slgw keys import exited {r.returncode}: {r.stdout}{r.stderr}")

    def start(self) -> None:
        if self.starts == 0:
            self.write_configs()
            if self.town.keys_dir is not None:
                self.install_keys()
        try:
            self.control_path.unlink()  # a new process starts with no fault commands
        except FileNotFoundError:
            pass
        self.commands = []
        self.starts += 1
        self.started_at = self.town.clock.now()
        self.proc = self.town.procs.start(f"nodes-{self.prefix}-{self.starts}", self.argv())
        self.down_since = None

    def alive(self) -> bool:
        return self.proc is not None and self.proc.alive()

    def power_cut(self) -> None:
        """SIGKILL the interpreter (and its launcher): every node in it loses power now."""
        assert self.proc is not None
        self.proc.kill()
        now = self.town.clock.now()
        self.down_since = now
        last = self.town.last_truth(self)
        for nid in self.ids:
            self.cuts.append((nid, now, last.get(nid)))

    def restart(self) -> None:
        """Power back: boot the same nodes on the same flash directories."""
        if self.alive():
            raise RuntimeError(f"batch {self.prefix} is still running")
        self.start()

    def control(self, node: str, **cmd) -> None:
        """Append one fault command (firmware/emulator.py applies it within ~0.2 s)."""
        self.commands.append({"id": node, **cmd})
        tmp = self.control_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.commands))
        os.replace(tmp, self.control_path)

    def rss_kb(self) -> int | None:
        """Resident memory of the micropython interpreter (the launcher's child), kB."""
        if not self.alive():
            return None
        pid = self.proc.pid
        kids = Path(f"/proc/{pid}/task/{pid}/children")
        try:
            child = int(kids.read_text().split()[0])
            for line in Path(f"/proc/{child}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):  # peak resident set size
                    return int(line.split()[1])
        except (OSError, IndexError, ValueError):
            return None
        return None


class Town:
    """All node batches of one test."""

    def __init__(self, procs: ProcessGroup, workdir: Path, clock: SimClock, gateway: str, *,
                 per_process: int = 10, ack_timeout_ms: int = 500, truth_period: float | None = 60.0,
                 heap: str | None = None, time_valid: bool = False, keys_dir: Path | None = None) -> None:
        self.procs = procs
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.clock = clock
        self.gateway = gateway
        self.per_process = per_process
        self.ack_timeout_ms = ack_timeout_ms
        self.truth_period = truth_period
        self.heap = heap
        self.time_valid = time_valid
        self.keys_dir = Path(keys_dir) if keys_dir is not None else None
        self.batches: list[Batch] = []
        self.by_node: dict[str, Batch] = {}
        self.configs: dict[str, dict] = {}
        self._lock = threading.Lock()
        self._cache: dict[Path, tuple[int, list[dict]]] = {}

    def add_batch(self, prefix: str, configs: list[dict]) -> Batch:
        """Add one interpreter running ``configs`` (each a node config; ``id`` is filled in as
        ``prefix-NNN``; ``gateway`` defaults to the town's)."""
        full = []
        for i, c in enumerate(configs):
            c = {"gateway": self.gateway, **c, "id": node_id(prefix, i) if len(configs) > 1 else prefix}
            full.append(c)
        b = Batch(self, prefix, full)
        self.batches.append(b)
        for c in full:
            self.by_node[c["id"]] = b
            self.configs[c["id"]] = c
        return b

    def add_nodes(self, configs: list[dict], prefix: str = "lamp") -> list[str]:
        """Split ``configs`` into batches of ``per_process`` (prefixes ``lamp-a``, ``lamp-b``..).
        Returns the node ids in plan order."""
        ids = []
        for k in range(0, len(configs), self.per_process):
            chunk = configs[k:k + self.per_process]
            b = self.add_batch(f"{prefix}-{chr(ord('a') + len(self.batches))}", chunk)
            ids += b.ids
        return ids

    @property
    def ids(self) -> list[str]:
        return list(self.by_node)

    def start(self) -> Town:
        for b in self.batches:
            b.start()
        return self

    def batch(self, node: str) -> Batch:
        return self.by_node[node]

    def power_cut(self, node: str) -> Batch:
        """Cut the power of ``node``'s interpreter (every node of its batch)."""
        b = self.by_node[node]
        b.power_cut()
        return b

    def restart(self, node: str) -> Batch:
        b = self.by_node[node]
        b.restart()
        return b

    def control(self, node: str, **cmd) -> None:
        self.by_node[node].control(node, **cmd)

    def stop(self) -> None:
        """Clean stop of every batch (SIGTERM: nodes persist and write a last truth line)."""
        for b in self.batches:
            if b.alive():
                b.proc.terminate(timeout=20)

    # -- ground truth ----------------------------------------------------------------------
    def _read(self, path: Path) -> list[dict]:
        """All complete truth lines of one file (read incrementally; thread-safe)."""
        with self._lock:
            offset, lines = self._cache.get(path, (0, []))
            try:
                with open(path, "rb") as f:
                    f.seek(offset)
                    data = f.read()
            except FileNotFoundError:
                return []
            end = data.rfind(b"\n") + 1  # only complete lines; the rest is being written
            for raw in data[:end].splitlines():
                try:
                    d = json.loads(raw)
                except ValueError:
                    continue  # a line torn by a kill
                if isinstance(d, dict) and "id" in d:
                    lines.append(d)
            self._cache[path] = (offset + end, lines)
            return list(lines)

    def last_truth(self, batch: Batch) -> dict[str, dict]:
        out: dict[str, dict] = {}
        for d in self._read(batch.truth_path):
            out[d["id"]] = d
        return out

    def truth(self) -> dict[str, list[dict]]:
        """Every truth line per node id, in file order (= time order per node)."""
        out: dict[str, list[dict]] = {nid: [] for nid in self.by_node}
        for b in self.batches:
            for d in self._read(b.truth_path):
                out.setdefault(d["id"], []).append(d)
        return out

    def gap_wh(self, node: str, before: float) -> float:
        """Energy the lamp drew between its last truth line and each power cut before sim time
        ``before`` (missing from the truth file, see the module docstring)."""
        total = 0.0
        for nid, t_kill, last in self.by_node[node].cuts:
            if nid == node and t_kill <= before and last is not None:
                total += last["w"] * max(0.0, t_kill - last["t"]) / 3600.0
        return total

    def true_wh(self, node: str, line: dict) -> float:
        """The meter's true cumulative Wh at a truth line, power-cut gaps included."""
        return line["wh"] + self.gap_wh(node, line["t"])

    def latest_power(self) -> dict[str, float]:
        """Each node's latest true power: 0 while its interpreter is down, and after a start
        until the node's "boot" line shows it running (firmware/emulator.py)."""
        out = {}
        for b in self.batches:
            last = self.last_truth(b) if b.alive() else {}
            for nid in b.ids:
                x = last.get(nid)
                out[nid] = x["w"] if x is not None and x["t"] >= b.started_at - 1.0 else 0.0
        return out

    def wait_truth(self, pred, timeout: float, what: str):
        """Poll ``pred(truth)`` until truthy."""
        deadline = time.monotonic() + timeout
        last = None
        while time.monotonic() < deadline:
            last = pred(self.truth())
            if last:
                return last
            time.sleep(0.25)
        raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")
