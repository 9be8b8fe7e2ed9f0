import sys
import time

import mprun

from firmware.hal.base import BOOT_POWER, BOOT_RESET, ResetRequested
from firmware.hal.emulated import EmulatedHal, lamp_power_w
from firmware.light import Light

D = sys.argv[1]


def hal(**kw):
    kw.setdefault("speed", 3600.0)
    return EmulatedHal("emu", D + "/flash", **kw)


def test_power_follows_level_nonlinear():
    h = hal(rated_w=40.0, standby_w=0.7)
    L = Light(h, min_level=10, fade_ms=0)
    assert h.power_w() == 0.7  # relay open: standby only
    prev = 0.7
    for lvl in (10, 20, 40, 60, 80, 100):
        L.set_level(lvl)
        w = h.power_w()
        assert w > prev
        prev = w
    assert abs(prev - 40.7) < 1e-9
    # non-linear: half level draws less than half of the lamp's rated power above standby
    L.set_level(50)
    assert h.power_w() - 0.7 < 0.5 * 40.0
    assert h.lamp_level() == 50
    # driver minimum: a 3 % duty draws what 10 % does
    assert lamp_power_w(0.03, True, 40.0) == lamp_power_w(0.10, True, 40.0)


def test_truth_integrates_power_over_sim_time():
    h = hal(rated_w=100.0, standby_w=0.5)
    L = Light(h, fade_ms=0)
    L.set_level(100)
    e0 = h.truth_wh()
    t0 = h._last_sim  # the instant the truth was integrated up to (no race with the real clock)
    time.sleep_ms(50)  # 180 simulated seconds
    e1 = h.truth_wh()
    t1 = h._last_sim
    assert t1 - t0 >= 150
    expect = 100.5 * (t1 - t0) / 3600.0
    assert abs((e1 - e0) - expect) < 0.01 * expect + 0.01
    assert abs(h.true_wh() - e1) < 1.0 and h.true_w() == h.power_w()
    # pulses at 1000 imp/kWh follow the truth (1 pulse per Wh)
    assert abs(h.pulse_count() - int(h.truth_wh())) <= 1


def test_lamp_failure_switch():
    h = hal(rated_w=40.0)
    L = Light(h, fade_ms=0)
    L.set_level(100)
    h.fail_lamp(True)
    assert h.power_w() == h.standby_w + h.idle_w and h.lamp_level() == 0
    h.fail_lamp(False)
    assert h.power_w() > 40


def test_meter_unplugged_stops_pulses_not_truth():
    h = hal(rated_w=100.0, speed=36000.0)
    Light(h, fade_ms=0).set_level(100)
    time.sleep_ms(20)
    h.unplug_meter(True)
    p0, e0 = h.pulse_count(), h.truth_wh()
    time.sleep_ms(30)
    assert h.pulse_count() == p0 and h.truth_wh() > e0 + 5
    h.unplug_meter(False)
    p1 = h.pulse_count()
    assert p1 == p0  # the pulses sent while unplugged never reach the node
    time.sleep_ms(30)
    assert h.pulse_count() > p1


def test_power_cut_and_restore():
    h = hal(rated_w=100.0, speed=36000.0)
    Light(h, fade_ms=0).set_level(100)
    h.rtc_set(1767225600)
    h.rtc_memory_write(b"keep")
    time.sleep_ms(10)
    h.power_cut()
    e = h.truth_wh()
    time.sleep_ms(20)
    assert h.truth_wh() == e and h.power_w() == 0.0 and not h.powered()
    h.power_restore()
    assert h.boot_cause() == BOOT_POWER and h.rtc_get() is None and h.rtc_memory_read() == b""
    assert h.pulse_count() == 0 and h.duty() == 0.0 and not h.relay()


def test_soft_reset_keeps_rtc():
    h = hal()
    h.rtc_set(1767225600)
    h.rtc_memory_write(b"abc")
    try:
        h.reset()
        raise AssertionError("reset returned")
    except ResetRequested:
        pass
    h.reboot()
    assert h.boot_cause() == BOOT_RESET and h.rtc_get() is not None and h.rtc_memory_read() == b"abc"


def test_clock_and_jump():
    h = hal(speed=1000.0, clock_start=1767225600, rtc_valid=True)
    a = h.rtc_get()
    assert abs(a - 1767225600) < 60
    h.clock_jump(86400)
    b = h.rtc_get()
    assert 86400 <= b - a < 86400 + 60
    assert abs(h.sim_unix() - a) < 60  # the truth clock did not jump
    t0 = h.ticks_ms()
    time.sleep_ms(10)
    el = h.ticks_diff(h.ticks_ms(), t0)
    assert 9000 <= el < 500000  # 10 real ms at speed 1000 (generous: a loaded machine)


def test_sleep_runs_faster():
    import asyncio

    h = hal(speed=100.0)

    async def main():
        t0 = time.ticks_ms()
        await h.sleep_ms(1000)  # 10 real ms
        return time.ticks_diff(time.ticks_ms(), t0)

    real = asyncio.run(main())
    assert 8 <= real < 500  # 1000 ms of node time took 10 real ms, not 1000


def test_light_task_fades_in_node_time():
    import asyncio

    h = hal(speed=20.0, rated_w=40.0)
    light = Light(h, fade_ms=2000)  # 100 real ms

    async def main():
        task = asyncio.create_task(light.run())
        light.set_level(100)
        await asyncio.sleep_ms(20)  # 0.4 s of node time: mid-fade
        mid = h.lamp_level()
        await asyncio.sleep_ms(150)  # past the 2 s fade
        light.stop()
        await asyncio.sleep_ms(10)
        task.cancel()
        return mid

    mid = asyncio.run(main())
    assert 10 <= mid < 100, mid
    assert h.lamp_level() == 100 and h.duty() == 1.0 and h.relay()


def test_flash_dir_and_ids():
    h = hal()
    with open(h.path("x.bin"), "wb") as f:
        f.write(b"1")
    assert h.path("x.bin") == D + "/flash/x.bin"
    assert len(h.unique_id()) == 6 and h.unique_id() != EmulatedHal("other", D + "/f2").unique_id()
    s = h.udp_socket()
    s.close()


mprun.run(globals())
