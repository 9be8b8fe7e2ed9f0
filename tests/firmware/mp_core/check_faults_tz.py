import mprun

from firmware.faults import expected_w, power_flags
from firmware.hal.emulated import lamp_power_w
from firmware.light import level_to_duty
from firmware.sun import civil_from_days, days_from_civil
from firmware.tzrule import TZ
from protocol.lwm2m import (
    FAULT_LAMP_FAILURE,
    FAULT_LAMP_UNEXPECTED_ON,
    FAULT_POWER_TOO_HIGH,
    FAULT_POWER_TOO_LOW,
)


def test_expected_matches_emulated_luminaire():
    for lvl in (0, 5, 10, 25, 50, 75, 100):
        exp = expected_w(lvl, 40.0, 0.7, 10)
        real = lamp_power_w(level_to_duty(lvl), lvl > 0, 40.0, 0.7, 0.3, 0.1)
        assert abs(exp - real) <= 0.31, (lvl, exp, real)  # idle draw of the driver aside
        assert power_flags(lvl, real, exp, 0.7) == 0


def test_power_flags_thresholds():
    exp = expected_w(100, 40.0)
    assert power_flags(100, 0.7, exp, 0.7) == FAULT_LAMP_FAILURE
    assert power_flags(100, exp * 1.2 + 2.5, exp, 0.7) == FAULT_POWER_TOO_HIGH
    assert power_flags(100, exp * 0.7 - 2.5, exp, 0.7) == FAULT_POWER_TOO_LOW
    assert power_flags(100, exp * 0.95, exp, 0.7) == 0
    assert power_flags(0, 6.0, 0.7, 0.7) == FAULT_LAMP_UNEXPECTED_ON
    assert power_flags(0, 1.0, 0.7, 0.7) == 0


def test_civil_days_roundtrip():
    for z in range(-800000, 800000, 997):
        y, m, d = civil_from_days(z)
        assert days_from_civil(y, m, d) == z
    assert days_from_civil(1970, 1, 1) == 0 and days_from_civil(2000, 3, 1) == 11017


def test_j_and_n_rules():
    # J60 is always March 1 (no Feb 29); day 59 (0-based) is Feb 29 in a leap year
    tz = TZ("AAA-1BBB,J60/0,J300/0")
    st, en = tz.transitions(2024)
    assert st == days_from_civil(2024, 3, 1) * 86400 - 3600
    tz2 = TZ("AAA-1BBB,59/0,300/0")
    st2, _ = tz2.transitions(2024)
    assert st2 == days_from_civil(2024, 2, 29) * 86400 - 3600
    st3, _ = tz2.transitions(2023)
    assert st3 == days_from_civil(2023, 3, 1) * 86400 - 3600


def test_default_rules_and_offsets():
    us = TZ("EST5EDT")  # no rules: US defaults
    assert us.utc_offset(days_from_civil(2026, 7, 1) * 86400) == -4 * 3600
    assert us.utc_offset(days_from_civil(2026, 1, 1) * 86400) == -5 * 3600
    q = TZ("<+0545>-5:45")
    assert q.utc_offset(0) == 5 * 3600 + 45 * 60
    assert TZ("UTC0").to_local(1234) == 1234 and TZ("UTC0").from_local(1234) == 1234
    odd = TZ("XXX3YYY2,M3.5.0/-1,M10.5.0/25")  # RFC 8536 extended hours
    assert odd.dst_offset == -2 * 3600


mprun.run(globals())
