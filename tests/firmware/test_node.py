"""Node behaviour in the emulator (real firmware in `micropython`), watched through the truth
file and an aiocoap LwM2M peer: fail-safe at boot, corrupt config, the schedule on an
accelerated clock, override expiry, lamp-failure flag, and the schedule re-applied after a
power cut.
"""

import asyncio
import json
import os
import signal
import sys
import time

import aiocoap

sys.path.insert(0, os.path.dirname(__file__))
from app_support import emulator_spec, free_udp_port, read_truth, start_emulator, stop_emulator, write_toml  # noqa: E402
from lwm2m_peer import Peer  # noqa: E402

FAULT_LAMP_FAILURE, FAULT_SUPPLY_LOSS, FAULT_CONFIG_ERROR, FAULT_TIME_INVALID = 0x01, 0x20, 0x40, 0x80


async def test_no_valid_time_holds_default_level_and_reports_relative_time(tmp_path):
    port = free_udp_port()
    peer = await Peer.start(port)  # never writes the time
    toml = write_toml(tmp_path / "node.toml", report_period=60, default_level=70, jitter=1, lifetime=3600)
    spec = emulator_spec(tmp_path / "flash", "lamp-t", port, config=toml, truth=tmp_path / "truth.jsonl",
                         speed=120, ack_timeout=200)
    proc = start_emulator(spec, tmp_path / "node.log")
    try:
        # a schedule that would say 5 % now: ignored without valid time
        await asyncio.wait_for(peer.registered.wait(), 15)
        assert await peer.write("/10250/0/2", [[0, 0, 5]]) == aiocoap.CHANGED
        await peer.wait_for(lambda: len(peer.reports) >= 3, 20)
        code, valid = await peer.read("/10250/0/8")
        assert valid is False
        assert stop_emulator(proc) == 0
    finally:
        proc.kill()
        await peer.stop()
    reps = [peer.reports[s] for s in sorted(peer.reports)]
    assert all(r["level"] == 70 for r in reps)
    assert all(r["t"] < 0 for r in reps)  # SPEC §3.1: relative time, seconds before now
    assert all(r["faults"] & FAULT_TIME_INVALID for r in reps)
    assert reps[0]["faults"] & FAULT_SUPPLY_LOSS and not reps[1]["faults"] & FAULT_SUPPLY_LOSS
    truth = read_truth(tmp_path / "truth.jsonl")
    assert {x["level"] for x in truth} == {70} and not any(x["time_valid"] for x in truth)


async def test_corrupt_config_safe_defaults_and_config_error(tmp_path):
    port = free_udp_port()
    peer = await Peer.start(port)
    flash = tmp_path / "flash"
    flash.mkdir()
    (flash / "config.json").write_bytes(b'{"id": "x", "default_level": 3\x00\xff garbage')
    spec = emulator_spec(flash, "lamp-c", port, truth=tmp_path / "truth.jsonl", speed=120, ack_timeout=200,
                         report_period=60)
    proc = start_emulator(spec, tmp_path / "node.log")
    try:
        await asyncio.wait_for(peer.registered.wait(), 40)  # default jitter 30 s simulated
        await peer.wait_for(lambda: len(peer.reports) >= 2, 20)
        code, faults = await peer.read("/10250/0/1")
        assert faults & FAULT_CONFIG_ERROR
        assert proc.p.poll() is None
        assert stop_emulator(proc) == 0
    finally:
        proc.kill()
        await peer.stop()
    assert peer.registers[0]["query"]["ep"] == "lamp-c"  # the launcher's id still applies
    reps = [peer.reports[s] for s in sorted(peer.reports)]
    assert all(r["faults"] & FAULT_CONFIG_ERROR for r in reps)
    assert all(r["level"] == 100 for r in reps)  # the safe default level
    log = (tmp_path / "node.log").read_text()
    assert "config:" in log and "safe defaults" in log


async def test_schedule_override_fault_and_reboot_on_accelerated_clock(tmp_path):
    """10:00 local is 30 %, 12:00 is 80 % (tz CET = UTC+1 in January); an override of 20 %
    for 20 simulated minutes then falls back; a failed lamp raises lampFailure; after a power
    cut the node boots straight into the level the schedule wants now."""
    speed = 600.0
    port = free_udp_port()
    peer = await Peer.start(port)
    toml = write_toml(tmp_path / "node.toml", report_period=300, default_level=100, jitter=1, lifetime=3600,
                      tz="CET-1CEST,M3.5.0,M10.5.0/3", lat=45.76, lon=4.84, rated_w=60)
    flash, truth_path = tmp_path / "flash", tmp_path / "truth.jsonl"
    start = 1736500500.0  # 2025-01-10 09:15 UTC = 10:15 CET
    anchor = time.time()

    def sim_now():
        return start + (time.time() - anchor) * speed

    def spec():
        s = emulator_spec(flash, "lamp-s", port, config=toml, truth=truth_path, speed=speed, ack_timeout=200,
                          time_valid=True, truth_period=30)
        s["clock_start"], s["clock_anchor"] = start, anchor
        return s

    peer.time_to_write = sim_now
    procs = [start_emulator(spec(), tmp_path / "node.log")]
    try:
        await asyncio.wait_for(peer.registered.wait(), 15)
        assert await peer.write("/10250/0/2", [[0, 600, 30], [0, 720, 80]]) == aiocoap.CHANGED
        code, sched = await peer.read("/10250/0/2")
        assert sched == [[0, 600, 30], [0, 720, 80]]
        await peer.wait_for(lambda: (peer_level := _last(truth_path)) and peer_level["level"] == 30, 10)
        # override 20 % for 1200 s, then back to the schedule
        t_ov = sim_now()
        assert await peer.write("/10250/0/4", [20, 1200]) == aiocoap.CHANGED
        code, ov = await peer.read("/10250/0/4")
        assert ov[0] == 20 and 1000 <= ov[1] <= 1200
        await peer.wait_for(lambda: _last(truth_path)["level"] == 20, 5)
        await peer.wait_for(lambda: _last(truth_path)["t"] > t_ov + 1500, 10)
        assert _last(truth_path)["level"] == 30
        back = next(x for x in read_truth(truth_path) if x["t"] > t_ov + 60 and x["level"] == 30)
        assert t_ov + 1200 <= back["t"] <= t_ov + 1200 + 300  # 0.5 real s of slack on a loaded machine
        # 12:00 CET = 11:00 UTC: 80 %
        await peer.wait_for(lambda: _last(truth_path)["t"] > 1736506800 + 300, 20)
        at12 = next(x for x in read_truth(truth_path) if x["level"] == 80)
        assert 1736506800 <= at12["t"] <= 1736506800 + 300
        # a clock jump (Write /3/0/13 far from the node's time) re-evaluates the schedule at
        # once: back to 10:30 CET is the 30 % step again
        assert await peer.write("/3/0/13", 1736501400) == aiocoap.CHANGED
        code, lvl = await peer.read("/3311/0/5851")
        code, target = await peer.read("/10250/0/4")
        await peer.wait_for(lambda: _last(truth_path)["level"] == 30, 5)
        code, now = await peer.read("/3/0/13")
        assert 1736501400 <= now < 1736501400 + 600
        peer.time_to_write = None
        # lamp failure: the next reports carry lampFailure
        ctl = flash / "emulator-control.json"
        ctl.write_text(json.dumps([{"id": "*", "fail_lamp": True}]))
        n = max(peer.reports)
        await peer.wait_for(lambda: any(r["faults"] & FAULT_LAMP_FAILURE for s, r in peer.reports.items() if s > n),
                            20)
        # power cut; the restarted node (valid RTC) is at the level the schedule wants now
        # (its clock restarts from the simulated time: 12:xx CET, 80 %)
        os.kill(procs[0].pid, signal.SIGKILL)
        procs[0].p.wait(timeout=10)
        ctl.unlink()
        n_lines = len(read_truth(truth_path))
        procs.append(start_emulator(spec(), tmp_path / "node.log"))
        await peer.wait_for(lambda: len(read_truth(truth_path)) > n_lines + 2, 10)
        after = read_truth(truth_path)[n_lines:]
        assert after[0]["event"] == "boot" and after[0]["level"] == 80, after[0]
        assert all(x["level"] == 80 for x in after)
        assert stop_emulator(procs[1]) == 0
    finally:
        for p in procs:
            p.kill()
        await peer.stop()


def _last(path):
    t = read_truth(path)
    return t[-1] if t else None
