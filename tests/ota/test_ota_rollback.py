"""Bad bundles roll back by themselves and halt the roll-out (issue 12, HIL-style, 3 nodes to
keep the CPU cost small): one that crashes at boot, one that boots but never gets a report
acknowledged (fails the health check). The canary node returns to its previous slot and says
why (Update Result 8 and the reason), the other nodes are never touched, and no lamp goes below
its fail-safe level (80 % here, the configured default)."""

from __future__ import annotations

import json

from ota_support import build_bundle, ota_state, start_town, truth


def _levels(work, nid):
    return [x["level"] for x in truth(work, nid) if x.get("event") in ("tick", "report")]


def _rollout(gw, version):
    r = gw.cli("--json", "firmware", "rollout", "all", "--bundle", version, "--canary", "30%", "--wait", "240",
               timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    return json.loads(r.stdout)


def test_crashing_and_unhealthy_bundles_roll_back_and_halt(tmp_path, procs):
    gw, nodes = start_town(tmp_path, procs, 3, trial_s=12)
    try:
        crash = build_bundle(tmp_path, "0.9.0", {"firmware/node.py": [
            ("class Node:", "raise RuntimeError('bundle broken at import')\n\n\nclass Node:")]}, name="crash")
        silent = build_bundle(tmp_path, "0.9.1", {"firmware/node.py": [
            ("        self.p.outbox.put(r)\n", "        pass  # this bundle loses its reports\n")]}, name="silent")
        for b in (crash, silent):
            r = gw.cli("--json", "firmware", "add", str(b))
            assert r.returncode == 0, r.stdout + r.stderr

        ro = _rollout(gw, "0.9.0")
        assert ro["state"] == "halted" and ro["failed"] == 1 and ro["succeeded"] == 0, ro
        canary = ro["waves"][0]["nodes"][0]
        st = ota_state(tmp_path, canary)
        assert st["result"] == 8 and st["why"].startswith("crash at boot") and "broken at import" in st["why"]
        assert st["active"] == "" and st["trial"] == ""  # back on the factory application
        untouched = [n for n in nodes if n != canary]
        for nid in untouched:
            assert ota_state(tmp_path, nid).get("trial", "") == "" and ota_state(tmp_path, nid).get("active", "") == ""
        status = json.loads(gw.cli("--json", "firmware", "status", "--refresh").stdout)
        row = {n["id"]: n for n in status["nodes"]}[canary]
        assert row["result"] == 8 and row["version"] == "0.1.0" and "crash at boot" in row["why"]
        assert row["phase"] == "rolled back"

        ro = _rollout(gw, "0.9.1")
        assert ro["state"] == "halted" and ro["failed"] == 1, ro
        canary = ro["waves"][0]["nodes"][0]
        st = ota_state(tmp_path, canary)
        assert st["result"] == 8 and "health check failed" in st["why"] and "no report acknowledged" in st["why"]
        status = json.loads(gw.cli("--json", "firmware", "status", "--refresh").stdout)
        row = {n["id"]: n for n in status["nodes"]}[canary]
        assert row["version"] == "0.1.0" and row["result"] == 8
        for nid in nodes:  # every lamp stayed at or above its fail-safe level the whole time
            lv = _levels(tmp_path, nid)
            assert lv and min(lv) >= 80, (nid, lv)
    finally:
        gw.stop()
