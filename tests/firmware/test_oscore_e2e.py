"""End to end with OSCORE (issue 11): the real firmware in `slnode emulate` (keys from
`--oscore-keys`) against the real `slgw serve` with ``security = "oscore"`` and the node's key
imported with `slgw keys import`. The node registers, its Sends are stored, `slgw set-level`
reaches the lamp; an unprotected forged PUT from a plain aiocoap client gets 4.01 and the lamp
level does not move."""

import argparse
import asyncio
import json
import os
import subprocess
import sys
import time

import aiocoap
import cbor2

sys.path.insert(0, os.path.dirname(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(__file__)), "gateway"))
from app_support import free_udp_port, read_truth, start_emulator, write_toml  # noqa: E402
from slgw_harness import SLGW, SlgwProcess  # noqa: E402

from tools.slnode import emulate  # noqa: E402

SPEED = 20.0


def wait_until(cond, timeout, what):
    end = time.monotonic() + timeout
    while True:
        v = cond()
        if v:
            return v
        if time.monotonic() > end:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


def last_level(truth_path):
    lines = [x for x in read_truth(truth_path) if x.get("id") == "lamp-1"]
    return lines[-1]["level"] if lines else None


async def test_emulated_node_against_slgw_serve_with_oscore(tmp_path):
    coap_port = free_udp_port()
    node_port = free_udp_port()
    keys_src = tmp_path / "node-keys"
    toml = write_toml(tmp_path / "node.toml", report_period=30, lifetime=120, jitter=1, default_level=100)
    p = argparse.ArgumentParser()
    emulate.add_arguments(p)
    spec = emulate.prepare(p.parse_args([
        "--id", "lamp-1", "--gateway", f"coap://127.0.0.1:{coap_port}", "--flash", str(tmp_path / "flash"),
        "--config", str(toml), "--clock-speed", str(SPEED), "--ack-timeout", "300", "--port", str(node_port),
        "--truth", str(tmp_path / "truth.jsonl"), "--truth-period", "10", "--oscore-keys", str(keys_src)]))
    kdir = tmp_path / "gwkeys"
    r = subprocess.run([SLGW, "keys", "import", "--keys-dir", str(kdir), str(keys_src / "lamp-1.oscore.json")],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    gw = SlgwProcess(tmp_path, "--coap-keys-dir", str(kdir), security="oscore", coap_port=coap_port).start()
    node = None
    plain = None
    try:
        node = start_emulator(spec, tmp_path / "node.log")
        truth = tmp_path / "truth.jsonl"

        def registered():
            nodes = gw.api("GET", "/api/nodes")["nodes"]
            return nodes if nodes and nodes[0].get("wh") is not None else None

        (n,) = await asyncio.to_thread(wait_until, registered, 40, "the node's registration and first Send")
        assert n["id"] == "lamp-1" and n["registered"]
        # the operator's command reaches the lamp through the protected Write
        r = await asyncio.to_thread(gw.cli, "--json", "set-level", "lamp-1", "20", "--wait", "20")
        assert r.returncode == 0, r.stdout + r.stderr
        assert json.loads(r.stdout)["summary"].get("delivered") == 1, r.stdout
        await asyncio.to_thread(wait_until, lambda: last_level(truth) == 20, 30, "the lamp at 20 %")
        # an attacker without keys: 4.01, and the lamp stays at 20
        plain = await aiocoap.Context.create_client_context()
        for path, payload in (("/3311/0/5851", cbor2.dumps(0)), ("/10250/0/4", cbor2.dumps([0, 604800]))):
            m = aiocoap.Message(code=aiocoap.PUT, uri=f"coap://127.0.0.1:{node_port}{path}", payload=payload,
                                content_format=60)
            resp = await asyncio.wait_for(plain.request(m).response, 10)
            assert resp.code == aiocoap.UNAUTHORIZED, (path, resp)
        seen = len(read_truth(truth))
        await asyncio.to_thread(wait_until, lambda: len(read_truth(truth)) >= seen + 3, 10,
                                "truth lines after the attack")
        assert last_level(truth) == 20
        (n,) = gw.api("GET", "/api/nodes")["nodes"]
        assert n["address"].endswith(f":{node_port}")  # the registration was not hijacked
        log = (tmp_path / "node.log").read_text()
        assert "SECURITY" not in log  # the node had keys: no unprotected-mode warning
        assert "OSCORE" in gw.log() or "oscore" in gw.log().lower()
    finally:
        if plain is not None:
            await plain.shutdown()
        if node is not None:
            node.kill()
        gw.stop()
