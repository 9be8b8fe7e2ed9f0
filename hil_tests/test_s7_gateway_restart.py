"""Scenario 7: the gateway is SIGKILLed with commands pending and in flight; they are delivered
exactly once, in order, after it restarts on the same store.

Thirty real-firmware nodes in one street, three interpreters of ten:

- batch A stays up throughout;
- batch C loses power long before the commands: the gateway sees it offline, so its commands
  wait as ``pending`` (no attempt);
- batch B loses power just before the commands, while the gateway still thinks it online: its
  Writes are in flight (``delivering``) when the gateway is killed.

The operator runs ``slgw set-level group:G 30`` and then ``slgw override group:G 70 --for 2h``
(the override must win: it was issued last). Then SIGKILL of the gateway, a restart on the same
store and ports, and power returns to B and C: they boot (at their default 100 %), register
again, and the gateway delivers what waited for them.

Checked against the truth files and the CLI:

- every lamp ends at 70 % and, once at 70 %, never shows 30 % again (order preserved; a level
  delivered after the override would leave it at 30 %);
- A: both commands delivered, one attempt each, nothing re-sent after the restart;
- B: the in-flight level and override went back to pending at the restart ("gateway restarted
  during delivery") and were delivered after B's reboot, level first; attempts 2 each (the lost
  one and the good one), delivered once;
- C: the level was superseded by the override while both waited (``cancelled``), the override
  delivered once (one attempt), after C's reboot;
- no command is left pending or delivering, and each (batch, node) appears once.

All of it on OSCORE, the secure default (every node has its own key, imported with `slgw keys
import`): the SIGKILL loses the gateway's replay windows, so A's first request after the restart
is answered 4.01 + Echo and A resends it (SPEC §10.3); B and C boot after power cuts and go on
from their persisted sequence-number bound; the gateway's own Writes meet each rebooted node's
unset window the same way. Checked: nobody is locked out (every node registered again and
reports after the restart), no honest request counted as a replay or an unknown key, no
unprotected request reached the gateway.
"""

from __future__ import annotations

import json
import urllib.request
from collections import Counter

from hil_tests._s5_helpers import gateway_log_errors
from hil_tests.harness import wait_for
from hil_tests.sim import parse_iso

SPEED = 10.0
GROUP = "rue-victor-hugo"
TIMEOUT_S = 20.0  # [commands] timeout_s: long enough for B's Writes to be in flight at the kill
# A rebooted node's replay window is unset: a request the gateway sends it first gets 4.01 + Echo,
# and the node sets its window at the first resend it verifies (RFC 8613 B.1.2). The gateway's
# time Write and a command Write used to race through that exchange (an extra attempt about 1
# run in 5); the gateway now sends a node one request at a time (gateway/coap/client.py).


def plan() -> list[dict]:
    return [{"group": GROUP, "cabinet": "K1", "lat": 45.76 + 0.0001 * i, "lon": 4.83,
             "tz": "CET-1CEST,M3.5.0,M10.5.0/3", "rated_w": 45.0, "report_period": 60, "jitter": 5,
             "lifetime": 60, "default_level": 100}
            for i in range(30)]


def test_pending_commands_survive_a_gateway_crash(hil_clock, gateway, nodes):
    clock = hil_clock("2026-12-15T20:00:00Z", speed=SPEED)
    gw = gateway(clock, args=("--commands-timeout-s", str(TIMEOUT_S)))  # OSCORE, the default
    town = nodes(clock, gw.coap_url, plan(), per_process=10, truth_period=5.0)
    a, b, c = town.batches
    wait_for(lambda: sum(1 for n in gw.nodes().values() if n["registered"] and n["online"]) == 30,
             timeout=30, what="30 registered nodes")

    # C loses power and the gateway notices (its lifetime, 60 sim s, runs out)
    c.power_cut()
    wait_for(lambda: not any(n["online"] for i, n in gw.nodes().items() if i in c.ids), timeout=30,
             what="batch C offline in the gateway")
    assert all(gw.nodes()[i]["online"] for i in a.ids + b.ids)
    # B loses power now: the gateway still believes it online and will try it
    b.power_cut()
    lvl = gw.cli("set-level", f"group:{GROUP}", "30", "--wait", "2")
    ovr = gw.cli("override", f"group:{GROUP}", "70", "--for", "2h", "--wait", "2")

    def states(batch_id: str) -> dict[str, dict]:
        return {x["node"]: x for x in gw.cli("commands", "--batch", batch_id)["commands"]}

    def a_done():
        s1, s2 = states(lvl["batch"]), states(ovr["batch"])
        return all(s1[i]["state"] == "delivered" and s2[i]["state"] == "delivered" for i in a.ids)

    wait_for(a_done, timeout=15, what="both commands delivered to batch A")
    s1, s2 = states(lvl["batch"]), states(ovr["batch"])
    for i in b.ids:  # in flight to a dead node
        assert s1[i]["state"] == "delivering" and s2[i]["state"] == "delivering", (s1[i], s2[i])
    for i in c.ids:  # waiting; the level superseded by the override
        assert s1[i]["state"] == "cancelled" and s2[i]["state"] == "pending" and s2[i]["attempts"] == 0, \
            (s1[i], s2[i])

    # the gateway dies with B's Writes in flight; it comes back on the same store
    gw.kill()
    t_kill = clock.now()
    gw.restart()
    s1, s2 = states(lvl["batch"]), states(ovr["batch"])
    for i in b.ids:
        for s in (s1[i], s2[i]):
            assert s["state"] == "pending" and "restarted" in (s["reason"] or ""), s
    for i in c.ids:
        assert s1[i]["state"] == "cancelled" and s2[i]["state"] == "pending", (s1[i], s2[i])

    # power returns to B and C
    t_power = clock.now()
    b.restart()
    c.restart()

    def all_delivered():
        s1, s2 = states(lvl["batch"]), states(ovr["batch"])
        ok = all(s2[i]["state"] == "delivered" for i in town.ids) and \
            all(s1[i]["state"] == "delivered" for i in a.ids + b.ids)
        return (s1, s2) if ok else None

    s1, s2 = wait_for(all_delivered, timeout=TIMEOUT_S + 15, interval=0.5,
                      what="every command delivered after the restart")

    # every lamp at 70 (truth), and 30 never comes back once 70 was reached
    town.wait_truth(lambda t: all(t[i][-1]["level"] == 70 and t[i][-1]["lamp"] == 70 for i in town.ids),
                    10, "every lamp at 70 %")
    clock.sleep(60)  # a few more truth lines (and an Update round) to see nothing else arrives
    truth = town.truth()
    for i in town.ids:
        lines = truth[i]
        # settled at 70 after the override's delivery (a fade 100 -> 30 passes through 70 on
        # the way down, so only a line with the lamp really at 70 after the delivery counts)
        t_ovr = parse_iso(s2[i]["delivered_at"]) - 1
        k70 = next(k for k, x in enumerate(lines) if x["t"] >= t_ovr and x["level"] == x["lamp"] == 70)
        assert all(x["level"] == 70 for x in lines[k70:]), (i, [x["level"] for x in lines[k70:]])
        if i in b.ids + c.ids:  # after the reboot: the default, then what the gateway delivered
            boot2 = max(k for k, x in enumerate(lines) if x["event"] == "boot")
            assert lines[boot2]["t"] >= t_power - 1 and lines[boot2]["level"] == 100, (i, lines[boot2])
            assert k70 > boot2, i
            if i in c.ids:
                assert 30 not in [x["level"] for x in lines[boot2:]], i  # the cancelled level never ran

    # exactly once, per the gateway's records
    everything = gw.cli("commands", "--node", a.ids[0])["commands"]
    assert len(everything) == 2
    cmds = [x for x in gw.cli("commands")["commands"] if x["batch"] in (lvl["batch"], ovr["batch"])]
    assert Counter((x["batch"], x["node"]) for x in cmds) == Counter(
        [(lvl["batch"], i) for i in town.ids] + [(ovr["batch"], i) for i in town.ids])
    assert not [x for x in cmds if x["state"] in ("pending", "delivering")]
    for i in a.ids:
        assert s1[i]["attempts"] == 1 and s2[i]["attempts"] == 1, (s1[i], s2[i])
        assert parse_iso(s1[i]["delivered_at"]) < t_kill and parse_iso(s2[i]["delivered_at"]) < t_kill
    for i in b.ids:
        assert s1[i]["attempts"] == 2 and s2[i]["attempts"] == 2, json.dumps([s1[i], s2[i]])
        assert parse_iso(s2[i]["delivered_at"]) >= t_power - 1, s2[i]
        assert s1[i]["id"] < s2[i]["id"] and s1[i]["delivered_at"] <= s2[i]["delivered_at"]
    for i in c.ids:
        assert s1[i]["state"] == "cancelled" and s1[i]["attempts"] == 0, s1[i]
        assert s2[i]["attempts"] == 1 and parse_iso(s2[i]["delivered_at"]) >= t_power - 1, s2[i]
    # the nodes that lost power registered again with the restarted gateway and report
    nodes_now = gw.nodes()
    for i in town.ids:
        assert nodes_now[i]["registered"] and nodes_now[i]["online"], nodes_now[i]
        if i in b.ids + c.ids:
            assert parse_iso(nodes_now[i]["registered_at"]) >= t_power - 1, nodes_now[i]
    # OSCORE: nobody locked out, no honest request taken for a replay (a node reusing a sequence
    # number, or a gateway restart forgetting its window wrongly, would count here)
    readings = {i: gw.readings(i) for i in town.ids}
    for i in town.ids:
        assert any(r["received_at"] is not None and r["received_at"] >= t_power
                   for r in readings[i]), (i, readings[i][-3:])
    sec = gw.oscore()
    assert sec is not None and sec["keys"] == 30, sec
    assert sec["replays"] == 0 and sec["unknown_kid"] == 0, sec
    with urllib.request.urlopen(gw.url + "/api/health", timeout=10) as r:
        assert json.loads(r.read())["coap_stats"]["unauthorized"] == 0  # since the restart
    assert not gateway_log_errors(gw), gateway_log_errors(gw)[:10]  # nothing failed on the way
    print(f"s7: kill at {t_kill:.0f}, power back at {t_power:.0f}; every command delivered "
          f"{max(parse_iso(s2[i]['delivered_at']) for i in town.ids) - t_power:.0f} sim s after power returned")
