"""`slnode emulate` as a user runs it: K nodes in one micropython, ids ID-000.., one flash dir
each, truth lines, clean exit on SIGTERM, bad arguments refused with exit 2, and resume after
SIGKILL of the launcher's child on the same flash directory."""

import json
import os
import signal
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(__file__))
from app_support import ROOT, Proc, free_udp_port, read_truth, write_toml  # noqa: E402
from lwm2m_peer import Peer  # noqa: E402

PY = sys.executable


def _children(pid):
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(x) for x in f.read().split()]
    except OSError:
        return []


async def test_count_truth_sigterm_and_resume(tmp_path):
    port = free_udp_port()
    peer = await Peer.start(port)
    toml = write_toml(tmp_path / "node.toml", report_period=60, jitter=2, lifetime=3600, rated_w=35)
    t0 = time.time()
    peer.time_to_write = lambda: 1750000000 + (time.time() - t0) * 60
    args = ["-m", "tools.slnode.emulate", "--id", "st", "--gateway", f"coap://127.0.0.1:{port}",
            "--flash", str(tmp_path / "flash"), "--config", str(toml), "--clock-speed", "60",
            "--clock-start", "2025-06-01T20:00:00Z", "--clock-anchor", str(t0), "--truth", str(tmp_path / "t.jsonl"),
            "--count", "3", "--ack-timeout", "200"]
    log = open(tmp_path / "launcher.log", "wb")
    try:
        with Proc([PY, *args], stdout=log, stderr=subprocess.STDOUT) as p:
            await peer.wait_for(lambda: {r["query"]["ep"] for r in peer.registers} == {"st-000", "st-001", "st-002"},
                                20)
            await peer.wait_for(lambda: len(peer.reports) >= 3, 20)
            kids = _children(p.pid)
            assert len(kids) == 1  # one micropython for the three nodes
            p.p.send_signal(signal.SIGTERM)
            assert p.p.wait(timeout=20) == 0
            assert not os.path.exists(f"/proc/{kids[0]}") or _zombie(kids[0])
        out = (tmp_path / "launcher.log").read_text()
        assert "stopped cleanly" in out
        truth = read_truth(tmp_path / "t.jsonl")
        assert {x["id"] for x in truth} == {"st-000", "st-001", "st-002"}
        for x in truth:
            assert {"id", "t", "wh", "level"} <= set(x)
        stops = [x for x in truth if x["event"] == "stop"]
        assert len(stops) == 3
        for i in range(3):
            assert (tmp_path / "flash" / f"st-00{i}" / "config.json").exists()
        seq_before = max(x["seq"] for x in truth if x["id"] == "st-001")
        wh_before = max(x["wh"] for x in truth if x["id"] == "st-001")
        # a power cut of the interpreter (SIGKILL the child), then a restart resumes
        with Proc([PY, *args], stdout=log, stderr=subprocess.STDOUT) as p:
            await peer.wait_for(lambda: len(_children(p.pid)) == 1, 10)
            n = len(read_truth(tmp_path / "t.jsonl"))
            await peer.wait_for(lambda: len(read_truth(tmp_path / "t.jsonl")) > n + 3, 20)
            os.kill(_children(p.pid)[0], signal.SIGKILL)
            assert p.p.wait(timeout=10) != 0  # the launcher reports the child's death
        with Proc([PY, *args], stdout=log, stderr=subprocess.STDOUT) as p:
            n = len(read_truth(tmp_path / "t.jsonl"))
            await peer.wait_for(lambda: len(read_truth(tmp_path / "t.jsonl")) > n + 6, 20)
            p.p.send_signal(signal.SIGTERM)
            assert p.p.wait(timeout=20) == 0
        after = [x for x in read_truth(tmp_path / "t.jsonl")[n:] if x["id"] == "st-001"]
        assert min(x["seq"] for x in after if x["event"] == "report") > seq_before
        assert min(x["wh"] for x in after) >= wh_before  # the emulated meter's truth resumed
    finally:
        log.close()
        await peer.stop()


def _zombie(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split()[2] == "Z"
    except OSError:
        return True


def test_bad_arguments_exit_2(tmp_path):
    bad = write_toml(tmp_path / "bad.toml", lat=123)
    cases = [
        ["--id", "x", "--gateway", "http://h:1", "--flash", str(tmp_path / "f")],
        ["--id", "bad id", "--gateway", "coap://127.0.0.1:1", "--flash", str(tmp_path / "f")],
        ["--id", "x", "--gateway", "coap://127.0.0.1:1", "--flash", str(tmp_path / "f"), "--config", str(bad)],
        ["--id", "x", "--gateway", "coap://127.0.0.1:1", "--flash", str(tmp_path / "f"), "--clock-start", "noon"],
        ["--id", "x", "--gateway", "coap://127.0.0.1:1", "--flash", str(tmp_path / "f"), "--count", "0"],
    ]
    for c in cases:
        r = subprocess.run([PY, "-m", "tools.slnode.emulate", *c], capture_output=True, text=True, timeout=30, cwd=ROOT)
        assert r.returncode == 2, (c, r.stderr)
        assert "error" in r.stderr
    r = subprocess.run([PY, "-m", "tools.slnode.main", "emulate", "--id", "x", "--gateway", "coap://h:0", "--flash",
                        str(tmp_path / "f")], capture_output=True, text=True, timeout=30, cwd=ROOT)
    assert r.returncode == 2 and "gateway" in r.stderr
    assert "lat" in subprocess.run([PY, "-m", "tools.slnode.emulate", *cases[2]], capture_output=True, text=True,
                                   timeout=30, cwd=ROOT).stderr
    assert json.dumps  # keep import used


def test_launcher_killed_leaves_no_orphan_and_group_signal_stops_cleanly(tmp_path):
    args = ["-m", "tools.slnode.emulate", "--id", "o1", "--gateway", "coap://127.0.0.1:9", "--flash",
            str(tmp_path / "f"), "--truth", str(tmp_path / "t.jsonl"), "--clock-speed", "60"]
    # SIGKILL of the launcher: the child sees its stdin close and stops (cleanly) by itself
    with Proc([PY, *args], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) as p:
        for _ in range(100):
            if _children(p.pid):
                break
            time.sleep(0.05)
        kid = _children(p.pid)[0]
        time.sleep(1)
        os.kill(p.pid, signal.SIGKILL)
        p.p.wait(timeout=10)
        for _ in range(100):
            if not os.path.exists(f"/proc/{kid}") or _zombie(kid):
                break
            time.sleep(0.05)
        else:
            os.kill(kid, signal.SIGKILL)
            raise AssertionError("the emulator outlived its launcher")
    assert read_truth(tmp_path / "t.jsonl")[-1]["event"] == "stop"
    # SIGTERM to the whole process group (systemd, `timeout`, Ctrl-C): still a clean stop
    with Proc([PY, *args], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True) as p:
        for _ in range(100):
            if _children(p.pid):
                break
            time.sleep(0.05)
        time.sleep(1)
        os.killpg(p.pid, signal.SIGTERM)
        assert p.p.wait(timeout=20) == 0
    assert read_truth(tmp_path / "t.jsonl")[-1]["event"] == "stop"
