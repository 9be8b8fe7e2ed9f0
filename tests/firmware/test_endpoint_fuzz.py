"""Hostile datagrams against the full node (endpoint -> resources -> node in `micropython`):
random bytes, bit-flipped / truncated / extended valid requests, random options and payloads.
The node must answer only with well-formed CoAP, never crash, keep reporting, and keep its
state unless a fuzzed request was a valid Write that it acknowledged."""

import asyncio
import os
import random
import socket
import sys
import time

import aiocoap

sys.path.insert(0, os.path.dirname(__file__))
from app_support import emulator_spec, free_udp_port, start_emulator, stop_emulator, write_toml  # noqa: E402
from lwm2m_peer import Peer  # noqa: E402

from protocol import cbor, coap  # noqa: E402

# (no /3/0/4: a fuzzed Execute there is a legitimate reboot, after which the node has a new port)
PATHS = ["/3311/0/5851", "/3311/0/5850", "/10250/0/2", "/10250/0/4", "/6/0/0", "/1/0/1", "/rd", "/",
         "/3311/0/5851/7", "/6/0/0", "/1/0/1", "/rd", "/", "/6/0/0", "/10250/0", "/3311/0"]


# acknowledged writes to these cannot change the lamp level
NEUTRAL = {"/6/0/0", "/1/0/1", "/rd", "/", "/3311/0/5851/7"}


def _valid(rnd, mid):
    m = coap.Message(rnd.choice([coap.CON, coap.NON]), rnd.choice([coap.GET, coap.PUT, coap.POST, coap.DELETE, 5]),
                     mid, os.urandom(rnd.randint(0, 8)))
    m.set_path(rnd.choice(PATHS))
    if rnd.random() < 0.5:
        m.add_option(coap.CONTENT_FORMAT, rnd.choice([0, 60, 112, 40, 50, 65535]))
    if rnd.random() < 0.2:
        m.add_option(coap.ACCEPT, rnd.choice([0, 60, 112, 41]))
    if rnd.random() < 0.1:
        m.add_option(coap.OBSERVE, rnd.choice([0, 1, 7]))
    if rnd.random() < 0.1:
        m.add_option(rnd.randint(1, 3000), os.urandom(rnd.randint(0, 20)))
    kind = rnd.random()
    if kind < 0.3:
        m.payload = cbor.dumps(rnd.choice([101, -5, 1e300, "x" * 40, [None, 0], [[9, 9, 9]], {1: 2}, b"\x00", True]))
    elif kind < 0.5:
        m.payload = os.urandom(rnd.randint(1, 1300))
    return bytearray(coap.encode(m))


def _mutate(rnd, data):
    op = rnd.random()
    if op < 0.3 and data:
        for _ in range(rnd.randint(1, 4)):
            i = rnd.randrange(len(data))
            data[i] ^= 1 << rnd.randrange(8)
    elif op < 0.5:
        data = data[: rnd.randint(0, len(data))]
    elif op < 0.6:
        data += os.urandom(rnd.randint(1, 30))
    elif op < 0.7:
        data = bytearray(os.urandom(rnd.randint(0, 60)))
    return bytes(data)


async def test_fuzzed_datagrams_never_crash_or_change_state(tmp_path):
    rnd = random.Random(int(os.environ.get("FUZZ_SEED", time.time())))
    port = free_udp_port()
    peer = await Peer.start(port)
    toml = write_toml(tmp_path / "node.toml", report_period=30, jitter=1, lifetime=3600, default_level=70)
    spec = emulator_spec(tmp_path / "flash", "lamp-f", port, config=toml, speed=30, ack_timeout=200)
    proc = start_emulator(spec, tmp_path / "node.log")
    try:
        await asyncio.wait_for(peer.registered.wait(), 15)
        host, nport = peer.node_addr.rsplit(":", 1)
        addr = (host, int(nport))
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.setblocking(False)
        acked_writes = 0
        answers = 0
        sent = {}  # mid / token -> path of what was really sent (after mutation), if it parsed
        level_writes = 0
        for burst in range(100):
            for k in range(30):
                d = _mutate(rnd, _valid(rnd, (burst * 30 + k) & 0xFFFF))
                try:
                    q = coap.decode(d)
                    path = q.path_str() if q.is_request() else None
                    sent[("mid", q.mid)] = sent[("tok", bytes(q.token))] = path
                except (coap.CoAPError, ValueError):
                    pass
                s.sendto(d, addr)
            await asyncio.sleep(0.02)
            while True:
                try:
                    data, _ = s.recvfrom(2048)
                except BlockingIOError:
                    break
                answers += 1
                m = coap.decode(data)  # every answer is well-formed CoAP
                if m.code == coap.CHANGED:
                    acked_writes += 1
                    key = ("mid", m.mid) if m.mtype == coap.ACK else ("tok", bytes(m.token))
                    if sent.get(key, "?") not in NEUTRAL:
                        level_writes += 1
        print(f"fuzz: {answers} answers, {acked_writes} acknowledged writes, {level_writes} that may move the lamp")
        assert answers > 500
        assert proc.p.poll() is None, (tmp_path / "node.log").read_text()[-2000:]
        n = len(peer.reports)
        await peer.wait_for(lambda: len(peer.reports) > n, 20)  # still reporting
        code, lvl = await peer.read("/3311/0/5851")
        assert code == aiocoap.CONTENT
        if level_writes == 0:  # nothing that may move the lamp was accepted: it did not move
            assert lvl == 70
        log = (tmp_path / "node.log").read_text()
        assert "Traceback" not in log, log[-2000:]
        assert stop_emulator(proc) == 0
    finally:
        proc.kill()
        await peer.stop()
