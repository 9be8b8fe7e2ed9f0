"""Helpers shared by the Modbus tests (imported by name, like tests/gateway/slgw_harness.py)."""

from __future__ import annotations

import asyncio
import time
from types import SimpleNamespace


def gw_config(tmp_path, meters: list[dict], server: dict | None = None) -> SimpleNamespace:
    """A stand-in for gateway.config.Config carrying only the raw Modbus sections."""
    return SimpleNamespace(source=str(tmp_path / "gateway.toml"), modbus_raw={"meters": meters},
                           modbus_server_raw=server or {})


async def wait_until(pred, timeout: float, what: str) -> None:
    """Poll `pred` while the event loop runs; fail the test naming `what` after `timeout` s."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")
