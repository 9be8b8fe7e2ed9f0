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

import aiocoap
import cbor2

sys.path.insert(0, os.path.dirname(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(__file__)), "gateway"))
from app_support import free_udp_port, read_truth, start_emulator, wait_until, write_toml  # noqa: E402
from slgw_harness import SLGW, SlgwProcess  # noqa: E402

from tools.slnode import emulate  # noqa: E402

SPEED = 20.0


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


def stored(store) -> tuple[int, float]:
    """(number of readings, latest received_at) the gateway stored for lamp-1 (read-only)."""
    import sqlite3

    conn = sqlite3.connect(f"file:{store}?mode=ro", uri=True, timeout=10)
    try:
        n, last = conn.execute("SELECT count(*), max(received_at) FROM readings WHERE source = 'lamp-1'").fetchone()
        return n, last or 0.0
    finally:
        conn.close()


async def test_node_and_gateway_sigkills_lock_nobody_out_and_reuse_no_sequence_number(tmp_path):
    """The real firmware and the real `slgw serve` on OSCORE, power cuts on both sides (SIGKILL):
    the node killed while the gateway runs (the gateway's replay window is known: a sequence
    number the node used before would count as a replay and be refused), then the gateway killed
    (it lost its windows: 4.01 + Echo, the node resends), then the node again, and a command to
    it (its own window unset after the boot: the gateway answers its Echo). After each restart the
    node's reports are stored again and the gateway counted no replay and no unknown key; then a
    node whose sequence-number record is lost (what a node without RFC 8613 B.1.1 would do) is
    caught by that very counter, so the check can fail."""
    coap_port = free_udp_port()
    keys_src = tmp_path / "node-keys"
    toml = write_toml(tmp_path / "node.toml", report_period=30, lifetime=120, jitter=1, default_level=100)
    p = argparse.ArgumentParser()
    emulate.add_arguments(p)
    spec = emulate.prepare(p.parse_args([
        "--id", "lamp-1", "--gateway", f"coap://127.0.0.1:{coap_port}", "--flash", str(tmp_path / "flash"),
        "--config", str(toml), "--clock-speed", str(SPEED), "--ack-timeout", "300",
        "--truth", str(tmp_path / "truth.jsonl"), "--truth-period", "10", "--oscore-keys", str(keys_src)]))
    kdir = tmp_path / "gwkeys"
    r = subprocess.run([SLGW, "keys", "import", "--keys-dir", str(kdir), str(keys_src / "lamp-1.oscore.json")],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    gws = [SlgwProcess(tmp_path, "--coap-keys-dir", str(kdir), security="oscore", coap_port=coap_port).start()]
    store = gws[0].store
    nodes = []
    log = tmp_path / "node.log"

    def node_boots():
        nodes.append(start_emulator(spec, log))

    async def reports_flow(what: str) -> None:
        """Two more readings stored after now, through the current gateway, nothing refused."""
        n0, _ = stored(store)
        await asyncio.to_thread(wait_until, lambda: stored(store)[0] >= n0 + 2, 40, f"reports {what}")
        sec = gws[-1].api("GET", "/api/health")["oscore"]
        assert sec["replays"] == 0 and sec["unknown_kid"] == 0, (what, sec)

    try:
        node_boots()
        await reports_flow("after the first boot")
        nodes[-1].kill()  # power cut of the node; the gateway keeps its replay window
        node_boots()
        await reports_flow("after the node's power cut")
        gws[-1].kill9()  # the gateway crashes: its windows are gone
        # what it restarts from: no replay window, so only the Echo exchange lets the node back in
        assert json.loads((kdir / "lamp-1" / "sequence.json").read_text())["received"] == "unknown"
        gws.append(SlgwProcess(tmp_path, "--coap-keys-dir", str(kdir), security="oscore", store=store,
                               coap_port=coap_port).start())
        await reports_flow("after the gateway's crash (Echo)")
        nodes[-1].kill()
        node_boots()
        await reports_flow("after both crashed")
        r = await asyncio.to_thread(gws[-1].cli, "--json", "set-level", "lamp-1", "30", "--wait", "20")
        assert r.returncode == 0 and json.loads(r.stdout)["summary"].get("delivered") == 1, r.stdout + r.stderr
        (n,) = gws[-1].api("GET", "/api/nodes")["nodes"]
        assert n["registered"] and n["online"], n
        # the control: a node that forgets its sequence numbers reuses them, and is caught
        nodes[-1].kill()
        for f in (tmp_path / "flash").glob("oscore-*.seq*"):
            f.unlink()
        node_boots()
        await asyncio.to_thread(wait_until, lambda: gws[-1].api("GET", "/api/health")["oscore"]["replays"] > 0,
                                40, "the reused sequence numbers counted as replays")
    finally:
        for proc in nodes:
            proc.kill()
        for gw in gws:
            gw.stop()
