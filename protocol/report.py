"""The LwM2M Send payloads of protocol/SPEC.md §3 (periodic reports) and §4 (descriptor).

Owns: the record layout of one report, packing reports into Sends of at most 1024 payload
bytes, the descriptor records, and (in protocol/report_parse.py, reached through
``parse_send`` here) parsing/validating a Send on the gateway side. Shared by the node (which
builds) and the gateway (which parses). Pure; MicroPython and CPython.

A report is a tuple ``(seq, t, wh, w, level, on_time, faults)``:
seq (uint), t (Unix s, or negative = seconds ago), wh (cumulative Wh, int), w (active power,
W; rounded to 0.25 W here), level (0-100), on_time (cumulative s), faults (bitmask, SPEC §7).

Decisions:
* ``parse_send`` fields a record did not carry are None (only the energy is required).
* A field repeated inside one report is an error unless both values are equal (a sender may
  send both /3311/0/5805 and /3305/0/5805, the same counter).
* Records before the first /10250/0/0 are attributes (the descriptor), except report fields
  (energy, power, level...), which belong to the first report: SPEC §3.1 lets a sender order
  the records of a report freely, and a one-report pack then parses whatever the order. Records
  inside a report whose names are not report fields are ignored (SPEC §3.1: unknown names).
* ``descriptor_records`` leaves out attributes given as None.
"""

from protocol import cbor, senml
from protocol.lwm2m import (
    OBJ_DEVICE,
    OBJ_LIGHT,
    OBJ_LOCATION,
    OBJ_POWER,
    OBJ_STREETLIGHT,
    RES_ACTIVE_POWER,
    RES_CABINET,
    RES_CUMULATIVE_ENERGY,
    RES_DEFAULT_LEVEL,
    RES_DIMMER,
    RES_FAULTS,
    RES_FIRMWARE_VERSION,
    RES_GROUP,
    RES_LATITUDE,
    RES_LONGITUDE,
    RES_ON_TIME,
    RES_RATED_POWER,
    RES_SEQ,
    RES_TIMEZONE,
    SENML_BN,
    SENML_BT,
    SENML_N,
    SENML_V,
    SENML_VS,
)

# Base names and short names of the report records (SPEC §3.1).
BN_STREETLIGHT = "/%d/0/" % OBJ_STREETLIGHT
BN_LIGHT = "/%d/0/" % OBJ_LIGHT
BN_POWER = "/%d/0/" % OBJ_POWER
BN_DEVICE = "/%d/0/" % OBJ_DEVICE
BN_LOCATION = "/%d/0/" % OBJ_LOCATION
_S_SEQ = str(RES_SEQ)
_S_FAULTS = str(RES_FAULTS)
_S_ENERGY = str(RES_CUMULATIVE_ENERGY)
_S_DIMMER = str(RES_DIMMER)
_S_ON_TIME = str(RES_ON_TIME)
_S_POWER = str(RES_ACTIVE_POWER)

REPORT_FIELDS = ("seq", "t", "wh", "w", "level", "on_time", "faults")


def round_power(w):
    """Round a power in W to the nearest quarter watt (exact in float16 below 512 W)."""
    return round(w * 4) / 4


def report_records(report):
    """Return the SenML records (int labels) of one report, SPEC §3.1 layout (five, six with faults)."""
    seq, t, wh, w, level, on_time, faults = report
    recs = [
        {SENML_BN: BN_STREETLIGHT, SENML_BT: int(t), SENML_N: _S_SEQ, SENML_V: int(seq)},
        {SENML_BN: BN_LIGHT, SENML_N: _S_ENERGY, SENML_V: int(wh)},
        {SENML_N: _S_DIMMER, SENML_V: int(level)},
        {SENML_N: _S_ON_TIME, SENML_V: int(on_time)},
        {SENML_BN: BN_POWER, SENML_N: _S_POWER, SENML_V: round_power(w)},
    ]
    if faults:  # absent means no fault (SPEC §3.1): six bytes saved in the usual case
        recs.insert(1, {SENML_N: _S_FAULTS, SENML_V: int(faults)})
    return recs


def encode_reports(reports):
    """Encode reports (oldest first) as one SenML-CBOR pack (SPEC §3.2). Returns bytes."""
    records = []
    for r in reports:
        records.extend(report_records(r))
    return senml.encode(records)


def _array_head_len(n):
    if n < 24:
        return 1
    if n < 0x100:
        return 2
    if n < 0x10000:
        return 3
    return 5


def report_size(report):
    """Bytes the report's six records take inside a pack (without the array head)."""
    return len(cbor.dumps(report_records(report))) - 1


def pack_reports(reports, limit=1024):
    """Split reports (oldest first) into packs whose encoded payload is <= ``limit`` bytes.

    Returns a list of lists of reports, in order; never an empty pack. A report that is
    larger than ``limit`` on its own still gets a pack of its own (it cannot be split).
    """
    packs = []
    cur = []
    body = 0
    for r in reports:
        size = report_size(r)
        n = len(cur) + 1
        if cur and body + size + _array_head_len(6 * n) > limit:
            packs.append(cur)
            cur = []
            body = 0
        cur.append(r)
        body += size
    if cur:
        packs.append(cur)
    return packs


def descriptor_records(fw, lat, lon, group, cabinet, rated_w, default_level, tz):
    """Return the descriptor records of SPEC §4 (a pack without /10250/0/0).

    Attributes given as None are left out.
    """
    recs = []

    def add(bn, res, label, value):
        if value is None:
            return
        rec = {SENML_N: str(res), label: value}
        if bn is not None:
            rec[SENML_BN] = bn
        recs.append(rec)

    n0 = len(recs)
    add(BN_DEVICE, RES_FIRMWARE_VERSION, SENML_VS, fw)
    add(BN_DEVICE if len(recs) == n0 else None, RES_TIMEZONE, SENML_VS, tz)
    n0 = len(recs)
    add(BN_LOCATION, RES_LATITUDE, SENML_V, lat)
    add(BN_LOCATION if len(recs) == n0 else None, RES_LONGITUDE, SENML_V, lon)
    n0 = len(recs)
    for res, label, value in (
        (RES_GROUP, SENML_VS, group),
        (RES_CABINET, SENML_VS, cabinet),
        (RES_RATED_POWER, SENML_V, rated_w),
        (RES_DEFAULT_LEVEL, SENML_V, default_level),
    ):
        add(BN_STREETLIGHT if len(recs) == n0 else None, res, label, value)
    return recs


def encode_descriptor(fw, lat, lon, group, cabinet, rated_w, default_level, tz):
    """Encode the descriptor (SPEC §4) as a SenML-CBOR pack. Returns bytes."""
    return senml.encode(descriptor_records(fw, lat, lon, group, cabinet, rated_w, default_level, tz))


def parse_send(data, now=None):
    """Parse a Send payload (SenML-CBOR bytes) into ``(reports, attrs)``; raises SenMLError.

    The gateway's side: the parser lives in protocol/report_parse.py (see its docstring for
    the result and the errors), imported on first use so that a node, which only builds
    reports, does not hold its code in RAM.
    """
    from protocol.report_parse import parse_send as parse

    return parse(data, now)
