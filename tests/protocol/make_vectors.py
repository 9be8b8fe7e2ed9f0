"""Regenerate protocol/vectors/*.json (CPython): ``.venv/bin/python -m tests.protocol.make_vectors``.

The CBOR vectors are RFC 8949 Appendix A examples plus our own edge cases, written by hand.
CoAP datagrams are encoded by aiocoap and SenML/CBOR payloads by cbor2 (canonical), so the
vectors do not come from the code they test; the report datagram is built from the SPEC §3.1
layout with cbor2 and aiocoap too. The tests check every vector against our codecs (CPython
and MicroPython) and again against cbor2/aiocoap.

Values in the JSON files use a small tagged form (see mp_run_vectors.untag): {"$bytes": hex},
{"$float": "nan"|"inf"|"-inf"}, {"$map": [[key, value], ...]} for maps with non-text keys.
"""

import json
import math
import os
import struct
import warnings

import aiocoap.message as am
import aiocoap.numbers as an
import aiocoap.optiontypes as ot
import cbor2

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "..", "..", "protocol", "vectors")


def tag(v):
    if isinstance(v, bytes):
        return {"$bytes": v.hex()}
    if isinstance(v, float):
        # Exact bits: MicroPython's float parser is not always correctly rounded.
        if math.isnan(v) or math.isinf(v):
            return {"$float": "nan" if math.isnan(v) else ("inf" if v > 0 else "-inf")}
        return {"$float": v, "hex64": struct.pack(">d", v).hex()}
    if isinstance(v, list | tuple):
        return [tag(x) for x in v]
    if isinstance(v, dict):
        if all(isinstance(k, str) for k in v):
            return {k: tag(x) for k, x in v.items()}
        return {"$map": [[tag(k), tag(x)] for k, x in v.items()]}
    return v


# --- CBOR ------------------------------------------------------------------------------------
# (name, hex, value, our encoder must produce exactly this hex)
CBOR_VALID = [
    ("uint 0", "00", 0, True),
    ("uint 1", "01", 1, True),
    ("uint 10", "0a", 10, True),
    ("uint 23", "17", 23, True),
    ("uint 24", "1818", 24, True),
    ("uint 25", "1819", 25, True),
    ("uint 100", "1864", 100, True),
    ("uint 1000", "1903e8", 1000, True),
    ("uint 1000000", "1a000f4240", 1000000, True),
    ("uint 1e12", "1b000000e8d4a51000", 1000000000000, True),
    ("uint max", "1bffffffffffffffff", 18446744073709551615, True),
    ("nint max", "3bffffffffffffffff", -18446744073709551616, True),
    ("nint -1", "20", -1, True),
    ("nint -10", "29", -10, True),
    ("nint -100", "3863", -100, True),
    ("nint -1000", "3903e7", -1000, True),
    ("float 0.0", "f90000", 0.0, True),
    ("float -0.0", "f98000", -0.0, True),
    ("float 1.0", "f93c00", 1.0, True),
    ("float 1.1", "fb3ff199999999999a", 1.1, True),
    ("float 1.5", "f93e00", 1.5, True),
    ("float 65504", "f97bff", 65504.0, True),
    ("float 100000", "fa47c35000", 100000.0, True),
    ("float 3.4e38", "fa7f7fffff", 3.4028234663852886e38, True),
    ("float 1e300", "fb7e37e43c8800759c", 1e300, True),
    ("float16 smallest subnormal", "f90001", 5.960464477539063e-08, True),
    ("float16 smallest normal", "f90400", 6.103515625e-05, True),
    ("float -4.0", "f9c400", -4.0, True),
    ("float -4.1", "fbc010666666666666", -4.1, True),
    ("float inf", "f97c00", float("inf"), True),
    ("float nan", "f97e00", float("nan"), True),
    ("float -inf", "f9fc00", float("-inf"), True),
    ("float32 inf", "fa7f800000", float("inf"), False),
    ("float32 nan", "fa7fc00000", float("nan"), False),
    ("float64 -inf", "fbfff0000000000000", float("-inf"), False),
    ("float 37.25 (quarter watt)", "f950a8", 37.25, True),
    ("float 511.75", "f95fff", 511.75, True),
    ("float 512.25 needs float32", "fa44001000", 512.25, True),
    ("float 65520 needs float32", "fa477ff000", 65520.0, True),
    ("float16 subnormal 3*2^-24", "f90003", 3 * 2.0**-24, True),
    ("float 2^-25 needs float32", "fa33000000", 2.0**-25, True),
    ("float 48.8566 (latitude)", "fb40486da5119ce076", 48.8566, True),
    ("false", "f4", False, True),
    ("true", "f5", True, True),
    ("null", "f6", None, True),
    ("bytes empty", "40", b"", True),
    ("bytes 4", "4401020304", b"\x01\x02\x03\x04", True),
    ("text empty", "60", "", True),
    ("text a", "6161", "a", True),
    ("text IETF", "6449455446", "IETF", True),
    ('text "\\', "62225c", '"\\', True),
    ("text u-umlaut", "62c3bc", "\u00fc", True),
    ("text water", "63e6b0b4", "\u6c34", True),
    ("text astral", "64f0908591", "\U00010151", True),
    ("array empty", "80", [], True),
    ("array 1 2 3", "83010203", [1, 2, 3], True),
    ("array nested", "8301820203820405", [1, [2, 3], [4, 5]], True),
    (
        "array 25",
        "98190102030405060708090a0b0c0d0e0f101112131415161718181819",
        list(range(1, 26)),
        True,
    ),
    ("map empty", "a0", {}, True),
    ("map int keys", "a201020304", {1: 2, 3: 4}, True),
    ("map text keys", "a26161016162820203", {"a": 1, "b": [2, 3]}, True),
    ("array with map", "826161a161626163", ["a", {"b": "c"}], True),
    ("map bytes key", "a1420102f5", {b"\x01\x02": True}, True),
    ("map senml record sorted", "a3006130021864216161", {-2: "a", 0: "0", 2: 100}, True),
    # accepted but not what we emit: non-shortest heads and widths
    ("uint 0 in 1-byte head", "1800", 0, False),
    ("uint 1 in 8-byte head", "1b0000000000000001", 1, False),
    ("bytes in 2-byte length", "590001" + "61", b"a", False),
    ("float 1.5 as float64", "fb3ff8000000000000", 1.5, False),
    ("float 1.5 as float32", "fa3fc00000", 1.5, False),
    ("map keys unsorted", "a2030401 02", {3: 4, 1: 2}, False),
]

CBOR_INVALID = [
    ("empty input", ""),
    ("truncated uint head", "18"),
    ("truncated 8-byte head", "1b000000"),
    ("truncated text", "6361"),
    ("truncated array", "8301"),
    ("truncated map value", "a101"),
    ("truncated float16", "f900"),
    ("truncated float32", "fa0000"),
    ("truncated float64", "fb00000000"),
    ("huge text length", "7bffffffffffffffff"),
    ("huge bytes length", "5affffffff00"),
    ("huge array length", "9bffffffffffffffff"),
    ("huge map length", "bb7fffffffffffffff"),
    ("array length > bytes left", "9a0000ffff00"),
    ("indefinite array", "9f01ff"),
    ("indefinite bytes", "5f4101ff"),
    ("indefinite map", "bf0102ff"),
    ("break alone", "ff"),
    ("tag 0", "c074323031332d30332d32315432303a30343a30305a"),
    ("tag bignum", "c249010000000000000000"),
    ("undefined", "f7"),
    ("simple 16", "f0"),
    ("simple 255", "f8ff"),
    ("reserved ai 28", "1c"),
    ("reserved ai 30", "5e"),
    ("trailing byte", "0000"),
    ("trailing garbage after map", "a0ff"),
    ("invalid utf-8", "62c328"),
    ("utf-8 surrogate", "63eda080"),
    ("array key", "a18001f6"[0:6]),
    ("map key", "a1a00102"),
    ("duplicate key", "a201020103"),
    ("nested 17 deep", "81" * 17 + "00"),
]


def cbor_vectors():
    valid = []
    for name, hx, value, exact in CBOR_VALID:
        hx = hx.replace(" ", "")
        got = cbor2.loads(bytes.fromhex(hx))
        same = (isinstance(value, float) and math.isnan(value) and math.isnan(got)) or got == value
        assert same, (name, got, value)
        valid.append({"name": name, "hex": hx, "value": tag(value), "encode": exact})
    invalid = [{"name": n, "hex": h, "error": "CBORError"} for n, h in CBOR_INVALID]
    encode_errors = [
        {"name": "int 2**64", "value": 18446744073709551616, "error": "CBORError"},
        {"name": "int -2**64-1", "value": -18446744073709551617, "error": "CBORError"},
    ]
    return {"valid": valid, "invalid": invalid, "encode_errors": encode_errors}


# --- CoAP ------------------------------------------------------------------------------------
def aio(mtype, code, mid, token, options, payload):
    """Encode with aiocoap; options are (number, bytes) in order."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        m = am.Message(code=code, payload=payload)
        m.mtype = an.Type(mtype)
        m.mid = mid
        m.token = token
        for num, val in options:
            m.opt.add_option(ot.OpaqueOption(an.OptionNumber(num), val))
        return m.encode()


COAP_VALID = [
    ("CON GET /3311/0/5851", 0, 1, 0x0001, b"\x01", [(11, b"3311"), (11, b"0"), (11, b"5851")], b""),
    (
        "CON POST register",
        0,
        2,
        0xBEEF,
        b"\x12\x34",
        [
            (11, b"rd"),
            (12, b"\x28"),
            (15, b"ep=node-0001"),
            (15, b"lt=300"),
            (15, b"lwm2m=1.1"),
            (15, b"b=U"),
        ],
        b"</1/0>,</3/0>,</6/0>,</3305/0>,</3311/0>,</10250/0>",
    ),
    ("ACK 2.01 Location-Path", 2, 65, 0xBEEF, b"\x12\x34", [(8, b"rd"), (8, b"k3x9")], b""),
    ("ACK 2.05 CF 60 payload", 2, 69, 7, b"\xaa", [(12, b"\x3c")], b"\x18\x28"),
    (
        "NON 2.05 Observe notification",
        1,
        69,
        0x2000,
        b"\x01\x02\x03\x04\x05\x06\x07\x08",
        [(6, b"\x05\x00"), (12, b"\x3c")],
        b"\x18\x64",
    ),
    (
        "GET Observe 0 (empty uint)",
        0,
        1,
        9,
        b"\x09",
        [(6, b""), (11, b"3305"), (11, b"0"), (11, b"5800")],
        b"",
    ),
    ("empty CON (ping)", 0, 0, 0x0102, b"", [], b""),
    ("RST", 3, 0, 0xFFFF, b"", [], b""),
    ("empty ACK", 2, 0, 0x8000, b"", [], b""),
    ("5.03 with Max-Age", 2, 163, 42, b"\x01\x02", [(14, b"\x3c")], b"store full"),
    ("Block2 and Size2", 2, 69, 77, b"\x01", [(23, b"\x1a"), (28, b"\x04\x00")], b"x" * 64),
    ("delta 13 form (option 13+)", 0, 1, 3, b"", [(20, b"a")], b""),
    ("delta 14 form (No-Response 258)", 0, 2, 4, b"", [(258, b"\x02")], b"p"),
    ("length 13 form", 0, 3, 5, b"", [(11, b"a" * 13)], b""),
    ("length 14 form (300 bytes)", 0, 3, 6, b"", [(11, b"b" * 300)], b""),
    ("largest option number", 1, 4, 7, b"", [(65535, b"z")], b""),
    ("repeated options keep order", 0, 1, 8, b"", [(11, b"b"), (11, b"a"), (15, b"y=1"), (15, b"x=2")], b""),
    ("class 3 code accepted", 0, 96, 10, b"", [], b"!"),
]


def coap_vectors():
    valid = []
    for name, mtype, code, mid, token, opts, payload in COAP_VALID:
        data = aio(mtype, code, mid, token, opts, payload)
        valid.append(
            {
                "name": name,
                "hex": data.hex(),
                "mtype": mtype,
                "code": code,
                "mid": mid,
                "token": token.hex(),
                "options": [[n, v.hex()] for n, v in opts],
                "payload": payload.hex(),
            }
        )
    good = aio(0, 2, 0x1234, b"\xab\xcd", [(11, b"dp")], b"\x80")
    invalid = [
        ("empty datagram", "", None),
        ("3 bytes", "400100", None),
        ("version 0", "00011234", None),  # RFC 7252 §3: ignored silently, no MID for an RST
        ("version 2", "80011234", None),
        ("version 3", "c0011234", None),
        ("token length 9", "49011234" + "00" * 9, 0x1234),
        ("token length 15", "4f011234" + "00" * 15, 0x1234),
        ("truncated token", "42011234ab", 0x1234),
        ("payload marker without payload", "40011234ff", 0x1234),
        ("option delta nibble 15", "40011234f1", 0x1234),
        ("option length nibble 15", "400112341f", 0x1234),
        ("truncated option value", "40011234b3646f", 0x1234),
        ("truncated delta 13 ext", "40011234d0", 0x1234),
        ("truncated delta 14 ext", "40011234e000", 0x1234),
        ("truncated length 13 ext", "400112340d", 0x1234),
        ("truncated length 14 ext", "400112340e00", 0x1234),
        ("option number > 65535", "40011234e0feff" + "e0feff", 0x1234),
        ("code class 1", "40201234", 0x1234),
        ("code class 6", "40c01234", 0x1234),
        ("code class 7 (7.31)", "40ff1234", 0x1234),
        ("empty message with token", "41001234aa", 0x1234),
        ("empty message with payload", "40001234ff00", 0x1234),
        ("RST with a code", "70451234", 0x1234),
        ("ACK carrying a request", "60011234", 0x1234),
        ("valid message with its option value cut", good[:-3].hex(), 0x1234),
    ]
    return {
        "valid": valid,
        "invalid": [{"name": n, "hex": h, "error": "CoAPError", "mid": m} for n, h, m in invalid],
    }


# --- SenML -----------------------------------------------------------------------------------
def senml_vectors():
    valid = []

    def add(name, records, resolved, now=None):
        data = cbor2.dumps(records, canonical=True)
        v = {"name": name, "hex": data.hex(), "records": tag(records), "resolved": tag(resolved)}
        if now is not None:
            v["now"] = now
        valid.append(v)

    add(
        "RFC 8428 style base name and time",
        [
            {-2: "urn:dev:ow:10e2073a01080063", -3: 1320067464, 0: "voltage", 1: "V", 2: 120.1},
            {0: "current", 6: -5, 2: 1.2},
        ],
        [
            {"n": "urn:dev:ow:10e2073a01080063voltage", "t": 1320067464, "u": "V", "v": 120.1},
            {"n": "urn:dev:ow:10e2073a01080063current", "t": 1320067459, "v": 1.2},
        ],
    )
    add(
        "zero base values are kept",
        [{-2: "/3/0/", -3: 0, -5: 0, 0: "1", 2: 5}, {0: "2", 2: 6}],
        [{"n": "/3/0/1", "t": 1000, "rel": True, "v": 5}, {"n": "/3/0/2", "t": 1000, "rel": True, "v": 6}],
        now=1000,
    )
    add(
        "base value added, base unit inherited",
        [{-2: "a/", -4: "W", -5: 10, -3: 1700000000, 0: "x", 2: 1}, {0: "y", 2: -2.5, 1: "kW"}],
        [
            {"n": "a/x", "t": 1700000000, "u": "W", "v": 11},
            {"n": "a/y", "t": 1700000000, "u": "kW", "v": 7.5},
        ],
    )
    add(
        "vs vb vd and sum",
        [{0: "s1", 3: "text"}, {0: "b1", 4: False}, {0: "d1", 8: b"\x00\xff"}, {-6: 100, 0: "e1", 5: 5}],
        [
            {"n": "s1", "t": 0, "rel": True, "vs": "text"},
            {"n": "b1", "t": 0, "rel": True, "vb": False},
            {"n": "d1", "t": 0, "rel": True, "vd": b"\x00\xff"},
            {"n": "e1", "t": 0, "rel": True, "s": 105},
        ],
    )
    add(
        "relative negative time without now",
        [{-2: "/10250/0/", -3: -30, 0: "0", 2: 7}],
        [{"n": "/10250/0/0", "t": -30, "rel": True, "v": 7}],
    )
    add(
        "unknown labels ignored",
        [{0: "x", 2: 1, 99: "?", "foo": 3}],
        [{"n": "x", "t": 0, "rel": True, "v": 1}],
    )
    add("empty pack", [], [])

    def bad(name, obj=None, hexstr=None):
        data = bytes.fromhex(hexstr) if hexstr is not None else cbor2.dumps(obj, canonical=True)
        return {"name": name, "hex": data.hex(), "error": "SenMLError"}

    invalid = [
        bad("not CBOR", hexstr="9f"),
        bad("pack is a map", {0: "x", 2: 1}),
        bad("record is an array", [[0, 1]]),
        bad("name is an int", [{0: 5, 2: 1}]),
        bad("value is text", [{0: "x", 2: "1"}]),
        bad("value is a bool", [{0: "x", 2: True}]),
        bad("vb is an int", [{0: "x", 4: 1}]),
        bad("vd is text", [{0: "x", 8: "00"}]),
        bad("time is NaN", [{0: "x", 6: float("nan"), 2: 1}]),
        bad("value is inf", [{0: "x", 2: float("inf")}]),
        bad("base name is bytes", [{-2: b"x", 0: "y", 2: 1}]),
        bad("bver is a float", [{-1: 10.5, 0: "x", 2: 1}]),
        bad("must-understand label", [{0: "x", 2: 1, "foo_": 1}]),
        bad("no value", [{0: "x"}]),
        bad("two values", [{0: "x", 2: 1, 3: "a"}]),
        bad("empty name", [{2: 1}]),
        bad("name with space", [{0: "a b", 2: 1}]),
        bad("name starts with dash", [{0: "-a", 2: 1}]),
        bad("name with non-ASCII", [{0: "caf\u00e9", 2: 1}]),
    ]
    return {"valid": valid, "invalid": invalid}


# --- link-format -----------------------------------------------------------------------------
def linkformat_vectors():
    valid = [
        {
            "name": "LwM2M register body",
            "text": "</1/0>,</3/0>,</6/0>,</3305/0>,</3311/0>,</10250/0>",
            "links": [[t, {}] for t in ["/1/0", "/3/0", "/6/0", "/3305/0", "/3311/0", "/10250/0"]],
            "canonical": "</1/0>,</3/0>,</6/0>,</3305/0>,</3311/0>,</10250/0>",
        },
        {
            "name": "root with rt, ct and flag",
            "text": '</>;rt="oma.lwm2m";ct=110;obs,</3/0>',
            "links": [["/", {"rt": "oma.lwm2m", "ct": 110, "obs": True}], ["/3/0", {}]],
            "canonical": '</>;ct=110;obs;rt="oma.lwm2m",</3/0>',
        },
        {
            "name": "whitespace, escapes and bare text",
            "text": ' </a> ;\n title="x\\"y\\\\z" ; v=1.1 ,\r\n</b>;n=007 ',
            "links": [["/a", {"title": 'x"y\\z', "v": "1.1"}], ["/b", {"n": 7}]],
            "canonical": None,
        },
        {"name": "empty body", "text": "", "links": [], "canonical": ""},
        {
            "name": "repeated parameter keeps the first",
            "text": '<x>;rt="a";rt="b"',
            "links": [["x", {"rt": "a"}]],
            "canonical": None,
        },
        {
            "name": "empty quoted value",
            "text": '<x>;a=""',
            "links": [["x", {"a": ""}]],
            "canonical": '<x>;a=""',
        },
    ]
    invalid = [
        ("unterminated <", "</1/0"),
        ("missing <", "/1/0>"),
        ("unterminated quote", '</1/0>;rt="abc'),
        ("backslash at end of quote", '</1/0>;rt="abc\\'),
        ("missing comma", "</1/0></3/0>"),
        ("trailing comma", "</1/0>,"),
        ("empty parameter name", "</1/0>;=1"),
        ("quote in bare value", '</1/0>;a=b"c'),
        ("space in target", "</1 /0>"),
        ("nested <", "<</1/0>"),
        ("garbage after link", "</1/0>x"),
        ("only comma", ","),
    ]
    return {
        "valid": valid,
        "invalid": [{"name": n, "text": t, "error": "LinkFormatError"} for n, t in invalid],
    }


# --- the periodic report ---------------------------------------------------------------------
REPORT = {
    "seq": 123456,
    "t": 1763776800,
    "wh": 48213,
    "w": 37.25,
    "level": 40,
    "on_time": 9504000,
    "faults": 0,
}


def report_pack(reports):
    records = []
    for r in reports:
        records += [{-2: "/10250/0/", -3: r["t"], 0: "0", 2: r["seq"]}]
        if r["faults"]:  # SPEC §3.1: no fault record when there is no fault
            records += [{0: "1", 2: r["faults"]}]
        records += [
            {-2: "/3311/0/", 0: "5805", 2: r["wh"]},
            {0: "5851", 2: r["level"]},
            {0: "5852", 2: r["on_time"]},
            {-2: "/3305/0/", 0: "5800", 2: r["w"]},
        ]
    return cbor2.dumps(records, canonical=True)


def report_vectors():
    payload = report_pack([REPORT])
    # the node sends without the ep query: the gateway knows it by its registration (SPEC §3)
    opts = [(11, b"dp"), (12, b"\x70")]
    token = b"\x5a\x01"
    data = aio(0, 2, 0x7D34, token, opts, payload)
    opt_bytes = len(data) - 4 - len(token) - 1 - len(payload)
    expected = dict(REPORT, rel_time=False)
    datagram = {
        "hex": data.hex(),
        "mtype": 0,
        "code": 2,
        "mid": 0x7D34,
        "token": token.hex(),
        "options": [[n, v.hex()] for n, v in opts],
        "path": ["dp"],
        "query": {},
        "content_format": 112,
        "payload": payload.hex(),
        "report": tag([REPORT[k] for k in ("seq", "t", "wh", "w", "level", "on_time", "faults")]),
        "parsed": tag([expected]),
        "size": {
            "header": 4,
            "token": len(token),
            "options": opt_bytes,
            "payload_marker": 1,
            "payload": len(payload),
            "total": len(data),
        },
    }
    # Three reports in one pack (backlog), oldest first.
    reps = [
        dict(REPORT, seq=REPORT["seq"] + i, t=REPORT["t"] + 900 * i, wh=REPORT["wh"] + 9 * i)
        for i in range(3)
    ]
    backlog = {
        "hex": report_pack(reps).hex(),
        "reports": tag([[r[k] for k in ("seq", "t", "wh", "w", "level", "on_time", "faults")] for r in reps]),
        "parsed": tag([dict(r, rel_time=False) for r in reps]),
    }
    # Relative time (node without valid time), resolved against now.
    rel = dict(REPORT, t=-120, faults=0x80)
    relative = {
        "hex": report_pack([rel]).hex(),
        "now": 1763777000,
        "parsed": tag([dict(rel, t=1763777000 - 120, rel_time=True)]),
    }
    # Reordered records with full names and unknown records: same report.
    reordered_records = [
        {-2: "/10250/0/", -3: 1763776800, 0: "0", 2: 5},
        {0: "/3305/0/5800", -2: "", 2: 12.5},
        {0: "/9999/0/1", 2: 1},
        {0: "/3311/0/5852", 2: 3600},
        {0: "/3311/0/5805", 2: 777},
        {0: "/3311/0/5851", 2: 100},
        {0: "/10250/0/1", 2: 0x21},
    ]
    reordered = {
        "hex": cbor2.dumps(reordered_records, canonical=True).hex(),
        "parsed": tag(
            [
                {
                    "seq": 5,
                    "t": 1763776800,
                    "wh": 777,
                    "w": 12.5,
                    "level": 100,
                    "on_time": 3600,
                    "faults": 0x21,
                    "rel_time": False,
                }
            ]
        ),
    }
    desc_records = [
        {-2: "/3/0/", 0: "3", 3: "1.0.0"},
        {0: "15", 3: "CET-1CEST,M3.5.0,M10.5.0/3"},
        {-2: "/6/0/", 0: "0", 2: 48.8566},
        {0: "1", 2: 2.3522},
        {-2: "/10250/0/", 0: "5", 3: "rue-haute"},
        {0: "6", 3: "C1"},
        {0: "7", 2: 40},
        {0: "3", 2: 100},
    ]
    descriptor = {
        "args": tag(["1.0.0", 48.8566, 2.3522, "rue-haute", "C1", 40, 100, "CET-1CEST,M3.5.0,M10.5.0/3"]),
        "hex": cbor2.dumps(desc_records, canonical=True).hex(),
        "attrs": tag(
            {
                "/3/0/3": "1.0.0",
                "/3/0/15": "CET-1CEST,M3.5.0,M10.5.0/3",
                "/6/0/0": 48.8566,
                "/6/0/1": 2.3522,
                "/10250/0/5": "rue-haute",
                "/10250/0/6": "C1",
                "/10250/0/7": 40,
                "/10250/0/3": 100,
            }
        ),
    }

    def bad(name, records, field):
        return {
            "name": name,
            "hex": cbor2.dumps(records, canonical=True).hex(),
            "error": "SenMLError",
            "field": field,
        }

    base = [
        {-2: "/10250/0/", -3: 1763776800, 0: "0", 2: 1},
        {0: "1", 2: 0},
        {-2: "/3311/0/", 0: "5805", 2: 10},
        {0: "5851", 2: 50},
        {0: "5852", 2: 60},
        {-2: "/3305/0/", 0: "5800", 2: 5.5},
    ]

    def with_value(i, v):
        recs = [dict(r) for r in base]
        recs[i][2] = v
        return recs

    invalid = [
        bad("report without energy", base[:2] + base[3:], "energy"),
        bad("seq negative", with_value(0, -1), "seq"),
        bad("seq 2**63", with_value(0, 2**63), "seq"),
        bad("seq float", with_value(0, 1.5), "seq"),
        bad("faults negative", with_value(1, -1), "faults"),
        bad("faults float", with_value(1, 1.5), "faults"),
        bad("wh negative", with_value(2, -5), "wh"),
        bad("level 101", with_value(3, 101), "level"),
        bad("level negative", with_value(3, -1), "level"),
        bad("on_time negative", with_value(4, -1), "on_time"),
        bad("wh as text", [base[0], {-2: "/3311/0/", 0: "5805", 3: "10"}], "wh"),
        bad("seq as text", [{-2: "/10250/0/", -3: 1, 0: "0", 3: "1"}, base[2]], "seq"),
        bad("wh twice, different", base + [{-2: "/3311/0/", 0: "5805", 2: 11}], "wh"),
        bad("empty pack", [], "empty"),
        bad("time is inf", [{-2: "/10250/0/", -3: float("inf"), 0: "0", 2: 1}, base[2]], "label"),
    ]
    return {
        "datagram": datagram,
        "backlog": backlog,
        "relative": relative,
        "reordered": reordered,
        "descriptor": descriptor,
        "invalid": invalid,
    }


def main():
    os.makedirs(OUT, exist_ok=True)
    for name, fn in (
        ("cbor", cbor_vectors),
        ("coap", coap_vectors),
        ("senml", senml_vectors),
        ("linkformat", linkformat_vectors),
        ("report", report_vectors),
    ):
        path = os.path.join(OUT, name + ".json")
        with open(path, "w", encoding="utf-8") as f:
            json.dump(fn(), f, indent=1, ensure_ascii=False)
            f.write("\n")
        print("wrote", os.path.normpath(path))


if __name__ == "__main__":
    main()
