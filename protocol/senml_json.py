"""SenML-JSON (RFC 8428 §4, §5; CoAP content-format 110) decoded to the SenML-CBOR records.

Owns one function, ``decode(data)``: JSON text -> the list of record dicts with the integer
labels of RFC 8428 §6 that protocol/senml.py uses, so a Send in SenML-JSON (LwM2M 1.1 allows
it; Wakaama's client sends it) goes through the same validation and report parsing as one in
SenML-CBOR. Pure and sans-I/O; MicroPython and CPython (the gateway is its only user, so the
node never imports it).

Decisions: ``vd`` is base64url without padding (RFC 8428 §5, RFC 4648 §5), padding tolerated;
unknown labels are kept under their text name, so a must-understand label (ending in ``_``)
is still refused by protocol.senml.validate.
"""

import binascii
import json

from protocol import senml
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

# RFC 8428 §5, table 4: JSON label -> CBOR label
_LABELS = {
    "bn": SENML_BN, "bt": SENML_BT, "bu": SENML_BU, "bv": SENML_BV, "bs": SENML_BS,
    "bver": SENML_BVER, "n": SENML_N, "u": SENML_U, "v": SENML_V, "vs": SENML_VS,
    "vb": SENML_VB, "s": SENML_S, "t": SENML_T, "ut": SENML_UT, "vd": SENML_VD,
}


def _b64url(text, i):
    if not isinstance(text, str):
        raise senml.SenMLError("record %d: vd must be base64url text" % i)
    s = text.rstrip("=")
    for ch in s:  # a2b_base64 would skip stray characters silently
        if not ("A" <= ch <= "Z" or "a" <= ch <= "z" or "0" <= ch <= "9" or ch in "-_"):
            raise senml.SenMLError("record %d: vd is not base64url" % i)
    s = s.replace("-", "+").replace("_", "/")
    try:
        return binascii.a2b_base64(s + "=" * (-len(s) % 4))
    except ValueError:  # binascii.Error is a ValueError
        raise senml.SenMLError("record %d: vd is not base64url" % i) from None


def decode(data):
    """Decode a SenML-JSON pack (bytes or str). Returns the list of records with CBOR labels.

    Raises SenMLError for text that is not UTF-8 JSON, a pack that is not an array of
    objects, a bad ``vd``, or a value of the wrong type (the checks of protocol.senml).
    """
    try:
        if not isinstance(data, str):
            data = str(bytes(data), "utf-8")
        doc = json.loads(data)
    except (ValueError, UnicodeError):
        raise senml.SenMLError("pack is not valid SenML-JSON") from None
    if not isinstance(doc, list):
        raise senml.SenMLError("a SenML pack is an array")
    out = []
    for i in range(len(doc)):
        rec = doc[i]
        if not isinstance(rec, dict):
            raise senml.SenMLError("record %d is not an object" % i)
        r = {}
        for k, v in rec.items():
            label = _LABELS.get(k, k)
            if label == SENML_VD:
                v = _b64url(v, i)
            r[label] = v
        out.append(r)
    senml.validate(out)
    return out
