"""Scenario 1, commissioning: 20 real-firmware nodes boot, register and describe themselves;
`slgw nodes --json` lists each with the location, group and cabinet of its own config."""

from __future__ import annotations

import pytest

from hil_tests._s5_helpers import gateway_log_errors
from hil_tests.harness import wait_for

# Two streets in two cabinets of a small French town (Vienne, Isère), 20 poles.
STREETS = [("rue-de-la-republique", "C12", 45.5253, 4.8746), ("quai-jean-jaures", "C07", 45.5229, 4.8690)]


def plan(n: int = 20) -> list[dict]:
    out = []
    for i in range(n):
        group, cab, lat, lon = STREETS[i % 2]
        out.append({"group": group, "cabinet": cab, "lat": round(lat + 0.0002 * i, 6),
                    "lon": round(lon - 0.0003 * i, 6), "rated_w": 30.0 + 2 * i, "tz": "CET-1CEST,M3.5.0,M10.5.0/3",
                    "report_period": 900, "jitter": 30, "default_level": 100 if i % 3 else 80})
    return out


def test_twenty_nodes_commission(hil_clock, gateway, nodes):
    clock = hil_clock("2026-12-15T16:00:00Z", speed=60)
    gw = gateway(clock)
    town = nodes(clock, gw.coap_url, plan(20), per_process=10)
    assert len(town.ids) == 20

    def listed():
        got = gw.nodes()
        ok = {i for i in town.ids if i in got and got[i]["registered"] and got[i]["online"]
              and got[i]["group"] is not None and got[i]["fw"]}
        return got if len(ok) == len(town.ids) else None

    got = wait_for(listed, timeout=45, what="20 registered nodes with their descriptors")
    assert set(got) == set(town.ids)  # nobody else, nobody twice
    for nid in town.ids:
        cfg, node = town.configs[nid], got[nid]
        assert node["group"] == cfg["group"], nid
        assert node["cabinet"] == cfg["cabinet"], nid
        assert node["lat"] == pytest.approx(cfg["lat"], abs=1e-5), nid
        assert node["lon"] == pytest.approx(cfg["lon"], abs=1e-5), nid
        assert node["rated_w"] == pytest.approx(cfg["rated_w"]), nid
        assert node["default_level"] == cfg["default_level"], nid
        assert node["tz"] == cfg["tz"], nid
    # the group and cabinet filters see the same membership as the configs
    for group in {c["group"] for c in town.configs.values()}:
        members = {n["id"] for n in gw.cli("nodes", "--group", group)["nodes"]}
        assert members == {i for i, c in town.configs.items() if c["group"] == group}
    # the nodes really run their firmware: each reports its configured fail-safe level (no
    # schedule was pushed), which the truth shows the lamp giving
    truth = town.wait_truth(lambda t: t if all(t[i] for i in town.ids) else None, 30, "a truth line per node")
    for nid in town.ids:
        assert truth[nid][-1]["lamp"] == town.configs[nid]["default_level"], nid
    # the gateway kept serving without an error on the way (SIGKILLs and faults are warnings at most)
    assert not gateway_log_errors(gw), gateway_log_errors(gw)
