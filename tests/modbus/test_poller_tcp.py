"""The poller against emulated Eastron meters over Modbus TCP (separate processes):
readings into the real store and the energy queries, a meter unplugged and plugged back,
a peer that power-cycles, and bad answers that are counted, never fatal."""

from __future__ import annotations

import asyncio
import json
import time

import pytest
from modbus_helpers import gw_config, wait_until

from gateway.energy.query import circuit_check, energy
from gateway.modbus.service import start_modbus
from gateway.store import Store
from tools.meters.harness import start_tcp_meter
from tools.meters.model import write_control


def meter(name, port, unit=1, **kw):
    return {"name": name, "profile": "eastron-sdm630", "transport": "tcp", "host": "127.0.0.1",
            "port": port, "unit": unit, "period": "0.1s", "timeout": "0.3s", "backoff_max": "0.8s", **kw}


def by_name(handle):
    return {p.cfg.name: p for p in handle.pollers}


async def test_tcp_meter_energy_lands_in_store_energy_and_circuit_check(procs, tmp_path):
    state = tmp_path / "truth.json"
    # 3600 W on a clock 60x faster: 60 Wh per real second
    _, port = start_tcp_meter(procs, "sdm630", model="sdm630", load_w=3600, speed=60,
                              extra=["--energy-kwh", "1000"], state=state)
    store = await Store.open(str(tmp_path / "slgw.db"))
    try:
        h = await start_modbus(gw_config(tmp_path, [meter("cab-A", port, cabinet="A", period="0.2s")]), store, None)
        t0 = time.time()
        try:
            await wait_until(lambda: h.pollers[0].counters["ok"] >= 12, 15, "12 good polls")
        finally:
            await h.stop()
        st = h.status()[0]
        assert st["status"] == "ok" and st["name"] == "cab-A" and st["cabinet"] == "A"
        assert st["power_w"] == pytest.approx(3600, rel=1e-6)
        truth_kwh = json.loads(state.read_text())["units"]["1"]["import_kwh"]
        assert 1000 < st["import_wh"] / 1000 <= truth_kwh + 0.1

        await store.refresh()

        def q(conn):
            rows = conn.execute("SELECT seq, wh, w FROM readings WHERE source = 'meter:cab-A' ORDER BY seq").fetchall()
            node = conn.execute("SELECT kind, cabinet, wh FROM nodes WHERE id = 'meter:cab-A'").fetchone()
            e = energy(conn, node="meter:cab-A", by="15min")
            # windows fall on the 15-minute grain (docs/energy.md §4)
            cc = circuit_check(conn, "A", (t0 - 3600) // 900 * 900, -(-(time.time() + 3600) // 900) * 900)
            return rows, tuple(node), e, cc

        rows, node, e, cc = await store.read(q)
        assert node[:2] == ("meter", "A")
        assert len(rows) == st["errors"]["ok"] >= 12
        seqs = [r[0] for r in rows]
        assert seqs == sorted(set(seqs))                      # strictly increasing
        whs = [r[1] for r in rows]
        assert whs == sorted(whs) and whs[-1] - whs[0] > 50   # about 60 Wh a second
        assert e["total_wh"] == pytest.approx(whs[-1] - whs[0], rel=1e-6)
        assert cc["meter_wh"] == pytest.approx(whs[-1] - whs[0], rel=1e-6)
        assert [m["id"] for m in cc["meters"]] == ["meter:cab-A"]
    finally:
        await store.close()


async def test_unplugged_meter_is_quarantined_recovered_and_never_stalls_the_other(procs, tmp_path):
    control = tmp_path / "control.json"
    write_control(control, {"load_w": 500})
    _, port = start_tcp_meter(procs, "pair", units="1-2", control=control)
    got: list[tuple[str, int]] = []

    async def sink(m, r):
        got.append((m.name, r["seq"]))

    h = await start_modbus(gw_config(tmp_path, [meter("healthy", port, 1), meter("flaky", port, 2)]), None, None, sink=sink)
    try:
        p = by_name(h)
        await wait_until(lambda: p["flaky"].counters["ok"] >= 3 and p["healthy"].counters["ok"] >= 3, 10, "first polls")
        write_control(control, {"load_w": 500, "units": {"2": {"fault": "unplugged"}}})
        await wait_until(lambda: p["flaky"].quarantined, 5, "quarantine")
        ok0, probes0 = p["healthy"].counters["ok"], p["flaky"].counters["probes"]
        await asyncio.sleep(2.5)
        ok1, probes1 = p["healthy"].counters["ok"], p["flaky"].counters["probes"]
        assert p["flaky"].quarantined and p["flaky"].counters["timeout"] >= 1
        # back-off: 0.1 s doubling to 0.8 s -> only a handful of probes in 2.5 s. Both units
        # sit behind one TCP address (one line), so each probe holds the line for its 0.3 s
        # timeout and no longer; the healthy meter keeps polling in between.
        probes = probes1 - probes0
        assert 1 <= probes <= 6
        assert ok1 - ok0 >= 2 * probes
        assert ok1 - ok0 >= 0.5 * (2.5 - 0.3 * probes) / 0.1
        assert h.status()[1]["status"] == "quarantined" and "timeout" in h.status()[1]["last_error"]

        write_control(control, {"load_w": 500, "units": {"2": {"fault": None}}})
        before = sum(1 for n, _ in got if n == "flaky")
        await wait_until(lambda: p["flaky"].status == "ok", 5, "recovery after plugging back")
        await wait_until(lambda: sum(1 for n, _ in got if n == "flaky") >= before + 3, 5, "readings again")
        assert p["flaky"].failures == 0 and p["flaky"].last_error is None
    finally:
        await h.stop()


async def test_tcp_peer_power_cycle_is_reconnected(procs, tmp_path):
    state = tmp_path / "state.json"
    proc, port = start_tcp_meter(procs, "sdm630-a", load_w=2000, speed=100, state=state)
    h = await start_modbus(gw_config(tmp_path, [meter("m", port)]), None, None, sink=lambda m, r: asyncio.sleep(0))
    try:
        p = h.pollers[0]
        await wait_until(lambda: p.counters["ok"] >= 3, 10, "first polls")
        # a real meter keeps its counter in non-volatile memory; the emulator saves it twice
        # a second, so wait until it has saved what the poller has seen, then cut the power
        await wait_until(lambda: state.exists() and json.loads(state.read_text())["units"]["1"]["import_kwh"] * 1000
                         >= p.import_wh, 5, "the emulator's saved counter")
        saved_wh = p.import_wh
        proc.kill()                                            # power cut: SIGKILL
        await wait_until(lambda: p.quarantined, 5, "quarantine after the power cut")
        await asyncio.sleep(0.5)
        assert p.counters["connection"] + p.counters["timeout"] >= 1
        start_tcp_meter(procs, "sdm630-b", port=port, load_w=2000, speed=100, state=state)  # power back
        ok = p.counters["ok"]
        await wait_until(lambda: p.status == "ok" and p.counters["ok"] > ok + 2, 10, "reconnection")
        assert p.import_wh >= saved_wh                          # the meter kept its counter
        assert h.lines[0].bus.connects >= 2
    finally:
        await h.stop()


async def test_tcp_garbage_and_exceptions_are_counted_never_fatal(procs, tmp_path):
    control = tmp_path / "control.json"
    write_control(control, {"units": {"2": {"fault": "garbage"}, "3": {"fault": "exception"}}})
    _, port = start_tcp_meter(procs, "bad", units="1-4", control=control)
    # unit 4 is healthy but its profile asks for 96 registers at once: Eastron answers exception 03
    big = tmp_path / "too-big.toml"
    big.write_text('[device]\nmax_registers = 125\nmax_gap = 80\n'
                   '[[registers]]\nname = "v"\naddress = 0\ntype = "float32"\nunit = "V"\n'
                   '[[registers]]\nname = "e"\naddress = 0x48\ntype = "float32"\nscale = 1000\nunit = "Wh"\nmap = "import_wh"\n'
                   '[[registers]]\nname = "x"\naddress = 0x5E\ntype = "float32"\n')
    meters = [meter("good", port, 1), meter("noise", port, 2), meter("failing", port, 3),
              meter("too-big", port, 4, profile=str(big))]
    h = await start_modbus(gw_config(tmp_path, meters), None, None, sink=lambda m, r: asyncio.sleep(0))
    try:
        p = by_name(h)
        await wait_until(lambda: p["noise"].counters["garbage"] >= 2 and p["failing"].counters["exception"] >= 2
                         and p["too-big"].counters["exception"] >= 2, 15, "bad answers")
        assert p["good"].status == "ok" and p["good"].counters["ok"] >= 1
        assert {p[n].status for n in ("noise", "failing", "too-big")} == {"quarantined"}
        assert "exception 3" in p["too-big"].last_error and "exception 4" in p["failing"].last_error
        assert all(line._task is not None and not line._task.done() for line in h.lines)
        ok = p["good"].counters["ok"]
        await wait_until(lambda: p["good"].counters["ok"] >= ok + 5, 5, "the good meter still polled")
        assert p["good"].counters["timeout"] == p["good"].counters["garbage"] == 0
    finally:
        await h.stop()


async def test_a_failing_store_never_stops_polling(procs, tmp_path, caplog):
    _, port = start_tcp_meter(procs, "sdm630")
    calls = []

    async def sink(m, r):
        calls.append(r["seq"])
        if len(calls) <= 3:
            raise RuntimeError("disk full")

    h = await start_modbus(gw_config(tmp_path, [meter("m", port)]), None, None, sink=sink)
    try:
        p = h.pollers[0]
        await wait_until(lambda: len(calls) >= 6, 10, "polls after the store failures")
        assert p.counters["sink_errors"] == 3 and p.status == "ok"
        assert "storing the reading failed" in caplog.text and "disk full" in caplog.text
        assert calls == sorted(set(calls))              # seq still strictly increasing
    finally:
        await h.stop()
