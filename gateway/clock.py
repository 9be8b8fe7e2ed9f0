"""The gateway's clock: real or simulated, and whether it may be trusted to set nodes' time.

Owns ``Clock`` (``now()``, ``trusted()``, ``simulated``) and ``kernel_ntp_synced()``.

Simulated clock: ``sim = start + (real_now - anchor) * speed``; ``anchor`` defaults to the
moment the Clock is made (process start). A simulated clock is always trusted: it is the
shared time of a test or demo with emulated nodes.

Real clock: trusted only while the kernel says it is NTP-synchronised (SPEC §6: a Raspberry
Pi has no RTC and boots with a stale time that must never be pushed to a town's nodes).
Decision: ask the kernel directly with ``adjtimex(2)`` (modes = 0, a read-only query that any
user may make) through ctypes, instead of running ``timedatectl``: no subprocess, no D-Bus,
works in containers and without systemd. The rule is systemd's own ``ntp_synced()``: the
clock is synchronised when adjtimex succeeds, does not report ``TIME_ERROR`` with
``STA_UNSYNC``, and the kernel's maximum error estimate is below 16 s (the kernel grows
``maxerror`` by 500 ppm per second without NTP and marks the clock unsynchronised at 16 s).
The answer is cached for a few seconds.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import time as _time
from collections.abc import Callable

STA_UNSYNC = 0x0040
TIME_ERROR = 5
MAXERROR_LIMIT_US = 16_000_000  # NTP_PHASE_LIMIT: beyond this the kernel clock is unsynchronised


class _Timeval(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_usec", ctypes.c_long)]


class _Timex(ctypes.Structure):
    """struct timex from <sys/timex.h> (Linux), with the trailing padding."""

    _fields_ = [
        ("modes", ctypes.c_uint), ("offset", ctypes.c_long), ("freq", ctypes.c_long),
        ("maxerror", ctypes.c_long), ("esterror", ctypes.c_long), ("status", ctypes.c_int),
        ("constant", ctypes.c_long), ("precision", ctypes.c_long), ("tolerance", ctypes.c_long),
        ("time", _Timeval), ("tick", ctypes.c_long), ("ppsfreq", ctypes.c_long),
        ("jitter", ctypes.c_long), ("shift", ctypes.c_int), ("stabil", ctypes.c_long),
        ("jitcnt", ctypes.c_long), ("calcnt", ctypes.c_long), ("errcnt", ctypes.c_long),
        ("stbcnt", ctypes.c_long), ("tai", ctypes.c_int), ("_pad", ctypes.c_int * 11),
    ]


def timex_synced(state: int, status: int, maxerror_us: int) -> bool:
    """Decide synchronisation from adjtimex's return value, ``status`` and ``maxerror``."""
    if state < 0:
        return False
    if state == TIME_ERROR and status & STA_UNSYNC:
        return False
    return maxerror_us < MAXERROR_LIMIT_US


def read_adjtimex() -> tuple[int, int, int] | None:
    """Query the kernel: ``(state, status, maxerror_us)``, or None where adjtimex is unavailable."""
    name = ctypes.util.find_library("c")
    if not name:
        return None
    try:
        libc = ctypes.CDLL(name, use_errno=True)
        fn = libc.adjtimex
    except (OSError, AttributeError):
        return None
    tx = _Timex()
    tx.modes = 0  # read only
    state = fn(ctypes.byref(tx))
    return state, tx.status, tx.maxerror


def kernel_ntp_synced() -> bool:
    """True when the kernel reports its clock synchronised (see the module docstring)."""
    r = read_adjtimex()
    if r is None:
        return False
    return timex_synced(*r)


class Clock:
    """Real or simulated wall clock in Unix seconds.

    ``Clock()`` is the real clock. ``Clock(start=..., speed=..., anchor=...)`` is simulated
    (``start`` None with ``speed != 1`` runs from the real time at ``anchor``).
    ``sync_check`` replaces the kernel query (for tests and for platforms without adjtimex).
    """

    CACHE_S = 5.0

    def __init__(self, start: float | None = None, speed: float = 1.0, anchor: float | None = None,
                 *, sync_check: Callable[[], bool] | None = None,
                 real: Callable[[], float] = _time.time) -> None:
        if speed <= 0:
            raise ValueError("clock speed must be > 0")
        self._real = real
        self.simulated = start is not None or speed != 1.0
        self.anchor = real() if not anchor else float(anchor)
        self.start = float(start) if start is not None else self.anchor
        self.speed = float(speed)
        self._sync_check = sync_check or kernel_ntp_synced
        self._cached: tuple[float, bool] | None = None

    @classmethod
    def from_config(cls, cfg) -> Clock:
        """Build from a gateway.config.Config's ``[clock]`` section."""
        return cls(start=cfg.clock_start_unix(), speed=cfg.clock.speed,
                   anchor=cfg.clock.anchor or None)

    def now(self) -> float:
        """Current (possibly simulated) Unix time, seconds."""
        if not self.simulated:
            return self._real()
        return self.start + (self._real() - self.anchor) * self.speed

    def trusted(self) -> bool:
        """True if this time may be pushed to nodes: simulated, or real and NTP-synchronised."""
        if self.simulated:
            return True
        mono = _time.monotonic()
        if self._cached is None or mono - self._cached[0] > self.CACHE_S:
            self._cached = (mono, bool(self._sync_check()))
        return self._cached[1]

    def __repr__(self) -> str:
        if self.simulated:
            return f"Clock(simulated start={self.start} speed={self.speed} anchor={self.anchor})"
        return "Clock(real)"
