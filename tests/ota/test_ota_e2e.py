"""Over-the-air application update end to end (issue 12): the real firmware booted through the
boot selector in `micropython` (`slnode emulate --slots`, one process per node), the real
`slgw serve` with OSCORE, `slgw firmware add/rollout/status`. A good bundle is pulled
block-wise inside each node's OSCORE context, verified, booted on trial and committed, in a
canary wave then a doubled one; every node reports the new version; no lamp dips below its
fail-safe level. A node in safe mode holds its fail-safe level against a manual command, still
registers, and can be updated. 3 nodes, to keep the CPU cost small."""

from __future__ import annotations

import json

from ota_support import build_bundle, ota_state, start_town, truth

from tools.procs import wait_for


def test_good_bundle_is_committed_in_waves_over_oscore(tmp_path, procs):
    gw, nodes = start_town(tmp_path, procs, 3)
    try:
        bundle = build_bundle(tmp_path, "0.2.0")
        r = gw.cli("--json", "firmware", "add", str(bundle))
        assert r.returncode == 0, r.stdout + r.stderr
        added = json.loads(r.stdout)
        assert added["version"] == "0.2.0" and added["files"] > 30
        r = gw.cli("--json", "firmware", "rollout", "all", "--bundle", "0.2.0", "--canary", "34%", "--wait", "120",
                   timeout=180)
        assert r.returncode == 0, r.stdout + r.stderr
        ro = json.loads(r.stdout)
        assert ro["state"] == "done" and ro["succeeded"] == 3 and ro["failed"] == 0, ro
        assert [len(w["nodes"]) for w in ro["waves"]] == [2, 1] or [len(w["nodes"]) for w in ro["waves"]] == [1, 2]
        r = gw.cli("--json", "firmware", "status", "--refresh")
        rows = {n["id"]: n for n in json.loads(r.stdout)["nodes"]}
        for nid in nodes:
            st = ota_state(tmp_path, nid)
            assert st["active"] in ("a", "b") and st["trial"] == "" and st["result"] == 1 and st["version"] == "0.2.0"
            assert rows[nid]["version"] == "0.2.0" and rows[nid]["result"] == 1 and rows[nid]["state"] == "idle"
            assert rows[nid]["slot"] == st["active"] and rows[nid]["phase"] == "committed"
            lines = [x for x in truth(tmp_path, nid) if x.get("event") in ("tick", "report")]
            assert lines and min(x["level"] for x in lines) >= 80  # the default (fail-safe) level
        # the same roll-out again: nothing to do
        r = gw.cli("--json", "firmware", "rollout", "all", "--bundle", "0.2.0", "--wait", "60")
        ro = json.loads(r.stdout)
        assert ro["state"] == "done" and ro["skipped"] == 3 and ro["succeeded"] == 0, ro
        # bad input: a directory without a manifest, an unknown bundle
        r = gw.cli("--json", "firmware", "add", str(tmp_path))
        assert r.returncode == 2 and "manifest.json" in r.stdout
        r = gw.cli("--json", "firmware", "rollout", "all", "--bundle", "9.9.9")
        assert r.returncode == 4, r.stdout
    finally:
        gw.stop()


def test_safe_mode_holds_the_fail_safe_level_and_still_updates(tmp_path, procs):
    # three boots that never became healthy already (a crash loop): the next one is safe mode
    flash = tmp_path / "flash-lamp-0"
    flash.mkdir()
    (flash / "ota.json").write_text(json.dumps({"active": "", "boots": 3}))
    gw, nodes = start_town(tmp_path, procs, 1)
    try:
        st = ota_state(tmp_path, "lamp-0")
        assert st["mode"] == "safe"
        r = gw.cli("--json", "set-level", "lamp-0", "20", "--wait", "20")
        assert r.returncode == 0 and json.loads(r.stdout)["summary"].get("delivered") == 1, r.stdout
        status = json.loads(gw.cli("--json", "firmware", "status", "--refresh").stdout)
        assert status["nodes"][0]["slot"] == "factory/safe"
        wait_for(lambda: [x for x in truth(tmp_path, "lamp-0") if x.get("event") == "tick"][-3:], 20, what="ticks")
        n_before = len(truth(tmp_path, "lamp-0"))
        wait_for(lambda: len(truth(tmp_path, "lamp-0")) > n_before + 2, 30, what="more truth lines")
        assert all(x["level"] == 80 for x in truth(tmp_path, "lamp-0") if x.get("event") in ("tick", "report"))
        r = gw.cli("--json", "firmware", "add", str(build_bundle(tmp_path, "0.2.0")))
        assert r.returncode == 0, r.stderr
        r = gw.cli("--json", "firmware", "rollout", "lamp-0", "--bundle", "0.2.0", "--canary", "100%", "--wait", "120",
                   timeout=180)
        assert json.loads(r.stdout)["state"] == "done", r.stdout
        st = ota_state(tmp_path, "lamp-0")
        assert st["mode"] == "normal" and st["boots"] == 0 and st["version"] == "0.2.0"
    finally:
        gw.stop()
