"""Runs the firmware-core MicroPython test scripts (tests/firmware/mp_core/check_*.py) under the
real `micropython`; each script prints PASS/FAIL per test and exits non-zero on any failure."""

import glob
import os

import pytest
from core_support import MP_CORE, check_mp

SCRIPTS = sorted(os.path.basename(p) for p in glob.glob(os.path.join(MP_CORE, "check_*.py")))


@pytest.mark.parametrize("script", SCRIPTS)
def test_mp_script(script, tmp_path):
    out = check_mp(os.path.join(MP_CORE, script), args=[str(tmp_path)], timeout=60)
    assert " 0 failed" in out and "FAIL" not in out, out
    assert "PASS" in out


def test_scripts_found():
    assert {"check_light.py", "check_durable.py", "check_outbox.py"} <= set(SCRIPTS)
