"""A simulated 24 h of the firmware core on a hand-driven clock, for the heap tests and bench.

Every 10 s: light update, the level the schedule wants (override included), pulse accounting
with batched persistence; every 15 min: a report (persisted energy, seq, outbox); the gateway
is away for the first 12 h (the outbox fills) then acknowledges everything. Prints
``done <reports> <pending> <code bytes> <peak live data bytes> <free> <wh> <pulses>``.
argv: flash_dir
"""

import gc
import sys

from firmware.durable import SeqAllocator
from firmware.light import Light
from firmware.meter import PulseMeter, open_counters
from firmware.outbox import Outbox
from firmware.schedule import Override, Schedule, wanted_level
from firmware.tzrule import TZ


class DayHal:
    """Clock driven by the loop; power follows the duty; 1000 imp/kWh."""

    pulses_per_kwh = 1000

    def __init__(self, root):
        self.t = 0
        self.flash_root = root
        self.duty = 0.0
        self.relay = False
        self.energy_mwh = 0

    def ticks_ms(self):
        return self.t & 0x3FFFFFFF

    def ticks_add(self, a, d):
        return (a + d) & 0x3FFFFFFF

    def ticks_diff(self, a, b):
        return ((a - b + 0x20000000) & 0x3FFFFFFF) - 0x20000000

    def set_duty(self, d):
        self.duty = d

    def set_relay(self, on):
        self.relay = on

    def pulse_count(self):
        return self.energy_mwh // 1000

    def path(self, name):
        return self.flash_root + "/" + name

    def step(self, ms):
        w = 0.7 + (60.0 * self.duty if self.relay else 0.0)
        self.energy_mwh += int(w * ms / 3600)
        self.t += ms


def main():
    gc.collect()
    code = gc.mem_alloc()  # modules loaded (frozen in flash on the device: not heap there)
    root = sys.argv[1]
    hal = DayHal(root)
    tz = TZ("CET-1CEST,M3.5.0,M10.5.0/3")
    sch = Schedule([[1, 0, 100], [0, 1350, 40], [0, 0, 0], [0, 300, 40], [2, 0, 0]], 48.85, 2.35, tz)
    ov = Override(hal)
    light = Light(hal, fade_ms=2000)
    c = open_counters(hal)
    meter = PulseMeter(hal, c)
    seq = SeqAllocator(c)
    ob = Outbox(root)
    t0 = 1767225600 + 12 * 3600  # noon UTC, 2026-01-01
    reports = 0
    live = 0
    for i in range(8640):
        now = t0 + i * 10
        lvl = wanted_level(sch, ov, now, 100)
        if lvl != light.target_level:
            light.set_level(lvl)
        light.update()
        meter._track()
        if meter.batch.due(meter.wh()):
            meter.flush()
        if i % 90 == 0:
            c.set("on_s", light.on_time_s())
            ob.put((seq.next(), now, meter.report_wh(), meter.power_w(), light.actual_level,
                    light.on_time_s(), 0))
            reports += 1
            if i >= 4320:  # the gateway is back: send packs of 10
                while len(ob):
                    ob.remove(10)
        if i == 3000:
            ov.set(70, 1800)
        hal.step(10000)
        if i % 90 == 45:
            gc.collect()
            a = gc.mem_alloc()
            if a > live:
                live = a
    print("done", reports, len(ob), code, live - code, gc.mem_free(), meter.wh(), hal.pulse_count())


main()
