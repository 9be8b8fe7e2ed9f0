"""The harness's fault switches do what the scenarios rely on, seen end to end: a node's clock
jump (corrected by the gateway's time sync), a failed lamp (reported as lampFailure), and an
unplugged cabinet meter (reported by `slgw meters`, back when plugged in)."""

from __future__ import annotations

from hil_tests.harness import wait_for

SPEED = 120.0


def test_clock_jump_lamp_failure_and_meter_unplug(hil_clock, gateway, nodes, meters):
    clock = hil_clock("2026-12-15T18:00:00Z", speed=SPEED)
    cab = meters(clock, ["C9"], line_loss=0.03, period="0.3s")
    gw = gateway(clock, extra_toml=cab.toml())
    town = nodes(clock, gw.coap_url, [{"cabinet": "C9", "group": "g", "rated_w": 40.0, "report_period": 60,
                                       "jitter": 2, "lifetime": 3600} for _ in range(3)], per_process=3)
    cab.feed(town)
    jumper, failing, _ = town.ids
    wait_for(lambda: all(t and t[-1]["time_valid"] for t in town.truth().values()), timeout=20,
             what="valid time on the nodes")
    wait_for(lambda: (gw.cli("meters")["meters"] or [{}])[0].get("status") == "ok", timeout=20,
             what="the cabinet meter polled")

    # clock jump: the node's next report is 2 h ahead; the gateway sees the drift and sets it back
    jumped_at = clock.now()
    town.control(jumper, clock_jump=7200)
    town.control(failing, fail_lamp=True)

    def ahead_then_back():
        truth = {x["seq"]: x for x in town.truth()[jumper] if x["event"] == "report"}
        offs = [(r["seq"], r["t"] - truth[r["seq"]]["t"]) for r in gw.readings(jumper)
                if r["seq"] in truth and truth[r["seq"]]["t"] > jumped_at]
        jumped = [s for s, off in offs if abs(off - 7200) < 60]
        back = [s for s, off in offs if jumped and s > jumped[0] and abs(off) < 30]
        return (jumped, back) if jumped and back else None

    jumped, back = wait_for(ahead_then_back, timeout=30, what="a report 2 h ahead, then corrected ones")
    assert back[0] > jumped[0]

    # the failed lamp: its light is off in the truth, and the gateway lists lampFailure
    wait_for(lambda: "lampFailure" in (gw.nodes()[failing]["faults"] or []), timeout=30,
             what="lampFailure reported for the failed lamp")
    assert town.truth()[failing][-1]["lamp"] == 0
    assert "lampFailure" not in (gw.nodes()[jumper]["faults"] or [])
    assert failing in {n["id"] for n in gw.cli("faults")["faults"]}

    # the meter unplugged: `slgw meters` stops calling it ok, and does again once plugged back
    cab.unplug("C9")
    wait_for(lambda: gw.cli("meters")["meters"][0]["status"] != "ok", timeout=20, what="the unplugged meter")
    cab.unplug("C9", False)
    wait_for(lambda: gw.cli("meters")["meters"][0]["status"] == "ok", timeout=30, what="the meter back")
