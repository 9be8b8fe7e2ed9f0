"""firmware/endpoint.py under the real `micropython`, against aiocoap and raw UDP peers.

Covers RFC 7252 behaviour the node must get right: piggybacked responses, NON answered with
NON, duplicate CON requests answered from the cache without acting twice, RST for a CON that
does not parse, 4.02/4.13, CON retransmission with exponential back-off and MAX_RETRANSMIT,
separate responses, and RST for an unknown CON response.
"""

import asyncio
import json
import os
import socket
import struct
import subprocess
import sys
import time

import pytest

sys.path.insert(0, os.path.dirname(__file__))
import aiocoap  # noqa: E402
from aiocoap import resource  # noqa: E402
from app_support import MICROPYTHON, MP_APP, Proc, free_udp_port, mp_env  # noqa: E402

from protocol import coap  # noqa: E402

SCRIPT = os.path.join(MP_APP, "endpoint_peer.py")


def start_peer(*args):
    p = Proc(
        [MICROPYTHON, SCRIPT, *map(str, args)],
        env=mp_env(),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    line = p.p.stdout.readline()
    assert json.loads(line)["ready"], line
    return p


def udp(timeout=2.0):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", 0))
    s.settimeout(timeout)
    return s


def ask(s, port, msg):
    s.sendto(coap.encode(msg), ("127.0.0.1", port))
    data, _ = s.recvfrom(2048)
    return data


def req(code, path, mid, mtype=coap.CON, token=b"\x01\x02", payload=b""):
    m = coap.Message(mtype, code, mid, token, None, payload)
    m.set_path(path)
    return m


@pytest.fixture
def node():
    port = free_udp_port()
    with start_peer(port) as p:
        yield port, p


async def test_aiocoap_client_read_write_and_not_found(node):
    port, _ = node
    ctx = await aiocoap.Context.create_client_context()
    try:
        uri = f"coap://127.0.0.1:{port}/"
        r = await ctx.request(aiocoap.Message(code=aiocoap.GET, uri=uri + "echo")).response
        assert r.code == aiocoap.CONTENT and r.payload == b"init"
        r = await ctx.request(aiocoap.Message(code=aiocoap.PUT, uri=uri + "echo", payload=b"42")).response
        assert r.code == aiocoap.CHANGED
        r = await ctx.request(aiocoap.Message(code=aiocoap.GET, uri=uri + "echo")).response
        assert r.payload == b"42"
        r = await ctx.request(aiocoap.Message(code=aiocoap.GET, uri=uri + "nope")).response
        assert r.code == aiocoap.NOT_FOUND
        r = await ctx.request(aiocoap.Message(code=aiocoap.GET, uri=uri + "echo", transport_tuning=aiocoap.Unreliable)).response
        assert r.payload == b"42"
    finally:
        await ctx.shutdown()


def test_piggybacked_ack_and_non_answered_with_non(node):
    port, _ = node
    s = udp()
    r = coap.decode(ask(s, port, req(coap.GET, "/echo", 0x1234)))
    assert r.mtype == coap.ACK and r.mid == 0x1234 and r.token == b"\x01\x02" and r.code == coap.CONTENT
    r = coap.decode(ask(s, port, req(coap.GET, "/echo", 0x1235, mtype=coap.NON, token=b"\x09")))
    assert r.mtype == coap.NON and r.token == b"\x09" and r.code == coap.CONTENT and r.payload == b"init"


def test_duplicate_con_answered_from_cache_without_acting_twice(node):
    port, _ = node
    s = udp()
    m = req(coap.PUT, "/echo", 0x4000, payload=b"once")
    first = ask(s, port, m)
    # a different payload under the same MID is still a duplicate: the cached answer comes back
    m2 = req(coap.PUT, "/echo", 0x4000, payload=b"twice")
    assert ask(s, port, m2) == first
    assert ask(s, port, m) == first
    r = coap.decode(ask(s, port, req(coap.GET, "/count", 0x4001)))
    assert r.payload == b"1"
    r = coap.decode(ask(s, port, req(coap.GET, "/echo", 0x4002)))
    assert r.payload == b"once"
    # the same MID from another peer (another source port) is a new request
    s2 = udp()
    assert coap.decode(ask(s2, port, req(coap.PUT, "/echo", 0x4000, payload=b"other"))).code == coap.CHANGED
    assert coap.decode(ask(s, port, req(coap.GET, "/count", 0x4003))).payload == b"2"


def test_garbage_gets_rst_or_silence_and_node_keeps_serving(node):
    port, proc = node
    s = udp(timeout=0.5)
    # CON header readable (version 1, mid 0xBEEF) but token length 9 is reserved
    s.sendto(bytes([0x49, 0x01, 0xBE, 0xEF]) + b"x" * 9, ("127.0.0.1", port))
    r = coap.decode(s.recvfrom(100)[0])
    assert r.mtype == coap.RST and r.mid == 0xBEEF
    # an option with the reserved nibble 15
    s.sendto(bytes([0x40, 0x01, 0x00, 0x07, 0xF1, 0x00]), ("127.0.0.1", port))
    assert coap.decode(s.recvfrom(100)[0]).mid == 7
    # too short to hold a MID, a NON that does not parse, an unknown version (RFC 7252 §3,
    # SPEC §8): silence
    for junk in (b"\x40", b"", bytes([0x50, 0x01, 0, 1, 0xFF]), bytes([0x80, 1, 0, 8])):
        s.sendto(junk, ("127.0.0.1", port))
    with pytest.raises(socket.timeout):
        s.recvfrom(100)
    # invalid UTF-8 in Uri-Path: 4.00, not a crash
    m = coap.Message(coap.CON, coap.GET, 9, b"t", [(coap.URI_PATH, b"\xff\xfe")])
    assert coap.decode(ask(s, port, m)).code == coap.BAD_REQUEST
    # CoAP ping (empty CON) gets RST
    assert coap.decode(ask(s, port, coap.Message(coap.CON, 0, 0x55))).mtype == coap.RST
    # unknown critical option -> 4.02; Block1 or > 1024 payload bytes -> 4.13 with Size1
    m = req(coap.GET, "/echo", 10)
    m.add_option(2049, b"x")
    assert coap.decode(ask(s, port, m)).code == coap.BAD_OPTION
    m = req(coap.PUT, "/echo", 11, payload=b"a" * 64)
    m.add_option(coap.BLOCK1, coap.block_value(0, True, 2))
    r = coap.decode(ask(s, port, m))
    assert r.code == coap.REQUEST_ENTITY_TOO_LARGE and r.get_uint(coap.SIZE1) == 1024
    r = coap.decode(ask(s, port, req(coap.PUT, "/echo", 12, payload=b"b" * 1025)))
    assert r.code == coap.REQUEST_ENTITY_TOO_LARGE
    # a datagram bigger than any CoAP message we take
    r = coap.decode(ask(s, port, req(coap.PUT, "/echo", 13, payload=b"c" * 1500)))
    assert r.code == coap.REQUEST_ENTITY_TOO_LARGE
    # state unchanged by all of that, and the node still answers
    assert coap.decode(ask(s, port, req(coap.GET, "/echo", 14))).payload == b"init"
    assert proc.p.poll() is None


def _run_client(server_port, n, ack_ms, mode="CON"):
    """Start the MicroPython peer as a client of server_port; return its Proc."""
    return start_peer(free_udp_port(), ack_ms, server_port, n, mode)


def test_con_retransmission_backoff_and_give_up():
    """With no answer the node sends 1 + MAX_RETRANSMIT copies, gaps doubling from
    ACK_TIMEOUT * [1, 1.5) (ack timeout shortened to 100 ms for the test).

    The schedule is the node's: the timeouts it waits (doubling) and its own send times
    (never earlier than the timeout), as the peer script records them. Gaps taken at the
    receiver also held the host's scheduling delays: on a loaded 2-core machine a first gap of
    176 ms and a second of 237 ms (ratio 1.35) failed a node whose own timeouts doubled."""
    s = udp(timeout=5)
    port = s.getsockname()[1]
    with _run_client(port, 1, 100) as p:
        mids = set()
        for _ in range(5):
            data, _ = s.recvfrom(2048)
            m = coap.decode(data)
            assert m.mtype == coap.CON and m.code == coap.POST and m.path_str() == "/rd/x"
            mids.add((m.mid, m.token))
        s.settimeout(2.0)
        with pytest.raises(socket.timeout):
            s.recvfrom(2048)  # no sixth copy
        out = json.loads(p.p.stdout.readline())
        assert "code" not in out and out["retx"] == 4  # request() returned None
    assert len(mids) == 1  # retransmissions reuse MID and token
    waits = [w / 1000 for w in out["waits"]]
    assert len(waits) == 5 and len(out["sends"]) == 5, out  # a wait after each of the 5 copies
    assert 0.09 <= waits[0] <= 0.2, waits
    for a, b in zip(waits, waits[1:], strict=False):
        assert 1.6 <= b / a <= 2.5, waits
    gaps = [b - a for a, b in zip(out["sends"], out["sends"][1:], strict=False)]
    assert all(g >= w for g, w in zip(gaps, out["waits"], strict=False)), (gaps, out["waits"])


def test_lost_ack_is_recovered_by_retransmission_and_separate_response():
    s = udp(timeout=5)
    port = s.getsockname()[1]
    with _run_client(port, 2, 100) as p:
        # request 0: drop the first copy, answer the retransmission (piggybacked)
        first = coap.decode(s.recvfrom(2048)[0])
        again = coap.decode(s.recvfrom(2048)[0])
        assert again.mid == first.mid
        s.sendto(coap.encode(coap.response_for(again, coap.CREATED, b"ok")), ("127.0.0.1", _peer_port(p)))
        out = json.loads(p.p.stdout.readline())
        assert out["code"] == "2.01" and out["payload"] == "ok" and out["retx"] == 1
        # request 1: empty ACK now, CON separate response later; the node must ACK it
        m, addr = s.recvfrom(2048)
        m = coap.decode(m)
        s.sendto(coap.encode(coap.Message(coap.ACK, 0, m.mid)), addr)
        time.sleep(0.5)  # longer than the whole retransmission span: no retransmission after the ACK
        sep = coap.Message(coap.CON, coap.CHANGED, 0x7777, m.token, None, b"late")
        s.sendto(coap.encode(sep), addr)
        ack = coap.decode(s.recvfrom(2048)[0])
        assert ack.mtype == coap.ACK and ack.mid == 0x7777 and ack.code == 0
        out = json.loads(p.p.stdout.readline())
        assert out["code"] == "2.04" and out["payload"] == "late" and out["retx"] == 1
        # an unknown CON response gets RST; an unknown ACK is ignored
        s.sendto(coap.encode(coap.Message(coap.CON, coap.CONTENT, 0x1111, b"zz", None, b"?")), addr)
        rst = coap.decode(s.recvfrom(2048)[0])
        assert rst.mtype == coap.RST and rst.mid == 0x1111
        s.sendto(coap.encode(coap.Message(coap.ACK, coap.CONTENT, 0x2222, b"zz")), addr)
        s.settimeout(0.3)
        with pytest.raises(socket.timeout):
            s.recvfrom(2048)


def _peer_port(p):
    return int(p.p.args[2])


async def test_client_against_aiocoap_server():
    class Rd(resource.Resource):
        def __init__(self):
            super().__init__()
            self.seen = []

        async def render_post(self, request):
            self.seen.append((request.opt.uri_query, request.payload, request.mtype))
            return aiocoap.Message(code=aiocoap.CREATED, payload=b"reg", location_path=("rd", "abc"))

    site = resource.Site()
    rd = Rd()
    site.add_resource(("rd", "x"), rd)
    port = free_udp_port()
    ctx = await aiocoap.Context.create_server_context(site, bind=("127.0.0.1", port))
    try:
        p = await asyncio.to_thread(_run_client, port, 20, 2000)
        with p:
            lines = [json.loads(await asyncio.to_thread(p.p.stdout.readline)) for _ in range(20)]
        assert [x["code"] for x in lines] == ["2.01"] * 20
        assert all(x["payload"] == "reg" and x["type"] == coap.ACK for x in lines)
        assert [q for q, _, _ in rd.seen] == [(f"i={i}",) for i in range(20)]
        assert all(t == aiocoap.CON for _, _, t in rd.seen)
    finally:
        await ctx.shutdown()


def test_default_transmission_parameters_are_rfc7252():
    """The endpoint's defaults are those of RFC 7252 §4.8 (the tests above shorten ACK_TIMEOUT)."""
    import inspect

    from firmware import endpoint  # importable on CPython too

    sig = inspect.signature(endpoint.Endpoint.__init__)
    assert sig.parameters["ack_timeout_ms"].default == 2000
    assert coap.ACK_RANDOM_FACTOR == 1.5 and coap.MAX_RETRANSMIT == 4
    assert struct  # keep import used


def test_receive_task_survives_a_heap_without_room_for_a_datagram():
    """A fragmented heap (free memory only in ~100-byte holes) makes recvfrom(1280) raise
    MemoryError: the endpoint drops that datagram and keeps its receive task, so the
    retransmitted request is answered once memory is back (before, the task died: a deaf node)."""
    port = free_udp_port()
    with Proc([MICROPYTHON, "-X", "heapsize=256k", os.path.join(MP_APP, "endpoint_nomem.py"), str(port)],
              env=mp_env(), stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
              text=True) as p:
        assert json.loads(p.p.stdout.readline())["ready"]
        frag = json.loads(p.p.stdout.readline())
        assert frag["largest"] < 1280, frag  # the heap really has no room for the buffer
        s = udp(0.5)
        answer = None
        for _ in range(20):  # a CON client's retransmissions, every 0.5 s
            s.sendto(coap.encode(req(coap.GET, "/x", 77)), ("127.0.0.1", port))
            try:
                answer = coap.decode(s.recvfrom(2048)[0])
                break
            except OSError:
                pass
        s.close()
        p.p.stdin.close()
        out = p.p.stdout.read()
        assert p.p.wait(timeout=10) == 0, out
    assert "no memory for a datagram: dropped" in out, out
    assert '"released": true' in out and "Traceback" not in out, out
    assert answer is not None and answer.code == coap.CONTENT and answer.mid == 77 and answer.payload == b"pong"
