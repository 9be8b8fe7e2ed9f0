"""Lamp-monitor checks (SPEC §7): measured power against what the level should draw.

``expected_w(level, rated_w, ...)`` models a typical LED driver: the controller's standby draw
plus ``rated_w * (floor + (1 - floor) * x ** curve)`` with ``x`` the PWM duty for the level
(driver minimum applied). Defaults (floor 0.06, curve 1.25) match the emulated luminaire and
typical constant-current drivers; a real installation calibrates them per luminaire type.

``power_flags(level, power_w, expected, standby_w)`` applies the SPEC §7 thresholds and returns
the lampFailure / powerTooHigh / powerTooLow / lampUnexpectedOn bits. The caller judges only once
the output settled (not during a fade) and adds meterFailure, supplyLoss, configError and
timeInvalid itself.
"""

from firmware.light import level_to_duty
from protocol.lwm2m import (
    FAULT_LAMP_FAILURE,
    FAULT_LAMP_UNEXPECTED_ON,
    FAULT_POWER_TOO_HIGH,
    FAULT_POWER_TOO_LOW,
)


def expected_w(level, rated_w, standby_w=0.7, min_level=10, gamma=1.0, floor=0.06, curve=1.25):
    """Expected power (W) at the meter for an output level 0..100."""
    if level <= 0:
        return standby_w
    if level < min_level:
        level = min_level
    x = level_to_duty(level, gamma)
    return standby_w + rated_w * (floor + (1.0 - floor) * x**curve)


def power_flags(level, power_w, expected, standby_w):
    """SPEC §7 power checks for a settled output level; returns the fault bits."""
    if level > 0:
        if power_w < standby_w + 0.1 * (expected - standby_w):
            return FAULT_LAMP_FAILURE
        if power_w > 1.2 * expected + 2.0:
            return FAULT_POWER_TOO_HIGH
        if power_w < 0.7 * expected - 2.0:
            return FAULT_POWER_TOO_LOW
        return 0
    if power_w > standby_w + 5.0:
        return FAULT_LAMP_UNEXPECTED_ON
    return 0
