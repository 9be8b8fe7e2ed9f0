"""Power cuts: SIGKILL the micropython process at random instants, restart on the same flash.

The energy the node reports must never decrease, never exceed what the emulated meter really
measured (no double counting), and lag the truth by no more than the meter's stated bound per
power cut (firmware/meter.py: less than 10 Wh + one poll of energy); report seqs never repeat.
"""

import asyncio
import os
import random
import signal
import sys
import time

sys.path.insert(0, os.path.dirname(__file__))
from app_support import emulator_spec, free_udp_port, read_truth, start_emulator, stop_emulator, write_toml  # noqa: E402
from lwm2m_peer import Peer  # noqa: E402

SPEED = 120.0
BOUND_WH = 10.0 + 0.5  # meter.py: flush every 10 Wh; + one control tick of a 61 W lamp, rounded up


async def test_sigkill_at_random_points_loses_at_most_the_bound(tmp_path):
    rnd = random.Random(int(os.environ.get("POWERCUT_SEED", time.time())))
    port = free_udp_port()
    peer = await Peer.start(port)
    toml = write_toml(tmp_path / "node.toml", report_period=60, lifetime=3600, jitter=1, rated_w=60,
                      default_level=100)
    flash, truth_path = tmp_path / "flash", tmp_path / "truth.jsonl"
    anchor = time.time()
    start = 1750000000.0
    peer.time_to_write = lambda: start + (time.time() - anchor) * SPEED
    received = []  # every report as received, duplicates included
    procs = []
    try:
        for _cut in range(4):
            spec = emulator_spec(flash, "lamp-p", port, config=toml, truth=truth_path, speed=SPEED,
                                 ack_timeout=200, truth_period=1)
            spec["clock_start"], spec["clock_anchor"] = start, anchor  # one clock across restarts
            proc = start_emulator(spec, tmp_path / "node.log")
            procs.append(proc)
            await asyncio.sleep(rnd.uniform(1.0, 4.0))
            os.kill(proc.pid, signal.SIGKILL)  # the power cut
            proc.p.wait(timeout=10)
            await asyncio.sleep(rnd.uniform(0.0, 0.5))  # dark for a while
        spec = emulator_spec(flash, "lamp-p", port, config=toml, truth=truth_path, speed=SPEED,
                             ack_timeout=200, truth_period=1)
        spec["clock_start"], spec["clock_anchor"] = start, anchor
        proc = start_emulator(spec, tmp_path / "node.log")
        procs.append(proc)
        await asyncio.sleep(3)
        last = [x for x in read_truth(truth_path) if x["event"] == "report"][-1]["seq"]
        await peer.wait_for(lambda: last in peer.reports, 20)
        assert stop_emulator(proc) == 0
    finally:
        for p in procs:
            p.kill()
        await peer.stop()
    for s in peer.sends:
        received.extend(s["reports"])
    truth = read_truth(truth_path)
    boots = 0
    taken = {}  # seq -> (truth line at the report, power cuts before it)
    for x in truth:
        if x["event"] == "boot":
            boots += 1
        elif x["event"] == "report":
            assert x["seq"] not in taken, "a seq was used twice"
            taken[x["seq"]] = (x, boots - 1)
    assert boots == 5
    # a report received twice (lost ACK) is the same report
    by_seq = {}
    for r in received:
        assert by_seq.setdefault(r["seq"], r) == r
    seqs = sorted(by_seq)
    assert len(seqs) >= 10
    whs = [by_seq[s]["wh"] for s in seqs]
    assert whs == sorted(whs), "reported energy decreased"
    ts = [by_seq[s]["t"] for s in seqs if by_seq[s]["t"] > 0]
    assert ts == sorted(ts)
    worst = 0.0
    for s in seqs:
        line, cuts = taken[s]
        r = by_seq[s]
        assert r["wh"] <= line["wh"] + 0.05, (s, r["wh"], line["wh"])  # never counted twice
        lag = line["wh"] - r["wh"]
        assert lag <= cuts * BOUND_WH + 1.1, (s, cuts, lag)  # + whole-Wh rounding
        worst = max(worst, lag - cuts * BOUND_WH)
    # every report that was taken (it is in the outbox in flash before its truth line is
    # written) reached the gateway, across all the cuts
    assert set(taken) <= set(by_seq)
    print(f"powercut: {len(seqs)} reports over 4 cuts; worst lag beyond cuts x bound {worst:.2f} Wh; "
          f"final lag {line['wh'] - r['wh']:.2f} Wh")
