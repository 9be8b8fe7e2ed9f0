"""Commands from the real `slgw serve` to the real node firmware (`slnode emulate`, MicroPython
Unix port) on a shared simulated clock: time sync at registration, then a level, an override
and a schedule, each delivered (state shown by the CLI) and acted on by the lamp."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from slgw_harness import SlgwProcess

SLNODE = str(Path(sys.executable).parent / "slnode")
START = "2026-01-15T10:00:00Z"  # daytime: the schedule below decides the level


def wait_for(pred, timeout=30.0, step=0.2):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = pred()
        if v:
            return v
        time.sleep(step)
    raise AssertionError("condition not met in time")


def truth(path: Path) -> dict[str, dict]:
    last: dict[str, dict] = {}
    if path.exists():
        for line in path.read_text().splitlines():
            try:
                rec = json.loads(line)
            except ValueError:
                continue
            last[rec["id"]] = rec
    return last


def test_commands_reach_real_firmware(tmp_path):
    anchor = str(time.time())
    clock = ["--clock-start", START, "--clock-speed", "30", "--clock-anchor", anchor]
    gw = SlgwProcess(tmp_path, *clock)
    node = None
    truth_file = tmp_path / "truth.jsonl"
    try:
        gw.start()
        node = subprocess.Popen([SLNODE, "emulate", "--id", "fw", "--count", "2", "--gateway",
                                 f"coap://127.0.0.1:{gw.coap_port}", "--flash", str(tmp_path / "flash"),
                                 *clock, "--report-period", "60", "--truth", str(truth_file),
                                 "--truth-period", "30"],
                                stdout=open(tmp_path / "nodes.log", "wb"), stderr=subprocess.STDOUT)

        def nodes():
            return json.loads(gw.cli("nodes", "--json").stdout)["nodes"]

        wait_for(lambda: len(nodes()) == 2 and all(n["online"] and n["rated_w"] for n in nodes()))
        # time sync: the gateway's simulated clock is trusted, so the nodes got valid time
        wait_for(lambda: all(t.get("time_valid") for t in truth(truth_file).values())
                 and len(truth(truth_file)) == 2)

        r = gw.cli("--json", "set-level", "fw-000", "30", "--wait", "10")
        assert r.returncode == 0, r.stderr
        assert json.loads(r.stdout)["summary"] == {"delivered": 1}
        r = gw.cli("--json", "override", "fw-001", "0", "--for", "2h", "--wait", "10")
        assert json.loads(r.stdout)["summary"] == {"delivered": 1}
        wait_for(lambda: truth(truth_file)["fw-000"]["level"] == 30
                 and truth(truth_file)["fw-001"]["level"] == 0)

        sched = tmp_path / "s.json"
        sched.write_text(json.dumps([[0, 0, 55]]))  # 55 % all day
        r = gw.cli("--json", "schedule", "push", "fw-000", str(sched), "--wait", "10")
        assert json.loads(r.stdout)["summary"] == {"delivered": 1}
        r = gw.cli("--json", "override", "fw-000", "cancel", "--wait", "10")
        assert json.loads(r.stdout)["summary"] == {"delivered": 1}
        wait_for(lambda: truth(truth_file)["fw-000"]["level"] == 55)
        states = {c["state"] for c in json.loads(gw.cli("commands", "--json").stdout)["commands"]}
        assert states == {"delivered"}
    finally:
        if node is not None and node.poll() is None:
            node.send_signal(signal.SIGTERM)
            try:
                node.wait(15)
            except subprocess.TimeoutExpired:
                os.kill(node.pid, signal.SIGKILL)
                node.wait(5)
        gw.stop()
