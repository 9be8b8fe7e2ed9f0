"""Energy metering on the node: the pulse meter, the Modbus-RTU SDM120, and the energy counter.

The SDM120 class lives in firmware/meter_sdm120.py, imported only by a node whose config says
``meter.type = "modbus"``: a pulse-metered node does not carry its code in RAM (see
docs/performance.md, "Node application"). The policy for both is described here.

Both meters expose the same small interface to the node::

    wh()          cumulative active energy, int Wh, never decreasing
    report_wh()   the same, persisted first: use it for every report (see below)
    power_w()     active power now, float W
    ok()          False once the meter stopped answering (SPEC §7 meterFailure)
    await poll()  read the meter (Modbus) / account pulses; persist when due
    flush()       persist now (clean shutdown, before a requested reboot)

Counter state lives in a ``durable.Counters`` record with the fields of ``COUNTER_FIELDS``
(``open_counters(hal)`` builds it); the node stores its on-time and the report-seq mark there
too, so one batched write carries everything.

Pulse meter: energy never lost, never counted twice
---------------------------------------------------
The counter is ``persisted_wh + pulses since the last persist``; pulses are kept exactly (the
sub-Wh remainder is persisted too, so any imp/kWh constant works). ``poll()`` persists when the
unpersisted energy reaches ``flush_wh`` (default **10 Wh**) or ``flush_ms`` (default **15 min**)
have passed with anything unpersisted, whichever comes first; ``flush()`` persists at once.

**Stated bound:** a power cut at any instant loses at most the energy counted since the last
persist, i.e. *less than* ``flush_wh`` plus one poll interval of energy, and never more than the
energy of ``flush_ms`` plus one poll interval: ``loss < min(10 Wh, E(15 min)) + E(poll)``.
With the node polling every second that is under 10 Wh + 0.05 Wh for a 150 W lamp. It is never
counted twice: a reboot restarts from the persisted value, and pulses seen after it are new.
Flash wear: at most one write per 10 Wh or 15 min (a 60 W lamp: one write per 10 min at night).

A report must never carry energy that a power cut could take back (the gateway would see the
counter run backwards, and count the difference twice once it grows again). So a report takes
its ``wh`` from ``report_wh()``, which persists first: with 15-min reports that is one more
write per report at most.

Modbus meter (Eastron SDM120)
-----------------------------
The meter's own cumulative register (total active energy, 0x0156, float32 kWh) is the truth;
the node reports it. A reading below 0.9 x the previous one (field notes §5) means the meter was
replaced or reset: the node adds the previous reading to a persisted ``mb_offset`` (written at
once) so the reported counter stays monotonic. Smaller dips are noise and are not reported.
After three tries without a valid answer ``ok()`` is False and ``wh()`` holds its last value.
"""

try:
    from micropython import const
except ImportError:  # CPython

    def const(x):
        return x


from firmware.durable import Counters

COUNTER_FIELDS = ("wh", "rem", "on_s", "seq_hw", "mb_offset", "mb_last_wh", "replacements")

FLUSH_WH = const(10)
FLUSH_MS = const(900000)  # 15 min


def open_counters(hal, name="counters"):
    """The node's persisted counters record in the HAL's flash, loaded."""
    c = Counters(hal.path(name), COUNTER_FIELDS)
    c.load()
    return c


class _Batch:
    """The flush policy shared by the meters: every ``flush_wh`` Wh or ``flush_ms``."""

    def __init__(self, hal, counters, flush_wh, flush_ms):
        self.hal = hal
        self.c = counters
        self.flush_wh = flush_wh
        self.flush_ms = flush_ms
        self.saved_at = hal.ticks_ms()
        self.saved_wh = 0

    def due(self, wh):
        if wh - self.saved_wh >= self.flush_wh:
            return True
        if self.hal.ticks_diff(self.hal.ticks_ms(), self.saved_at) >= self.flush_ms:
            return self.c.dirty() or wh != self.saved_wh
        return False

    def done(self, wh):
        self.saved_at = self.hal.ticks_ms()
        self.saved_wh = wh


class PulseMeter:
    """An S0 pulse meter counted by the HAL (``hal.pulse_count()``, ``hal.pulses_per_kwh``)."""

    def __init__(self, hal, counters, flush_wh=FLUSH_WH, flush_ms=FLUSH_MS):
        self.hal = hal
        self.c = counters
        self.ppk = hal.pulses_per_kwh or 1000
        self.base_wh = counters.get("wh")
        self.rem = counters.get("rem")  # energy below one Wh, in units of 1/ppk Wh
        if not 0 <= self.rem < self.ppk:
            self.rem = 0
        self.ref = hal.pulse_count()
        self.batch = _Batch(hal, counters, flush_wh, flush_ms)
        self.batch.saved_wh = self.base_wh
        self.flushes = 0
        # power estimate from pulse intervals
        self._last_count = self.ref
        self._last_t = hal.ticks_ms()
        self._interval_ms = 0
        self._pulses_in_interval = 0

    def _acc(self):
        return self.rem + (self.hal.pulse_count() - self.ref) * 1000

    def wh(self):
        return self.base_wh + self._acc() // self.ppk

    def report_wh(self):
        """Persist, then return the energy for a report (never ahead of flash)."""
        if self.wh() != self.batch.saved_wh or self.hal.pulse_count() != self.ref or self.c.dirty():
            self.flush()
        return self.base_wh + self.rem // self.ppk

    def ok(self):
        # A silent pulse meter cannot be told from a dark lamp: its silence shows as power 0
        # (lampFailure when the lamp should be on). See docs in the module docstring.
        return True

    def power_w(self):
        """Power from the last pulse interval, capped by one pulse over the time since."""
        hal = self.hal
        pulse_wh = 1000.0 / self.ppk
        since = hal.ticks_diff(hal.ticks_ms(), self._last_t)
        if self._interval_ms <= 0:
            return 0.0  # no pulse interval measured since boot yet
        w = 3600000.0 * pulse_wh * self._pulses_in_interval / self._interval_ms
        if since > self._interval_ms:
            cap = 3600000.0 * pulse_wh / since
            if cap < w:
                w = cap
        return w

    def _track(self):
        hal = self.hal
        n = hal.pulse_count()
        if n != self._last_count:
            now = hal.ticks_ms()
            self._interval_ms = hal.ticks_diff(now, self._last_t)
            self._pulses_in_interval = n - self._last_count
            self._last_count = n
            self._last_t = now

    async def poll(self):
        """Account pulses; persist when due. Returns True if it wrote flash."""
        self._track()
        if self.batch.due(self.wh()):
            return self.flush()
        return False

    def flush(self):
        """Fold the pulses into the persisted base and write the counters record now."""
        p = self.hal.pulse_count()
        acc = self.rem + (p - self.ref) * 1000
        w = acc // self.ppk
        self.base_wh += w
        self.rem = acc - w * self.ppk
        self.ref = p
        c = self.c
        c.set("wh", self.base_wh)
        c.set("rem", self.rem)
        wrote = c.flush()
        self.batch.done(self.base_wh)
        self.flushes += 1
        return wrote
