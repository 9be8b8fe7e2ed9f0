"""protocol/vectors/*.json under CPython: our codecs, and cross-checks against cbor2 and aiocoap.

The same vectors run under MicroPython in test_protocol_micropython.py.
"""

import json
import math
import os
import warnings

import aiocoap.message as am
import cbor2
import make_vectors
import mp_run_vectors as mpv
import pytest

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
CASES = mpv.cases(ROOT)


@pytest.mark.parametrize("name,checker,vector", CASES, ids=[c[0] for c in CASES])
def test_vector(name, checker, vector):
    checker(vector)


def test_vectors_cover_every_kind():
    kinds = {name.split(":")[0] for name, _, _ in CASES}
    assert kinds >= {
        "cbor",
        "cbor invalid",
        "coap",
        "coap invalid",
        "senml",
        "senml invalid",
        "link",
        "link invalid",
    }
    assert len(CASES) > 180


def test_vector_files_match_their_generator():
    """The JSON on disk is what make_vectors.py (cbor2 + aiocoap as references) produces."""
    for name, fn in (
        ("cbor", make_vectors.cbor_vectors),
        ("coap", make_vectors.coap_vectors),
        ("senml", make_vectors.senml_vectors),
        ("linkformat", make_vectors.linkformat_vectors),
        ("report", make_vectors.report_vectors),
    ):
        with open(os.path.join(ROOT, "protocol", "vectors", name + ".json"), encoding="utf-8") as f:
            on_disk = json.load(f)
        assert json.loads(json.dumps(fn())) == on_disk, name


def _same(a, b):
    return mpv.same(a, b)


@pytest.mark.parametrize("v", mpv.load(ROOT, "cbor")["valid"], ids=lambda v: v["name"])
def test_cbor_vector_agrees_with_cbor2(v):
    data = bytes.fromhex(v["hex"])
    want = mpv.untag(v["value"])
    got = cbor2.loads(data)
    if isinstance(want, float) and math.isnan(want):
        assert math.isnan(got)
    else:
        assert _same(got, want)


@pytest.mark.parametrize("v", mpv.load(ROOT, "cbor")["invalid"], ids=lambda v: v["name"])
def test_cbor_invalid_vector_is_rejected_by_cbor2_or_outside_our_subset(v):
    """Each invalid vector is either malformed for cbor2 too, or uses a feature we exclude."""
    outside_subset = (
        "indefinite",
        "tag",
        "undefined",
        "simple",
        "duplicate",
        "nested",
        "surrogate",
        "array key",
        "map key",
        "trailing",  # cbor2.loads decodes the first item and ignores the rest
    )
    try:
        cbor2.loads(bytes.fromhex(v["hex"]))
    except Exception:  # noqa: BLE001 - cbor2 raises several types
        return
    assert any(word in v["name"] for word in outside_subset), v["name"]


@pytest.mark.parametrize("v", mpv.load(ROOT, "coap")["valid"], ids=lambda v: v["name"])
def test_coap_vector_agrees_with_aiocoap(v):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        m = am.Message.decode(bytes.fromhex(v["hex"]))
    assert int(m.mtype) == v["mtype"] and int(m.code) == v["code"] and m.mid == v["mid"]
    assert m.token.hex() == v["token"]
    assert [[int(o.number), o.encode().hex()] for o in m.opt.option_list()] == v["options"]
    assert m.payload.hex() == v["payload"]


def test_report_vector_size_and_content():
    r = mpv.load(ROOT, "report")["datagram"]
    size = r["size"]
    assert (
        size["header"] + size["token"] + size["options"] + size["payload_marker"] + size["payload"]
        == size["total"]
    )
    assert size["total"] <= 127  # SPEC §9 MUST
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        m = am.Message.decode(bytes.fromhex(r["hex"]))
    assert str(m.code) == "POST" and m.opt.uri_path == ("dp",) and m.opt.uri_query == ()
    assert int(m.opt.content_format) == 112
    records = cbor2.loads(m.payload)
    assert len(records) == 5  # no fault record: faults are 0 (SPEC §3.1)
    assert records[0] == {-2: "/10250/0/", -3: 1763776800, 0: "0", 2: 123456}
    assert records[4][2] == 37.25
