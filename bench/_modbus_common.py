"""Shared helpers of the Modbus benches: a process group for emulators, wire limits."""

from __future__ import annotations

import asyncio
import logging
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from hil_tests.harness import ProcessGroup  # noqa: E402


@contextmanager
def process_group():
    """A temporary directory and a process group whose processes are stopped by pid at exit."""
    with tempfile.TemporaryDirectory(prefix="slgw-bench-") as d:
        group = ProcessGroup(Path(d))
        try:
            yield group, Path(d)
        finally:
            group.stop_all()


def config(meters: list[dict], source: str | None = None) -> SimpleNamespace:
    """A stand-in for gateway.config.Config with only the Modbus sections."""
    return SimpleNamespace(source=source, modbus_raw={"meters": meters}, modbus_server_raw={})


async def noop_sink(meter, reading) -> None:
    """A sink that drops readings (benches that measure the bus, not the store)."""


def poll_wire_time(counts: list[int], baud: int, bits: int = 10, gaps: int = 2) -> float:
    """Seconds one poll of reads of `counts` registers needs on an RTU line: every request and
    response frame, plus `gaps` silences of 3.5 characters per exchange."""
    chars = sum(8 + 5 + 2 * n for n in counts)
    return (chars + gaps * 3.5 * len(counts)) * bits / baud


async def wait_for(pred, timeout: float) -> None:
    """Wait until pred() is true (raise TimeoutError after `timeout` s)."""
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise TimeoutError("bench warm-up did not complete")
        await asyncio.sleep(0.02)


def quiet() -> None:
    """Silence pymodbus' per-timeout error logs during benches."""
    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("pymodbus").setLevel(logging.CRITICAL)
    logging.getLogger("gateway.modbus").setLevel(logging.ERROR)
