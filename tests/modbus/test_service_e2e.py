"""The real `slgw serve` with a meter and the bridge configured: an emulated SDM630 (its own
process, lacking one register of its profile) is polled into the store, `slgw meters [--json]`
and `slgw energy` show it, `mbpoll` reads the bridge and its values match `slgw nodes --json`;
an invalid profile stops start-up with a message naming the meter and the key."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from protocol import report
from tools.meters.harness import start_tcp_meter

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "gateway"))
from slgw_harness import AIOCOAP_CLIENT, SLGW, SlgwProcess, free_port  # noqa: E402


def coap(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([AIOCOAP_CLIENT, *args], capture_output=True, text=True, timeout=30)


def mbpoll(port: int, ref: int, count: int) -> dict[int, float]:
    r = subprocess.run(["mbpoll", "-m", "tcp", "-p", str(port), "-a", "1", "-1", "-0", "-t", "3:float",
                        "-B", "-r", str(ref), "-c", str(count), "127.0.0.1"],
                       capture_output=True, text=True, timeout=20)
    assert r.returncode == 0, r.stdout + r.stderr
    return {int(m[1]): float(m[2]) for m in re.finditer(r"^\[(\d+)\]:\s+(\S+)", r.stdout, re.M)}


def wait(pred, timeout, what):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = pred()
        if v:
            return v
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def test_slgw_polls_a_meter_and_serves_scada(procs, tmp_path):
    # this meter lacks the profile's frequency register (issue 16): polled without it
    _, mport = start_tcp_meter(procs, "sdm630", load_w=1800, speed=120, extra=["--missing", "0x46-0x47"])
    bport = free_port()
    conf = tmp_path / "gateway.toml"
    conf.write_text(f"""
[[modbus.meters]]
name = "cab-1-main"
profile = "eastron-sdm630"
transport = "tcp"
host = "127.0.0.1"
port = {mport}
cabinet = "cab-1"
period = "0.3s"
timeout = "0.5s"

[modbus_server]
enabled = true
port = {bport}
""")
    now = int(time.time())
    desc = tmp_path / "desc.cbor"
    desc.write_bytes(report.encode_descriptor("1.0.0", 48.85, 2.35, "rue-a", "cab-1", 40.0, 100, "UTC0"))
    reps = tmp_path / "reports.cbor"
    # 10 Wh in 15 minutes from a 40 W lamp (in 25 s it would be refused as implausible: issue 11)
    reps.write_bytes(report.encode_reports([(1, now - 905, 1000, 38.5, 80, 3600, 0), (2, now - 5, 1010, 38.5, 80, 4500, 0)]))
    with SlgwProcess(tmp_path, "--config", str(conf)) as gw:
        url = f"coap://127.0.0.1:{gw.coap_port}"
        r = coap("-m", "POST", f"{url}/rd?ep=lamp-1&lt=300&lwm2m=1.1&b=U",
                 "--content-format", "application/link-format", "--payload", "</3/0>,</3311/0>")
        assert r.returncode == 0, r.stderr
        for payload in (desc, reps):
            r = coap("-m", "POST", f"{url}/dp?ep=lamp-1", "--content-format", "application/senml+cbor",
                     "--payload", f"@{payload}")
            assert r.returncode == 0, r.stderr

        def meters():
            m = gw.cli("meters", "--json")
            assert m.returncode == 0, m.stderr
            (meter,) = json.loads(m.stdout)["meters"]
            return meter if meter["status"] == "ok" and meter["errors"]["ok"] >= 5 else None

        meter = wait(meters, 20, "five good polls in `slgw meters --json`")
        assert meter["name"] == "cab-1-main" and meter["cabinet"] == "cab-1"
        assert meter["power_w"] == pytest.approx(1800) and meter["import_wh"] > 0
        assert meter["last_poll"].endswith("Z")  # ISO 8601 UTC, as every time (docs/cli.md)
        assert meter["missing_registers"] == [{"name": "frequency", "function": 4, "address": 0x46, "count": 2}]
        human = gw.cli("meters")
        assert human.returncode == 0, human.stderr
        assert "cab-1-main lacks 1 register(s) of profile eastron-sdm630, polled without them: " \
               "frequency (fc 4 0x0046)" in human.stdout
        assert gw.log().count("lacks 'frequency' (fc 4 0x0046) of profile 'eastron-sdm630'") == 1

        # the meter's energy is in the store and in the cabinet's circuit check
        e = wait(lambda: (lambda d: d if d["total_wh"] else None)(
            json.loads(gw.cli("energy", "--json", "--node", "meter:cab-1-main").stdout)), 20, "meter energy")
        assert e["total_wh"] > 0
        c = gw.cli("energy", "--json", "--cabinet", "cab-1")
        assert c.returncode == 0, c.stderr
        assert "meter:cab-1-main" in c.stdout

        # mbpoll against the bridge matches `slgw nodes --json`
        (node,) = json.loads(gw.cli("nodes", "--json").stdout)["nodes"]
        base = 100 + 10 * node["modbus_slot"]
        blk = mbpoll(bport, base, 5)
        assert blk[base] == pytest.approx(node["level"])
        assert blk[base + 2] == pytest.approx(node["power_w"])
        assert blk[base + 4] == pytest.approx(node["wh"] / 1000, rel=1e-6)
        assert blk[base + 6] == (1 if node["online"] else 0) == 1
        tot = mbpoll(bport, 0, 5)
        assert tot[4] == 1 and tot[6] == 1 and tot[8] == 0
        assert tot[0] == pytest.approx(node["power_w"])


def test_invalid_profile_stops_start_up(tmp_path):
    prof = tmp_path / "mine.toml"
    prof.write_text('[[registers]]\nname = "a"\naddress = 0\ntype = "float32"\nunit = "Wh"\nmap = "import_wh"\n'
                    '[[registers]]\nname = "b"\naddress = 1\ntype = "u16"\n')
    conf = tmp_path / "gateway.toml"
    conf.write_text('[[modbus.meters]]\nname = "m1"\nprofile = "mine.toml"\n')
    r = subprocess.run([SLGW, "serve", "--config", str(conf), "--store-path", str(tmp_path / "x.db"),
                        "--coap-bind", "127.0.0.1", "--coap-port", str(free_port()), "--api-port", str(free_port()),
                        "--coap-security", "none"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 5  # configuration error (docs/cli.md)
    out = r.stdout + r.stderr
    assert "[[modbus.meters]] #1 'm1': profile:" in out and "'a'" in out and "'b'" in out and "overlap" in out
