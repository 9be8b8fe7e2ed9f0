"""Tiny test runner for MicroPython scripts: runs every ``test_*`` function of a module dict.

Usage at the end of a test script: ``mprun.run(globals())``. Prints ``PASS name`` /
``FAIL name: error`` lines and exits 1 if anything failed (pytest checks the exit code).
"""

import sys


class FakeClock:
    """A HAL stand-in with a hand-driven tick counter and recorded outputs (for timing tests)."""

    def __init__(self, t=0):
        self.t = t
        self.duties = []
        self.relays = []
        self.pulses = 0
        self.pulses_per_kwh = 1000
        self.flash_root = "/tmp"

    def ticks_ms(self):
        return self.t & ((1 << 30) - 1)

    def ticks_add(self, t, d):
        return (t + d) & ((1 << 30) - 1)

    def ticks_diff(self, a, b):
        half = 1 << 29
        return ((a - b + half) & ((1 << 30) - 1)) - half

    def advance(self, ms):
        self.t += ms

    def set_duty(self, d):
        self.duties.append(d)

    def set_relay(self, on):
        self.relays.append(bool(on))

    def pulse_count(self):
        return self.pulses

    def path(self, name):
        return self.flash_root + "/" + name


def raises(exc, fn, *args):
    try:
        fn(*args)
    except exc:
        return True
    raise AssertionError(f"expected {exc.__name__} from {fn!r}{args!r}")


def run(ns):
    names = sorted(k for k in ns if k.startswith("test_") and callable(ns[k]))
    failed = 0
    for name in names:
        try:
            ns[name]()
            print("PASS", name)
        except Exception as e:  # noqa: BLE001 - report every failure, keep going
            failed += 1
            print("FAIL", name + ":", repr(e))
            sys.print_exception(e) if hasattr(sys, "print_exception") else None
    print(f"{len(names) - failed} passed, {failed} failed")
    if failed or not names:
        sys.exit(1)
