"""SenML packs in CBOR (RFC 8428 §6) with the integer labels of protocol/lwm2m.py.

Owns: encoding a list of record dicts (int labels) to SenML-CBOR, decoding and validating a
pack, and base-value resolution (RFC 8428 §4.6). Pure and sans-I/O; MicroPython and CPython.

Decisions:
* Every known label must have its RFC 8428 type: bn/bu/n/u/vs are text, bver is an int,
  bt/bv/bs/v/s/t/ut are numbers (int or float, never bool), vb is a bool, vd is a byte
  string (RFC 8428 §6). Numbers must be finite (SenML-JSON cannot carry NaN/inf, and a
  NaN time or energy is never useful).
* Unknown labels are ignored (RFC 8428 §4.4), except text labels ending in "_", which are
  "must understand" and rejected.
* A base value that is 0 or "" is still a base value (micropython-lib drops them).
* Resolved names must use the characters of RFC 8428 §4.5.1 and be non-empty. RFC 8428 wants
  the first one to be a letter or digit; LwM2M 1.1 (TS Core §7.4.4) names are paths starting
  with "/", so "/" is allowed first too.
* Relative times (resolved t < 2**28, RFC 8428 §4.5.3, negative = in the past) are resolved
  against ``now`` when it is given, and flagged ``"rel": True`` either way.
"""

import math

from protocol import cbor
from protocol.lwm2m import (
    SENML_BN,
    SENML_BS,
    SENML_BT,
    SENML_BU,
    SENML_BV,
    SENML_BVER,
    SENML_N,
    SENML_S,
    SENML_T,
    SENML_U,
    SENML_UT,
    SENML_V,
    SENML_VB,
    SENML_VD,
    SENML_VS,
)

REL_TIME_LIMIT = 1 << 28  # RFC 8428 §4.5.3: smaller times are relative to "now"

# label -> kind: 0 text, 1 number, 2 int, 3 bool, 4 bytes
_KINDS = {
    SENML_BVER: 2,
    SENML_BN: 0,
    SENML_BT: 1,
    SENML_BU: 0,
    SENML_BV: 1,
    SENML_BS: 1,
    SENML_N: 0,
    SENML_U: 0,
    SENML_V: 1,
    SENML_VS: 0,
    SENML_VB: 3,
    SENML_S: 1,
    SENML_T: 1,
    SENML_UT: 1,
    SENML_VD: 4,
}
_KIND_NAMES = ("text", "number", "integer", "boolean", "byte string")
_NAME_EXTRA = "-:./_"


class SenMLError(ValueError):
    """A pack that is not valid SenML-CBOR (or not a valid report, in protocol.report)."""


def is_number(x):
    """True for an int or float that is not a bool (bool is an int on CPython)."""
    return (isinstance(x, int) or isinstance(x, float)) and not isinstance(x, bool)


def _finite(x):
    return not (isinstance(x, float) and (math.isnan(x) or math.isinf(x)))


def _check_record(rec, i):
    if not isinstance(rec, dict):
        raise SenMLError("record %d is not a map" % i)
    for label, val in rec.items():
        kind = _KINDS.get(label)
        if kind is None:
            if isinstance(label, str) and label.endswith("_"):
                raise SenMLError("record %d: must-understand label %r not supported" % (i, label))
            continue
        if kind == 0:
            ok = isinstance(val, str)
        elif kind == 1:
            ok = is_number(val) and _finite(val)
        elif kind == 2:
            ok = isinstance(val, int) and not isinstance(val, bool)
        elif kind == 3:
            ok = isinstance(val, bool)
        else:
            ok = isinstance(val, bytes)
        if not ok:
            raise SenMLError("record %d: label %d must be a finite %s" % (i, label, _KIND_NAMES[kind]))


def validate(records):
    """Check that ``records`` is a list of maps whose known labels have the right types.

    Raises SenMLError naming the record and label.
    """
    if not isinstance(records, list):
        raise SenMLError("a SenML pack is an array")
    for i in range(len(records)):
        _check_record(records[i], i)


def encode(records):
    """Encode a list of record dicts (int labels) as a SenML-CBOR pack (RFC 8428 §6).

    Returns bytes. Raises SenMLError for a record of the wrong shape.
    """
    if isinstance(records, tuple):
        records = list(records)
    validate(records)
    try:
        return cbor.dumps(records)
    except cbor.CBORError as e:
        raise SenMLError("cannot encode pack: %s" % e) from None


def decode(data):
    """Decode and validate a SenML-CBOR pack. Returns the list of record dicts (int labels).

    Raises SenMLError for CBOR that does not parse, or for a pack of the wrong shape.
    """
    try:
        records = cbor.loads(data)
    except cbor.CBORError as e:
        raise SenMLError("pack is not valid CBOR: %s" % e) from None
    validate(records)
    return records


def valid_name(name):
    """True if a resolved name uses only RFC 8428 §4.5.1 characters (LwM2M: may start with /)."""
    if not name:
        return False
    for ch in name:
        if not (("a" <= ch <= "z") or ("A" <= ch <= "Z") or ("0" <= ch <= "9") or ch in _NAME_EXTRA):
            return False
    c = name[0]
    return c == "/" or ("a" <= c <= "z") or ("A" <= c <= "Z") or ("0" <= c <= "9")


def resolve(records, now=None):
    """Resolve base values (RFC 8428 §4.6) of validated records.

    Returns a list of dicts with str keys: "n" (bn + n), "t" (bt + t; relative times are
    added to ``now`` when given and flagged "rel": True), exactly one of "v" (bv + v), "vs",
    "vb", "vd" (or only "s"), plus "u" (u or bu) and "s" (bs + s) when present. Raises
    SenMLError for an invalid name, a record with no value or several, or a bad type.
    """
    validate(records)
    return resolve_valid(records, now)


def resolve_valid(records, now=None):
    """``resolve`` for records that ``decode`` or ``validate`` already checked."""
    bn = ""
    bt = 0
    bu = None
    bv = None
    bs = None
    out = []
    i = 0
    for rec in records:
        if SENML_BN in rec:
            bn = rec[SENML_BN]
        if SENML_BT in rec:
            bt = rec[SENML_BT]
        if SENML_BU in rec:
            bu = rec[SENML_BU]
        if SENML_BV in rec:
            bv = rec[SENML_BV]
        if SENML_BS in rec:
            bs = rec[SENML_BS]
        name = bn + rec.get(SENML_N, "")
        if not valid_name(name):
            raise SenMLError("record %d: invalid name %r" % (i, name))
        r = {"n": name}
        t = bt + rec.get(SENML_T, 0)
        if t < REL_TIME_LIMIT:
            r["rel"] = True
            if now is not None:
                t = now + t
        if not _finite(t):
            raise SenMLError("record %d (%s): time is not finite" % (i, name))
        r["t"] = t
        nvals = 0
        if SENML_V in rec:
            v = rec[SENML_V]
            if bv is not None:
                v = bv + v
                if not _finite(v):
                    raise SenMLError("record %d (%s): value is not finite" % (i, name))
            r["v"] = v
            nvals += 1
        if SENML_VS in rec:
            r["vs"] = rec[SENML_VS]
            nvals += 1
        if SENML_VB in rec:
            r["vb"] = rec[SENML_VB]
            nvals += 1
        if SENML_VD in rec:
            r["vd"] = rec[SENML_VD]
            nvals += 1
        if nvals > 1:
            raise SenMLError("record %d (%s): more than one value" % (i, name))
        if SENML_S in rec:
            s = rec[SENML_S]
            if bs is not None:
                s = bs + s
                if not _finite(s):
                    raise SenMLError("record %d (%s): sum is not finite" % (i, name))
            r["s"] = s
        elif nvals == 0:
            raise SenMLError("record %d (%s): no value" % (i, name))
        u = rec.get(SENML_U, bu)
        if u is not None:
            r["u"] = u
        if SENML_UT in rec:
            r["ut"] = rec[SENML_UT]
        out.append(r)
        i += 1
    return out


def value_of(resolved):
    """Return the value of a resolved record: v, vs, vb, vd or (failing those) s."""
    for k in ("v", "vs", "vb", "vd", "s"):
        if k in resolved:
            return resolved[k]
    return None
