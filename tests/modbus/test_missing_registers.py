"""A meter whose register map differs from its profile (issue 16): an emulated SDM630 (a
pymodbus server in its own process) lacking some of the profile's registers answers a merged
read with exception 2. The poller splits the refused read, learns which values the meter
lacks, keeps polling the rest in the same poll, reports the missing ones once (status and
log) and never merges across them again; `mbpoll` checks the emulated meter from outside."""

from __future__ import annotations

import json
import logging
import re
import subprocess

import pytest
from modbus_helpers import gw_config, wait_until

from gateway.modbus.planner import plan
from gateway.modbus.service import start_modbus
from tools.meters.harness import start_rtu_line, start_tcp_meter
from tools.meters.model import parse_missing

# voltage_l3, one address in the gap between power_factor_l3 and voltage_ln_avg, frequency and
# total_energy: a meter of another model or firmware than the eastron-sdm630 profile describes
MISSING = "0x04-0x05,0x26,0x46-0x47,0x156-0x157"


def meter(name: str, port: int, **kw) -> dict:
    return {"name": name, "profile": "eastron-sdm630", "transport": "tcp", "host": "127.0.0.1",
            "port": port, "period": "0.1s", "timeout": "2s", "backoff_max": "0.4s", **kw}


def mbpoll(port: int, ref: int, count: int) -> subprocess.CompletedProcess:
    return subprocess.run(["mbpoll", "-m", "tcp", "-p", str(port), "-a", "1", "-1", "-0", "-t", "3:float",
                           "-B", "-r", str(ref), "-c", str(count), "127.0.0.1"],
                          capture_output=True, text=True, timeout=20)


def emulator_refused(state) -> int | None:
    try:
        return json.loads(state.read_text())["units"]["1"]["refused"]
    except (OSError, ValueError):
        return None


async def test_refused_merged_read_is_split_and_the_rest_polled(procs, tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="gateway.modbus")
    state = tmp_path / "state.json"
    _, port = start_tcp_meter(procs, "odd-sdm630", load_w=2300, speed=60, state=state,
                              extra=["--missing", MISSING])
    # from outside: the meter refuses the profile's 80-register read and answers a value alone
    merged = mbpoll(port, 0, 40)
    assert merged.returncode != 0 and "Illegal data address" in merged.stdout + merged.stderr
    alone = mbpoll(port, 0, 1)
    assert alone.returncode == 0, alone.stdout + alone.stderr
    assert re.search(r"^\[0\]:\s+230\s*$", alone.stdout, re.M), alone.stdout

    readings: list[dict] = []

    async def sink(m, r):
        readings.append(r)

    h = await start_modbus(gw_config(tmp_path, [meter("odd", port)]), None, None, sink=sink)
    try:
        p = h.pollers[0]
        # the very first poll reads what the meter has: no failed poll, no quarantine
        await wait_until(lambda: readings, 10, "the first reading")
        assert p.counters["ok"] == p.counters["polls"] >= 1 and p.counters["refused_reads"] >= 1
        # each poll with a refusal learns at least one fact (4 here), so 10 polls are enough
        await wait_until(lambda: p.counters["ok"] >= 10, 15, "ten polls")
        refused, ok = p.counters["refused_reads"], p.counters["ok"]
        await wait_until(lambda: p.counters["ok"] >= ok + 10, 15, "ten more polls")
        assert p.counters["refused_reads"] == refused            # never merged across them again
        st = h.status()[0]
    finally:
        await h.stop()
    # the meter's side agrees: every exception it sent was mbpoll's one or a read the poller split
    await wait_until(lambda: emulator_refused(state) == 1 + refused, 5, "the emulator's count of refusals")

    assert st["status"] == "ok" and st["last_error"] is None
    assert st["errors"]["exception"] == 0 and st["errors"]["polls"] == st["errors"]["ok"]
    assert st["missing_registers"] == [
        {"name": "voltage_l3", "function": 4, "address": 0x04, "count": 2},
        {"name": "frequency", "function": 4, "address": 0x46, "count": 2},
        {"name": "total_energy", "function": 4, "address": 0x156, "count": 2}]
    json.dumps(st)  # what `slgw meters --json` and GET /api/meters send
    # the plan: no read touches an address the meter lacks, and reads stay merged elsewhere
    lacking = parse_missing(MISSING)[4]
    assert [(r.function, r.address, r.count) for r in p.requests] == \
        [(4, 0x00, 4), (4, 0x06, 30), (4, 0x2A, 22), (4, 0x48, 8)]
    assert not any(a in lacking for r in p.requests for a in range(r.address, r.address + r.count))
    assert p.breaks == {"voltage_ln_avg"}
    # every other value is read, and decoded right
    last = readings[-1]
    assert set(last["values"]) == {r.name for r in p.cfg.profile.registers} - {"voltage_l3", "frequency",
                                                                                "total_energy"}
    assert last["values"]["voltage_l1"] == pytest.approx(230) and last["w"] == pytest.approx(2300)
    assert last["values"]["voltage_ln_avg"] == pytest.approx(230)
    assert readings[0]["wh"] < last["wh"]
    seqs = [r["seq"] for r in readings]
    assert seqs == sorted(set(seqs))
    # reported once in the log, with what to check
    lacks = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and "lacks" in r.getMessage()]
    for name in ("voltage_l3", "frequency", "total_energy"):
        assert sum(f"'{name}'" in m for m in lacks) == 1, lacks
    assert all("eastron-sdm630" in m and "check its model and firmware" in m for m in lacks)
    gaps = [r.getMessage() for r in caplog.records if "no longer merge" in r.getMessage()]
    assert len(gaps) == 1 and "0x0024..0x002a" in gaps[0], gaps
    assert not any(r.levelno >= logging.WARNING and "quarantined" in r.getMessage() for r in caplog.records)


async def test_a_meter_without_the_import_energy_register_is_quarantined_not_skipped(procs, tmp_path):
    state = tmp_path / "state.json"
    _, port = start_tcp_meter(procs, "no-energy", state=state, extra=["--missing", "0x48-0x49"])
    readings: list[dict] = []

    async def sink(m, r):
        readings.append(r)

    h = await start_modbus(gw_config(tmp_path, [meter("no-energy", port)]), None, None, sink=sink)
    try:
        p = h.pollers[0]
        await wait_until(lambda: p.counters["probes"] >= 2, 10, "two probes")
        st = h.status()[0]
    finally:
        await h.stop()
    assert st["status"] == "quarantined" and st["errors"]["ok"] == 0 and readings == []
    assert "no 'import_energy' register" in st["last_error"] and "eastron-sdm630" in st["last_error"]
    # the energy register is never written off: every probe asks the meter for it again
    assert st["errors"]["exception"] == st["errors"]["polls"] >= 3
    assert st["missing_registers"] == [] and p.breaks == set()


def test_plan_without_missing_registers_and_across_breaks(tmp_path):
    from gateway.modbus.profiles import load_profile
    prof = load_profile("eastron-sdm120")
    full = [(r.address, r.count) for r in plan(prof)]
    assert full == [(0x00, 32), (0x46, 10), (0x156, 2)]
    # a missing value ends the read before it; the next starts after it, never spanning it
    assert [(r.address, r.count) for r in plan(prof, missing={"current", "export_energy"})] == \
        [(0x00, 2), (0x0C, 20), (0x46, 4), (0x4C, 4), (0x156, 2)]
    # a break starts a read at that value even where the gap would allow merging
    assert [(r.address, r.count) for r in plan(prof, breaks={"reactive_power"})] == \
        [(0x00, 20), (0x18, 8), (0x46, 10), (0x156, 2)]
    # every value read exactly once, none of the missing
    reads = plan(prof, missing={"frequency"}, breaks={"import_energy", "power_factor"})
    names = [g.name for r in reads for g in r.registers]
    assert sorted(names) == sorted(g.name for g in prof.registers if g.name != "frequency")


def test_emulator_missing_option():
    assert parse_missing("0x46-0x47, 3:10") == {4: {0x46, 0x47}, 3: {10}}
    for bad in ("5:0x10", "zz", "0x47-0x46", "4:70000"):
        with pytest.raises(ValueError, match="is not \\[3:\\|4:\\]ADDRESS"):
            parse_missing(bad)


async def test_rtu_meter_lacking_a_register_is_split_on_the_serial_line(procs, tmp_path):
    """The same over RS-485 (socat pty pair + the emulator paced at 9600 baud): the exception
    answer comes in RTU framing, the split reads share the line's lock and silence."""
    state = tmp_path / "state.json"
    line = start_rtu_line(procs, tmp_path, baud=9600, model="sdm120", load_w=460, state=state,
                          extra=["--missing", "0x46-0x47"])
    m = {"name": "odd-rtu", "profile": "eastron-sdm120", "transport": "rtu", "device": line.bus,
         "baudrate": 9600, "unit": 1, "period": "0.2s", "timeout": "1s", "backoff_max": "1s"}
    readings: list[dict] = []

    async def sink(meter, r):
        readings.append(r)

    h = await start_modbus(gw_config(tmp_path, [m]), None, None, sink=sink)
    try:
        p = h.pollers[0]
        await wait_until(lambda: p.counters["ok"] >= 6, 20, "six polls over RTU")
        refused, ok = p.counters["refused_reads"], p.counters["ok"]
        await wait_until(lambda: p.counters["ok"] >= ok + 4, 20, "four more polls")
        assert p.counters["refused_reads"] == refused >= 1
        st = h.status()[0]
    finally:
        await h.stop()
    await wait_until(lambda: emulator_refused(state) == refused, 5, "the emulator's count of refusals")
    assert st["status"] == "ok" and st["errors"]["polls"] == st["errors"]["ok"]
    assert sum(st["errors"][k] for k in ("timeout", "crc", "garbage", "exception")) == 0, st["errors"]
    assert st["missing_registers"] == [{"name": "frequency", "function": 4, "address": 0x46, "count": 2}]
    assert [(r.address, r.count) for r in p.requests] == [(0x00, 32), (0x48, 8), (0x156, 2)]
    assert readings[-1]["w"] == pytest.approx(460) and "frequency" not in readings[-1]["values"]
