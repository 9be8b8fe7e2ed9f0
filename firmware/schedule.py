"""The lighting schedule (SPEC §5.2), the override (SPEC §5.3) and "the level wanted now".

Schedule: at most 16 steps ``[kind, minutes, level]`` (kinds from protocol.lwm2m: STEP_FIXED
minutes after local midnight 0..1439, STEP_SUNSET / STEP_SUNRISE offset -720..720 min; level
0..100). For a local date, each step is placed in UTC: fixed steps through the POSIX TZ rule
(firmware/tzrule.py), sun steps from firmware/sun.py for that date at the node's position.
The level in force at an instant is the one of the latest placed step at or before it, looking
at the previous, current *and next* local days (a "sunrise - 600" step of tomorrow can fall
before midnight today; a "sunset + 600" of yesterday can fall after midnight). So after a boot
or a clock jump, ``level_at(now)`` is simply right: a step missed during an outage is not lost.

Ties (steps placed at the same instant) resolve by the later position in a sort key that puts
sunrise steps after sunset steps in polar day (lamp follows daylight) and sunset steps after
sunrise steps in polar night, then by list order: the last written step wins.

Override: ``Override(hal)`` holds a level for 1..604800 s of *node monotonic* time (it works
without valid wall time). It is counted down from ``hal.ticks_ms`` on every query, so long
durations never overflow the 2**29 ms ticks_diff range as long as it is queried at least once
every few days (the node queries it every tick). Not persisted: a reboot ends an override and
the schedule takes over (SPEC §5.3: a manual level never outlives a day without the schedule).

``wanted_level(...)``: override, else (time valid) the schedule, else the default level; an
empty schedule also means the default level.
"""

from firmware.sun import NORMAL, POLAR_DAY, sun_times

try:
    from protocol.lwm2m import STEP_FIXED, STEP_SUNRISE, STEP_SUNSET
except ImportError:  # pragma: no cover
    STEP_FIXED, STEP_SUNSET, STEP_SUNRISE = 0, 1, 2

MAX_STEPS = 16
MAX_OVERRIDE_S = 604800


def validate_steps(steps):
    """Return the steps as a list of (kind, minutes, level) int tuples, or raise ValueError.

    The check is complete before anything is used (a bad Write changes nothing; SPEC §8).
    """
    if not isinstance(steps, (list, tuple)):
        raise ValueError("schedule must be an array of steps")
    if len(steps) > MAX_STEPS:
        raise ValueError("schedule has more than 16 steps")
    out = []
    for st in steps:
        if not isinstance(st, (list, tuple)) or len(st) != 3:
            raise ValueError("a step is [kind, minutes, level]")
        kind, minutes, level = st
        for v in st:
            if not isinstance(v, int) or isinstance(v, bool):
                raise ValueError("step fields must be integers")
        if kind == STEP_FIXED:
            if not 0 <= minutes <= 1439:
                raise ValueError("fixed step minutes must be 0..1439")
        elif kind == STEP_SUNSET or kind == STEP_SUNRISE:
            if not -720 <= minutes <= 720:
                raise ValueError("sun step offset must be -720..720")
        else:
            raise ValueError("unknown step kind %d" % kind)
        if not 0 <= level <= 100:
            raise ValueError("step level must be 0..100")
        out.append((kind, minutes, level))
    return out


class Schedule:
    """Steps + position + time zone -> the scheduled level at any UTC instant."""

    def __init__(self, steps=(), lat=0.0, lon=0.0, tz=None):
        self.steps = validate_steps(list(steps))
        self.lat = lat
        self.lon = lon
        self.tz = tz  # a tzrule.TZ, or None for UTC
        self._cache_day = None
        self._cache = None

    def set_steps(self, steps):
        self.steps = validate_steps(steps)
        self._cache_day = None

    def set_position(self, lat, lon):
        self.lat = lat
        self.lon = lon
        self._cache_day = None

    def set_tz(self, tz):
        self.tz = tz
        self._cache_day = None

    def _to_local(self, unix):
        return unix if self.tz is None else self.tz.to_local(unix)

    def _from_local(self, local):
        return local if self.tz is None else self.tz.from_local(local)

    def day_events(self, day):
        """Placed steps of local day ``day`` (days since 1970): list of (utc, key, level)."""
        sunrise, sunset, state = sun_times(day, self.lat, self.lon)
        out = []
        base = day * 86400
        for i, (kind, minutes, level) in enumerate(self.steps):
            if kind == STEP_FIXED:
                t = self._from_local(base + minutes * 60)
                rank = 1
            else:
                ev = sunset if kind == STEP_SUNSET else sunrise
                t = base + int(ev * 60.0 + 0.5) + minutes * 60
                if state == NORMAL:
                    rank = 1
                elif state == POLAR_DAY:
                    rank = 2 if kind == STEP_SUNRISE else 0
                else:
                    rank = 2 if kind == STEP_SUNSET else 0
            out.append((t, rank * 32 + i, level))
        return out

    def _events_around(self, day):
        if self._cache_day != day:
            ev = self.day_events(day - 1) + self.day_events(day) + self.day_events(day + 1)
            ev.sort()
            self._cache = ev
            self._cache_day = day
        return self._cache

    def level_at(self, unix):
        """The scheduled level at UTC Unix time ``unix``, or None for an empty schedule."""
        if not self.steps:
            return None
        day = self._to_local(unix) // 86400
        best = None
        for t, _k, level in self._events_around(day):
            if t <= unix:
                best = level
            else:
                break
        if best is None:  # only possible with sun steps beyond two days: look further back
            ev = self.day_events(day - 2)
            ev.sort()
            best = ev[-1][2]
        return best

    def next_change(self, unix):
        """UTC time of the next placed step after ``unix`` (for sleeping), or None."""
        if not self.steps:
            return None
        day = self._to_local(unix) // 86400
        for t, _k, _level in self._events_around(day):
            if t > unix:
                return t
        return None


class Override:
    """A level held for a duration of node monotonic time (SPEC §5.3)."""

    def __init__(self, hal):
        self.hal = hal
        self.level = None
        self._left_ms = 0
        self._t = hal.ticks_ms()

    def set(self, level, seconds):
        """Hold ``level`` (0..100) for ``seconds`` (1..604800). ``level`` None cancels.

        Raises ValueError for values out of range (state unchanged).
        """
        if level is None:
            self.cancel()
            return
        if not isinstance(level, int) or isinstance(level, bool) or not 0 <= level <= 100:
            raise ValueError("override level must be 0..100 or null")
        if not isinstance(seconds, int) or isinstance(seconds, bool) or not 1 <= seconds <= MAX_OVERRIDE_S:
            raise ValueError("override seconds must be 1..604800")
        self.level = level
        self._left_ms = seconds * 1000
        self._t = self.hal.ticks_ms()

    def cancel(self):
        self.level = None
        self._left_ms = 0

    def _tick(self):
        now = self.hal.ticks_ms()
        if self.level is not None:
            self._left_ms -= self.hal.ticks_diff(now, self._t)
            if self._left_ms <= 0:
                self.cancel()
        self._t = now

    def active_level(self):
        """The override level in force now, or None (expired or none)."""
        self._tick()
        return self.level

    def left_s(self):
        """Seconds left (rounded up), 0 when none (SPEC /10250/0/10)."""
        self._tick()
        if self.level is None:
            return 0
        return (self._left_ms + 999) // 1000

    def state(self):
        """``[level, seconds_left]`` or ``[None, 0]`` (what a Read of /10250/0/4 answers)."""
        left = self.left_s()
        return [self.level, left] if self.level is not None else [None, 0]


def wanted_level(schedule, override, now_unix, default_level):
    """The level the lamp should be at now (SPEC §5.2, §5.3, §6).

    ``now_unix`` None means no valid time: hold ``default_level`` (and the node raises
    timeInvalid). An active override wins over both.
    """
    lvl = override.active_level() if override is not None else None
    if lvl is not None:
        return lvl
    if now_unix is None or schedule is None:
        return default_level
    lvl = schedule.level_at(now_unix)
    return default_level if lvl is None else lvl
