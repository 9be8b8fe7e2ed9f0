"""The emulated node (real firmware in `micropython`) managed by an independent LwM2M server:
lwm2m-node-lib 1.4.0 (Telefonica, npm; pinned in tests/interop_js/package.json, installed by
`make test`), driven by tests/interop_js/server_scenario.js.

It is a LwM2M 1.0 server that speaks text/plain to single resources, so this checks what a
plain standard server sees (protocol/SPEC.md §11): Register (OMA-TS-LightweightM2M-Core 1.1
§6.2.1), Read and Write in text/plain (§5.4.1, §5.4.3, §7.3), Write-Attributes that never write
a value (§5.4.4), Discover (§5.4.2), Observe honouring pmin/pmax (§5.5.1, §5.1.2; RFC 7641),
and Execute (§5.4.5).
"""

import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(__file__))
from app_support import emulator_spec, free_udp_port, start_emulator, write_toml  # noqa: E402

JS = os.path.join(os.path.dirname(__file__), "..", "interop_js")


def _steps(log):
    out = {}
    if log.exists():
        for line in log.read_text().splitlines():
            if line.startswith("{"):
                j = json.loads(line)
                out[j["step"]] = j
    return out


def test_lwm2m_node_lib_server_manages_the_node(procs, tmp_path):
    assert os.path.isdir(os.path.join(JS, "node_modules", "lwm2m-node-lib")), \
        "the npm interop peer is missing: run `make test` (it runs npm ci in tests/interop_js)"
    port = free_udp_port()
    srv = procs.start("lwm2m-node-lib", ["node", os.path.join(JS, "server_scenario.js"), str(port)])
    deadline = time.monotonic() + 10
    while "listening" not in _steps(srv.log):
        assert srv.alive() and time.monotonic() < deadline, srv.tail()
        time.sleep(0.05)
    toml = write_toml(tmp_path / "node.toml", lat=45.76, lon=4.84, tz="UTC0", group="rue-A", cabinet="C7",
                      rated_w=60, default_level=100, report_period=30, lifetime=300, jitter=1)
    spec = emulator_spec(tmp_path / "flash", "lamp-js", port, config=toml, speed=1.0, time_valid=True,
                         clock_start="2025-06-15T10:00:00Z")
    node = start_emulator(spec, tmp_path / "node.log")
    try:
        deadline = time.monotonic() + 60
        while "done" not in (steps := _steps(srv.log)):
            assert srv.alive() and time.monotonic() < deadline, (steps, srv.tail())
            time.sleep(0.2)
    finally:
        node.kill()
    s = steps
    reg = s["register"]["value"]
    assert reg["endpoint"] == "lamp-js" and reg["version"] == "1.1"
    assert reg["payload"].startswith('</>;rt="oma.lwm2m";ct=112,')  # Core 1.1 §6.2.1
    for step in ("read_manufacturer", "read_level", "write_level", "read_level_after", "read_group",
                 "wattr_group", "read_group_after", "wattr_level", "discover_resource", "discover_instance",
                 "discover_object", "observe", "write_level_80", "execute_identify"):
        assert s[step]["error"] is None, (step, s[step])
    assert s["read_manufacturer"]["value"] == "streetlight-edge"
    assert s["read_level"]["value"] == "100" and s["read_level_after"]["value"] == "40"
    # the same state through uCIFI's Outdoor lamp controller (SPEC §12)
    assert s["read_ucifi_command"]["value"] == s["read_ucifi_dimming"]["value"] == "40"
    # Write-Attributes never writes a value (issue 15 item 2)
    assert s["read_group"]["value"] == s["read_group_after"]["value"] == "rue-A"
    disc = s["discover_resource"]["value"]
    assert "</3311/0/5851>" in json.dumps(disc) and "pmin" in json.dumps(disc)
    assert "5805" in json.dumps(s["discover_instance"]["value"])
    assert "3311/0" in json.dumps(s["discover_object"]["value"])
    # Observe with pmin 1 s / pmax 3 s: the 2 s fade to 80 gives a few notifications (not one
    # per 1 % step), the last one 80; then periodic ones at pmax without a change
    notes = s["notifications"]["value"]
    values = [v for _, v in notes]
    assert "80" in values, notes
    first80 = values.index("80")
    fade = notes[: first80 + 1]
    assert 1 <= len(fade) <= 4, notes
    assert all(b - a >= 900 for (a, _), (b, _) in zip(fade, fade[1:], strict=False)), notes  # pmin 1 s
    after = notes[first80 + 1 :]
    assert 1 <= len(after) <= 3 and all(v == "80" for _, v in after), notes  # pmax 3 s within ~5 s
    # Execute on a value is refused, an unknown resource is 4.04 (Core 1.1 §5.4, SPEC §8)
    assert s["execute_value"]["error"] and "4.05" in s["execute_value"]["error"]
    assert s["read_unknown"]["error"]
    srv_rc = srv.popen.wait(timeout=10)
    assert srv_rc == 0
