"""`make demo` is the main job: it must bring up the town and stop it cleanly."""

import asyncio
import json
import socket
import subprocess
import sys
import threading
import time
import urllib.request

import aiocoap

from protocol import report
from tools.procs import ROOT, free_port, wait_for


def test_demo_brings_up_a_town_on_oscore_and_stops_everything(tmp_path, procs):
    """The demo runs the secure default: every node has its own key (made as `slnode emulate
    --oscore-keys` makes them, installed with `slgw keys import`), the gateway runs `security =
    "oscore"`, the nodes register and report through it, and a plain CoAP client without keys is
    refused 4.01 (with `security = "none"`, as the demo ran before, it was 2.01 and stored)."""
    state = tmp_path / "demo"
    coap_port, api_port = free_port(), free_port(socket.SOCK_STREAM)
    proc = procs.start("demo", [sys.executable, "-m", "tools.demo", "--coap-port", str(coap_port),
                                "--api-port", str(api_port), "--duration", "15", "--nodes", "4",
                                "--state-dir", str(state), "--no-view"], stdout_pipe=True)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(x.decode() for x in proc.popen.stdout), daemon=True)
    reader.start()
    api = f"http://127.0.0.1:{api_port}"

    def get(path: str) -> dict:
        with urllib.request.urlopen(api + path, timeout=5) as r:
            return json.loads(r.read())

    def out() -> str:
        return "".join(lines) + proc.tail()

    wait_for(lambda: "all nodes registered; programme pushed\n" in lines or not proc.alive(), 150,
             what="the demo's town")
    assert proc.alive(), out()
    health = get("/api/health")
    assert health["oscore"] is not None and health["oscore"]["keys"] == 4, health
    # every node reports through its protected context
    nodes = wait_for(lambda: (lambda ns: ns if len(ns) == 4 and all(n["wh"] is not None for n in ns) else None)(
        get("/api/nodes")["nodes"]), 30, what="a report from every node")
    addresses = {n["id"]: n["address"] for n in nodes}
    # a client without keys: its Register and its forged Send are refused, nothing changes
    forged = report.encode_reports([(2**40, int(time.time()), 10**15, 40, 100, 0, 0)])

    async def attack() -> list:
        ctx = await aiocoap.Context.create_client_context()
        try:
            codes = []
            for path, query, cf, payload in (("rd", ("ep=lamp-A-000", "lt=300", "lwm2m=1.1", "b=U"), 40,
                                              b"</3311/0>"),
                                             ("dp", ("ep=lamp-A-000",), 112, forged)):
                m = aiocoap.Message(code=aiocoap.POST, uri=f"coap://127.0.0.1:{coap_port}/{path}",
                                    payload=payload, content_format=cf)
                m.opt.uri_query = query
                codes.append((await asyncio.wait_for(ctx.request(m).response, 20)).code)
            return codes
        finally:
            await ctx.shutdown()

    assert asyncio.run(attack()) == [aiocoap.UNAUTHORIZED, aiocoap.UNAUTHORIZED]
    health = get("/api/health")
    assert health["coap_stats"]["unauthorized"] == 2, health
    assert health["oscore"]["replays"] == 0 and health["oscore"]["unknown_kid"] == 0, health
    after = {n["id"]: n for n in get("/api/nodes")["nodes"]}
    assert {i: n["address"] for i, n in after.items()} == addresses
    assert all(n["wh"] < 10**6 for n in after.values()), after
    gwlog = (state / "gateway.log").read_text()
    assert "OSCORE: keys of 4 nodes loaded" in gwlog and "NOT protected" not in gwlog

    assert proc.popen.wait(timeout=120) == 0, out()
    reader.join(timeout=10)
    text = "".join(lines)
    first = text.splitlines()[0]  # issue 14: the page's address before anything else
    assert first.startswith("web view: http://127.0.0.1:") and "/web/" in first, text[:300]
    assert "Cabinet A: 2/2 online" in text and "Cabinet B: 2/2 online" in text
    assert "cabinet-A: ok" in text and "cabinet-B: ok" in text
    assert text.rstrip().endswith("stopped the gateway, the nodes and the meters"), text[-2000:]
    # nothing the demo started is left running
    left = subprocess.run(["pgrep", "-f", str(state)], capture_output=True, text=True)
    assert left.stdout.strip() == "", left.stdout


def test_demo_names_a_taken_port_at_once_and_how_to_choose_others(tmp_path):
    """It used to wait 30 s and say `(last: None)`; now it checks both ports before starting
    anything and exits 2 naming the taken one and the make variables that choose others."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        api_port = busy.getsockname()[1]
        state = tmp_path / "demo"
        r = subprocess.run(
            [sys.executable, "-m", "tools.demo", "--api-port", str(api_port), "--coap-port",
             str(free_port()), "--duration", "5", "--nodes", "2", "--state-dir", str(state),
             "--no-view"], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert r.returncode == 2, r.stdout + r.stderr
    assert f"TCP port {api_port} (the gateway API)" in r.stderr
    assert "make demo API_PORT=" in r.stderr and "--url http://127.0.0.1:" in r.stderr
    assert "last: None" not in r.stderr and not state.exists()  # nothing was started


def test_make_demo_passes_the_port_variables_on():
    """README: `make demo API_PORT=8081 COAP_PORT=5684` (or FREE_PORTS=1) chooses other ports."""
    r = subprocess.run(["make", "-n", "demo", "API_PORT=8081", "COAP_PORT=5684", "FREE_PORTS=1"],
                       cwd=ROOT, capture_output=True, text=True, timeout=30)
    line = " ".join(r.stdout.replace("\\\n", " ").split())
    assert r.returncode == 0, r.stderr
    assert "-m tools.demo --api-port 8081 --coap-port 5684 --free-ports" in line, r.stdout
