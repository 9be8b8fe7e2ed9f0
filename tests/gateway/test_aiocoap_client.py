"""Interop with a real third-party CoAP client: `aiocoap-client` registers a node, sends its
descriptor and two SenML-CBOR reports to the real `slgw serve`, and `slgw energy --json`
shows the energy; `slgw nodes --json` shows the node with its metadata."""

from __future__ import annotations

import json
import subprocess
import time

from slgw_harness import AIOCOAP_CLIENT, SlgwProcess

from protocol import report


def coap(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([AIOCOAP_CLIENT, *args], capture_output=True, text=True, timeout=30)


def send(gw: SlgwProcess, payload_file, ep: str = "lamp-1") -> subprocess.CompletedProcess:
    return coap("-m", "POST", f"coap://127.0.0.1:{gw.coap_port}/dp?ep={ep}",
                "--content-format", "application/senml+cbor", "--payload", f"@{payload_file}")


def test_register_report_and_energy(tmp_path):
    now = int(time.time())
    desc = tmp_path / "desc.cbor"
    # rated 1000 W: 250 Wh in 15 minutes from a 40 W lamp would be refused (issue 11)
    desc.write_bytes(report.encode_descriptor("1.0.0", 48.85, 2.35, "rue-a", "cab-1", 1000.0, 100,
                                              "CET-1CEST,M3.5.0,M10.5.0/3"))
    reps = tmp_path / "reports.cbor"
    # two reports a quarter-hour apart: 250 Wh consumed between them
    reps.write_bytes(report.encode_reports([(1, now - 1800, 1000, 40.0, 100, 3600, 0),
                                            (2, now - 900, 1250, 40.0, 100, 4500, 0)]))
    with SlgwProcess(tmp_path) as gw:
        r = coap("-m", "POST",
                 f"coap://127.0.0.1:{gw.coap_port}/rd?ep=lamp-1&lt=300&lwm2m=1.1&b=U",
                 "--content-format", "application/link-format", "--payload", "</3/0>,</3311/0>")
        assert r.returncode == 0, r.stderr
        assert "/rd/" in r.stderr + r.stdout  # Location-Path rd/<reg-id>
        r = send(gw, desc)
        assert r.returncode == 0, r.stderr
        r = send(gw, reps)
        assert r.returncode == 0, r.stderr
        # a replay of the same pack is acknowledged and counts nothing twice
        assert send(gw, reps).returncode == 0

        e = gw.cli("energy", "--json")
        assert e.returncode == 0, e.stderr
        assert json.loads(e.stdout)["total_wh"] == 250

        e = gw.cli("energy", "--json", "--node", "lamp-1", "--by", "15min")
        assert json.loads(e.stdout)["total_wh"] == 250

        n = gw.cli("nodes", "--json")
        assert n.returncode == 0, n.stderr
        (node,) = json.loads(n.stdout)["nodes"]
        assert node["id"] == "lamp-1" and node["online"] is True
        assert node["address"].startswith("127.0.0.1:")
        assert node["group"] == "rue-a" and node["cabinet"] == "cab-1"
        assert node["lat"] == 48.85 and node["wh"] == 1250 and node["modbus_slot"] == 0
        assert node["last_report"] is not None and node["faults"] == []


def test_report_in_cbor_diagnostic_notation(tmp_path):
    # aiocoap-client turns diagnostic notation into CBOR itself (through cbor-diag): a third
    # encoder of the same pack, with its own choice of float widths.
    now = int(time.time())
    diag = (f'[{{-2: "/10250/0/", -3: {now - 900}, 0: "0", 2: 7}}, {{0: "1", 2: 0}}, '
            f'{{-2: "/3311/0/", 0: "5805", 2: 2000}}, {{0: "5851", 2: 60}}, {{0: "5852", 2: 90}}, '
            f'{{-2: "/3305/0/", 0: "5800", 2: 23.5}}, '
            f'{{-2: "/10250/0/", -3: {now - 60}, 0: "0", 2: 8}}, '
            f'{{-2: "/3311/0/", 0: "5805", 2: 2042}}]')
    with SlgwProcess(tmp_path) as gw:
        r = coap("-m", "POST", f"coap://127.0.0.1:{gw.coap_port}/rd?ep=diag-1&lt=300&lwm2m=1.1&b=U",
                 "--content-format", "application/link-format", "--payload", "</3311/0>")
        assert r.returncode == 0, r.stderr
        r = coap("-m", "POST", f"coap://127.0.0.1:{gw.coap_port}/dp?ep=diag-1",
                 "--content-format", "application/senml+cbor", "--payload", diag)
        assert r.returncode == 0, r.stderr
        (node,) = json.loads(gw.cli("nodes", "--json").stdout)["nodes"]
        assert node["wh"] == 2042
        assert json.loads(gw.cli("energy", "--json").stdout)["total_wh"] == 42
        # plain CBOR (content-format 60) is not a Send: 4.15, and aiocoap-client exits non-zero
        r = coap("-m", "POST", f"coap://127.0.0.1:{gw.coap_port}/dp?ep=diag-1",
                 "--content-format", "application/cbor", "--payload", "[1, 2]")
        assert r.returncode != 0 and "4.15" in r.stdout + r.stderr
