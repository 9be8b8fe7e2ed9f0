# Run under micropython by tests/ota/test_boot_select.py: the boot selector's rules on a real
# flash directory (argv[1]); prints one JSON line per case.
import json
import os
import sys

from firmware import boot_select as bs

root = sys.argv[1]


def mk(slot):
    d = root + "/app"
    try:
        os.mkdir(d)
    except OSError:
        pass
    try:
        os.mkdir(d + "/" + slot)
    except OSError:
        pass
    with open(d + "/" + slot + "/manifest.json", "w") as f:
        f.write("{}")


def boot():
    st = bs.read_state(root)
    slot = bs.choose(root, st)
    bs.write_state(root, st)
    return slot, st["mode"]


out = {}
out["fresh"] = boot()  # no state: factory, normal
mk("a")
st = bs.read_state(root)
st["trial"] = "a"
st["tries"] = 0
bs.write_state(root, st)
out["trial1"] = boot()
out["trial2"] = boot()  # a reset during the trial: one more try
out["trial3"] = boot()  # came back twice without a commit: rolled back
out["after_loop"] = [bs.read_state(root)["result"], bs.read_state(root)["why"][:22]]
st = bs.read_state(root)
st["trial"] = "b"  # a trial slot without its manifest (download cut before the end)
bs.write_state(root, st)
out["incomplete"] = boot()
st = bs.read_state(root)
st["boots"] = 0
bs.write_state(root, st)
out["crash_loop"] = [boot()[1] for _ in range(5)]  # never cleared: safe mode after 3
st = bs.read_state(root)
st["active"] = "b"  # active slot lost its manifest: factory
st["boots"] = 0
bs.write_state(root, st)
out["lost_active"] = boot()
# a torn ota.json (power cut in write_state before the rename leaves ota.new; after, ota.json)
with open(root + "/ota.json", "w") as f:
    f.write('{"active": "a", "tri')
with open(root + "/ota.new", "w") as f:
    f.write('{"active": "a", "boots": 0}')
out["torn"] = boot()
st = bs.read_state(root)
st["trial"] = "a"
st["tries"] = 0
st["mode"] = "trial"
bs.write_state(root, st)
bs.crashed(root, "ImportError('no module named x')")
st = bs.read_state(root)
out["crash_in_trial"] = [st["trial"], st["result"], st["why"][:14]]
print(json.dumps(out))
