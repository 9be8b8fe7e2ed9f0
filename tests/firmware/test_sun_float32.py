"""sun.py stays accurate with single-precision floats, as on the ESP32 port.

The Unix port computes in float64, so here the node's own sun.py runs in CPython with every float
it makes rounded to IEEE-754 binary32 after each arithmetic step (a float subclass that rounds),
and the result is compared with astral. A design that held absolute times in floats (Julian days
of 2.46e6, Unix seconds of 1.7e9) would be off by hours here.
"""

import datetime as dt
import math
import struct

import core_support  # noqa: F401  (puts the project root on sys.path)
from astral import Observer
from astral.sun import sunrise, sunset

from firmware import sun


def r32(x):
    return struct.unpack("<f", struct.pack("<f", float(x)))[0]


class F32(float):
    """A float whose arithmetic results are rounded to binary32."""

    def __new__(cls, x):
        return float.__new__(cls, r32(x))


def _op(name):
    base = getattr(float, name)

    def f(self, other):
        res = base(float(self), float(other) if isinstance(other, (int, float)) else other)
        return res if res is NotImplemented else F32(res)

    return f


for _n in ("__add__", "__radd__", "__sub__", "__rsub__", "__mul__", "__rmul__", "__truediv__",
           "__rtruediv__", "__mod__", "__rmod__", "__pow__", "__rpow__"):
    setattr(F32, _n, _op(_n))
F32.__neg__ = lambda self: F32(-float(self))


class Math32:
    """math with binary32 results, the way MicroPython's single-precision libm answers."""

    def __getattr__(self, name):
        fn = getattr(math, name)
        if not callable(fn):
            return F32(fn)
        return lambda *a: F32(fn(*(float(x) for x in a)))


def test_sun_times_in_float32_within_a_minute_of_astral(monkeypatch):
    monkeypatch.setattr(sun, "math", Math32())
    worst = 0.0
    for lat in (-60, -35, 0, 35, 48.85, 60):
        for lon in (2.35, -122.4, 151.2):
            tz = dt.timezone(dt.timedelta(hours=round(lon / 15)))
            obs = Observer(lat, lon)
            for m in range(1, 13):
                d = dt.date(2026, m, 11)
                days = (d - dt.date(1970, 1, 1)).days
                r, s, state = sun.sun_times(days, F32(lat), F32(lon))
                assert isinstance(r, F32) and state == 0
                base = dt.datetime(d.year, d.month, d.day, tzinfo=dt.UTC)
                ar = (sunrise(obs, d, tzinfo=tz) - base).total_seconds() / 60
                as_ = (sunset(obs, d, tzinfo=tz) - base).total_seconds() / 60
                worst = max(worst, abs(r - ar), abs(s - as_))
                assert abs(r - ar) <= 1.0 and abs(s - as_) <= 1.0, (lat, lon, d, r, ar, s, as_)
    print(f"worst float32 deviation from astral: {worst:.3f} min")


def test_rounding_wrapper_really_rounds():
    # the control: float32 cannot hold a Unix time to the second
    t = F32(1767225600) + 1
    assert float(t) != 1767225601.0
