"""The issue 11 report attacks end to end: `aiocoap-client` (a real third-party CoAP client) as a
node that is registered (in a real deployment: holding valid OSCORE keys; here the demo's
`security = "none"`) sends forged reports to the real `slgw serve`. Each is answered 4.00 and
stored nothing; the site total, the node's live state and its genuine reports are unharmed;
`slgw node show`, `slgw nodes` and `/api/health` count the refusals."""

from __future__ import annotations

import json
import subprocess
import time

from slgw_harness import AIOCOAP_CLIENT, SlgwProcess

from protocol import report


def coap(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([AIOCOAP_CLIENT, *args], capture_output=True, text=True, timeout=30)


def send(gw: SlgwProcess, path, reps: list[tuple]) -> subprocess.CompletedProcess:
    path.write_bytes(report.encode_reports(reps))
    return coap("-m", "POST", f"coap://127.0.0.1:{gw.coap_port}/dp?ep=lamp-1",
                "--content-format", "application/senml+cbor", "--payload", f"@{path}")


def test_forged_reports_from_a_registered_node_are_refused(tmp_path):
    now = int(time.time())
    desc = tmp_path / "desc.cbor"
    desc.write_bytes(report.encode_descriptor("1.0.0", 48.85, 2.35, "rue-a", "cab-1", 40.0, 100,
                                              "UTC0"))
    p = tmp_path / "pack.cbor"
    with SlgwProcess(tmp_path) as gw:
        r = coap("-m", "POST", f"coap://127.0.0.1:{gw.coap_port}/rd?ep=lamp-1&lt=300&lwm2m=1.1",
                 "--content-format", "application/link-format", "--payload", "</3311/0>")
        assert r.returncode == 0, r.stderr
        r = coap("-m", "POST", f"coap://127.0.0.1:{gw.coap_port}/dp?ep=lamp-1",
                 "--content-format", "application/senml+cbor", "--payload", f"@{desc}")
        assert r.returncode == 0, r.stderr
        # genuine: 10 Wh in 15 minutes from the 40 W lamp
        r = send(gw, p, [(1, now - 1800, 1000, 40.0, 100, 3600, 0),
                         (2, now - 900, 1010, 40.0, 100, 4500, 0)])
        assert r.returncode == 0, r.stderr

        forged = [
            ([(3, now - 800, 10**15, 40.0, 100, 4600, 0)], "implausible counter"),
            ([(3, now - 800, 2**32 - 2, 40.0, 100, 4600, 0)], "implausible energy"),
            ([(2**63 - 1, now - 800, 1011, 40.0, 100, 4600, 0)], "implausible seq"),
            ([(3, 1_580_000_000, 1011, 40.0, 100, 4600, 0)], "implausible time_order"),
            ([(0, now - 2000, 999, 40.0, 100, 4600, 0)], "implausible out_of_order"),
        ]
        for reps, why in forged:
            r = send(gw, p, reps)
            assert r.returncode != 0 and "4.00" in r.stderr and why in r.stderr, (why, r.stderr)

        # the genuine next report: stored, not a "duplicate", and the live state follows it
        r = send(gw, p, [(3, now - 60, 1018, 40.0, 100, 5340, 0)])
        assert r.returncode == 0, r.stderr
        e = json.loads(gw.cli("energy", "--json", "--node", "lamp-1", "--by", "15min").stdout)
        assert e["total_wh"] == 18  # 1000 -> 1018: none of the forged energy
        show = gw.cli("node", "show", "lamp-1", "--json")
        assert show.returncode == 0, show.stderr
        node = json.loads(show.stdout)["node"]
        assert node["wh"] == 1018 and node["implausible_reports"] == 5
        assert "never stored" in node["implausible_last"]["reason"]
        health = gw.api("GET", "/api/health")
        assert health["implausible"]["counter"] == 1 and health["implausible"]["seq"] == 1
        assert sum(health["implausible"].values()) == 5
        # one warning per minute for the node, however many refusals
        assert gw.log().count("node lamp-1: Send refused") == 1


async def test_a_node_refused_for_its_clock_gets_the_time_written(tmp_path):
    """A node whose clock ran an hour ahead: its report is refused (time_future), and the
    gateway (trusted simulated clock) writes the time, as a stored report with drift would."""
    import asyncio

    from coap_peers import AiocoapNode, gateway

    from gateway.clock import Clock

    clock = Clock(start=1_790_000_000.0, speed=100.0)  # the 60 s sync interval = 0.6 s real
    async with gateway(tmp_path, clock=clock) as gw:
        node = await AiocoapNode("lamp-t", gw.config.coap.port).start()
        try:
            await node.register()
            await node.wait_writes(1)  # the time written after the Register
            assert [w[0] for w in node.writes] == ["/3/0/13"]
            await asyncio.sleep(0.8)
            now = int(clock.now())
            r = await node.send([(1, now + 3600, 10, 40.0, 100, 60, 0)])
            assert r.code.dotted == "4.00" and b"time_future" in r.payload
            await node.wait_writes(2)
            assert [w[0] for w in node.writes] == ["/3/0/13", "/3/0/13"]
            assert abs(node.writes[1][2] - clock.now()) < 120
        finally:
            await node.stop()
