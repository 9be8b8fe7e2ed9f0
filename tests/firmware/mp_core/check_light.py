import mprun
from mprun import FakeClock

from firmware.light import Light, clamp_level, duty_to_level, level_to_duty


def test_duty_curve_monotonic_and_inverse():
    for gamma in (1.0, 2.2):
        prev = -1.0
        for lvl in range(0, 101):
            d = level_to_duty(lvl, gamma)
            assert 0.0 <= d <= 1.0
            assert d > prev or (lvl == 0 and d == 0.0)
            prev = d
            assert abs(duty_to_level(d, gamma) - lvl) < 1e-6
    assert level_to_duty(0) == 0.0 and level_to_duty(100) == 1.0
    assert level_to_duty(-5) == 0.0 and level_to_duty(250) == 1.0


def test_clamp_min_level():
    assert clamp_level(0, 10) == 0
    assert clamp_level(3, 10) == 10
    assert clamp_level(10, 10) == 10
    assert clamp_level(55, 10) == 55
    assert clamp_level(101, 10) == 100
    assert clamp_level(-1, 10) == 0


def test_fade_timing_and_monotonic():
    h = FakeClock()
    L = Light(h, min_level=10, fade_ms=2000)
    assert L.actual_level == 0 and h.relays[-1] is False
    L.set_level(80)
    seen = []
    for _ in range(41):
        L.update()
        seen.append(L.actual_level_f)
        h.advance(50)
    # rises monotonically, never below the driver minimum once started, reaches 80 at 2 s
    for k in range(1, len(seen) - 1):
        a, b = seen[k], seen[k + 1]
        assert b >= a
    assert all(x >= 10 for x in seen[1:])
    assert seen[20] > 40 - 2 and seen[20] < 40 + 2 + 10  # about half way at 1 s
    assert seen[-1] == 80
    assert not L.fading()
    assert h.relays[-1] is True
    assert abs(h.duties[-1] - 0.8) < 1e-9


def test_fade_down_to_zero_opens_relay_at_end():
    h = FakeClock()
    L = Light(h, fade_ms=1000)
    L.apply_now(60)
    assert L.actual_level == 60 and h.relays[-1] is True
    L.set_level(0)
    h.advance(500)
    L.update()
    assert 10 <= L.actual_level <= 60 and h.relays[-1] is True
    h.advance(600)
    L.update()
    assert L.actual_level == 0 and h.relays[-1] is False and h.duties[-1] == 0.0


def test_retarget_mid_fade_starts_from_actual():
    h = FakeClock()
    L = Light(h, fade_ms=1000)
    L.apply_now(100)
    L.set_level(0)
    h.advance(500)
    L.update()
    mid = L.actual_level_f
    L.set_level(100)
    assert abs(L.actual_level_f - mid) < 1e-6  # no jump
    h.advance(1000)
    L.update()
    assert L.actual_level == 100


def test_below_min_clamps():
    h = FakeClock()
    L = Light(h, min_level=15, fade_ms=0)
    L.set_level(5)
    assert L.actual_level == 15 and L.target_level == 15


def test_identify_blinks_then_restores():
    h = FakeClock()
    L = Light(h, min_level=10, fade_ms=0)
    L.apply_now(40)
    L.identify(2000, 500)
    outs = []
    for _ in range(8):
        L.update()
        outs.append(h.duties[-1])
        h.advance(250)
    assert 1.0 in outs and 0.1 in outs
    h.advance(100)
    L.update()
    assert not L.identifying() and abs(h.duties[-1] - 0.4) < 1e-9


def test_on_time_counts_relay_closed():
    h = FakeClock()
    L = Light(h, fade_ms=0)
    L.on_base_s = 100
    L.apply_now(50)
    h.advance(10000)
    L.update()
    L.set_level(0)
    h.advance(10000)
    L.update()
    assert L.on_time_s() == 110


def test_ticks_wrap_during_fade():
    h = FakeClock((1 << 30) - 500)
    L = Light(h, fade_ms=1000)
    L.set_level(100)
    h.advance(1000)
    L.update()
    assert L.actual_level == 100


mprun.run(globals())
