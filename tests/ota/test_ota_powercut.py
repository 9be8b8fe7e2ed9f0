"""Power cuts during an update (issue 12): the node's micropython process is SIGKILLed at
points spread over the download, the write into the idle slot, the switch and the trial boot
(seeded, stratified random delays after the roll-out starts), then booted again on the same
flash. Every time the node comes back on a bootable slot (the state file names only slots
whose manifest is there), registers and runs the old or the new version, never anything else;
and a last roll-out without a cut completes, so a cut never leaves a node that cannot be
updated. Helper: tests/ota/ota_support.py."""

from __future__ import annotations

import json
import os
import random
import signal
import time

from ota_support import build_bundle, micropython_child, node_argv, ota_state, start_town

from tools.procs import wait_for

# kill delays after the roll-out starts (s): download (~0.2 s here), execute and reboot
# (~0.5-1 s), trial boot and commit (~1-4 s)
STRATA = [(0.02, 0.12), (0.12, 0.3), (0.3, 0.8), (0.8, 1.6), (1.6, 2.6), (2.6, 4.0)]


def _bootable(flash, slot):
    return slot == "" or os.path.isfile(os.path.join(flash, "app", slot, "manifest.json"))


def test_power_cuts_during_updates_always_come_back_on_a_valid_slot(tmp_path, procs):
    gw, nodes = start_town(tmp_path, procs, 1, trial_s=15, extra_gw=(
        "--firmware-download-timeout-s", "15", "--firmware-trial-timeout-s", "15"))
    nid = "lamp-0"
    flash = str(tmp_path / f"flash-{nid}")
    rng = random.Random(12)
    try:
        versions = []
        for v in ("0.2.0", "0.3.0"):
            r = gw.cli("--json", "firmware", "add", str(build_bundle(tmp_path, v)))
            assert r.returncode == 0, r.stderr
            versions.append(v)
        proc = nodes[nid]
        seen = set()
        for i, (lo, hi) in enumerate(STRATA):
            st = ota_state(tmp_path, nid)
            target = "0.3.0" if st.get("version") == "0.2.0" else "0.2.0"
            gw.api("POST", "/api/firmware/rollout", {"target": nid, "bundle": target, "canary_pct": 100})
            time.sleep(rng.uniform(lo, hi))
            pid = wait_for(lambda p=proc: micropython_child(p), 10, interval=0.01, what="the node process")
            os.kill(pid, signal.SIGKILL)  # the power cut
            proc.popen.wait(timeout=20)
            st = ota_state(tmp_path, nid)
            assert _bootable(flash, st.get("active", "")), (i, st)
            seen.add(st.get("trial", "") != "")
            # power back: the same flash, the same launcher command
            proc = procs.start(f"{nid}-boot{i}", node_argv(tmp_path, nid, gw.coap_port,
                                                            keys=tmp_path / "nodekeys", trial_s=15))
            wait_for(lambda p=proc: "registered as" in p.log.read_text(), 60,
                     what=f"the node registered again after cut {i}")
            wait_for(lambda: gw.api("GET", "/api/firmware")["rollout"]["state"] != "running", 60,
                     what="the roll-out to end")
            st = ota_state(tmp_path, nid)
            assert _bootable(flash, st.get("active", "")) and _bootable(flash, st.get("trial", "")), (i, st)
            ver = json.loads(gw.cli("--json", "firmware", "status", "--refresh").stdout)["nodes"][0]["version"]
            assert ver in ("0.1.0", *versions), ver
        # a roll-out with power on completes whatever the cuts left behind
        st = ota_state(tmp_path, nid)
        target = "0.3.0" if st.get("version") == "0.2.0" else "0.2.0"
        r = gw.cli("--json", "firmware", "rollout", nid, "--bundle", target, "--canary", "100%", "--wait", "120",
                   timeout=180)
        ro = json.loads(r.stdout)
        assert ro["state"] == "done" and ro["succeeded"] == 1, ro
        assert ota_state(tmp_path, nid)["version"] == target
    finally:
        gw.stop()
