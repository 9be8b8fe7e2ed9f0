"""The boot selector: which application slot boots, on trial or in safe mode (docs/ota.md).

Installed twice by ``slnode build``: as ``/main.py`` (MicroPython runs it after boot; it is
never replaced over the air, so it must stay small and its state format stable) and compiled
as ``firmware/boot_select.mpy`` in every slot (firmware/ota.py reads and writes the same state
through the functions here). It imports nothing from ``firmware`` or ``protocol`` before it has
put the chosen slot first on ``sys.path``: the slot's packages must be the ones imported.

Flash layout (the flash root: ``/`` on the device, the ``--flash`` directory in emulation)::

    /main.py            this file (the boot selector)
    /firmware, /protocol  the factory application (from ``slnode flash``): slot ""
    /app/a/, /app/b/    the two update slots, each ``firmware/``, ``protocol/``, ``manifest.json``
    /ota.json           the state below (written as ``ota.new`` then renamed: atomic)

State (JSON object; a missing or unreadable file means the factory slot, nothing pending):
``active`` ("", "a" or "b"), ``trial`` (slot booted on trial, "" when none), ``tries`` (trial
boots so far), ``boots`` (boots of the active slot not yet found healthy), ``result`` (LwM2M
Update Result /5/0/5), ``why`` (the reason of the last failure, text), ``version``,
``trial_version``, ``running`` and ``mode`` ("normal", "trial", "safe": what THIS boot is).

Rules (``choose``), applied once per boot before anything else runs:
* a trial slot is booted at most ``TRIAL_BOOTS`` times; a trial that came back that often
  without being committed (a reset, a hang the watchdog ended, a power cut) is abandoned: the
  active slot boots, Update Result 8, ``why`` says so;
* a slot without its ``manifest.json`` (written last by the installer) is not bootable: the
  factory slot boots instead;
* each boot of the active slot counts in ``boots``; the node clears it once healthy (or after
  running ``STABLE_S``); more than ``SAFE_AFTER`` uncleared boots give safe mode (the lamp at
  its fail-safe level, registration and updates still running; firmware/ota.py).
An exception out of the application is caught here: on trial the trial is abandoned at once
(``why`` = the exception), and the board resets (``machine.reset()``; in emulation the
process exits with ``RESET_EXIT`` and the launcher starts it again).
"""

import json
import os
import sys

TRIAL_BOOTS = 2
SAFE_AFTER = 3
STABLE_S = 120
TRIAL_GUARD_S = 900  # the device's hard bound on a trial (the node's own check is ota_trial_s)
RESET_EXIT = 75
RESULT_FAILED = 8  # LwM2M Firmware Update /5/0/5 "Firmware update failed"
STATE = "ota.json"
IMAGE = "image"  # trial of a whole firmware image (firmware/ota.py); the bootloader holds it


def slot_dir(root, slot):
    """The directory a slot's packages live in ("" = the factory application at the root)."""
    if not slot:
        return root
    return _join(root, "app/" + slot)


def _join(root, name):
    if not root or root == "/":
        return "/" + name
    return root.rstrip("/") + "/" + name


def _exists(path):
    try:
        os.stat(path)
        return True
    except OSError:
        return False


def read_state(root):
    """The state dict (defaults filled in); a torn or missing file reads as the defaults."""
    st = {"active": "", "trial": "", "tries": 0, "boots": 0, "result": 0, "why": "",
          "version": "", "trial_version": "", "running": "", "mode": "normal"}
    for name in (STATE, "ota.new"):
        try:
            with open(_join(root, name)) as f:
                d = json.loads(f.read())
            if isinstance(d, dict):
                st.update(d)
                return st
        except (OSError, ValueError):
            pass
    return st


def write_state(root, st):
    """Write the state atomically: ``ota.new`` completely, then rename over ``ota.json``."""
    tmp = _join(root, "ota.new")
    with open(tmp, "w") as f:
        f.write(json.dumps(st))
        try:
            f.flush()
            os.sync()  # MicroPython: flush the filesystem; CPython: harmless
        except (AttributeError, OSError):
            pass
    os.rename(tmp, _join(root, STATE))


def bootable(root, slot):
    if slot == IMAGE:  # the bootloader's OTA partition, not a directory
        return True
    return not slot or _exists(_join(slot_dir(root, slot), "manifest.json"))


def choose(root, st):
    """Apply the rules of the module docstring to ``st`` (changed in place). Returns the slot
    to boot; ``st["mode"]`` and ``st["running"]`` say how."""
    if st["trial"] and not bootable(root, st["trial"]):
        st["trial"] = ""
        st["result"] = RESULT_FAILED
        st["why"] = "trial slot incomplete (no manifest): not booted"
    if st["trial"] == IMAGE and st["tries"] >= 1:
        # an image boots on trial once: ESP-IDF's bootloader reverts an image that reset before
        # it was marked valid, so this boot runs the previous image again
        st["result"] = RESULT_FAILED
        st["why"] = "new image reset before its health check passed: the bootloader went back to the previous one"
        st["trial"] = ""
        st["tries"] = 0
    if st["trial"] == IMAGE:
        st["tries"] += 1
        st["running"] = st["active"]
        st["mode"] = "trial"
        return st["active"]
    if st["trial"]:
        if st["tries"] >= TRIAL_BOOTS:
            st["result"] = RESULT_FAILED
            st["why"] = "trial boot came back %d times without passing the health check (boot loop, " \
                        "hang or power cut): back on the previous slot" % st["tries"]
            st["trial"] = ""
            st["tries"] = 0
        else:
            st["tries"] += 1
            st["running"] = st["trial"]
            st["mode"] = "trial"
            return st["trial"]
    slot = st["active"]
    if not bootable(root, slot):
        st["why"] = "slot %s not bootable: factory application booted" % slot
        slot = st["active"] = ""
    st["boots"] += 1
    st["running"] = slot
    st["mode"] = "safe" if st["boots"] > SAFE_AFTER else "normal"
    return slot


def crashed(root, exc_text):
    """Record an exception that escaped the application (called before the reset)."""
    st = read_state(root)
    if st["mode"] == "trial" and st["trial"]:
        st["trial"] = ""
        st["tries"] = 0
        st["result"] = RESULT_FAILED
        st["why"] = ("crash at boot: " + exc_text)[:120]
    else:
        st["why"] = ("crash: " + exc_text)[:120]
    write_state(root, st)


def _trial_guard(root):
    """On the device: reset if the trial is still uncommitted after ``TRIAL_GUARD_S`` (a new
    application whose own health check never ends; the next boot counts the try). The Unix
    port has no machine.Timer: there the node's own bound (firmware/ota.py) is the guard."""
    try:
        import machine

        def fire(_t):
            if read_state(root)["trial"]:
                machine.reset()

        machine.Timer(0).init(mode=machine.Timer.ONE_SHOT, period=TRIAL_GUARD_S * 1000, callback=fire)
    except (ImportError, AttributeError, ValueError, OSError):
        pass


def _reset():
    try:
        import machine  # the device; the Unix port has no machine.reset

        machine.reset()
    except (ImportError, AttributeError):
        sys.exit(RESET_EXIT)


def run():
    """Choose, record, then import and run the application of the chosen slot."""
    emulated = len(sys.argv) > 1  # ``micropython <flash>/main.py SPEC.json``: slnode emulate
    root = "/"
    if emulated:
        d = sys.argv[0].rsplit("/", 1)
        root = d[0] if len(d) > 1 else "."
    st = read_state(root)
    slot = choose(root, st)
    write_state(root, st)
    if slot:
        sys.path.insert(0, slot_dir(root, slot))
    if st["mode"] == "trial" and not emulated:
        _trial_guard(root)
    try:
        if emulated:
            import firmware.emulator

            firmware.emulator.main()
        else:
            import firmware.main

            firmware.main.main()
    except SystemExit:
        raise
    except BaseException as e:  # noqa: BLE001 - anything that escapes the application
        try:
            sys.print_exception(e)
        except AttributeError:
            pass
        crashed(root, repr(e))
        _reset()
        return
    if not emulated:
        _reset()  # the device's main() never returns; if it does, start again


if __name__ == "__main__":
    run()
