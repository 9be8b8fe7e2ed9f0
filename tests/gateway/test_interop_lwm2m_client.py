"""An independent LwM2M client joins slgw: lwm2m-node-lib 1.4.0 (Telefonica, npm; pinned in
tests/interop_js/package.json, installed by `make test`), driven by
tests/interop_js/client_scenario.js.

It implements LwM2M 1.0 (no Send; SenML-JSON Send is covered at the wire level in
test_lwm2m_std.py). Checked here: its Register is accepted (OMA-TS-LightweightM2M-Core 1.1
§6.2.1), the gateway's time Write and a level command reach it as text/plain (§5.4.3, §7.3;
it stores the payload as text, so a CBOR write would arrive as binary garbage), and a command
to an object it never registered is refused up front (issue 15 item 8).
"""

from __future__ import annotations

import asyncio
import json
import os
import socket

import pytest
from coap_peers import gateway
from slgw_harness import free_port

from gateway.clock import Clock
from gateway.commands import CommandError

JS = os.path.join(os.path.dirname(__file__), "..", "interop_js")


def _events(log) -> list[dict]:
    if not log.exists():
        return []
    return [e for x in log.read_text().splitlines() if x.startswith("{") and "event" in (e := json.loads(x))]


async def _wait(log, pred, timeout: float, proc) -> dict:
    for _ in range(int(timeout / 0.05)):
        for e in _events(log):
            if pred(e):
                return e
        assert proc.alive(), proc.tail()
        await asyncio.sleep(0.05)
    raise AssertionError(f"no such event in {timeout} s: {_events(log)}")


async def test_lwm2m_node_lib_client_joins_slgw(procs, tmp_path):
    assert os.path.isdir(os.path.join(JS, "node_modules", "lwm2m-node-lib")), \
        "the npm interop peer is missing: run `make test` (it runs npm ci in tests/interop_js)"
    sim = Clock(start=1_800_000_000.0, speed=1.0)  # a simulated clock is trusted: time is written
    port = free_port(socket.SOCK_DGRAM)
    async with gateway(tmp_path / "gw", clock=sim, coap__port=port) as gw:
        cli = procs.start("lwm2m-node-lib-client", ["node", os.path.join(JS, "client_scenario.js"), str(port),
                                                    "js-client"])
        reg = await _wait(cli.log, lambda e: e["event"] in ("registered", "error"), 15, cli)
        assert reg["event"] == "registered" and reg["location"].startswith("rd/"), reg
        assert gw.registry.is_registered("js-client")
        assert gw.registry.objects("js-client") == [3, 3311]
        # the time Write after Register, as text/plain
        tw = await _wait(cli.log, lambda e: e["event"] == "write" and e["path"] == "/3/0/13"
                         and e["value"] != "0", 20, cli)
        assert abs(int(tw["value"]) - sim.now()) < 60
        await asyncio.sleep(0.3)
        assert gw.timesync.writes >= 1
        # a level command
        res = await gw.commands.submit("js-client", "level", {"level": 25}, wait=10)
        assert res["commands"][0]["state"] == "delivered", res
        await _wait(cli.log, lambda e: e["event"] == "write" and e["path"] == "/3311/0/5851"
                    and e["value"] == "25", 5, cli)
        # an object it does not have: refused before anything is sent
        with pytest.raises(CommandError, match="did not register object 10250"):
            await gw.commands.submit("js-client", "override", {"level": 10, "seconds": 60})
        assert not [e for e in _events(cli.log) if e["event"] == "write" and e["path"].startswith("/10250")]
