"""Astronomical clock: sunrise and sunset where the sun's centre is 0.833 deg below the horizon.

The NOAA solar-position equations (the ones the `astral` package uses), evaluated twice: once at
noon for a first guess, then at each event's own time. Accurate to well under a minute between
latitudes -60 and 60 (tests/firmware/test_sun_schedule.py checks it against astral).

float32-safe: the ESP32 port has single-precision floats, whose resolution at a Unix time
(1.7e9 s) is two minutes, and at a Julian day number (2.46e6) about 0.25 day. So nothing here
ever holds an absolute time in a float: the date is an integer day count, and floats only hold
Julian centuries since J2000 (about 0.27, resolution ~0.1 s) and minutes within one day.

Results are minutes after 00:00 UTC of the given UTC date (may be below 0 or above 1440 for
longitudes far from Greenwich). Polar cases never raise:

- polar night (the sun stays below -0.833 deg all day): ``POLAR_NIGHT``, sunrise = sunset =
  solar noon: the day has zero length, so night steps hold all day.
- polar day (the sun stays above): ``POLAR_DAY``, sunset = sunrise = solar midnight (noon - 720):
  the night has zero length, so day steps hold all day.
The schedule orders steps at equal times so that the outcome follows the sky (see schedule.py).
"""

import math

try:
    from micropython import const
except ImportError:  # CPython

    def const(x):
        return x


NORMAL = const(0)
POLAR_DAY = const(1)
POLAR_NIGHT = const(-1)

ZENITH_DEG = 90.833
_DAYS_1970_TO_2000 = const(10957)


def days_from_civil(y, m, d):
    """Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's algorithm; ints only)."""
    y -= m <= 2
    era = (y if y >= 0 else y - 399) // 400
    yoe = y - era * 400
    doy = (153 * (m + (-3 if m > 2 else 9)) + 2) // 5 + d - 1
    doe = yoe * 365 + yoe // 4 - yoe // 100 + doy
    return era * 146097 + doe - 719468


def civil_from_days(z):
    """(year, month, day) of a day count since 1970-01-01 (inverse of days_from_civil)."""
    z += 719468
    era = (z if z >= 0 else z - 146096) // 146097
    doe = z - era * 146097
    yoe = (doe - doe // 1460 + doe // 36524 - doe // 146096) // 365
    y = yoe + era * 400
    doy = doe - (365 * yoe + yoe // 4 - yoe // 100)
    mp = (5 * doy + 2) // 153
    d = doy - (153 * mp + 2) // 5 + 1
    m = mp + (3 if mp < 10 else -9)
    return (y + (m <= 2), m, d)


def _solar(jc):
    """(declination in radians, equation of time in minutes) at Julian century ``jc``."""
    rad = math.radians
    l0 = (280.46646 + jc * (36000.76983 + jc * 0.0003032)) % 360.0
    m = 357.52911 + jc * (35999.05029 - 0.0001537 * jc)
    mr = rad(m % 360.0)
    e = 0.016708634 - jc * (0.000042037 + 0.0000001267 * jc)
    c = (
        math.sin(mr) * (1.914602 - jc * (0.004817 + 0.000014 * jc))
        + math.sin(2 * mr) * (0.019993 - 0.000101 * jc)
        + math.sin(3 * mr) * 0.000289
    )
    true_long = l0 + c
    omega = rad((125.04 - 1934.136 * jc) % 360.0)
    app_long = true_long - 0.00569 - 0.00478 * math.sin(omega)
    seconds = 21.448 - jc * (46.815 + jc * (0.00059 - jc * 0.001813))
    obliq0 = 23.0 + (26.0 + seconds / 60.0) / 60.0
    obliq = rad(obliq0 + 0.00256 * math.cos(omega))
    decl = math.asin(math.sin(obliq) * math.sin(rad(app_long)))
    y = math.tan(obliq / 2.0)
    y *= y
    l0r = rad(l0)
    eqt = (
        y * math.sin(2 * l0r)
        - 2 * e * math.sin(mr)
        + 4 * e * y * math.sin(mr) * math.cos(2 * l0r)
        - 0.5 * y * y * math.sin(4 * l0r)
        - 1.25 * e * e * math.sin(2 * mr)
    )
    return decl, 4.0 * math.degrees(eqt)


def _jc(day2000, minutes):
    """Julian centuries since J2000.0 (2000-01-01 12:00 UTC) for a day count and minutes UTC."""
    return ((day2000 - 0.5) + minutes / 1440.0) / 36525.0


def _hour_angle_deg(lat_r, decl):
    """Hour angle (deg) of the sun at the event, or +-999 for polar day/night."""
    cos_ha = (math.cos(math.radians(ZENITH_DEG)) - math.sin(lat_r) * math.sin(decl)) / (
        math.cos(lat_r) * math.cos(decl)
    )
    if cos_ha > 1.0:
        return -999.0  # never rises
    if cos_ha < -1.0:
        return 999.0  # never sets
    return math.degrees(math.acos(cos_ha))


def solar_noon(days, lon):
    """Solar noon in minutes after 00:00 UTC of day ``days`` (since 1970) at longitude ``lon``."""
    d = days - _DAYS_1970_TO_2000
    noon = 720.0 - 4.0 * lon
    for _ in range(2):
        noon = 720.0 - 4.0 * lon - _solar(_jc(d, noon))[1]
    return noon


def sun_times(days, lat, lon):
    """Sunrise and sunset of UTC day ``days`` (since 1970-01-01) at ``lat``/``lon`` (degrees).

    Returns ``(sunrise_min, sunset_min, state)``: minutes after that day's 00:00 UTC (floats)
    and NORMAL, POLAR_DAY or POLAR_NIGHT (see the module docstring for the polar values).
    Latitudes are clamped to +-89.99 so the poles themselves do not divide by zero.
    """
    if lat > 89.99:
        lat = 89.99
    elif lat < -89.99:
        lat = -89.99
    d = days - _DAYS_1970_TO_2000
    lat_r = math.radians(lat)
    noon = solar_noon(days, lon)
    out = []
    for sign in (-1.0, 1.0):
        t = noon
        ha = 0.0
        for _ in range(3):
            decl, eqt = _solar(_jc(d, t))
            ha = _hour_angle_deg(lat_r, decl)
            if ha < -900.0 or ha > 900.0:
                break
            t = 720.0 - 4.0 * lon - eqt + sign * 4.0 * ha
        out.append((t, ha))
    (rise, ha_r), (sset, ha_s) = out
    if ha_r < -900.0 or ha_s < -900.0:
        return noon, noon, POLAR_NIGHT
    if ha_r > 900.0 or ha_s > 900.0:
        return noon - 720.0, noon - 720.0, POLAR_DAY
    return rise, sset, NORMAL
