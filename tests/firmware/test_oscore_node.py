"""The real firmware in `micropython` with OSCORE keys against an aiocoap peer with OSCORE
credentials (aiocoap's OscoreSiteWrapper and FilesystemSecurityContext, what the gateway uses).

Both directions: the node Registers and Sends protected (and answers the gateway's 4.01 Echo of
RFC 8613 B.1.2 when the peer lost its replay window); aiocoap's client Writes and Reads the node
(and answers the node's own 4.01 Echo after its boot). Unprotected, wrong-kid and replayed
requests get 4.01 and change nothing. SIGKILL power cuts never make the node reuse a sequence
number, and it writes its flash once per boot, not once per message.
"""

import asyncio
import json
import os
import socket
import sys
import time

import aiocoap
import cbor2
import pytest
from aiocoap import oscore as ao
from aiocoap.credentials import CredentialsMap
from aiocoap.oscore_sitewrapper import OscoreSiteWrapper

sys.path.insert(0, os.path.dirname(__file__))
from app_support import emulator_spec, free_udp_port, start_emulator, write_toml  # noqa: E402
from lwm2m_peer import Peer  # noqa: E402

from firmware import durable  # noqa: E402
from protocol import coap, oscore  # noqa: E402

SPEED = 30.0


class RecordingSite(OscoreSiteWrapper):
    """The OSCORE site wrapper, noting the Partial IV of every protected request it gets."""

    def __init__(self, inner, creds):
        super().__init__(inner, creds)
        self.pivs = []
        self.kids = []

    async def render_to_pipe(self, pipe):
        ov = pipe.request.opt.oscore
        if ov:
            piv, kid, _ = oscore.decode_option(ov)
            if piv is not None:
                self.pivs.append(int.from_bytes(piv, "big"))
            self.kids.append(kid)
        await super().render_to_pipe(pipe)


def write_keys(flash, gwdir, sid, ms, salt, lost_window=False):
    os.makedirs(gwdir, exist_ok=True)
    with open(os.path.join(flash, "oscore.json"), "w") as f:
        json.dump({"ms": ms.hex(), "salt": salt.hex(), "sid": sid.hex(), "rid": "00"}, f)
    with open(os.path.join(gwdir, "settings.json"), "w") as f:
        json.dump({"secret_hex": ms.hex(), "salt_hex": salt.hex(), "sender-id_hex": "00",
                   "recipient-id_hex": sid.hex(), "algorithm": "AES-CCM-16-64-128", "kdf-hashfun": "sha256"}, f)
    if lost_window:  # what aiocoap leaves after a restart: the replay window is "unknown"
        with open(os.path.join(gwdir, "sequence.json"), "w") as f:
            json.dump({"next-to-send": 1000, "received": "unknown"}, f)


class Secured:
    def __init__(self, tmp_path, lost_window=False, toml_kw=None, **spec_kw):
        self.tmp = tmp_path
        self.port = free_udp_port()
        self.node_port = free_udp_port()
        self.sid = os.urandom(4)
        self.ms = os.urandom(16)
        self.salt = os.urandom(8)
        toml = write_toml(tmp_path / "node.toml", **(toml_kw or dict(report_period=30, lifetime=120, jitter=1,
                                                                      default_level=100)))
        kw = dict(speed=SPEED, clock_start="2025-06-15T10:00:00Z", ack_timeout=300)
        kw.update(spec_kw)
        self.spec = emulator_spec(tmp_path / "flash", "lamp-1", self.port, config=toml, port=self.node_port, **kw)
        self.gwdir = str(tmp_path / "gwkeys")
        write_keys(str(tmp_path / "flash"), self.gwdir, self.sid, self.ms, self.salt, lost_window)
        self.procs = []

    async def start_peer(self):
        self.ctx = ao.FilesystemSecurityContext(self.gwdir)
        creds = CredentialsMap()
        creds[":node"] = self.ctx
        creds[f"coap://127.0.0.1:{self.node_port}/*"] = self.ctx
        self.peer = Peer()
        self.peer.port = self.port
        self.site = RecordingSite(self.peer.site, creds)
        self.peer.server = await aiocoap.Context.create_server_context(self.site, bind=("127.0.0.1", self.port))
        self.peer.server.client_credentials = creds
        self.peer.client = self.peer.server  # the gateway's requests go out protected, from its port
        self.plain = await aiocoap.Context.create_client_context()  # an attacker with no keys

    def start_node(self, heap=None, mpy_dir=None):
        proc = start_emulator(self.spec, self.tmp / "node.log", heap=heap, mpy_dir=mpy_dir)
        self.procs.append(proc)
        return proc

    def log(self):
        return (self.tmp / "node.log").read_text()

    async def stop(self):
        for p in self.procs:
            p.kill()
        await self.peer.server.shutdown()
        await self.plain.shutdown()
        self.ctx._destroy()


@pytest.fixture
async def secured(tmp_path):
    s = Secured(tmp_path, lost_window=True)
    await s.start_peer()
    try:
        yield s
    finally:
        await s.stop()


async def plain_put(s, path, payload, timeout=10):
    m = aiocoap.Message(code=aiocoap.PUT, uri=f"coap://127.0.0.1:{s.node_port}{path}", payload=payload,
                        content_format=60)
    return await asyncio.wait_for(s.plain.request(m).response, timeout)


async def test_node_and_aiocoap_talk_oscore_both_ways(secured):
    s = secured
    s.start_node()
    peer = s.peer
    # the peer lost its replay window: the node's Register got 4.01 + Echo and was resent with it
    await asyncio.wait_for(peer.registered.wait(), 20)
    assert peer.registers[0]["query"]["ep"] == "lamp-1"
    assert s.ctx.recipient_replay_window.is_initialized()
    await peer.wait_for(lambda: len(peer.reports) >= 2, 30)  # Sends: descriptor and reports
    assert peer.sends[0]["reports"] == [] and peer.sends[0]["attrs"]
    # aiocoap's client Observes, Writes and Reads the node (its first request meets the node's Echo)
    obs = peer.client.request(aiocoap.Message(code=aiocoap.GET, uri=f"coap://127.0.0.1:{s.node_port}/3311/0/5851",
                                              observe=0))
    first = await asyncio.wait_for(obs.response, 10)
    assert first.code == aiocoap.CONTENT and first.opt.observe is not None
    notes = []

    async def collect():
        async for m in obs.observation:
            notes.append(cbor2.loads(m.payload))

    task = asyncio.ensure_future(collect())
    assert await peer.write("/3311/0/5851", 35) == aiocoap.CHANGED
    code, ov = await peer.read("/10250/0/4")
    assert code == aiocoap.CONTENT and ov[0] == 35
    await peer.wait_for(lambda: 35 in notes, 15)  # protected notifications, verified by aiocoap
    task.cancel()
    log = s.log()
    assert "SECURITY" not in log and s.ms.hex() not in log
    # an unprotected Write from a socket without keys: 4.01 and the level is unchanged
    r = await plain_put(s, "/3311/0/5851", cbor2.dumps(0))
    assert r.code == aiocoap.UNAUTHORIZED and not r.opt.oscore
    r = await plain_put(s, "/10250/0/4", cbor2.dumps([0, 604800]))
    assert r.code == aiocoap.UNAUTHORIZED
    assert (await peer.read("/10250/0/4"))[1][0] == 35
    assert s.site.pivs == sorted(set(s.site.pivs))  # every request a new sequence number


def _raw_exchange(sock, node, data, timeout=5):
    sock.settimeout(timeout)
    sock.sendto(data, node)
    while True:
        reply, _ = sock.recvfrom(2048)
        m = coap.decode(reply)
        if m.mid == coap.decode(data).mid:
            return m


async def test_wrong_kid_and_replayed_requests_get_4_01_and_change_nothing(tmp_path):
    """A forger with the right kid but another key, a forger with another kid, and a replay of a
    genuine Write (sent again with a new Message ID, which OSCORE does not protect)."""
    s = Secured(tmp_path)
    await s.start_peer()
    try:
        s.start_node()
        await asyncio.wait_for(s.peer.registered.wait(), 20)
        node = ("127.0.0.1", s.node_port)
        gw = oscore.Context(s.ms, s.salt, b"\x00", s.sid, seq=50000)  # the gateway's keys, own seq range
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind(("127.0.0.1", 0))

        def put(ctx, level, mid, echo=None):
            m = coap.Message(coap.CON, coap.PUT, mid, bytes((mid & 0xFF,)))
            m.set_path("/3311/0/5851")
            m.add_option(coap.CONTENT_FORMAT, 60)
            if echo is not None:
                m.add_option(oscore.ECHO, echo)
            m.payload = cbor2.dumps(level)
            return ctx.protect_request(m)

        loop = asyncio.get_running_loop()

        async def exchange(data):
            return await loop.run_in_executor(None, _raw_exchange, sock, node, data)

        try:
            out, rid = put(gw, 20, 1)
            r = await exchange(coap.encode(out))
            echo = gw.unprotect_response(r, rid)  # the node's window is new since its boot
            assert echo.code == coap.UNAUTHORIZED and echo.get_option(oscore.ECHO)
            out, rid = put(gw, 20, 2, echo.get_option(oscore.ECHO))
            genuine = coap.encode(out)
            r = await exchange(genuine)
            assert gw.unprotect_response(r, rid).code == coap.CHANGED
            # replayed with a fresh Message ID (dedup would only resend the cached answer)
            replay = bytearray(genuine)
            replay[2:4] = b"\x00\x03"
            wrong_key = oscore.Context(os.urandom(16), s.salt, b"\x00", s.sid, seq=60000)
            other_kid = oscore.Context(s.ms, s.salt, b"\x07", s.sid, seq=60000)
            codes = []
            for data in (bytes(replay), coap.encode(put(wrong_key, 0, 4)[0]), coap.encode(put(other_kid, 0, 5)[0])):
                r = await exchange(data)
                assert r.get_option(coap.OSCORE) is None  # an unprotected error answer
                codes.append(r.code)
            assert codes == [coap.UNAUTHORIZED, coap.BAD_REQUEST, coap.UNAUTHORIZED]
            m = coap.Message(coap.CON, coap.GET, 6, b"\x06")
            m.set_path("/10250/0/4")
            out, rid = gw.protect_request(m)
            r = gw.unprotect_response(await exchange(coap.encode(out)), rid)
            assert r.code == coap.CONTENT and cbor2.loads(r.payload)[0] == 20  # the genuine Write only
        finally:
            sock.close()
    finally:
        await s.stop()


async def test_sequence_numbers_never_repeat_across_power_cuts(tmp_path):
    """SIGKILL the node three times mid-run: every Partial IV the peer sees is new, each boot
    starts past the bound persisted before the cut, and flash is written once per boot."""
    s = Secured(tmp_path)
    await s.start_peer()
    try:
        boots = []
        for _cut in range(3):
            before = len(s.site.pivs)
            proc = s.start_node()
            await s.peer.wait_for(lambda b=before: len(s.site.pivs) >= b + 4, 30)
            boots.append(s.site.pivs[before:])
            proc.kill()  # SIGKILL: a power cut
            proc.p.wait(timeout=10)
            await asyncio.sleep(0.2)
        allp = [p for b in boots for p in b]
        assert len(allp) == len(set(allp)), allp
        for i in range(1, len(boots)):
            assert min(boots[i]) > max(boots[i - 1])
            assert min(boots[i]) >= 256 * i  # skipped ahead to the persisted bound
        rec = durable.Record(str(tmp_path / "flash" / f"oscore-{s.sid.hex()}.seq"))
        data = rec.load()
        bound = int.from_bytes(data[:8], "little")
        assert bound > max(allp)
        assert rec.gen == 3  # one write per boot (each boot sent fewer than 256 messages)
    finally:
        await s.stop()


async def test_node_without_keys_runs_unprotected_and_says_so(tmp_path):
    port = free_udp_port()
    peer = await Peer.start(port)
    try:
        toml = write_toml(tmp_path / "node.toml", report_period=30, lifetime=120, jitter=1)
        spec = emulator_spec(tmp_path / "flash", "lamp-2", port, config=toml, speed=SPEED, ack_timeout=300)
        proc = start_emulator(spec, tmp_path / "node.log")
        try:
            await asyncio.wait_for(peer.registered.wait(), 20)
        finally:
            proc.kill()
        assert "SECURITY WARNING: no oscore.json" in (tmp_path / "node.log").read_text()
    finally:
        await peer.stop()


async def test_invalid_key_file_refuses_everything(tmp_path):
    s = Secured(tmp_path)
    (tmp_path / "flash" / "oscore.json").write_text('{"ms": "00", "salt": "zz"}')
    await s.start_peer()
    try:
        s.start_node()
        t_end = time.monotonic() + 3
        while time.monotonic() < t_end and "oscore.json is invalid" not in s.log():
            await asyncio.sleep(0.1)
        assert "oscore.json is invalid (ms must be 16 hex bytes)" in s.log()
        r = await plain_put(s, "/3311/0/5851", cbor2.dumps(0))
        assert r.code == aiocoap.UNAUTHORIZED
        assert not s.peer.registers
    finally:
        await s.stop()


async def test_key_rotation_through_10250_0_30(tmp_path):
    """The gateway writes new keys inside the current context (SPEC §10.5); the 2.04 comes under
    the old context, every later message under the new one (new kid), also after a power cut;
    the old context no longer opens the node; keys are never logged and cannot be read back."""
    s = Secured(tmp_path)
    await s.start_peer()
    try:
        proc = s.start_node()
        await asyncio.wait_for(s.peer.registered.wait(), 20)
        ms2, salt2, sid2 = os.urandom(16), os.urandom(8), os.urandom(4)
        assert await s.peer.write("/10250/0/30", [ms2, salt2, sid2]) == aiocoap.CHANGED
        # the gateway's side of the rotation: a context for the new keys beside the old one
        gw2 = str(tmp_path / "gwkeys2")
        os.makedirs(gw2)
        with open(os.path.join(gw2, "settings.json"), "w") as f:
            json.dump({"secret_hex": ms2.hex(), "salt_hex": salt2.hex(), "sender-id_hex": "00",
                       "recipient-id_hex": sid2.hex(), "algorithm": "AES-CCM-16-64-128", "kdf-hashfun": "sha256"}, f)
        ctx2 = ao.FilesystemSecurityContext(gw2)
        try:
            creds = s.site.server_credentials
            creds[":node2"] = ctx2
            n = len(s.site.kids)
            await s.peer.wait_for(lambda: sid2 in s.site.kids[n:], 20)  # the node's next request: new kid
            assert s.ctx.sender_id == b"\x00" and s.sid not in s.site.kids[s.site.kids.index(sid2):]
            s.peer.server.client_credentials[f"coap://127.0.0.1:{s.node_port}/*"] = ctx2
            assert await s.peer.write("/3311/0/5851", 25) == aiocoap.CHANGED  # through the new context
            code, _ = await s.peer.read("/10250/0/30")
            assert code == aiocoap.METHOD_NOT_ALLOWED  # write-only: keys are never read back
            # the old context is refused now (same gateway kid: an old number is a replay, 4.01, a
            # new one fails to decrypt, 4.00)
            s.peer.server.client_credentials[f"coap://127.0.0.1:{s.node_port}/*"] = s.ctx
            with pytest.raises(ao.NotAProtectedMessage) as e:
                await s.peer.write("/3311/0/5851", 0)
            assert e.value.plain_message.code in (aiocoap.BAD_REQUEST, aiocoap.UNAUTHORIZED)
            s.peer.server.client_credentials[f"coap://127.0.0.1:{s.node_port}/*"] = ctx2
            # after a power cut the node boots with the rotated keys (durable record)
            proc.kill()
            proc.p.wait(timeout=10)
            n = len(s.site.kids)
            s.start_node()
            await s.peer.wait_for(lambda: len(s.site.kids) > n + 1, 20)
            assert set(s.site.kids[n:]) == {sid2}
            code, _ = await s.peer.read("/10250/0/30")  # answered under the new context after the boot
            assert code == aiocoap.METHOD_NOT_ALLOWED
            log = s.log()
            assert ms2.hex() not in log and salt2.hex() not in log and "new keys" in log
        finally:
            ctx2._destroy()
    finally:
        await s.stop()


def test_emulate_oscore_keys_makes_keys_once_and_writes_the_gateway_files(tmp_path):
    import argparse

    from tools.slnode import emulate

    p = argparse.ArgumentParser()
    emulate.add_arguments(p)
    argv = ["--id", "lamp", "--count", "2", "--gateway", "coap://127.0.0.1:5683", "--flash", str(tmp_path / "f"),
            "--oscore-keys", str(tmp_path / "keys")]
    emulate.prepare(p.parse_args(argv))
    files = {}
    for nid in ("lamp-000", "lamp-001"):
        node = json.loads((tmp_path / "f" / nid / "oscore.json").read_text())
        kf = tmp_path / "keys" / f"{nid}.oscore.json"
        assert kf.stat().st_mode & 0o777 == 0o600
        gw = json.loads(kf.read_text())
        assert (gw["ep"], gw["master_secret_hex"], gw["node_sender_id_hex"]) == (nid, node["ms"], node["sid"])
        files[nid] = gw
    assert files["lamp-000"]["node_sender_id_hex"] != files["lamp-001"]["node_sender_id_hex"]
    emulate.prepare(p.parse_args(argv))  # a restart keeps the keys on the node's flash
    for nid in files:
        assert json.loads((tmp_path / "keys" / f"{nid}.oscore.json").read_text()) == files[nid]


async def test_gateway_without_the_nodes_key_is_named_in_the_log(tmp_path):
    """The gateway answers unprotected 4.01 (it has no context for our kid): no registration,
    and the node's log says what to do (import its key file)."""
    s = Secured(tmp_path)
    await s.start_peer()
    try:
        s.site.server_credentials.clear()  # the gateway holds no context for this node
        s.start_node()
        t_end = time.monotonic() + 40  # the refusal is ignored like a forgery until the CON exchange gives up
        while time.monotonic() < t_end and "refused our key" not in s.log():
            await asyncio.sleep(0.1)
        assert "register: the gateway refused our key (unprotected 4.01): is this node's <id>.oscore.json " \
               "imported there (slgw keys import)?" in s.log()
        assert not s.peer.registers
    finally:
        await s.stop()


async def test_keyed_node_runs_a_day_in_64k_heap_above_its_code(tmp_path):
    """test_node_memory's day with OSCORE: the mpy build with secure.py, oscore.py and aes_ccm.py
    imported, heap = that code + 64 KB; a simulated day of protected reports, Reads and Writes
    (aiocoap's OSCORE peer), no MemoryError, no sequence number twice. (Before the entry points
    collected every 4 KB during their imports, this failed at boot up to code + 88 KB: no free
    1,280-byte block for the outbox in a fragmented heap; docs/performance.md.)"""
    import re
    import subprocess

    from app_support import MICROPYTHON, mp_env, stop_emulator

    from tools.slnode import emulate

    speed = 7200.0
    s = Secured(tmp_path, toml_kw=dict(report_period=900, lifetime=86400, jitter=5, rated_w=60, lat=48.85,
                                       lon=2.35, tz="CET-1CEST,M3.5.0,M10.5.0/3"),
                speed=speed, clock_start="2025-03-01T12:00:00Z", time_valid=True, ack_timeout=50)
    await s.start_peer()
    try:
        mpy = emulate.compile_mpy(str(tmp_path / "mpy"))
        probe = ("import gc\nimport firmware.emulator, firmware.node, firmware.parts, firmware.schedule\n"
                 "import firmware.outbox, firmware.hal.emulated, firmware.sun, firmware.tzrule, firmware.secure\n"
                 "gc.collect()\nprint(gc.mem_alloc())\n")
        r = subprocess.run([MICROPYTHON, "-X", "heapsize=512k", "-c", probe],
                           env={**mp_env(), "MICROPYPATH": mpy + ":.frozen"}, capture_output=True, text=True, timeout=30)
        heap_k = int(r.stdout.strip()) // 1024 + int(os.environ.get("KEYED_MARGIN_K", "64"))
        proc = s.start_node(heap=f"{heap_k}k", mpy_dir=mpy)
        await asyncio.wait_for(s.peer.registered.wait(), 15)
        for _ in range(5):
            assert await s.peer.write("/3311/0/5851", 40) == aiocoap.CHANGED
            code, _ = await s.peer.read("/3311/0", accept=112)
            assert code == aiocoap.CONTENT
            await asyncio.sleep(1)
        await asyncio.sleep(max(0, 24 * 3600 / speed - 5))
        await s.peer.wait_for(lambda: len(s.peer.reports) >= 92, 20)
        assert proc.p.poll() is None
        assert stop_emulator(proc) == 0
        log = s.log()
        assert "MemoryError" not in log and "Traceback" not in log, log[-2000:]
        m = re.search(r"heap peak (\d+) bytes, after collect (\d+) in use, (\d+) free", log)
        assert m, log[-500:]
        print(f"keyed node, heap {heap_k}k (code {heap_k - int(os.environ.get('KEYED_MARGIN_K', '64'))}k + margin):"
              f" peak {m.group(1)} B, {m.group(2)} B live after collect")
        assert len(set(s.site.pivs)) == len(s.site.pivs) > 92
    finally:
        await s.stop()


class ForgingRelay(asyncio.DatagramProtocol):
    """Between the node and its gateway: passes every datagram on, and answers each request of
    the node FIRST with a forged unprotected response carrying its Message ID and token (what
    anyone who sees the request can do)."""

    def __init__(self, gateway_port):
        self.gw = ("127.0.0.1", gateway_port)
        self.node = None
        self.forged = 0

    def connection_made(self, transport):
        self.t = transport

    def datagram_received(self, data, addr):
        if addr[1] == self.gw[1]:
            if self.node:
                self.t.sendto(data, self.node)
            return
        self.node = addr
        try:
            m = coap.decode(data)
        except coap.CoAPError:
            m = None
        if m is not None and m.is_request():
            for code in (coap.NOT_FOUND, coap.UNAUTHORIZED):
                self.t.sendto(coap.encode(coap.Message(coap.ACK, code, m.mid, m.token)), addr)
                self.forged += 1
        self.t.sendto(data, self.gw)


async def test_forged_responses_to_the_nodes_requests_are_ignored(tmp_path):
    """Every Register, Update and Send of the node is answered first by a forger (unprotected
    4.04 and 4.01 with the right Message ID and token): the node ignores them, takes the
    gateway's protected answer, registers and gets its reports stored."""
    s = Secured(tmp_path)
    await s.start_peer()
    loop = asyncio.get_running_loop()
    relay_port = free_udp_port()
    transport, relay = await loop.create_datagram_endpoint(lambda: ForgingRelay(s.port),
                                                           local_addr=("127.0.0.1", relay_port))
    try:
        s.spec["gateway"] = f"coap://127.0.0.1:{relay_port}"
        s.start_node()
        await asyncio.wait_for(s.peer.registered.wait(), 20)
        await s.peer.wait_for(lambda: len(s.peer.reports) >= 2, 30)
        assert relay.forged >= 6  # Register, descriptor, reports: each met two forgeries first
    finally:
        transport.close()
        await s.stop()


async def test_every_unprotected_request_of_issue_11_gets_4_01_and_changes_nothing(secured):
    """Issue 11's first paragraph, the rest of it: besides the level and the override, an
    unprotected socket rewrote the schedule and the node's config (default level, group,
    cabinet), set its clock to 2020, rebooted it, and (new since OSCORE) could try to plant its
    own keys through /10250/0/30. Each is now 4.01 before any resource sees it: config.json and
    the key files are byte for byte unchanged, the node did not reboot (no second Register) and
    the gateway's protected requests still work (its keys were not replaced)."""
    s = secured
    s.start_node()
    peer = s.peer
    await asyncio.wait_for(peer.registered.wait(), 20)
    await peer.wait_for(lambda: len(peer.reports) >= 1, 30)
    flash = s.tmp / "flash"
    kept = {p.name: p.read_bytes() for p in flash.iterdir()
            if p.name == "config.json" or p.name.startswith("oscore")}
    assert "config.json" in kept and "oscore.json" in kept
    n_reg = len(peer.registers)
    attacks = [
        (aiocoap.PUT, "/10250/0/2", cbor2.dumps([[0, 0]]), 60),  # a schedule: off all day
        (aiocoap.PUT, "/10250/0/3", b"0", 0),  # default (fail-safe) level 0
        (aiocoap.PUT, "/10250/0/5", b"evil", 0),  # group label
        (aiocoap.PUT, "/10250/0/6", b"evil", 0),  # cabinet label
        (aiocoap.PUT, "/10250/0/5?pmin=5&pmax=60", b"", None),  # Write-Attributes
        (aiocoap.PUT, "/3/0/13", b"1577836800", 0),  # the clock to 2020
        (aiocoap.POST, "/3/0/4", b"", None),  # reboot
        (aiocoap.POST, "/10250/0/9", b"", None),  # identify (blink)
        (aiocoap.PUT, "/10250/0/30", cbor2.dumps([os.urandom(16), os.urandom(8), os.urandom(4)]), 60),
        (aiocoap.GET, "/10250/0/5", b"", None),  # a Read leaks nothing either
    ]
    for code, path, payload, cf in attacks:
        m = aiocoap.Message(code=code, uri=f"coap://127.0.0.1:{s.node_port}{path}", payload=payload)
        if cf is not None:
            m.opt.content_format = cf
        r = await asyncio.wait_for(s.plain.request(m).response, 10)
        assert r.code == aiocoap.UNAUTHORIZED and not r.opt.oscore, (path, r)
        assert b"evil" not in r.payload, (path, r.payload)
    # the gateway (the only holder of the node's keys) still talks to it: nothing was replaced
    assert await peer.write("/3311/0/5851", 35) == aiocoap.CHANGED
    code, ov = await peer.read("/10250/0/4")
    assert code == aiocoap.CONTENT and ov[0] == 35
    code, group = await peer.read("/10250/0/5")
    assert code == aiocoap.CONTENT and group not in ("evil", b"evil"), group
    assert len(peer.registers) == n_reg, "the node rebooted (it registered again)"
    for name, data in kept.items():
        if name.endswith(".seq"):
            continue  # the sequence-number bound moves with the node's own messages
        assert (flash / name).read_bytes() == data, name
