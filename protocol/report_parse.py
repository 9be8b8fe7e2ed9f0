"""Parsing and validating a Send on the gateway side (protocol/SPEC.md §3.1, §4, §8).

Call it as ``protocol.report.parse_send``; it lives in its own module so that a node, which
only builds reports (protocol/report.py), does not import the parser (docs/performance.md,
"Node application"). The decisions about what a valid pack is are in protocol/report.py's
docstring. Pure; MicroPython and CPython.
"""

from protocol import senml
from protocol.report import (
    _S_DIMMER,
    _S_ENERGY,
    _S_FAULTS,
    _S_ON_TIME,
    _S_POWER,
    _S_SEQ,
    BN_LIGHT,
    BN_POWER,
    BN_STREETLIGHT,
)

# Resolved names.
NAME_SEQ = BN_STREETLIGHT + _S_SEQ
NAME_FAULTS = BN_STREETLIGHT + _S_FAULTS
NAME_WH = BN_LIGHT + _S_ENERGY
NAME_WH_POWER = BN_POWER + _S_ENERGY
NAME_LEVEL = BN_LIGHT + _S_DIMMER
NAME_ON_TIME = BN_LIGHT + _S_ON_TIME
NAME_W = BN_POWER + _S_POWER

# resolved name -> (report field, kind); kind: 0 uint seq, 1 number >= 0, 2 level, 3 uint, 4 number
_FIELDS = {
    NAME_FAULTS: ("faults", 3),
    NAME_WH: ("wh", 1),
    NAME_WH_POWER: ("wh", 1),
    NAME_LEVEL: ("level", 2),
    NAME_ON_TIME: ("on_time", 1),
    NAME_W: ("w", 4),
}
_SEQ_LIMIT = 1 << 63


def _number(val, field):
    if not senml.is_number(val):
        raise senml.SenMLError("report %s must be a number" % field)
    return val


def _check_field(field, kind, val):
    if kind == 3:
        if not isinstance(val, int) or isinstance(val, bool) or val < 0 or val >= _SEQ_LIMIT:
            raise senml.SenMLError("report %s must be an integer >= 0" % field)
    else:
        _number(val, field)
        if kind == 1 and val < 0:
            raise senml.SenMLError("report %s must be >= 0" % field)
        if kind == 2 and not 0 <= val <= 100:
            raise senml.SenMLError("report level must be 0..100")
    return val


def _new_report(rec):
    seq = rec.get("v")
    if not isinstance(seq, int) or isinstance(seq, bool) or seq < 0 or seq >= _SEQ_LIMIT:
        raise senml.SenMLError("report seq must be an integer in 0..2**63-1")
    return {
        "seq": seq,
        "t": rec["t"],
        "wh": None,
        "w": None,
        "level": None,
        "on_time": None,
        "faults": None,
        "rel_time": bool(rec.get("rel", False)),
    }


def parse_send(data, now=None):
    """Parse a Send payload (SenML-CBOR bytes) into reports and descriptor attributes.

    Returns ``(reports, attrs)``: reports is a list of dicts with keys seq, t, wh, w,
    level, on_time (None when absent), faults (0 when absent) and rel_time (True when t was relative and
    resolved against ``now``), in pack order; attrs maps each resolved name of the records
    before the first report (other than report fields, which join the first report) to its
    value. Raises SenMLError (naming the field) for a pack that
    does not parse, an empty pack, a report without energy, or a value of the wrong type or
    out of range (SPEC §3.1, §8: answer 4.00).
    """
    return parse_records(senml.decode(data), now)


def parse_records(records, now=None):
    """``parse_send`` for records already decoded (by senml.decode or protocol.senml_json):
    the one validated path for both content formats. Same result and errors."""
    records = senml.resolve_valid(records, now)
    if not records:
        raise senml.SenMLError("empty pack")
    reports = []
    attrs = {}
    early = []  # report fields before the first /10250/0/0: they belong to the first report
    cur = None
    for rec in records:
        name = rec["n"]
        if name == NAME_SEQ:
            if cur is not None:
                _finish(cur)
            cur = _new_report(rec)
            reports.append(cur)
            if early:
                for r in early:
                    _set_field(cur, r)
                early = None
            continue
        if cur is None:
            if name in _FIELDS:
                early.append(rec)
            else:
                attrs[name] = senml.value_of(rec)
            continue
        if name in _FIELDS:
            _set_field(cur, rec)
    if cur is not None:
        _finish(cur)
    elif early:  # no report at all: plain attributes
        for r in early:
            attrs[r["n"]] = senml.value_of(r)
    return reports, attrs


def _set_field(report, rec):
    field, kind = _FIELDS[rec["n"]]
    if "v" not in rec:
        raise senml.SenMLError("report %s must be a number" % field)
    val = _check_field(field, kind, rec["v"])
    old = report[field]
    if old is not None and old != val:
        raise senml.SenMLError("report %s given twice with different values" % field)
    report[field] = val


def _finish(report):
    if report["faults"] is None:
        report["faults"] = 0  # an absent fault record means no fault (SPEC §3.1)
    if report["wh"] is None:
        raise senml.SenMLError("report seq %d has no energy (/3311/0/5805)" % report["seq"])
