"""Cost and size of the periodic report datagram (SPEC §3.1, §9): CoAP + SenML + CBOR.

    .venv/bin/python -m bench protocol_report

Measures, in one run:
* encode (report tuple -> datagram bytes) and decode (datagram -> parsed report dict) with
  protocol/ on CPython and on MicroPython (Unix port, `time.ticks_us`), in µs per operation
  (best of several rounds);
* baselines on CPython: cbor2 (C extension; default and canonical) encoding/decoding the same
  SenML pack, and aiocoap encoding/
  decoding the same datagram, so the figures come with ratios;
* heap allocated per encode/decode on MicroPython (``gc.mem_alloc`` with the collector off);
* the datagram size, broken down as in SPEC §9.1, and the reports per 1024-byte pack.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
import warnings

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from protocol import cbor, coap, report  # noqa: E402
from protocol.lwm2m import CF_SENML_CBOR  # noqa: E402

REPORT = (123456, 1763776800, 48213, 37.25, 40, 9504000, 0)
TOKEN = b"\x5a\x01"
MID = 0x7D34
ROUNDS = 5

# The encode/decode pair both interpreters time; kept MicroPython-compatible.
SHARED = """
from protocol import cbor, coap, report
REPORT = (123456, 1763776800, 48213, 37.25, 40, 9504000, 0)


def encode_datagram(rep):
    m = coap.Message(coap.CON, coap.POST, 0x7D34, b"\\x5a\\x01")
    m.add_option(coap.URI_PATH, "dp")
    m.add_option(coap.URI_QUERY, "ep=node-0001")
    m.add_option(coap.CONTENT_FORMAT, 112)
    m.payload = report.encode_reports([rep])
    return coap.encode(m)


def decode_datagram(data):
    m = coap.decode(data)
    q = m.query_dict()
    reps, attrs = report.parse_send(m.payload, 1763777000)
    return q["ep"], reps[0]
"""

MP_SCRIPT = (
    SHARED
    + """
import gc
import json
import time

DATA = encode_datagram(REPORT)
PAYLOAD = DATA[DATA.index(b"\\xff") + 1 :]
RECORDS = report.report_records(REPORT)


def best_us(fn, arg, n, rounds):
    best = None
    for _ in range(rounds):
        t0 = time.ticks_us()
        for _ in range(n):
            fn(arg)
        dt = time.ticks_diff(time.ticks_us(), t0) / n
        if best is None or dt < best:
            best = dt
    return best


def alloc(fn, arg):
    gc.collect()
    gc.disable()
    a0 = gc.mem_alloc()
    fn(arg)
    a1 = gc.mem_alloc()
    gc.enable()
    return a1 - a0


out = {
    "encode_us": best_us(encode_datagram, REPORT, 500, 5),
    "decode_us": best_us(decode_datagram, DATA, 500, 5),
    "cbor_dumps_us": best_us(cbor.dumps, RECORDS, 500, 5),
    "cbor_loads_us": best_us(cbor.loads, PAYLOAD, 500, 5),
    "encode_alloc_bytes": alloc(encode_datagram, REPORT),
    "decode_alloc_bytes": alloc(decode_datagram, DATA),
    "datagram_hex": "".join("%02x" % b for b in DATA),
}
print(json.dumps(out))
"""
)

ns: dict = {}
exec(SHARED, ns)  # the very same functions on CPython
encode_datagram = ns["encode_datagram"]
decode_datagram = ns["decode_datagram"]


def best_us(fn, arg, n: int = 5000, rounds: int = ROUNDS) -> float:
    """Best-of-rounds mean time of ``fn(arg)`` in µs."""
    best = float("inf")
    for _ in range(rounds):
        t0 = time.perf_counter()
        for _ in range(n):
            fn(arg)
        best = min(best, (time.perf_counter() - t0) / n * 1e6)
    return best


def micropython_figures() -> dict:
    mp = os.path.join(os.path.dirname(sys.executable), "micropython")
    with tempfile.TemporaryDirectory() as tmp:
        script = os.path.join(tmp, "bench_report.py")
        with open(script, "w") as f:
            f.write(MP_SCRIPT)
        env = dict(os.environ, MICROPYPATH=ROOT + ":.frozen")
        proc = subprocess.Popen(
            [mp, script], cwd=tmp, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        try:
            out, err = proc.communicate(timeout=300)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    if proc.returncode != 0:
        raise RuntimeError("micropython failed: " + err.decode())
    return json.loads(out.decode().strip().splitlines()[-1])


def aiocoap_pair(data: bytes):
    """aiocoap's encoder and decoder, and an outgoing message equal to ``data``."""
    import aiocoap.message as am
    import aiocoap.numbers as an

    payload = coap.decode(data).payload
    msg = am.Message(code=an.POST, payload=payload, uri_path=("dp",), uri_query=("ep=node-0001",))
    msg.opt.content_format = CF_SENML_CBOR
    msg.mtype, msg.mid, msg.token = an.CON, MID, TOKEN
    assert msg.encode() == data

    def enc(m):
        return m.encode()

    return enc, am.Message.decode, msg


def size_breakdown(data: bytes) -> dict:
    m = coap.decode(data)
    header, token, payload = 4, len(m.token), len(m.payload)
    options = len(data) - header - token - 1 - payload
    per_record = [len(cbor.dumps(r)) for r in report.report_records(REPORT)]
    return {
        "total": len(data),
        "coap_header": header,
        "token": token,
        "options": options,
        "options_detail": {"Uri-Path dp": 3, "Content-Format 112": 2, "Uri-Query ep=node-0001": 13},
        "payload_marker": 1,
        "payload": payload,
        "payload_array_head": 1,
        "payload_records": per_record,
        "fits_127": len(data) <= 127,
        "meets_96_aim": len(data) <= 96,
    }


def run() -> dict:
    import cbor2

    data = encode_datagram(REPORT)
    assert data == coap.encode(coap.decode(data))
    assert decode_datagram(data)[1]["seq"] == REPORT[0]
    payload = coap.decode(data).payload
    records = report.report_records(REPORT)
    assert cbor2.loads(payload) == records

    py = {
        "encode_us": best_us(encode_datagram, REPORT),
        "decode_us": best_us(decode_datagram, data),
        "cbor_dumps_us": best_us(cbor.dumps, records),
        "cbor_loads_us": best_us(cbor.loads, payload),
        "coap_encode_us": best_us(coap.encode, coap.decode(data)),
        "coap_decode_us": best_us(coap.decode, data),
    }
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        aenc, adec, amsg = aiocoap_pair(data)
        base = {
            "cbor2_dumps_us": best_us(cbor2.dumps, records),
            "cbor2_dumps_canonical_us": best_us(lambda r: cbor2.dumps(r, canonical=True), records),
            "cbor2_loads_us": best_us(cbor2.loads, payload),
            "aiocoap_encode_us": best_us(aenc, amsg),
            "aiocoap_decode_us": best_us(adec, data),
        }
    mp = micropython_figures()
    assert bytes.fromhex(mp.pop("datagram_hex")) == data, "MicroPython built different bytes"

    backlog = [(REPORT[0] + i, REPORT[1] + 900 * i, REPORT[2] + 10 * i, *REPORT[3:]) for i in range(100)]
    packs = report.pack_reports(backlog)

    def r(x: float) -> float:
        return round(x, 2)

    return {
        "datagram_bytes": size_breakdown(data),
        "reports_per_1024_byte_pack": len(packs[0]),
        "pack_payload_bytes": len(report.encode_reports(packs[0])),
        "cpython_us": {k: r(v) for k, v in py.items()},
        "cpython_baseline_us": {k: r(v) for k, v in base.items()},
        "micropython_us": {k: r(v) for k, v in mp.items() if k.endswith("_us")},
        "micropython_alloc_bytes": {k: v for k, v in mp.items() if k.endswith("_bytes")},
        "ratios": {
            "cbor_dumps_ours_vs_cbor2": r(py["cbor_dumps_us"] / base["cbor2_dumps_us"]),
            "cbor_loads_ours_vs_cbor2": r(py["cbor_loads_us"] / base["cbor2_loads_us"]),
            "coap_encode_ours_vs_aiocoap": r(py["coap_encode_us"] / base["aiocoap_encode_us"]),
            "coap_decode_ours_vs_aiocoap": r(py["coap_decode_us"] / base["aiocoap_decode_us"]),
            "micropython_vs_cpython_encode": r(mp["encode_us"] / py["encode_us"]),
            "micropython_vs_cpython_decode": r(mp["decode_us"] / py["decode_us"]),
        },
    }


if __name__ == "__main__":
    print(json.dumps(run(), indent=2))
