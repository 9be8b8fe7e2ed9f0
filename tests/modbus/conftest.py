"""Fixtures for the Modbus tests: a process group that stops every emulator, socat and
gateway process a test started (by pid, also when the test fails)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # the one process harness lives in hil_tests/

from hil_tests.harness import ProcessGroup  # noqa: E402


@pytest.fixture
def procs(tmp_path):
    group = ProcessGroup(tmp_path)
    try:
        yield group
    finally:
        group.stop_all()
