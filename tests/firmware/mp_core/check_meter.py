import asyncio
import os
import sys
import time

import mprun
from mprun import FakeClock

from firmware.durable import Counters
from firmware.hal.emulated import EmulatedHal
from firmware.light import Light
from firmware.meter import COUNTER_FIELDS, FLUSH_MS, FLUSH_WH, PulseMeter, open_counters
from firmware.meter_sdm120 import Sdm120Meter
from firmware.modbus_rtu import ModbusError

D = sys.argv[1]
_n = [0]


def fresh(name):
    _n[0] += 1
    d = D + "/" + name + str(_n[0])
    os.mkdir(d)
    return d


def counters(d):
    c = Counters(d + "/counters", COUNTER_FIELDS)
    c.load()
    return c


def poll(m):
    return asyncio.run(m.poll())


def test_stated_defaults():
    assert FLUSH_WH == 10 and FLUSH_MS == 15 * 60 * 1000


def test_pulse_counter_batches_every_10_wh():
    d = fresh("p")
    h = FakeClock()
    m = PulseMeter(h, counters(d))
    writes = 0
    for _ in range(95):
        h.pulses += 1
        h.advance(1000)
        if poll(m):
            writes += 1
    assert m.wh() == 95 and writes == 9
    assert counters(d).get("wh") == 90  # what a cut now would restart from


def test_pulse_counter_flushes_after_15_min():
    d = fresh("q")
    h = FakeClock()
    m = PulseMeter(h, counters(d))
    h.pulses += 3
    poll(m)
    h.advance(FLUSH_MS - 1000)
    assert not poll(m)
    h.advance(1000)
    assert poll(m) and counters(d).get("wh") == 3
    h.advance(FLUSH_MS)
    assert not poll(m)  # nothing new: no write


def test_restart_never_double_counts():
    d = fresh("r")
    h = FakeClock()
    m = PulseMeter(h, counters(d))
    h.pulses = 25
    poll(m)
    m.flush()
    assert m.wh() == 25
    h2 = FakeClock()  # a new boot: the HAL's pulse count restarts at 0
    m2 = PulseMeter(h2, counters(d))
    assert m2.wh() == 25
    h2.pulses = 5
    assert m2.wh() == 30


def test_report_wh_is_persisted_first():
    d = fresh("rep")
    h = FakeClock()
    m = PulseMeter(h, counters(d))
    h.pulses = 4
    assert m.report_wh() == 4 and counters(d).get("wh") == 4  # on flash before it is reported
    w = m.c.writes
    assert m.report_wh() == 4 and m.c.writes == w  # nothing new: no write


def test_fractional_pulse_constants():
    for ppk, pulses, wh in ((800, 8, 10), (3200, 3201, 1000), (3200, 16, 5)):
        d = fresh("f")
        h = FakeClock()
        h.pulses_per_kwh = ppk
        m = PulseMeter(h, counters(d))
        half = pulses // 2
        h.pulses = half
        m.flush()  # the sub-Wh remainder must survive the flush
        h2 = FakeClock()
        h2.pulses_per_kwh = ppk
        m2 = PulseMeter(h2, counters(d))
        h2.pulses = pulses - half
        assert m2.wh() == wh, (ppk, m2.wh(), wh)


def test_power_estimate_from_pulses():
    h = FakeClock()
    m = PulseMeter(h, counters(fresh("w")))
    for _ in range(5):
        h.advance(36000)  # one Wh every 36 s = 100 W
        h.pulses += 1
        poll(m)
    assert abs(m.power_w() - 100.0) < 0.01
    h.advance(360000)  # silence: capped by one pulse over the time since
    assert m.power_w() <= 10.0


def test_power_cut_loses_at_most_the_stated_bound():
    # emulated lamp + real pulse output; cut the supply at many instants, reboot, compare with truth
    d = fresh("cut")
    h = EmulatedHal("cut", d, speed=18000.0, rated_w=150.0)
    worst = 0.0
    for cycle in range(12):
        c = open_counters(h)
        m = PulseMeter(h, c)
        L = Light(h, fade_ms=0)
        L.set_level(100 if cycle % 3 else 30)
        start_truth = h.truth_wh()
        behind = start_truth - m.wh()  # what earlier cuts already lost (never recovered)
        deadline = time.ticks_add(time.ticks_ms(), 30 + (cycle * 13) % 70)
        poll_wh = 0.0
        while time.ticks_diff(deadline, time.ticks_ms()) > 0:
            e0 = h.truth_wh()
            poll(m)
            time.sleep_ms(1)
            poll_wh = max(poll_wh, h.truth_wh() - e0)
        h.power_cut()
        truth = h.truth_wh()
        c2 = open_counters(h)
        persisted = c2.get("wh")
        lost = truth - persisted - behind
        fifteen_min = h.power_w() * 0.25 if h.powered() else 150.7 * 0.25
        bound = min(FLUSH_WH, fifteen_min) + poll_wh + 1.0  # +1: whole Wh in the persisted value
        assert persisted <= truth + 1e-6, (persisted, truth)  # never counted twice
        assert lost <= bound, (cycle, lost, bound, truth - start_truth)
        worst = max(worst, lost)
        h.power_restore()
    print("worst loss", worst, "Wh")


class FakeMaster:
    """Answers reads with scripted (power W, total kWh) or failures (None)."""

    def __init__(self, script):
        self.script = list(script)
        self.cur = None

    async def read(self, unit, address, count):
        if address == 0:
            self.cur = self.script.pop(0)
        if self.cur is None:
            raise ModbusError("no valid answer from unit 1 (timeout)")
        return self


class FakeMasterKwh(FakeMaster):
    async def read(self, unit, address, count):
        await FakeMaster.read(self, unit, address, count)
        self.addr = address
        return self

    def float32(self, i):
        w, kwh = self.cur
        if self.addr == 0x0156:
            return kwh
        return {0: 230.0, 6: 0.2, 12: w, 30: 0.95}[i]


def test_modbus_meter_register_is_truth_and_replacement():
    d = fresh("mb")
    h = FakeClock()
    script = [(50.0, 100.0), (50.0, 100.2), (50.0, 100.199), None, None, (60.0, 0.5), (60.0, 1.0)]
    m = Sdm120Meter(h, counters(d), FakeMasterKwh(script))
    poll(m)
    assert m.wh() == 100000 and m.power_w() == 50.0 and m.ok()
    poll(m)
    assert m.wh() == 100200
    poll(m)
    assert m.wh() == 100200  # a dip of 1 Wh is noise, never reported
    poll(m)
    assert not m.ok() and m.wh() == 100200  # meter not answering: hold the last value
    poll(m)
    poll(m)  # a new meter reading 0.5 kWh: replaced, the counter continues
    assert m.ok() and m.wh() == 100700 and m.replacements == 1
    poll(m)
    assert m.wh() == 101200
    m2 = Sdm120Meter(FakeClock(), counters(d), FakeMasterKwh([(60.0, 1.0)]))  # reboot
    assert m2.wh() == 101200
    poll(m2)
    assert m2.wh() == 101200 and m2.replacements == 1


def test_modbus_meter_rejects_nan():
    h = FakeClock()
    m = Sdm120Meter(h, counters(fresh("nan")), FakeMasterKwh([(50.0, float("nan"))]))
    poll(m)
    assert not m.ok() and m.wh() == 0


mprun.run(globals())
