"""Parsing and validating a Send on the gateway side (protocol/SPEC.md §3.1, §4, §8).

Call it as ``protocol.report.parse_send``; it lives in its own module so that a node, which
only builds reports (protocol/report.py), does not import the parser (docs/performance.md,
"Node application"). The decisions about what a valid pack is are in protocol/report.py's
docstring. Pure; MicroPython and CPython.

This is the gateway's only Send parser (issue 16: it used to have two more of its own in front
of this one). Speed comes from a lane inside it: a pack laid out exactly as
``report.encode_reports`` lays it out (the node's own records, absolute times, any integer or
float width) is read straight from the bytes, comparing the fixed parts and decoding only the
values, which must pass the general path's checks (``_seq``, ``_check_field``). Anything else,
including any doubt and every invalid value, takes the general path (CBOR decode, SenML
validation and resolution), which gives the same reports for every pack the lane accepts
(tested on random packs under CPython and MicroPython) and names the bad field.
"""

import struct

from protocol import cbor, senml
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


def _seq(seq):
    if not isinstance(seq, int) or isinstance(seq, bool) or seq < 0 or seq >= _SEQ_LIMIT:
        raise senml.SenMLError("report seq must be an integer in 0..2**63-1")
    return seq


def _new_report(rec):
    seq = _seq(rec.get("v"))
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
    reports = _node_layout(data)
    if reports is not None:
        return reports, {}
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


# --- the lane: the node's own byte layout (report.report_records through cbor.dumps) ---------
# Per report, the fixed bytes between its values: map heads, labels, names, base names (CBOR
# map keys in the deterministic order 0 n, 2 v, -2 bn, -3 bt). The fault record is optional.
_T = cbor.dumps
_L_SEQ = b"\xa4\x00" + _T(_S_SEQ) + b"\x02"
_L_T = b"\x21" + _T(BN_STREETLIGHT) + b"\x22"
_L_FAULTS = b"\xa2\x00" + _T(_S_FAULTS) + b"\x02"
_L_WH = b"\xa3\x00" + _T(_S_ENERGY) + b"\x02"
_L_LEVEL = b"\x21" + _T(BN_LIGHT) + b"\xa2\x00" + _T(_S_DIMMER) + b"\x02"
_L_ON = b"\xa2\x00" + _T(_S_ON_TIME) + b"\x02"
_L_W = b"\xa3\x00" + _T(_S_POWER) + b"\x02"
_L_END = b"\x21" + _T(BN_POWER)
_N_SEQ, _N_T, _N_FAULTS, _N_WH = len(_L_SEQ), len(_L_T), len(_L_FAULTS), len(_L_WH)
_N_LEVEL, _N_ON, _N_W, _N_END = len(_L_LEVEL), len(_L_ON), len(_L_W), len(_L_END)
_REL = senml.REL_TIME_LIMIT


def _num(data, pos):
    """A CBOR integer or float at ``pos`` (any width); returns (value, next pos), value None
    for anything else. IndexError or struct.error for a truncated item."""
    b = data[pos]
    mt = b >> 5
    if mt < 2:
        ai = b & 31
        if ai < 24:
            v, pos = ai, pos + 1
        elif ai == 24:
            v, pos = data[pos + 1], pos + 2
        elif ai == 25:
            v, pos = data[pos + 1] << 8 | data[pos + 2], pos + 3
        elif ai == 26:
            v, pos = struct.unpack_from(">I", data, pos + 1)[0], pos + 5
        elif ai == 27:
            v, pos = struct.unpack_from(">Q", data, pos + 1)[0], pos + 9
        else:
            return None, pos
        return (v if mt == 0 else -1 - v), pos
    if b == 0xF9:
        return cbor._half_value(data[pos + 1] << 8 | data[pos + 2]), pos + 3
    if b == 0xFA:
        return struct.unpack_from(">f", data, pos + 1)[0], pos + 5
    if b == 0xFB:
        return struct.unpack_from(">d", data, pos + 1)[0], pos + 9
    return None, pos


def _node_layout(data):
    """The reports of a pack in exactly the node's layout, all valid; None otherwise."""
    try:
        return _lane(data)
    except (IndexError, ValueError):  # truncated (struct.error is a ValueError), or refused
        return None


def _lane(data):
    end = len(data)
    if not end:
        return None
    b0 = data[0]
    if 0x80 <= b0 <= 0x97:
        n, pos = b0 - 0x80, 1
    elif b0 == 0x98:
        n, pos = data[1], 2
    elif b0 == 0x99:
        n, pos = data[1] << 8 | data[2], 3
    else:
        return None
    out = []
    records = 0
    sw = data.startswith
    while pos < end:
        if not sw(_L_SEQ, pos):
            return None
        seq, pos = _num(data, pos + _N_SEQ)
        if not sw(_L_T, pos):
            return None
        t, pos = _num(data, pos + _N_T)
        faults = 0
        records += 5
        if sw(_L_FAULTS, pos):
            faults, pos = _num(data, pos + _N_FAULTS)
            records += 1
        if not sw(_L_WH, pos):
            return None
        wh, pos = _num(data, pos + _N_WH)
        if not sw(_L_LEVEL, pos):
            return None
        level, pos = _num(data, pos + _N_LEVEL)
        if not sw(_L_ON, pos):
            return None
        on_time, pos = _num(data, pos + _N_ON)
        if not sw(_L_W, pos):
            return None
        w, pos = _num(data, pos + _N_W)
        if not sw(_L_END, pos):
            return None
        pos += _N_END
        # The general path's checks (_seq, _check_field) on values that _num made numbers:
        # a relative or non-finite time, any doubt, goes there (x - x != 0 for inf and nan).
        if (t is None or t - t != 0 or t < _REL or wh is None or wh - wh != 0 or wh < 0
                or level is None or level - level != 0 or not 0 <= level <= 100
                or on_time is None or on_time - on_time != 0 or on_time < 0
                or w is None or w - w != 0 or type(seq) is not int or not 0 <= seq < _SEQ_LIMIT
                or type(faults) is not int or not 0 <= faults < _SEQ_LIMIT):
            return None
        out.append({"seq": seq, "t": t, "wh": wh, "w": w, "level": level, "on_time": on_time,
                    "faults": faults, "rel_time": False})
    if records != n or not out:
        return None
    return out
