"""The HTTP API under an OpenAPI fuzzer: schemathesis (`st run`, a subprocess stopped by pid)
against the real `slgw serve`, seeded with real nodes (the firmware in the MicroPython Unix
port, two groups, two cabinets), a schedule and commands, so generated requests reach the
handlers instead of stopping at 404. Fixed seed, bounded examples: zero server errors (5xx)
and zero responses that differ from /openapi.json."""

from __future__ import annotations

import json
import time

from slgw_harness import BIN, SlgwProcess

TOKEN = "fuzz-t0ken"
NODES = ["north-000", "north-001", "south"]  # --count 1 keeps the bare id
TARGETS = [*NODES, "group:north", "group:south", "cabinet:K1", "cabinet:K2", "all"]
SEED = 16


def start_nodes(procs, gw: SlgwProcess, tmp) -> None:
    for i, (name, count) in enumerate((("north", 2), ("south", 1))):
        conf = tmp / f"{name}.toml"
        conf.write_text("\n".join([
            f'id = "{name}"', f'gateway = "coap://127.0.0.1:{gw.coap_port}"', "lat = 45.76",
            "lon = 4.83", 'tz = "UTC0"', f'group = "{name}"', f'cabinet = "K{i + 1}"',
            "rated_w = 40.0", "default_level = 100", "report_period = 10", "jitter = 0", "",
            "[meter]", 'type = "emulated"', ""]))
        procs.start(f"nodes-{name}", [str(BIN / "slnode"), "emulate", "--id", name, "--count",
                                      str(count), "--gateway", f"coap://127.0.0.1:{gw.coap_port}",
                                      "--flash", str(tmp / f"flash-{name}"), "--config", str(conf),
                                      "--time-valid"])


def seed(gw: SlgwProcess) -> None:
    """Every node registered and reporting; schedules, a level and an override submitted."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        nodes = gw.api("GET", "/api/nodes", token=TOKEN)["nodes"]
        if len(nodes) == len(NODES) and all(n["last_report"] for n in nodes):
            break
        time.sleep(0.3)
    else:
        raise AssertionError(f"nodes did not register and report: {nodes}\n{gw.log()}")
    steps = {"steps": [[1, 0, 100], [0, 1350, 40], [2, 0, 0]], "wait": 10}
    for target in ("group:north", "south"):  # delivered or not (a loaded machine), it is stored
        assert gw.api("PUT", f"/api/schedules/{target}", steps, token=TOKEN)["batch"]
    gw.api("POST", "/api/set-level", {"target": "north-000", "level": 40, "wait": 10}, token=TOKEN)
    gw.api("POST", "/api/override", {"target": "south", "level": 20, "seconds": 3600, "wait": 10},
           token=TOKEN)


CONFIG = """
[dictionaries.nodes]
values = {nodes}
[dictionaries.targets]
values = {targets}

[parameters]
"path.id" = {{ dictionary = "nodes", probability = 0.7 }}
"path.target" = {{ dictionary = "targets", probability = 0.7 }}
"query.node" = {{ dictionary = "nodes", probability = 0.5 }}
"body.target" = {{ dictionary = "targets", probability = 0.7 }}
"""


def test_fuzzer_finds_no_server_error_and_no_schema_violation(procs, tmp_path):
    gw = SlgwProcess(tmp_path, "--api-token", TOKEN, "--commands-timeout-s", "1")
    try:
        gw.start()
        start_nodes(procs, gw, tmp_path)
        seed(gw)
        cfg = tmp_path / "schemathesis.toml"
        cfg.write_text(CONFIG.format(nodes=json.dumps([*NODES, "ghost"]),
                                     targets=json.dumps([*TARGETS, "group:ghost"])))
        st = procs.start("schemathesis", [
            str(BIN / "st"), "--config-file", str(cfg), "run", f"{gw.url}/openapi.json",
            "-H", f"Authorization: Bearer {TOKEN}",
            "--checks", "not_a_server_error,response_schema_conformance,status_code_conformance,"
                        "content_type_conformance",
            "--phases", "examples,coverage,fuzzing", "--max-examples", "40", "--seed", str(SEED),
            "--workers", "1", "--request-timeout", "30",
            ])
        st.popen.wait(timeout=240)
        text = (tmp_path / "schemathesis.log").read_text(errors="replace")
        assert st.popen.returncode == 0, text[-6000:] + "\n--- gateway log\n" + gw.log()[-3000:]
        assert "Server error" not in text
    finally:
        gw.stop()
