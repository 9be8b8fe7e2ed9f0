"""gateway/clock.py: simulated time, and when the real clock may be trusted."""

import shutil
import subprocess

from gateway.clock import (
    MAXERROR_LIMIT_US,
    STA_UNSYNC,
    TIME_ERROR,
    Clock,
    read_adjtimex,
    timex_synced,
)


class FakeReal:
    def __init__(self, t):
        self.t = t

    def __call__(self):
        return self.t


def test_simulated_clock_runs_at_speed_from_anchor():
    real = FakeReal(1000.0)
    c = Clock(start=1_768_496_400.0, speed=60.0, anchor=1000.0, real=real)
    assert c.simulated and c.now() == 1_768_496_400.0
    real.t = 1010.0
    assert c.now() == 1_768_496_400.0 + 600.0
    assert c.trusted()  # the shared time of a test or demo


def test_speed_alone_starts_from_real_time_at_anchor():
    real = FakeReal(5000.0)
    c = Clock(speed=2.0, real=real)  # anchor = construction time
    real.t = 5003.0
    assert c.now() == 5006.0


def test_real_clock_trust_follows_the_sync_check():
    state = {"synced": False}
    c = Clock(sync_check=lambda: state["synced"])
    assert not c.simulated and not c.trusted()
    c.CACHE_S = 0.0
    state["synced"] = True
    assert c.trusted()


def test_timex_rule():
    assert timex_synced(0, 0, 1000)
    assert not timex_synced(TIME_ERROR, STA_UNSYNC, MAXERROR_LIMIT_US)
    assert not timex_synced(0, 0, MAXERROR_LIMIT_US)  # maxerror grew to the limit
    assert not timex_synced(-1, 0, 0)  # adjtimex failed


def test_kernel_query_agrees_with_timedatectl():
    r = read_adjtimex()
    assert r is not None, "adjtimex must be callable on Linux"
    state, status, maxerror = r
    assert 0 <= state <= 5 and maxerror >= 0
    tdc = shutil.which("timedatectl")
    if tdc:
        p = subprocess.run([tdc, "show", "-p", "NTPSynchronized", "--value"],
                           capture_output=True, text=True, timeout=10)
        if p.returncode == 0 and p.stdout.strip() in ("yes", "no"):
            assert timex_synced(*r) == (p.stdout.strip() == "yes")


def test_clock_from_config():
    from gateway.config import load_config

    c = Clock.from_config(load_config(None, {"clock.start": "2026-01-15T17:00:00Z",
                                             "clock.speed": "60", "clock.anchor": "1000"}))
    assert c.simulated and c.start == 1_768_496_400.0 and c.speed == 60.0 and c.anchor == 1000.0
    assert not Clock.from_config(load_config(None, {})).simulated
