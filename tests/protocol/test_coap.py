"""protocol.coap against aiocoap's codec (both directions), helpers, Dedup and timing."""

import warnings

import aiocoap.message as am
import aiocoap.numbers as an
import pytest
from fuzz_budget import examples  # make test's budget, scaled in the soak run
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from make_vectors import aio as aio_encode  # the vectors' own aiocoap reference encoder

from protocol import coap

SETTINGS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

UINT_OPTS = [6, 7, 12, 14, 17, 28, 60, 258]
BLOCK_OPTS = [23, 27]
STRING_OPTS = [3, 8, 11, 15, 20, 35, 39]
OPAQUE_OPTS = [1, 4, 5, 9]
KNOWN = {int(n) for n in an.OptionNumber}


def uint_value(n):
    return n.to_bytes((n.bit_length() + 7) // 8, "big")


def option():
    uint = st.tuples(st.sampled_from(UINT_OPTS), st.integers(0, 2**32 - 1).map(uint_value))
    block = st.tuples(
        st.sampled_from(BLOCK_OPTS),
        st.builds(
            lambda n, m, s: uint_value((n << 4) | (m << 3) | s),
            st.integers(0, 2**20 - 1),
            st.integers(0, 1),
            st.integers(0, 6),
        ),
    )
    text = st.tuples(
        st.sampled_from(STRING_OPTS),
        st.text(max_size=300).map(lambda s: s.encode()).filter(lambda b: len(b) <= 400),
    )
    opaque = st.tuples(st.sampled_from(OPAQUE_OPTS), st.binary(max_size=20))
    unknown = st.tuples(st.integers(1, 65535).filter(lambda n: n not in KNOWN), st.binary(max_size=300))
    return st.one_of(uint, block, text, opaque, unknown)


@st.composite
def messages(draw):
    mtype = draw(st.sampled_from([coap.CON, coap.NON, coap.ACK, coap.RST]))
    if mtype == coap.RST or draw(st.integers(0, 9)) == 0:
        return (mtype, 0, draw(st.integers(0, 0xFFFF)), b"", [], b"")
    codes = [st.integers(64, 191)]  # classes 2..5 (3.xx is unassigned but well-formed)
    if mtype != coap.ACK:
        codes.append(st.integers(1, 31))
    code = draw(st.one_of(codes))
    mid = draw(st.integers(0, 0xFFFF))
    token = draw(st.binary(max_size=8))
    opts = sorted(draw(st.lists(option(), max_size=8)), key=lambda o: o[0])
    payload = draw(st.binary(max_size=200))
    return (mtype, code, mid, token, opts, payload)


def aio_decode(data):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        m = am.Message.decode(data)
    return (
        int(m.mtype),
        int(m.code),
        m.mid,
        m.token,
        [(int(o.number), o.encode()) for o in m.opt.option_list()],
        m.payload,
    )


@SETTINGS
@given(messages())
def test_our_encode_then_aiocoap_decode(fields):
    mtype, code, mid, token, opts, payload = fields
    msg = coap.Message(mtype, code, mid, token, None, payload)
    for num, val in opts:
        msg.add_option(num, val)
    assert aio_decode(coap.encode(msg)) == fields


@SETTINGS
@given(messages())
def test_aiocoap_encode_then_our_decode(fields):
    data = aio_encode(*fields)
    msg = coap.decode(data)
    assert (msg.mtype, msg.code, msg.mid, msg.token, msg.options, msg.payload) == fields
    assert coap.encode(msg) == data


def test_observe_and_block2_interop():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        m = am.Message(code=an.CONTENT, payload=b"x" * 64, observe=70000)
        m.mtype, m.mid, m.token = an.NON, 5, b"\x01\x02"
        m.opt.block2 = (3, True, 2)
        data = m.encode()
    msg = coap.decode(data)
    assert msg.observe() == 70000
    assert msg.block2() == (3, True, 2)
    assert msg.block1() is None
    ours = coap.Message(coap.NON, coap.CONTENT, 5, b"\x01\x02", payload=b"x" * 64)
    ours.add_option(coap.BLOCK2, coap.block_value(3, True, 2))
    ours.add_option(coap.OBSERVE, 70000)
    assert coap.encode(ours) == data


# --- helpers ---------------------------------------------------------------------------------
def test_add_option_keeps_sorted_and_stable():
    m = coap.Message()
    m.add_option(coap.URI_QUERY, "b=2")
    m.add_option(coap.URI_PATH, "rd")
    m.add_option(coap.URI_QUERY, "a=1")
    m.add_option(coap.CONTENT_FORMAT, 40)
    m.add_option(coap.URI_PATH, b"x")
    m.add_option(coap.OBSERVE, 0)
    assert m.options == [(6, b""), (11, b"rd"), (11, b"x"), (12, b"\x28"), (15, b"b=2"), (15, b"a=1")]
    assert m.get_options(coap.URI_QUERY) == [b"b=2", b"a=1"]
    assert m.get_uint(coap.CONTENT_FORMAT) == 40 and m.content_format() == 40
    assert m.get_uint(coap.ACCEPT) is None and m.get_uint(coap.ACCEPT, 7) == 7
    assert m.observe() == 0 and m.accept() is None


def test_add_option_rejects_bool_and_none():
    for bad in (True, False, None):
        with pytest.raises(coap.CoAPError):
            coap.Message().add_option(coap.OBSERVE, bad)


def test_path_query_location():
    m = coap.Message(coap.CON, coap.POST, 1, b"t")
    m.set_path("/rd/abc")
    assert m.path() == ["rd", "abc"] and m.path_str() == "/rd/abc"
    m.set_path("/dp")
    assert m.path() == ["dp"]
    m.set_path("/")
    assert m.path() == [] and m.path_str() == "/"
    for q in ("ep=node-1", "lt=300", "b", "lwm2m=1.1", "x=a=b"):
        m.add_option(coap.URI_QUERY, q)
    assert m.query() == ["ep=node-1", "lt=300", "b", "lwm2m=1.1", "x=a=b"]
    assert m.query_dict() == {"ep": "node-1", "lt": "300", "b": "", "lwm2m": "1.1", "x": "a=b"}
    r = coap.response_for(m, coap.CREATED)
    r.add_option(coap.LOCATION_PATH, "rd").add_option(coap.LOCATION_PATH, "k3")
    assert coap.decode(coap.encode(r)).location_path() == ["rd", "k3"]


def test_invalid_utf8_in_text_options_is_a_coap_error():
    m = coap.decode(b"\x40\x01\x00\x01\xb2\xc3\x28")
    with pytest.raises(coap.CoAPError):
        m.path()
    m = coap.decode(b"\x40\x01\x00\x01\xb3\xed\xa0\x80")  # a surrogate
    with pytest.raises(coap.CoAPError):
        m.path()


def test_codes_and_classification():
    assert coap.code_str(coap.CONTENT) == "2.05" and coap.code_str(coap.BAD_OPTION) == "4.02"
    assert coap.code_str(coap.SERVICE_UNAVAILABLE) == "5.03"
    assert coap.code_str(coap.REQUEST_ENTITY_TOO_LARGE) == "4.13"
    assert coap.code_str(coap.UNSUPPORTED_CONTENT_FORMAT) == "4.15"
    for code in (coap.GET, coap.POST, coap.PUT, coap.DELETE):
        assert coap.Message(code=code).is_request()
    assert not coap.Message(code=0).is_request() and coap.Message(code=0).is_empty()
    assert coap.Message(code=coap.CHANGED).is_response() and coap.Message(code=69).code_str() == "2.05"
    assert coap.is_critical(coap.URI_PATH) and not coap.is_critical(coap.OBSERVE)
    assert not coap.is_critical(coap.NO_RESPONSE) and coap.is_critical(coap.OSCORE)
    # every number matches aiocoap's registry
    for name in ("IF_MATCH", "URI_HOST", "ETAG", "IF_NONE_MATCH", "OBSERVE", "URI_PORT", "LOCATION_PATH", "OSCORE",
                 "URI_PATH", "CONTENT_FORMAT", "MAX_AGE", "URI_QUERY", "ACCEPT", "LOCATION_QUERY", "BLOCK2", "BLOCK1",
                 "SIZE2", "PROXY_URI", "PROXY_SCHEME", "SIZE1", "NO_RESPONSE"):  # fmt: skip
        assert getattr(coap, name) == int(getattr(an.OptionNumber, name)), name
    for name in ("GET", "POST", "PUT", "DELETE", "FETCH", "PATCH", "CREATED", "DELETED", "VALID", "CHANGED", "CONTENT",
                 "BAD_REQUEST", "BAD_OPTION", "NOT_FOUND", "METHOD_NOT_ALLOWED", "NOT_ACCEPTABLE",
                 "REQUEST_ENTITY_TOO_LARGE", "UNSUPPORTED_CONTENT_FORMAT", "INTERNAL_SERVER_ERROR",
                 "SERVICE_UNAVAILABLE", "GATEWAY_TIMEOUT"):  # fmt: skip
        assert getattr(coap, name) == int(getattr(an.Code, name)), name


@given(st.integers(0, 2**64))
def test_uint_bytes_round_trip_and_minimal(n):
    b = coap.uint_bytes(n)
    assert coap.bytes_uint(b) == n
    assert b == uint_value(n)


def test_response_for_and_rst():
    con = coap.Message(coap.CON, coap.GET, 0x1234, b"\xaa\xbb")
    r = coap.response_for(con, coap.CONTENT, b"\x18\x28", content_format=60)
    assert (r.mtype, r.code, r.mid, r.token, r.payload) == (
        coap.ACK,
        coap.CONTENT,
        0x1234,
        b"\xaa\xbb",
        b"\x18\x28",
    )
    assert r.content_format() == 60
    non = coap.Message(coap.NON, coap.GET, 0x10, b"\x01")
    r = coap.response_for(non, coap.NOT_FOUND, mid=0x99)
    assert (r.mtype, r.mid, r.token) == (coap.NON, 0x99, b"\x01")
    assert coap.response_for(non, coap.CHANGED).mtype == coap.NON  # never an ACK to a NON
    rst = coap.encode(coap.rst_for(0xBEEF))
    assert rst == b"\x70\x00\xbe\xef"
    assert aio_decode(rst)[0] == coap.RST


def test_error_response_with_diagnostic():
    req = coap.Message(coap.CON, coap.POST, 7, b"\x01")
    r = coap.error_response(req, coap.BAD_REQUEST, "report seq must be an integer")
    assert (r.mtype, r.code, r.mid, r.token) == (coap.ACK, coap.BAD_REQUEST, 7, b"\x01")
    assert r.payload == b"report seq must be an integer" and r.content_format() == 0
    assert coap.error_response(req, coap.NOT_FOUND).payload == b""
    long = coap.diagnostic("\u00e9" * 40)  # 80 bytes of 2-byte characters
    assert len(long) == 64 and long.decode() == "\u00e9" * 32
    odd = coap.diagnostic("a" + "\u20ac" * 30)  # 1 + 90 bytes: cut before a split character
    assert len(odd) <= 64 and odd.decode() == "a" + "\u20ac" * 21


def test_decode_accepts_buffers_and_rejects_other_types():
    data = b"\x40\x01\x00\x01"
    for d in (data, bytearray(data), memoryview(b"xx" + data)[2:]):
        assert coap.decode(d).code == coap.GET
    for bad in ("@\x01\x00\x01", None, 5):
        with pytest.raises(coap.CoAPError):
            coap.decode(bad)


def test_error_carries_mid_for_rst():
    with pytest.raises(coap.CoAPError) as e:
        coap.decode(b"\x42\x01\x12\x34\xab")
    assert e.value.mid == 0x1234 and e.value.mtype == coap.CON
    with pytest.raises(coap.CoAPError) as e:
        coap.decode(b"\x40\x01")
    assert e.value.mid is None


def test_encode_rejects_bad_fields():
    for m in (
        coap.Message(token=b"123456789", code=1),
        coap.Message(mid=70000, code=1),
        coap.Message(mtype=4, code=1),
        coap.Message(code=0, payload=b"x"),
        coap.Message(code=0, token=b"x"),
        coap.Message(code=1, options=[(70000, b"")]),
    ):
        with pytest.raises(coap.CoAPError):
            coap.encode(m)


def test_encode_sorts_hand_built_options():
    m = coap.Message(coap.CON, coap.GET, 1, b"", options=[(15, b"a=1"), (11, b"x"), (15, b"b=2")])
    assert coap.decode(coap.encode(m)).options == [(11, b"x"), (15, b"a=1"), (15, b"b=2")]


# --- malformed input -------------------------------------------------------------------------
def _use(msg):
    msg.path()
    msg.query_dict()
    msg.location_path()
    msg.block2()
    msg.content_format()


@settings(max_examples=examples(1500), deadline=None)
@given(st.binary(max_size=40))
def test_random_bytes_raise_only_coap_error(data):
    try:
        _use(coap.decode(data))
    except coap.CoAPError:
        pass


@settings(max_examples=examples(500), deadline=None)
@given(messages(), st.data())
def test_mutated_messages_raise_only_coap_error(fields, data):
    enc = bytearray(aio_encode(*fields))
    for _ in range(data.draw(st.integers(1, 4))):
        i = data.draw(st.integers(0, len(enc)))
        op = data.draw(st.integers(0, 2))
        if op == 0 and i < len(enc):
            enc[i] = data.draw(st.integers(0, 255))
        elif op == 1:
            enc.insert(i, data.draw(st.integers(0, 255)))
        else:
            enc = enc[:i]
    try:
        msg = coap.decode(bytes(enc))
    except coap.CoAPError:
        return
    try:
        _use(msg)
    except coap.CoAPError:
        pass
    assert coap.decode(coap.encode(msg)).options == msg.options


# --- Dedup and retransmission timing -----------------------------------------------------------
def test_dedup_lifecycle():
    d = coap.Dedup(capacity=4)
    peer = ("127.0.0.1", 5683)
    assert d.lookup(peer, 1, 0) is None
    d.remember(peer, 1, None, 0)
    assert d.lookup(peer, 1, 10) == coap.PENDING == b""
    d.remember(peer, 1, b"\x60\x44\x00\x01", 20)
    assert d.lookup(peer, 1, 30) == b"\x60\x44\x00\x01"
    assert d.lookup(("127.0.0.1", 5684), 1, 30) is None  # another peer, same mid
    assert d.lookup(peer, 2, 30) is None
    # expiry after EXCHANGE_LIFETIME
    assert d.lookup(peer, 1, 20 + coap.EXCHANGE_LIFETIME_S * 1000 - 1) is not None
    assert d.lookup(peer, 1, 20 + coap.EXCHANGE_LIFETIME_S * 1000) is None
    assert len(d) == 0


def test_dedup_is_bounded_and_evicts_oldest():
    d = coap.Dedup(capacity=3)
    for mid in range(10):
        d.remember("p", mid, bytes([mid]), mid)
    assert len(d) == 3
    assert [d.lookup("p", m, 20) for m in range(10)] == [None] * 7 + [b"\x07", b"\x08", b"\x09"]
    d.remember("p", 9, b"new", 21)  # update in place, no eviction
    assert d.lookup("p", 8, 22) == b"\x08" and d.lookup("p", 9, 22) == b"new"


def test_dedup_clock_going_backwards_counts_as_expired():
    d = coap.Dedup()
    d.remember("p", 5, b"r", 1000)
    assert d.lookup("p", 5, 999) is None


def test_retransmission_timing():
    assert coap.initial_timeout_ms(0.0) == 2000
    assert coap.initial_timeout_ms(0.999999) == 2999
    assert coap.initial_timeout_ms(0.5) == 2500
    t = coap.initial_timeout_ms(1.0)
    span = 0
    for _ in range(coap.MAX_RETRANSMIT):
        span += t
        t = coap.next_timeout_ms(t)
    assert span == coap.MAX_TRANSMIT_SPAN_S * 1000  # RFC 7252 §4.8.2
    assert (coap.ACK_TIMEOUT_MS, coap.ACK_RANDOM_FACTOR, coap.MAX_RETRANSMIT) == (2000, 1.5, 4)
    assert (coap.EXCHANGE_LIFETIME_S, coap.NON_LIFETIME_S) == (247, 145)
