"""The shipped service files: the example config loads as documented, and the systemd unit
has the properties the issue asks for (Type=notify, watchdog, restart, hardening)."""

from __future__ import annotations

import re
from pathlib import Path

from gateway.config import SCHEMA, load_config

ROOT = Path(__file__).resolve().parents[2]


def test_example_config_loads_and_documents_every_key(tmp_path):
    path = ROOT / "gateway/examples/gateway.toml"
    cfg = load_config(str(path), {"store.path": str(tmp_path / "x.db")})
    assert cfg.coap.port == 5683 and cfg.api.bind == "127.0.0.1"
    text = path.read_text()
    for sec, keys in SCHEMA.items():
        assert f"[{sec}]" in text
        for key in keys:
            assert re.search(rf"^#?\s*{key}\s*=", text, re.M), f"{sec}.{key} not in the example"


def test_systemd_unit():
    unit: dict[str, list[str]] = {}
    for line in (ROOT / "gateway/systemd/slgw.service").read_text().splitlines():
        if "=" in line and not line.lstrip().startswith("#"):
            k, v = line.split("=", 1)
            unit.setdefault(k.strip(), []).append(v.strip())
    one = {k: v[-1] for k, v in unit.items()}
    assert one["Type"] == "notify" and int(one["WatchdogSec"]) > 0
    assert one["Restart"] == "on-failure" and one["RestartPreventExitStatus"] == "5"
    assert one["DynamicUser"] == "yes" and one["User"] == "slgw"
    assert one["StateDirectory"] == "slgw"
    assert one["ProtectSystem"] == "strict" and one["ProtectHome"] == "yes"
    assert one["PrivateTmp"] == "yes" and one["NoNewPrivileges"] == "yes"
    assert "slgw serve" in one["ExecStart"]
