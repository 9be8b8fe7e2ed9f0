"""The luminaire output: level 0-100 %, driver minimum, gamma to PWM duty, timed fades, relay.

Owns the lamp behaviour above the HAL (the HAL only has ``set_duty`` and ``set_relay``).

- Level semantics: a level is the share of the lamp's rated *light output* (what EN 13201
  dimming steps mean and what a town's "40 % after 22:30" means). PWM-dimmed LED drivers are close
  to linear in light output, so the default ``gamma`` is 1.0; a driver with a non-linear dimming
  input is corrected with ``gamma`` (duty = (level/100) ** gamma). Decision written here because
  perceptual gamma (2.2-2.8, as indoor lights use) would make "40 %" draw about 10 % power.
- Driver minimum: a level above 0 but below ``min_level`` is raised to ``min_level``; 0 is off.
- Fades: ``set_level(target)`` moves the *actual* level linearly from where it is now to the
  target over ``fade_ms`` (default 2000 ms, configurable, 0 = instant), whatever the step size.
  ``update()`` (called every ``step_ms`` by ``run()`` or by the node's own loop) applies the
  current point; ``actual_level`` is readable at any time during a fade.
- Relay: closed whenever the output level is above 0; opened when the level reaches 0 (at the
  end of a fade down). It is closed *before* the first non-zero duty on the way up.
- Identify (SPEC /10250/0/9): blink between 100 % and the driver minimum every ``period_ms`` for
  ``duration_ms`` (the relay stays closed: no relay wear), then return to the fade state.
- On-time (IPSO 5852): milliseconds with the relay closed are counted by ``update()``;
  ``on_time_s()`` adds the persisted base the node restored at boot.
"""

try:
    from micropython import const
except ImportError:  # CPython

    def const(x):
        return x


_STEP_MS = const(50)
_IDLE_MS = const(250)


def clamp_level(level, min_level):
    """Clamp a level to 0..100 and raise 0 < level < min_level to min_level."""
    if not (level > 0):
        return 0.0
    if level > 100:
        return 100.0
    if level < min_level:
        return float(min_level)
    return float(level)


def level_to_duty(level, gamma=1.0):
    """PWM duty (0..1) for an output level (0..100). Monotonic, 0 -> 0, 100 -> 1."""
    if not (level > 0):
        return 0.0
    if level >= 100:
        return 1.0
    x = level / 100.0
    return x if gamma == 1.0 else x**gamma


def duty_to_level(duty, gamma=1.0):
    """Inverse of ``level_to_duty``: the output level (float 0..100) a duty produces."""
    if not (duty > 0):
        return 0.0
    if duty >= 1.0:
        return 100.0
    return 100.0 * (duty if gamma == 1.0 else duty ** (1.0 / gamma))


class Light:
    """One lamp. ``hal`` provides ticks_ms/ticks_diff/sleep_ms/set_duty/set_relay."""

    def __init__(self, hal, min_level=10, fade_ms=2000, gamma=1.0, step_ms=_STEP_MS):
        self.hal = hal
        self.min_level = min_level
        self.fade_ms = fade_ms
        self.gamma = gamma
        self.step_ms = step_ms
        self.target = 0.0
        self._from = 0.0
        self._t0 = hal.ticks_ms()
        self._dur = 0
        self._out = -1.0  # level last written to the HAL (-1: never)
        self._relay = None
        self._last = hal.ticks_ms()
        self.on_ms = 0
        self.on_base_s = 0
        self._ident_until = None
        self._t_ident = self._t0
        self._ident_period = 1000
        self._stopped = False
        self.apply_now(0)

    # --- level --------------------------------------------------------------------------
    def set_level(self, level, fade_ms=None):
        """Start a fade to ``level`` (clamped; see module docstring). Applies the first step now."""
        target = clamp_level(level, self.min_level)
        now = self.hal.ticks_ms()
        self._from = self._level_at(now)
        self.target = target
        self._t0 = now
        self._dur = self.fade_ms if fade_ms is None else fade_ms
        self.update()

    def apply_now(self, level):
        """Jump to ``level`` without a fade (boot: the level the schedule wants now)."""
        self.set_level(level, 0)

    def _level_at(self, now):
        dur = self._dur
        if dur <= 0:
            return self.target
        el = self.hal.ticks_diff(now, self._t0)
        if el >= dur:
            return self.target
        if el <= 0:
            return self._from
        lvl = self._from + (self.target - self._from) * el / dur
        # a fade passes through the driver minimum, never below it while the lamp is on
        if 0 < lvl < self.min_level:
            lvl = float(self.min_level)
        return lvl

    @property
    def actual_level_f(self):
        """The level the lamp is at now (float), including a fade in progress."""
        return self._level_at(self.hal.ticks_ms())

    @property
    def actual_level(self):
        """The level the lamp is at now, rounded to an int 0..100 (what reports carry)."""
        return int(self._level_at(self.hal.ticks_ms()) + 0.5)

    @property
    def target_level(self):
        return int(self.target + 0.5)

    def fading(self):
        return self.hal.ticks_diff(self.hal.ticks_ms(), self._t0) < self._dur and self._from != self.target

    def identifying(self):
        return self._ident_until is not None

    # --- output -------------------------------------------------------------------------
    def update(self):
        """Write the current fade/identify point to the HAL. Returns True while busy."""
        hal = self.hal
        now = hal.ticks_ms()
        if self._relay:
            self.on_ms += hal.ticks_diff(now, self._last)
        self._last = now
        busy = False
        if self._ident_until is not None:
            if hal.ticks_diff(self._ident_until, now) > 0:
                phase = (hal.ticks_diff(now, self._t_ident) // self._ident_period) & 1
                self._write(100.0 if phase == 0 else float(self.min_level or 1))
                return True
            self._ident_until = None
            self._out = -1.0  # force a rewrite of the fade state
        lvl = self._level_at(now)
        busy = lvl != self.target
        self._write(lvl)
        return busy

    def _write(self, lvl):
        if lvl == self._out:
            return
        hal = self.hal
        on = lvl > 0
        if on and not self._relay:
            hal.set_relay(True)
            self._relay = True
        hal.set_duty(level_to_duty(lvl, self.gamma))
        if not on and self._relay is not False:
            hal.set_relay(False)
            self._relay = False
        self._out = lvl

    def relay_on(self):
        return bool(self._relay)

    def duty(self):
        return level_to_duty(self._out if self._out > 0 else 0.0, self.gamma)

    # --- identify -----------------------------------------------------------------------
    def identify(self, duration_ms=10000, period_ms=500):
        """Blink 100 % / minimum, ``period_ms`` each, for ``duration_ms`` (SPEC /10250/0/9)."""
        now = self.hal.ticks_ms()
        self._t_ident = now
        self._ident_period = period_ms if period_ms > 0 else 500
        self._ident_until = self.hal.ticks_add(now, duration_ms)
        self.update()

    # --- on-time ------------------------------------------------------------------------
    def on_time_s(self):
        """Cumulative lamp-on seconds: the persisted base plus this boot's relay-closed time."""
        return self.on_base_s + self.on_ms // 1000

    # --- task ---------------------------------------------------------------------------
    async def run(self):
        """Keep the output current: every ``step_ms`` while fading/blinking, else every 250 ms."""
        self._stopped = False
        while not self._stopped:
            busy = self.update()
            await self.hal.sleep_ms(self.step_ms if busy else _IDLE_MS)

    def stop(self):
        self._stopped = True
