"""`slgw keys rotate` end to end (issue 11, SPEC §10.5–10.6): the real firmware in `slnode
emulate` with OSCORE keys against the real `slgw serve` (security = "oscore"). The gateway
sends the new key under the old one; the node takes it, its next request under the new kid
completes the rotation on the gateway; commands keep reaching the lamp under the new key, also
after a power cut of the node (the new key survives on its flash), and the old key is gone."""

import argparse
import json
import os
import subprocess
import sys

sys.path.insert(0, os.path.dirname(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(__file__)), "gateway"))
from app_support import free_udp_port, read_truth, start_emulator, wait_until, write_toml  # noqa: E402
from slgw_harness import SLGW, SlgwProcess  # noqa: E402

from tools.slnode import emulate  # noqa: E402

SPEED = 20.0


def keys_list(kdir):
    r = subprocess.run([SLGW, "keys", "list", "--keys-dir", str(kdir), "--json"], capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)["keys"]


def level_is(truth, level):
    lines = [x for x in read_truth(truth) if x.get("id") == "lamp-1"]
    return bool(lines) and lines[-1]["level"] == level


def test_rotate_against_the_real_firmware(tmp_path):
    coap_port, node_port = free_udp_port(), free_udp_port()
    keys_src, kdir, truth = tmp_path / "node-keys", tmp_path / "gwkeys", tmp_path / "truth.jsonl"
    toml = write_toml(tmp_path / "node.toml", report_period=30, lifetime=120, jitter=1, default_level=100)
    p = argparse.ArgumentParser()
    emulate.add_arguments(p)
    spec = emulate.prepare(p.parse_args([
        "--id", "lamp-1", "--gateway", f"coap://127.0.0.1:{coap_port}", "--flash", str(tmp_path / "flash"),
        "--config", str(toml), "--clock-speed", str(SPEED), "--ack-timeout", "300", "--port", str(node_port),
        "--truth", str(truth), "--truth-period", "10", "--oscore-keys", str(keys_src)]))
    r = subprocess.run([SLGW, "keys", "import", "--keys-dir", str(kdir), str(keys_src / "lamp-1.oscore.json")],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    old_sid = keys_list(kdir)[0]["node_sender_id"]
    gw = SlgwProcess(tmp_path, "--coap-keys-dir", str(kdir), security="oscore", coap_port=coap_port).start()
    node = None
    try:
        node = start_emulator(spec, tmp_path / "node.log")
        wait_until(lambda: [n for n in gw.api("GET", "/api/nodes")["nodes"] if n.get("wh") is not None],
                   40, "the node's registration and first Send")
        r = gw.cli("--json", "keys", "rotate", "lamp-1", "--wait", "20")
        assert r.returncode == 0, r.stdout + r.stderr
        res = json.loads(r.stdout)
        assert res["state"] == "written" and res["old_node_sender_id"] == old_sid
        new_sid = res["node_sender_id"]
        assert new_sid != old_sid
        # the node's next request (a report every 30 sim s = 1.5 s) comes under the new kid
        wait_until(lambda: keys_list(kdir)[0]["node_sender_id"] == new_sid, 30,
                   "the gateway to switch to the new key")
        assert sorted(os.listdir(kdir)) == ["lamp-1"]  # the old context is deleted
        r = gw.cli("--json", "set-level", "lamp-1", "35", "--wait", "20")
        assert r.returncode == 0 and json.loads(r.stdout)["summary"].get("delivered") == 1, r.stdout
        wait_until(lambda: level_is(truth, 35), 30, "the lamp at 35 %")
        # a power cut: the node boots with the new key from its flash and goes on reporting
        node.kill()
        stored = gw.api("GET", "/api/health")["coap_stats"]["reports"]
        node = start_emulator(spec, tmp_path / "node.log")
        wait_until(lambda: gw.api("GET", "/api/health")["coap_stats"]["reports"] > stored, 40,
                   "reports after the node's reboot")
        r = gw.cli("--json", "set-level", "lamp-1", "55", "--wait", "20")
        assert r.returncode == 0 and json.loads(r.stdout)["summary"].get("delivered") == 1, r.stdout
        wait_until(lambda: level_is(truth, 55), 30, "the lamp at 55 %")
        assert gw.api("GET", "/api/health")["coap_stats"]["unauthorized"] == 0
    finally:
        if node is not None:
            node.kill()
        gw.stop()
