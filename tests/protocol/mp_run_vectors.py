# ruff: noqa: UP031  (runs under MicroPython: no f-strings/format specifiers needed)
"""Run protocol/vectors/*.json against the protocol codecs, and fuzz them; MicroPython or CPython.

Under MicroPython (what tests/protocol/test_micropython.py does):
    MICROPYPATH=<repo>:.frozen micropython tests/protocol/mp_run_vectors.py <repo> [fuzz_iterations] [seed]
prints one line per failure, then "vectors: <passed>/<total>", then "fuzz: ..." and exits 1 on any
failure. pytest imports the same functions (``cases``, ``fuzz``) to run the vectors under CPython.

Only MicroPython-available modules are used (json, struct, math, random, sys).
"""

import json
import math
import random
import struct
import sys

from protocol import cbor, coap, linkformat, oscore, report, senml

ERRORS = {
    "CBORError": cbor.CBORError,
    "CoAPError": coap.CoAPError,
    "SenMLError": senml.SenMLError,
    "LinkFormatError": linkformat.LinkFormatError,
    "OscoreError": oscore.OscoreError,
}


def unhex(s):
    return (
        bytes.fromhex(s)
        if hasattr(bytes, "fromhex")
        else bytes(int(s[i : i + 2], 16) for i in range(0, len(s), 2))
    )


def tohex(b):
    return "".join("%02x" % x for x in b)


def untag(v):
    """Turn the tagged JSON form of make_vectors.tag back into Python values."""
    if isinstance(v, list):
        return [untag(x) for x in v]
    if isinstance(v, dict):
        if "$bytes" in v:
            return unhex(v["$bytes"])
        if "$float" in v:
            f = v["$float"]
            if f == "nan":
                return float("nan")
            if f == "inf":
                return float("inf")
            if f == "-inf":
                return float("-inf")
            return struct.unpack(">d", unhex(v["hex64"]))[0]
        if "$map" in v:
            out = {}
            for k, x in v["$map"]:
                k = untag(k)
                out[k] = untag(x)
            return out
        out = {}
        for k in v:
            out[k] = untag(v[k])
        return out
    return v


def _kind(x):
    if x is True or x is False:
        return "bool"
    if isinstance(x, float):
        return "float"
    if isinstance(x, int):
        return "int"
    if isinstance(x, (bytes, bytearray)):
        return "bytes"
    if isinstance(x, (list, tuple)):
        return "list"
    return type(x).__name__


def same(a, b):
    """Deep equality that tells int/float/bool apart, NaN == NaN and -0.0 != 0.0."""
    ka = _kind(a)
    if ka != _kind(b):
        return False
    if ka == "float":
        if a != a or b != b:
            return a != a and b != b
        return a == b and math.copysign(1.0, a) == math.copysign(1.0, b)
    if ka == "list":
        if len(a) != len(b):
            return False
        for i in range(len(a)):
            if not same(a[i], b[i]):
                return False
        return True
    if isinstance(a, dict):
        if len(a) != len(b):
            return False
        for k in a:
            if k not in b or not same(a[k], b[k]):
                return False
        return True
    if ka == "bytes":
        return bytes(a) == bytes(b)
    return a == b


def expect(cond, what):
    if not cond:
        raise AssertionError(what)


def expect_error(fn, arg, errname):
    cls = ERRORS[errname]
    try:
        got = fn(arg)
    except cls:
        return
    raise AssertionError("no %s, got %r" % (errname, got))


# --- one checker per vector kind ------------------------------------------------------------
def check_cbor_valid(v):
    data = unhex(v["hex"])
    value = untag(v["value"])
    got = cbor.loads(data)
    expect(same(got, value), "decoded %r, want %r" % (got, value))
    if v["encode"]:
        enc = cbor.dumps(value)
        expect(enc == data, "encoded %s, want %s" % (tohex(enc), v["hex"]))
    expect(same(cbor.loads(cbor.dumps(value)), value), "round trip")


def check_cbor_invalid(v):
    expect_error(cbor.loads, unhex(v["hex"]), v["error"])


def check_cbor_encode_error(v):
    expect_error(cbor.dumps, untag(v["value"]), v["error"])


def check_coap_valid(v):
    data = unhex(v["hex"])
    m = coap.decode(data)
    expect(m.mtype == v["mtype"] and m.code == v["code"] and m.mid == v["mid"], "header fields")
    expect(m.token == unhex(v["token"]), "token")
    opts = [[n, tohex(b)] for n, b in m.options]
    expect(opts == v["options"], "options %r" % (opts,))
    expect(m.payload == unhex(v["payload"]), "payload")
    expect(coap.encode(m) == data, "re-encode")
    m2 = coap.Message(v["mtype"], v["code"], v["mid"], unhex(v["token"]), None, unhex(v["payload"]))
    for n, h in v["options"]:
        m2.add_option(n, unhex(h))
    expect(coap.encode(m2) == data, "encode from fields")


def check_coap_invalid(v):
    data = unhex(v["hex"])
    try:
        coap.decode(data)
    except coap.CoAPError as e:
        expect(e.mid == v["mid"], "error mid %r, want %r" % (e.mid, v["mid"]))
        return
    raise AssertionError("no CoAPError")


def check_senml_valid(v):
    data = unhex(v["hex"])
    recs = senml.decode(data)
    expect(same(recs, untag(v["records"])), "records %r" % (recs,))
    res = senml.resolve(recs, v.get("now"))
    expect(same(res, untag(v["resolved"])), "resolved %r" % (res,))
    expect(same(senml.decode(senml.encode(recs)), recs), "round trip")


def check_senml_invalid(v):
    data = unhex(v["hex"])

    def both(d):
        return senml.resolve(senml.decode(d))

    expect_error(both, data, v["error"])


def check_link_valid(v):
    links = linkformat.parse(v["text"])
    want = [(t, untag(a)) for t, a in v["links"]]
    expect(len(links) == len(want), "count")
    for i in range(len(want)):
        expect(links[i][0] == want[i][0] and same(links[i][1], want[i][1]), "link %d: %r" % (i, links[i]))
    if v["canonical"] is not None:
        built = linkformat.build(links)
        expect(built == v["canonical"], "built %r" % built)
    expect(linkformat.parse(linkformat.build(links)) == links, "round trip")


def check_link_invalid(v):
    expect_error(linkformat.parse, v["text"], v["error"])


def check_report_datagram(v):
    data = unhex(v["hex"])
    m = coap.decode(data)
    expect(m.mtype == v["mtype"] and m.code == v["code"] and m.mid == v["mid"], "header")
    expect(m.path() == v["path"] and m.query_dict() == v["query"], "path/query")
    expect(m.content_format() == v["content_format"], "content format")
    rep = tuple(untag(v["report"]))
    payload = report.encode_reports([rep])
    expect(payload == unhex(v["payload"]), "payload %s" % tohex(payload))
    built = coap.Message(coap.CON, coap.POST, v["mid"], unhex(v["token"]))
    built.set_path("/dp")
    for k in v["query"]:
        built.add_option(coap.URI_QUERY, k + "=" + v["query"][k])
    built.add_option(coap.CONTENT_FORMAT, v["content_format"])
    built.payload = payload
    enc = coap.encode(built)
    expect(enc == data, "datagram %s" % tohex(enc))
    reps, attrs = report.parse_send(m.payload)
    expect(same(reps, untag(v["parsed"])) and attrs == {}, "parsed %r" % (reps,))
    size = v["size"]
    expect(size["total"] == len(data), "size total")
    expect(size["payload"] == len(m.payload), "size payload")
    n_opt = len(data) - 4 - len(m.token) - 1 - len(m.payload)
    expect(size["options"] == n_opt, "size options")
    expect(len(data) <= 127, "SPEC §9: the report datagram MUST fit 127 bytes")


def check_report_backlog(v):
    reps = [tuple(r) for r in untag(v["reports"])]
    expect(report.encode_reports(reps) == unhex(v["hex"]), "backlog encoding")
    parsed, _ = report.parse_send(unhex(v["hex"]))
    expect(same(parsed, untag(v["parsed"])), "backlog parsed %r" % (parsed,))


def check_report_parse(v):
    parsed, attrs = report.parse_send(unhex(v["hex"]), v.get("now"))
    expect(same(parsed, untag(v["parsed"])), "parsed %r" % (parsed,))


def check_report_descriptor(v):
    args = untag(v["args"])
    expect(report.encode_descriptor(*args) == unhex(v["hex"]), "descriptor encoding")
    reps, attrs = report.parse_send(unhex(v["hex"]))
    expect(reps == [] and same(attrs, untag(v["attrs"])), "descriptor attrs %r" % (attrs,))


def check_report_invalid(v):
    expect_error(report.parse_send, unhex(v["hex"]), v["error"])


def _ctx(d, reverse=False, seq=0):
    sid, rid = unhex(d["sender_id"]), unhex(d["recipient_id"])
    if reverse:
        sid, rid = rid, sid
    idc = d["id_context"]
    return oscore.Context(unhex(d["secret"]), unhex(d["salt"]), sid, rid, None if idc is None else unhex(idc), seq=seq)


def check_oscore_derivation(v):
    c = _ctx(v)
    expect(tohex(c.sender_key) == v["sender_key"], "sender key %s" % tohex(c.sender_key))
    expect(tohex(c.recipient_key) == v["recipient_key"], "recipient key %s" % tohex(c.recipient_key))
    expect(tohex(c.common_iv) == v["common_iv"], "common IV %s" % tohex(c.common_iv))
    expect(tohex(c.nonce(c.sender_id, b"\x00")) == v["sender_nonce"], "sender nonce")
    expect(tohex(c.nonce(c.recipient_id, b"\x00")) == v["recipient_nonce"], "recipient nonce")
    if "info_sender_key" in v:
        expect(tohex(oscore._info(c.sender_id, None, b"Key", 16)) == v["info_sender_key"], "info (sender key)")
        expect(tohex(oscore._info(c.recipient_id, None, b"Key", 16)) == v["info_recipient_key"], "info (recipient)")
        expect(tohex(oscore._info(b"", None, b"IV", 13)) == v["info_common_iv"], "info (common IV)")


def check_oscore_request(v):
    d = v["_ctx"]
    client = _ctx(d, seq=v["seq"])
    piv = oscore.piv_bytes(v["seq"])
    expect(tohex(oscore.aad(client.sender_id, piv)) == v["aad"], "AAD")
    expect(tohex(client.nonce(client.sender_id, piv)) == v["nonce"], "nonce")
    outer, rid = client.protect_request(coap.decode(unhex(v["plain"])))
    got = coap.encode(outer)
    expect(tohex(got) == v["protected"], "protected %s" % tohex(got))
    expect(client.seq == v["seq"] + 1, "sequence number advanced")
    server = _ctx(d, reverse=True)
    inner, srid = server.unprotect_request(coap.decode(unhex(v["protected"])))
    expect(tohex(coap.encode(inner)) == v["plain"], "verified %s" % tohex(coap.encode(inner)))
    expect_error(server.unprotect_request, coap.decode(unhex(v["protected"])), "OscoreError")  # replay


def check_oscore_response(v):
    req = v["_req"]
    d = req["_ctx"]
    client = _ctx(d, seq=req["seq"])
    _, rid = client.protect_request(coap.decode(unhex(req["plain"])))
    server = _ctx(d, reverse=True, seq=v["server_seq"])
    _, srid = server.unprotect_request(coap.decode(unhex(req["protected"])))
    outer = server.protect_response(coap.decode(unhex(v["plain"])), srid, v["new_piv"])
    got = coap.encode(outer)
    expect(tohex(got) == v["protected"], "protected %s" % tohex(got))
    inner = client.unprotect_response(coap.decode(unhex(v["protected"])), rid)
    expect(tohex(coap.encode(inner)) == v["plain"], "verified %s" % tohex(coap.encode(inner)))
    bad = bytearray(unhex(v["protected"]))
    bad[-1] ^= 1
    expect_error(lambda m: client.unprotect_response(m, rid), coap.decode(bytes(bad)), "OscoreError")


def load(root, name):
    with open(root + "/protocol/vectors/" + name + ".json") as f:
        return json.load(f)


def cases(root):
    """Return [(id, checker, vector)] for every vector file."""
    out = []

    def add(prefix, checker, vectors):
        for v in vectors:
            out.append((prefix + ": " + v["name"], checker, v))

    c = load(root, "cbor")
    add("cbor", check_cbor_valid, c["valid"])
    add("cbor invalid", check_cbor_invalid, c["invalid"])
    add("cbor encode error", check_cbor_encode_error, c["encode_errors"])
    c = load(root, "coap")
    add("coap", check_coap_valid, c["valid"])
    add("coap invalid", check_coap_invalid, c["invalid"])
    c = load(root, "senml")
    add("senml", check_senml_valid, c["valid"])
    add("senml invalid", check_senml_invalid, c["invalid"])
    c = load(root, "linkformat")
    add("link", check_link_valid, c["valid"])
    add("link invalid", check_link_invalid, c["invalid"])
    c = load(root, "report")
    out.append(("report: datagram", check_report_datagram, c["datagram"]))
    out.append(("report: backlog", check_report_backlog, c["backlog"]))
    out.append(("report: relative time", check_report_parse, c["relative"]))
    out.append(("report: reordered", check_report_parse, c["reordered"]))
    out.append(("report: descriptor", check_report_descriptor, c["descriptor"]))
    add("report invalid", check_report_invalid, c["invalid"])
    c = load(root, "oscore")
    add("oscore", check_oscore_derivation, c["derivation"])
    for v in c["requests"]:
        v["_ctx"] = c["derivation"][v["client"]]
    add("oscore", check_oscore_request, c["requests"])
    for v in c["responses"]:
        v["_req"] = c["requests"][v["request"]]
    add("oscore", check_oscore_response, c["responses"])
    return out


# --- fuzzing ---------------------------------------------------------------------------------
_HUGE = b"\x1b\xff\xff\xff\xff\xff\xff\xff\xff"


def _mutate(rnd, data):
    b = bytearray(data)
    for _ in range(rnd.randint(1, 4)):
        op = rnd.randint(0, 5)
        if op == 0 and b:
            i = rnd.randint(0, len(b) - 1)
            b[i] ^= 1 << rnd.randint(0, 7)
        elif op == 1 and b:
            b[rnd.randint(0, len(b) - 1)] = rnd.randint(0, 255)
        elif op == 2:
            i = rnd.randint(0, len(b))
            b = b[:i] + bytes((rnd.randint(0, 255),)) + b[i:]
        elif op == 3 and b:
            i = rnd.randint(0, len(b) - 1)
            b = b[:i] + b[i + 1 :]
        elif op == 4 and b:
            b = b[: rnd.randint(0, len(b))]
        else:
            # a huge declared length or argument
            i = rnd.randint(0, len(b))
            b = b[:i] + _HUGE[: rnd.randint(1, 9)] + b[i:]
    return bytes(b)


def _senml(d):
    return senml.resolve(senml.decode(d), 1763776800)


def _coap_full(d):
    m = coap.decode(d)
    m.path()
    m.query_dict()
    m.block2()
    return m


def _oscore_full(server, rid):
    """Decode a datagram and verify it as a request (or a response to ``rid``): only CoAPError
    or OscoreError may come out."""

    def run(d):
        m = coap.decode(d)
        if m.is_request():
            try:
                return server.unprotect_request(m)
            except oscore.NeedEcho:
                return None
        if m.is_response():
            return server.unprotect_response(m, rid)
        return m

    return run


def _oscore_seeds(root):
    c = load(root, "oscore")
    out = []
    for v in c["requests"]:
        d = v["_ctx"] if "_ctx" in v else c["derivation"][v["client"]]
        server = _ctx(d, reverse=True)
        client = _ctx(d)
        _, rid = client.protect_request(coap.decode(unhex(v["plain"])))
        data = unhex(v["protected"])
        out.append(("oscore", _oscore_full(server, rid), ValueError, data))
        opt = coap.decode(data).get_option(coap.OSCORE)
        out.append(("oscore-option", oscore.decode_option, oscore.OscoreError, opt))
    for v in c["responses"]:
        d = c["derivation"][c["requests"][v["request"]]["client"]]
        client = _ctx(d, seq=20)
        _, rid = client.protect_request(coap.decode(unhex(c["requests"][v["request"]]["plain"])))
        out.append(("oscore", _oscore_full(client, rid), ValueError, unhex(v["protected"])))
    return out


def fuzz(root, iterations, seed=1):
    """Mutate the valid vectors; every decoder may only raise its documented error.

    Returns (counts, failures): counts maps "<target> ok|<ErrorName>" to a number; failures
    is a list of (target, hex, exception repr).
    """
    rnd = random.Random(seed) if hasattr(random, "Random") else random
    if rnd is random:
        random.seed(seed)
    seeds = []
    c = load(root, "cbor")
    seeds += [("cbor", cbor.loads, cbor.CBORError, unhex(v["hex"])) for v in c["valid"]]
    c = load(root, "coap")
    seeds += [("coap", _coap_full, coap.CoAPError, unhex(v["hex"])) for v in c["valid"]]
    c = load(root, "senml")
    seeds += [("senml", _senml, senml.SenMLError, unhex(v["hex"])) for v in c["valid"]]
    c = load(root, "report")
    for key in ("backlog", "relative", "reordered", "descriptor"):
        seeds.append(("report", report.parse_send, senml.SenMLError, unhex(c[key]["hex"])))
    seeds.append(("report", report.parse_send, senml.SenMLError, unhex(c["datagram"]["payload"])))
    seeds.append(("coap", _coap_full, coap.CoAPError, unhex(c["datagram"]["hex"])))
    c = load(root, "linkformat")
    seeds += [("link", linkformat.parse, linkformat.LinkFormatError, v["text"].encode()) for v in c["valid"]]
    seeds += _oscore_seeds(root)
    counts = {}
    failures = []
    for _ in range(iterations):
        target, fn, err, data = seeds[rnd.randint(0, len(seeds) - 1)]
        d = _mutate(rnd, data)
        try:
            fn(d)
            key = target + " ok"
        except err as e:
            key = target + " " + type(e).__name__
        except Exception as e:  # noqa: BLE001 - the point is to catch anything undocumented
            failures.append((target, tohex(d), repr(e)))
            continue
        counts[key] = counts.get(key, 0) + 1
    return counts, failures


def main():
    root = sys.argv[1] if len(sys.argv) > 1 else "."
    iterations = int(sys.argv[2]) if len(sys.argv) > 2 else 3000
    seed = int(sys.argv[3]) if len(sys.argv) > 3 else 1
    passed = 0
    all_cases = cases(root)
    for name, checker, v in all_cases:
        try:
            checker(v)
            passed += 1
        except Exception as e:  # noqa: BLE001
            print("FAIL %s: %s %r" % (name, type(e).__name__, e))
    print("vectors: %d/%d" % (passed, len(all_cases)))
    counts, failures = fuzz(root, iterations, seed)
    for target, hx, err in failures[:20]:
        print("FUZZ FAIL %s %s: %s" % (target, hx, err))
    keys = sorted(counts)
    print(
        "fuzz: %d iterations, %d undocumented errors; %s"
        % (iterations, len(failures), ", ".join("%s=%d" % (k, counts[k]) for k in keys))
    )
    sys.exit(0 if passed == len(all_cases) and not failures else 1)


if __name__ == "__main__":
    main()
