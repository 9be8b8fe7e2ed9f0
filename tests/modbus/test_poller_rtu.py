"""The poller on a serial RS-485 line: socat pty pair + the emulator paced at the baud rate
(separate processes). Readings into the store, and a line shared by a healthy meter, a
dead one and ones that answer with CRC errors, garbage or exceptions."""

from __future__ import annotations

import asyncio

import pytest
from modbus_helpers import gw_config, wait_until

from gateway.energy.query import energy
from gateway.modbus.service import start_modbus
from gateway.store import Store
from tools.meters.harness import start_rtu_line
from tools.meters.model import write_control


def rtu_meter(name, device, unit, **kw):
    return {"name": name, "profile": "eastron-sdm630", "transport": "rtu", "device": device,
            "baudrate": 9600, "unit": unit, "period": "0.1s", "timeout": "0.15s", "backoff_max": "1s", **kw}


async def test_rtu_sdm630_reading_lands_in_store_and_energy(procs, tmp_path):
    line = start_rtu_line(procs, tmp_path, baud=9600, model="sdm630", load_w=7200, speed=50,
                          extra=["--energy-kwh", "42"])
    store = await Store.open(str(tmp_path / "slgw.db"))
    try:
        h = await start_modbus(gw_config(tmp_path, [rtu_meter("cab-B", line.bus, 1, cabinet="B")]), store, None)
        try:
            p = h.pollers[0]
            await wait_until(lambda: p.counters["ok"] >= 8, 20, "8 good polls over RTU")
        finally:
            await h.stop()
        assert p.status == "ok" and p.power_w == pytest.approx(7200)
        assert p.import_wh > 42_000
        assert p.counters["crc"] == p.counters["garbage"] == p.counters["timeout"] == 0
        # the line kept at least 3.5 characters of silence (pymodbus inserts none itself)
        assert h.lines[0].bus.silence == pytest.approx(3.5 * 10 / 9600)
        await store.refresh()

        def q(conn):
            whs = [r[0] for r in conn.execute("SELECT wh FROM readings WHERE source = 'meter:cab-B' ORDER BY seq")]
            return whs, energy(conn, node="meter:cab-B", by="hour")["total_wh"]

        whs, total = await store.read(q)
        assert len(whs) == p.counters["ok"]
        assert total == pytest.approx(whs[-1] - whs[0], rel=1e-6) and total > 0
    finally:
        await store.close()


async def test_rtu_bad_neighbours_are_counted_and_do_not_stall_the_healthy_meter(procs, tmp_path):
    control = tmp_path / "control.json"
    write_control(control, {"units": {"2": {"fault": "crc"}, "3": {"fault": "garbage"},
                                      "4": {"fault": "exception"}, "5": {"fault": "unplugged"}}})
    line = start_rtu_line(procs, tmp_path, baud=19200, model="sdm120", units="1-5", control=control)
    names = ["good", "crc", "noise", "failing", "dead"]
    meters = [rtu_meter(n, line.bus, u + 1, profile="eastron-sdm120", baudrate=19200, backoff_max="1.6s")
              for u, n in enumerate(names)]
    h = await start_modbus(gw_config(tmp_path, meters), None, None, sink=lambda m, r: asyncio.sleep(0))
    try:
        p = {q.cfg.name: q for q in h.pollers}
        await wait_until(lambda: all(p[n].quarantined for n in names[1:]) and p["crc"].counters["crc"] >= 2
                         and p["noise"].counters["garbage"] >= 2 and p["failing"].counters["exception"] >= 2
                         and p["dead"].counters["timeout"] >= 2, 20, "every fault seen twice")
        # let the back-off grow to its 1.6 s ceiling (0.1, 0.2, 0.4, 0.8, 1.6 s)
        await wait_until(lambda: all(p[n].failures >= 5 for n in names[1:]), 20, "back-off at its ceiling")
        ok0 = p["good"].counters["ok"]
        probes0 = sum(p[n].counters["probes"] for n in names[1:])
        await asyncio.sleep(3.0)
        ok1 = p["good"].counters["ok"]
        probes1 = sum(p[n].counters["probes"] for n in names[1:])
        # structure, not timing: the four bad meters are only probed, once per back-off, each
        # probe holding the line for one timeout at most; the healthy meter polls in between
        probes = probes1 - probes0
        assert 4 <= probes <= 12
        assert ok1 - ok0 >= 2 * probes
        assert p["good"].status == "ok"
        assert sum(p["good"].counters[k] for k in ("timeout", "crc", "garbage", "exception")) == 0
        assert "CRC" in p["crc"].last_error and "unusable" in p["noise"].last_error
        assert p["dead"].last_error.startswith("timeout")
        # a broken CRC is noticed when the answer is complete, not after the timeout: the CRC
        # meter holds the line for less time per poll than the dead one, which waits it out
        per_poll = {n: p[n].bus_time / p[n].counters["polls"] for n in ("crc", "dead")}
        assert per_poll["crc"] < 0.75 * per_poll["dead"], per_poll
        assert not h.lines[0]._task.done()
        # the faults clear: every meter is back in a few back-off periods
        write_control(control, {"units": {}, "fault": None})
        await wait_until(lambda: all(p[n].status == "ok" for n in names), 10, "every meter recovered")
    finally:
        await h.stop()


async def test_serial_adapter_unplugged_and_plugged_back_is_reopened(procs, tmp_path):
    line = start_rtu_line(procs, tmp_path, baud=19200, model="sdm120")
    h = await start_modbus(gw_config(tmp_path, [rtu_meter("m", line.bus, 1, profile="eastron-sdm120", baudrate=19200,
                                                     backoff_max="0.5s")]), None, None,
                           sink=lambda m, r: asyncio.sleep(0))
    try:
        p = h.pollers[0]
        await wait_until(lambda: p.counters["ok"] >= 3, 15, "first polls")
        line.meter.terminate()
        line.socat.terminate()                       # the USB adapter is gone: so is the device node
        await wait_until(lambda: p.quarantined and p.counters["connection"] + p.counters["timeout"] >= 2,
                         10, "the loss noticed")
        start_rtu_line(procs, tmp_path, name="rtu", baud=19200, model="sdm120")  # plugged back
        ok = p.counters["ok"]
        await wait_until(lambda: p.status == "ok" and p.counters["ok"] >= ok + 3, 15, "the port reopened")
        assert h.lines[0].bus.connects >= 2
    finally:
        await h.stop()
