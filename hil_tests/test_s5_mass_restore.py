"""Scenario 5: mass power restore. 200 real-firmware nodes boot at the same instant.

Ten MicroPython interpreters of 20 nodes each are started back to back (power returns to a
whole district), straight at the gateway (no relay, no loss: the storm itself is the fault).
Every node waits a uniform random delay in [0, J) before its first Register (SPEC §2, J =
``jitter`` = 24 simulated s here, at 4x: 6 real seconds for the whole district), takes its
first report one report period P after boot (no valid time yet), and from then on reports on
the wall-clock multiples of P, all 200 in the same instant.

Bounds, from the jitter design (times in simulated seconds from each node's own boot line in
its truth file; W = MAX_TRANSMIT_WAIT of the node's CON requests = ACK_TIMEOUT x (2^5 - 1) x
1.5 = 23.25 real s with the harness's 0.5 s ACK_TIMEOUT, i.e. W x speed simulated s):

- registered within ``T_reg = J + W`` (the jitter, then one CON exchange with all its
  retransmissions; a Register that is not answered at all makes the node back off and fail
  this bound, so it also catches a lost request);
- its first report stored within ``T_rep = max(P, T_reg) + J + W`` (the report is taken at P,
  or waits for the registration; a node that registered with a backlog waits a second jitter
  before flushing; then one exchange).

"No request lost": the gateway counts exactly 200 Registers (a node whose Register went
unanswered would register again), every report the truth files show was taken is stored with
its seq, and each stored energy counter trails the true meter by 0 to 1 Wh + one poll.

Responsiveness: a probe thread runs ``slgw --json nodes`` and ``GET /api/health`` alternately
every 0.5 s from before the first boot to the end; every call must succeed, within 5 s.
"""

from __future__ import annotations

import re
import time

from hil_tests._s5_helpers import CliProbe, ack_bound_s, boot_time, cpu_s, gateway_log_errors, reports
from hil_tests.harness import wait_for
from hil_tests.sim import parse_iso

SPEED = 4.0
N_NODES = 200
PER_PROCESS = 20
JITTER = 24  # J, simulated s
PERIOD = 40  # P, simulated s
RATED_W = 50.0
CLI_BOUND_S = 5.0


def plan() -> list[dict]:
    return [{"group": f"district-{i // 50}", "cabinet": f"K{i // 25}", "lat": 45.50 + 0.0001 * i,
             "lon": 4.85 + 0.0001 * i, "tz": "CET-1CEST,M3.5.0,M10.5.0/3", "rated_w": RATED_W,
             "report_period": PERIOD, "jitter": JITTER, "lifetime": 3600}
            for i in range(N_NODES)]


def test_two_hundred_nodes_restore_at_once(hil_clock, gateway, nodes):
    clock = hil_clock("2026-12-15T18:00:00Z", speed=SPEED)
    gw = gateway(clock)
    probe = CliProbe(gw, interval=0.5, timeout=20.0).start()
    t_start = time.monotonic()
    try:
        town = nodes(clock, gw.coap_url, plan(), per_process=PER_PROCESS, truth_period=60.0)
        w_sim = ack_bound_s(town.ack_timeout_ms) * SPEED
        t_reg = JITTER + w_sim
        t_rep = max(PERIOD, t_reg) + JITTER + w_sim
        print(f"bounds: registered within {t_reg:.0f} sim s ({t_reg / SPEED:.1f} real s), first report "
              f"stored within {t_rep:.0f} sim s ({t_rep / SPEED:.1f} real s) of each node's boot")

        boots = town.wait_truth(lambda t: {i: boot_time(t[i]) for i in town.ids}
                                if all(boot_time(t[i]) is not None for i in town.ids) else None,
                                30, "a boot line from every node")
        spread = max(boots.values()) - min(boots.values())
        first_boot = min(boots.values())

        # every node registered, within T_reg of its own boot
        def registered():
            got = gw.nodes()
            return got if sum(1 for i in town.ids if got.get(i, {}).get("registered")) == N_NODES else None

        wait_for(registered, timeout=(max(boots.values()) + t_reg - clock.now()) / SPEED + 5, interval=0.5,
                 what="200 registered nodes")
        got = gw.nodes()
        reg_delay = {i: parse_iso(got[i]["registered_at"]) - boots[i] for i in town.ids}
        late = {i: d for i, d in reg_delay.items() if d > t_reg + 1}  # +1: registered_at is whole seconds
        assert not late, f"registered later than J + W = {t_reg:.0f} sim s: {late}"
        # the jitter really spread the storm: registrations cover most of [0, J)
        delays = sorted(reg_delay.values())
        assert delays[-1] - delays[0] >= 0.5 * JITTER, delays

        # every node's first report is stored with its seq, within T_rep of its boot
        def first_stored():
            truth = town.truth()
            firsts = {}
            for i in town.ids:
                reps = reports(truth[i])
                if not reps:
                    return None
                rows = {r["seq"]: r for r in gw.readings(i)}
                if reps[0]["seq"] not in rows:
                    return None
                firsts[i] = (reps[0], rows[reps[0]["seq"]])
            return firsts

        firsts = wait_for(first_stored, timeout=(max(boots.values()) + t_rep - clock.now()) / SPEED + 5,
                          interval=0.5, what="every node's first report in the gateway's store")
        arrival = {i: row["received_at"] - boots[i] for i, (_x, row) in firsts.items()}
        late = {i: d for i, d in arrival.items() if d > t_rep}
        assert not late, f"first report stored later than {t_rep:.0f} sim s after boot: {late}"

        # two more synchronised report rounds (all 200 on the same wall-clock instant)
        clock.sleep_until(first_boot + PERIOD + 2 * PERIOD + 10)
        t_end = clock.now()

        def all_stored():
            truth = town.truth()
            missing = {}
            for i in town.ids:
                want = {x["seq"] for x in reports(truth[i]) if x["t"] <= t_end}
                have = {r["seq"] for r in gw.readings(i)}
                if want - have:
                    missing[i] = sorted(want - have)
            return (truth, None) if not missing else None

        truth, _ = wait_for(all_stored, timeout=w_sim / SPEED + 5, interval=0.5,
                            what="every report taken so far in the gateway's store")
    finally:
        probe.stop()

    # no request lost, nothing counted twice
    stats = _health(gw)["coap_stats"]
    assert stats["register"] == N_NODES, stats  # nobody had to register twice
    got = gw.nodes()
    assert set(got) == set(town.ids)
    poll_wh = (RATED_W + 0.7) * max(1.0, 0.02 * SPEED) * 3 / 3600
    n_reports = 0
    for i in town.ids:
        rows = {r["seq"]: r for r in gw.readings(i)}
        reps = [x for x in reports(truth[i]) if x["seq"] in rows]
        assert len(reps) >= 3, (i, len(reps))
        n_reports += len(reps)
        seqs = [x["seq"] for x in reps]
        assert seqs == sorted(set(seqs)), (i, seqs)  # unique, growing
        for x in reps:
            lag = x["wh"] - rows[x["seq"]]["wh"]
            assert -1e-6 <= lag <= 1.0 + poll_wh, (i, x["seq"], x["wh"], rows[x["seq"]]["wh"])
        last = max(rows)
        assert got[i]["wh"] == rows[last]["wh"], (i, got[i]["wh"], rows[last])
        assert parse_iso(got[i]["last_report"]) == rows[last]["t"], (i, got[i]["last_report"], rows[last]["t"])

    assert not gateway_log_errors(gw), gateway_log_errors(gw)[:10]  # nothing failed on the way
    # the gateway answered the CLI throughout
    summ = probe.summary()
    assert not probe.failures(), probe.failures()[:5]
    assert summ["cli"]["calls"] >= 10 and summ["health"]["calls"] >= 10, summ
    assert summ["cli"]["max_s"] < CLI_BOUND_S and summ["health"]["max_s"] < CLI_BOUND_S, summ
    rss = [r for r in (b.rss_kb() for b in town.batches) if r]
    wall = time.monotonic() - t_start
    cpu_nodes = sum(cpu_s(b.proc.pid) for b in town.batches)
    cpu_gw = cpu_s(gw.proc.pid, children=False)
    print(f"CPU over the {wall:.0f} s run: 200 nodes {cpu_nodes:.1f} s ({cpu_nodes / wall:.2f} cores), "
          f"gateway {cpu_gw:.1f} s ({cpu_gw / wall:.2f} cores)")
    town.stop()  # clean stop: each interpreter prints its MicroPython heap peak
    heap = [int(m.group(1)) for b in town.batches
            for m in [re.search(r"heap peak (\d+) bytes", b.proc.log.read_text(errors="replace"))] if m]
    assert len(heap) == len(town.batches), heap
    print(f"memory per emulated node: MicroPython heap peak {max(heap) / PER_PROCESS / 1024:.1f} KB "
          f"(max over {len(heap)} interpreters of {PER_PROCESS}; includes the shared code), interpreter "
          f"peak RSS {max(rss) / PER_PROCESS:.0f} kB")
    print(f"boot spread {spread:.1f} sim s; registration delay after boot: min {delays[0]:.0f}, "
          f"max {delays[-1]:.0f} sim s (bound {t_reg:.0f}); first report stored after boot: "
          f"max {max(arrival.values()):.0f} sim s (bound {t_rep:.0f}); {n_reports} reports checked; "
          f"CLI probe {summ}; interpreter peak RSS max {max(rss) if rss else None} kB for {PER_PROCESS} nodes")


def _health(gw) -> dict:
    import json
    import urllib.request

    with urllib.request.urlopen(gw.url + "/api/health", timeout=10) as resp:
        return json.loads(resp.read())
