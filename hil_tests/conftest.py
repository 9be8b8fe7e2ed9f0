"""Fixtures for the hardware-in-the-loop suite: temporary directories, free ports, and a
process group that stops every process a test started, even when the test fails."""

from __future__ import annotations

import sys

import pytest

from hil_tests.harness import ProcessGroup, read_json_line


@pytest.fixture
def procs(tmp_path):
    group = ProcessGroup(tmp_path)
    try:
        yield group
    finally:
        group.stop_all()


@pytest.fixture
def start_relay(procs):
    """Start a fault-injecting relay in front of `target` port; returns (listen, control)."""

    def start(target_port: int, seed: int = 1) -> tuple[int, int]:
        proc = procs.start("relay", [sys.executable, "-m", "hil_tests.relay",
                                     "--target", f"127.0.0.1:{target_port}", "--seed", str(seed)],
                           stdout_pipe=True)
        ports = read_json_line(proc)
        return ports["listen"], ports["control"]

    return start
