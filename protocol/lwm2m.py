"""LwM2M / IPSO identifiers, SenML labels and content formats: the one place they are spelled.

Runs unchanged on MicroPython and CPython. See protocol/SPEC.md for the meaning of each.
Sources: OMA LwM2M 1.1 (TS Core §6, §8), the OMA object registry (IPSO objects),
RFC 8428 §6 (SenML CBOR labels), the IANA CoAP Content-Formats registry.
"""

try:
    from micropython import const
except ImportError:  # CPython

    def const(x):
        return x


# --- CoAP content formats (IANA "CoAP Content-Formats") --------------------------------------
CF_TEXT = const(0)
CF_LINK_FORMAT = const(40)
CF_CBOR = const(60)
CF_SENML_JSON = const(110)
CF_SENML_CBOR = const(112)

# --- SenML CBOR labels (RFC 8428 §6, table 4) -------------------------------------------------
SENML_BVER = const(-1)
SENML_BN = const(-2)
SENML_BT = const(-3)
SENML_BU = const(-4)
SENML_BV = const(-5)
SENML_BS = const(-6)
SENML_N = const(0)
SENML_U = const(1)
SENML_V = const(2)
SENML_VS = const(3)
SENML_VB = const(4)
SENML_S = const(5)
SENML_T = const(6)
SENML_UT = const(7)
SENML_VD = const(8)

# --- Objects ------------------------------------------------------------------------------
OBJ_SERVER = const(1)
OBJ_DEVICE = const(3)
OBJ_LOCATION = const(6)
OBJ_POWER = const(3305)  # IPSO Power Measurement
OBJ_LIGHT = const(3311)  # IPSO Light Control
OBJ_STREETLIGHT = const(10250)  # vendor object (range 10241-42768): report, schedule, override

# Device 3
RES_MANUFACTURER = const(0)
RES_MODEL = const(1)
RES_SERIAL = const(2)
RES_FIRMWARE_VERSION = const(3)
RES_REBOOT = const(4)  # Execute
RES_ERROR_CODE = const(11)
RES_CURRENT_TIME = const(13)  # Unix seconds, UTC
RES_UTC_OFFSET = const(14)
RES_TIMEZONE = const(15)

# Location 6
RES_LATITUDE = const(0)
RES_LONGITUDE = const(1)

# Light Control 3311
RES_ON_OFF = const(5850)
RES_DIMMER = const(5851)  # 0..100 %
RES_ON_TIME = const(5852)  # seconds the lamp has been on (cumulative)
RES_CUMULATIVE_ENERGY = const(5805)  # Wh (also in 3305)
RES_POWER_FACTOR = const(5820)

# Power Measurement 3305
RES_ACTIVE_POWER = const(5800)  # W
RES_RESET_ENERGY = const(5822)  # Execute

# Vendor object 10250 "Street Light" (see SPEC.md §5)
RES_SEQ = const(0)  # report sequence number: starts every report in a Send pack
RES_FAULTS = const(1)  # fault flags bitmask (FAULT_* below)
RES_SCHEDULE = const(2)  # opaque CBOR schedule, R/W
RES_DEFAULT_LEVEL = const(3)  # fail-safe level 0..100, R/W
RES_OVERRIDE = const(4)  # opaque CBOR [level, seconds]; null level cancels; R/W
RES_GROUP = const(5)  # string, R/W
RES_CABINET = const(6)  # string, R/W
RES_RATED_POWER = const(7)  # W, R
RES_TIME_VALID = const(8)  # bool, R
RES_IDENTIFY = const(9)  # Execute: blink the lamp
RES_OVERRIDE_LEFT = const(10)  # seconds left of the active override, R

# --- Fault flags (names as in TALQ's LampMonitor failure attributes) ----------------------
FAULT_LAMP_FAILURE = const(0x01)  # no current at a commanded level
FAULT_POWER_TOO_HIGH = const(0x02)
FAULT_POWER_TOO_LOW = const(0x04)
FAULT_LAMP_UNEXPECTED_ON = const(0x08)  # lamp draws power while commanded off
FAULT_METER_FAILURE = const(0x10)  # meter not answering
FAULT_SUPPLY_LOSS = const(0x20)
FAULT_CONFIG_ERROR = const(0x40)  # config missing or corrupt: running on safe defaults
FAULT_TIME_INVALID = const(0x80)  # no valid wall-clock time: holding the default level

FAULT_NAMES = (
    (FAULT_LAMP_FAILURE, "lampFailure"),
    (FAULT_POWER_TOO_HIGH, "powerTooHigh"),
    (FAULT_POWER_TOO_LOW, "powerTooLow"),
    (FAULT_LAMP_UNEXPECTED_ON, "lampUnexpectedOn"),
    (FAULT_METER_FAILURE, "meterFailure"),
    (FAULT_SUPPLY_LOSS, "supplyLoss"),
    (FAULT_CONFIG_ERROR, "configError"),
    (FAULT_TIME_INVALID, "timeInvalid"),
)

# --- Schedule step kinds (SPEC.md §5.2) ----------------------------------------------------
STEP_FIXED = const(0)  # minutes after local midnight
STEP_SUNSET = const(1)  # minutes relative to sunset (negative = before)
STEP_SUNRISE = const(2)  # minutes relative to sunrise

# --- Registration ---------------------------------------------------------------------
LWM2M_VERSION = "1.1"
DEFAULT_LIFETIME = const(300)  # seconds; nodes update at 2/3 of it
MAX_PAYLOAD = const(1024)  # RFC 7252 §4.6: 1152-byte datagrams carry at most 1024 payload bytes


def fault_names(flags):
    """Return the TALQ-style names of the bits set in ``flags``, in bit order."""
    return [name for bit, name in FAULT_NAMES if flags & bit]


def parse_path(path):
    """Split "/3311/0/5851" into a tuple of ints ``(3311, 0, 5851)``.

    Returns a tuple of 1 to 4 ints. Raises ValueError on an empty, non-numeric or
    too-deep path, or an id outside 0..65535 (LwM2M TS Core §6.1).
    """
    parts = [p for p in path.split("/") if p != ""]
    if not parts or len(parts) > 4:
        raise ValueError("bad LwM2M path: %r" % (path,))
    out = []
    for p in parts:
        if not p.isdigit():
            raise ValueError("bad LwM2M path: %r" % (path,))
        v = int(p)
        if v > 65535:
            raise ValueError("bad LwM2M path: %r" % (path,))
        out.append(v)
    return tuple(out)


def format_path(*ids):
    """Join ids into a path: ``format_path(3311, 0, 5851) == "/3311/0/5851"``."""
    return "/" + "/".join(str(i) for i in ids)
