"""The boot selector's rules (firmware/boot_select.py, docs/ota.md) under the real
`micropython`, on a real directory as the node's flash: trial boots are bounded, an incomplete
slot is never booted, a crash on trial rolls back at once, uncleared boots give safe mode, a
torn state file falls back to the complete copy."""

import json
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(__file__)), "firmware"))
from core_support import run_mp  # noqa: E402

HERE = os.path.dirname(__file__)


def test_boot_rules_under_micropython(tmp_path):
    r = run_mp(os.path.join(HERE, "mp", "boot_rules.py"), [str(tmp_path)])
    assert r.returncode == 0, r.stdout + r.stderr
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out["fresh"] == ["", "normal"]
    assert out["trial1"] == ["a", "trial"] and out["trial2"] == ["a", "trial"]
    assert out["trial3"] == ["", "normal"]  # back on the previous (factory) slot
    assert out["after_loop"] == [8, "trial boot came back 2"]
    assert out["incomplete"] == ["", "normal"]  # slot b has no manifest: never booted
    assert out["crash_loop"] == ["normal", "normal", "normal", "safe", "safe"]
    assert out["lost_active"] == ["", "normal"]
    assert out["torn"] == ["a", "normal"]  # the complete ota.new, not the torn ota.json
    assert out["crash_in_trial"] == ["", 8, "crash at boot:"]
