"""The emulated node (real firmware in `micropython`) against an aiocoap LwM2M peer.

Registration (query, link-format body, Location-Path, Update, Register again on 4.04), the
descriptor, reports decoded with cbor2 (labels per SPEC §3.1), time sync, Write then Read of
the level, Observe, and hostile input (malformed datagram, unknown resource, out-of-range
Write, oversize payload) that must neither crash the node nor change its state.
"""

import asyncio
import os
import socket
import sys
import time

import aiocoap
import cbor2
import pytest

sys.path.insert(0, os.path.dirname(__file__))
from app_support import (  # noqa: E402
    emulator_spec,
    free_udp_port,
    read_truth,
    start_emulator,
    stop_emulator,
    write_toml,
)
from lwm2m_peer import Peer  # noqa: E402

SPEED = 30.0


@pytest.fixture
async def setup(tmp_path):
    port = free_udp_port()
    peer = await Peer.start(port)
    t0 = time.time()
    peer.time_to_write = lambda: 1750000000 + (time.time() - t0) * SPEED
    toml = write_toml(tmp_path / "node.toml", lat=45.76, lon=4.84, tz="CET-1CEST,M3.5.0,M10.5.0/3",
                      group="rue-A", cabinet="C7", rated_w=60, default_level=100, report_period=30,
                      lifetime=60, jitter=1)
    spec = emulator_spec(tmp_path / "flash", "lamp-1", port, config=toml, truth=tmp_path / "truth.jsonl",
                         speed=SPEED, clock_start="2025-06-15T10:00:00Z", ack_timeout=300)
    # the peer's time must match the emulator's simulated clock
    start, anchor = spec["clock_start"], spec["clock_anchor"]
    peer.time_to_write = lambda: start + (time.time() - anchor) * SPEED
    proc = start_emulator(spec, tmp_path / "node.log")
    try:
        yield peer, proc, tmp_path
    finally:
        proc.kill()
        await peer.stop()


async def test_register_descriptor_reports_and_update(setup):
    peer, proc, tmp = setup
    await asyncio.wait_for(peer.registered.wait(), 15)
    reg = peer.registers[0]
    assert reg["query"] == {"ep": "lamp-1", "lt": "60", "lwm2m": "1.1", "b": "U"}
    assert reg["cf"] == 40
    # OMA-TS-LightweightM2M-Core 1.1 §6.2.1: the root link says which format to use (SenML-CBOR);
    # without it a standard server asks for TLV, which the node does not speak (issue 15 item 1)
    assert reg["body"].startswith('</>;rt="oma.lwm2m";ct=112,')
    links = [x.strip() for x in reg["body"].split(",")]
    for obj in ("</3/0>", "</6/0>", "</3305/0>", "</3311/0>", "</10250/0>"):
        assert obj in links
    # the descriptor (a pack without /10250/0/0) arrives first
    first = await peer.wait_for(lambda: peer.sends and peer.sends[0], 15)
    assert first["reports"] == [] and first["cf"] == 112 and first["query"] == {}  # SPEC §3: no ep query
    a = first["attrs"]
    assert a["/6/0/0"] == pytest.approx(45.76) and a["/6/0/1"] == pytest.approx(4.84)
    assert a["/10250/0/5"] == "rue-A" and a["/10250/0/6"] == "C7" and a["/10250/0/7"] == 60
    assert a["/10250/0/3"] == 100 and a["/3/0/15"] == "CET-1CEST,M3.5.0,M10.5.0/3" and "/3/0/3" in a
    # reports: exact SenML-CBOR layout of SPEC §3.1
    await peer.wait_for(lambda: len(peer.reports) >= 3, 30)
    # the first report after boot carries supplyLoss: six records; later ones without a fault
    # leave the fault record out (five records)
    send = next(s for s in peer.sends if s["reports"])
    recs = send["records"]
    assert send["reports"][0]["faults"] & 0x20
    assert [sorted(r) for r in recs[:6]] == [[-3, -2, 0, 2], [0, 2], [-2, 0, 2], [0, 2], [0, 2], [-2, 0, 2]]
    assert [r.get(-2) for r in recs[:6]] == ["/10250/0/", None, "/3311/0/", None, None, "/3305/0/"]
    assert [r[0] for r in recs[:6]] == ["0", "1", "5805", "5851", "5852", "5800"]
    quiet = next(s for s in peer.sends if s["reports"] and s["reports"][-1]["faults"] == 0)
    last = quiet["records"][-5:]
    assert [r[0] for r in last] == ["0", "5805", "5851", "5852", "5800"]
    assert [sorted(r) for r in last] == [[-3, -2, 0, 2], [-2, 0, 2], [0, 2], [0, 2], [-2, 0, 2]]
    seqs = sorted(peer.reports)
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs)))
    for s in seqs:
        r = peer.reports[s]
        assert isinstance(r["wh"], int) and 0 <= r["level"] <= 100 and isinstance(r["t"], int)
    # time was written after registering: reports carry absolute times near the simulated clock
    late = peer.reports[seqs[-1]]
    assert abs(late["t"] - peer.time_to_write()) < 3 * 30 + 5
    # Update at 2/3 of the 60 s lifetime (simulated): several by now, to the Location-Path
    await peer.wait_for(lambda: len(peer.updates) >= 2, 20)
    assert peer.updates[0][0] == reg["reg_id"]
    # a gateway that lost its registrations answers 4.04: the node registers again
    peer.forget_registrations()
    await peer.wait_for(lambda: len(peer.registers) >= 2, 20)
    assert peer.registers[1]["query"]["ep"] == "lamp-1"
    # ... and sends its descriptor again
    await peer.wait_for(lambda: sum(1 for s in peer.sends if not s["reports"]) >= 2, 15)
    assert stop_emulator(proc) == 0


async def test_write_read_observe_and_hostile_input(setup):
    peer, proc, tmp = setup
    await asyncio.wait_for(peer.registered.wait(), 15)
    await peer.wait_for(lambda: len(peer.sends) >= 1, 15)
    # time sync makes the time valid
    await peer.wait_for(lambda: asyncio.ensure_future(asyncio.sleep(0)) and True, 1)
    code, valid = await peer.read("/10250/0/8")
    assert code == aiocoap.CONTENT
    # observe the level
    obs_req = aiocoap.Message(code=aiocoap.GET, uri=f"coap://{peer.node_addr}/3311/0/5851", observe=0)
    obs = peer.client.request(obs_req)
    first = await asyncio.wait_for(obs.response, 10)
    assert first.code == aiocoap.CONTENT and first.opt.observe is not None
    notes = []

    async def collect():
        async for m in obs.observation:
            notes.append(cbor2.loads(m.payload))

    task = asyncio.ensure_future(collect())
    try:
        assert await peer.write("/3311/0/5851", 40) == aiocoap.CHANGED
        code, lvl = await peer.read("/3311/0/5851")
        await peer.wait_for(lambda: 40 in notes, 15)
        code, lvl = await peer.read("/3311/0/5851")
        assert code == aiocoap.CONTENT and lvl == 40
        code, ov = await peer.read("/10250/0/4")
        assert ov[0] == 40 and 0 < ov[1] <= 86400  # a manual level is a day's override (SPEC §5.3)
        # hostile input ------------------------------------------------------------------
        host, port = peer.node_addr.rsplit(":", 1)
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.settimeout(3)
        s.sendto(b"\x48\x01\xab\xcd\xff\xff", (host, int(port)))  # truncated token: RST
        data, _ = s.recvfrom(100)
        assert data[0] >> 4 == 0x7 and data[2:4] == b"\xab\xcd"  # v1 RST, same MID
        s.sendto(os.urandom(3), (host, int(port)))
        code, _ = await peer.read("/3311/0/9999")
        assert code == aiocoap.NOT_FOUND
        code, _ = await peer.read("/77/0/1")
        assert code == aiocoap.NOT_FOUND
        assert await peer.write("/3311/0/5851", 150) == aiocoap.BAD_REQUEST
        assert await peer.write("/3311/0/5851", "x") == aiocoap.BAD_REQUEST
        assert await peer.write("/3/0/13", 12) == aiocoap.BAD_REQUEST
        assert await peer.write("/3311/0/5805", 0) == aiocoap.METHOD_NOT_ALLOWED
        assert await peer.write("/10250/0/2", [[9, 0, 0]]) == aiocoap.BAD_REQUEST
        big = os.urandom(1100)
        r = await peer.request(aiocoap.PUT, "/10250/0/2", big, cf=60)
        assert r.code == aiocoap.REQUEST_ENTITY_TOO_LARGE
        r = await peer.request(aiocoap.PUT, "/3311/0/5851", b"\x18\x32", cf=50)
        assert r.code == aiocoap.UNSUPPORTED_CONTENT_FORMAT
        code, lvl = await peer.read("/3311/0/5851")
        assert lvl == 40  # nothing changed the level
        code, sched = await peer.read("/10250/0/2")
        assert sched == []
        # the node keeps reporting
        n = len(peer.reports)
        await peer.wait_for(lambda: len(peer.reports) > n, 15)
        assert proc.p.poll() is None
        # Execute: identify blinks (2.04), Execute on a value is 4.05
        assert (await peer.request(aiocoap.POST, "/10250/0/9")).code == aiocoap.CHANGED
        assert (await peer.request(aiocoap.POST, "/3311/0/5851")).code == aiocoap.METHOD_NOT_ALLOWED
        # cancel the override: back to the schedule / default level
        assert await peer.write("/10250/0/4", [None, 0]) == aiocoap.CHANGED
        await peer.wait_for(lambda: notes and notes[-1] == 100, 15)
    finally:
        task.cancel()
    assert stop_emulator(proc) == 0
    truth = read_truth(tmp / "truth.jsonl")
    assert truth and truth[-1]["event"] == "stop" and truth[-1]["level"] == 100


async def test_503_waits_max_age_and_400_does_not_block_the_queue(setup):
    """5.03 (gateway cannot store): nothing is acknowledged, the node keeps the reports and
    retries after Max-Age. 4.00 on a pack: the node resends one report per pack and drops
    only the report the gateway refuses, so one bad report never blocks the queue."""
    peer, proc, tmp = setup
    await asyncio.wait_for(peer.registered.wait(), 15)
    await peer.wait_for(lambda: len(peer.reports) >= 1, 20)
    peer.dp_code = aiocoap.SERVICE_UNAVAILABLE
    peer.max_age = 60  # simulated seconds: 2 real seconds at 30x
    n_ok = len(peer.reports)
    await peer.wait_for(lambda: len(peer.refused) >= 3, 20)
    gaps = [b["at"] - a["at"] for a, b in zip(peer.refused, peer.refused[1:], strict=False)]
    assert min(gaps) >= 60 / SPEED * 0.9, gaps  # no retry before Max-Age
    assert len(peer.reports) == n_ok
    held = max(r["seq"] for e in peer.refused for r in e["reports"])
    peer.refused.clear()
    bad = held  # the gateway will refuse this one report with 4.00
    peer.bad_seq = bad
    peer.dp_code = None
    await peer.wait_for(lambda: any(s > bad for s in peer.reports), 20)
    assert bad not in peer.reports
    seqs = sorted(peer.reports)
    assert set(range(seqs[0], seqs[-1] + 1)) - set(seqs) == {bad}  # everything else arrived
    assert any(len(e["reports"]) == 1 for e in peer.refused)  # it was isolated, then dropped
    assert "dropped" in (tmp / "node.log").read_text()
    assert stop_emulator(proc) == 0


async def test_vanished_observer_is_dropped_without_stalling_the_node(setup):
    peer, proc, tmp = setup
    await asyncio.wait_for(peer.registered.wait(), 15)
    await peer.wait_for(lambda: len(peer.reports) >= 1, 20)
    # an observer on a raw socket that acknowledges nothing
    host, port = peer.node_addr.rsplit(":", 1)
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.settimeout(5)
    from protocol import coap

    m = coap.Message(coap.CON, coap.GET, 0x3000, b"ob")
    m.set_path("/3311/0/5851")
    m.add_option(coap.OBSERVE, 0)
    s.sendto(coap.encode(m), (host, int(port)))
    assert coap.decode(s.recvfrom(2048)[0]).observe() is not None
    for i in range(12):  # level changes: the tenth notification is CON and never acknowledged
        assert await peer.write("/3311/0/5851", 20 + i * 5) == aiocoap.CHANGED
        await asyncio.sleep(0.15)
    n = len(peer.reports)
    t0 = time.time()
    await peer.wait_for(lambda: "did not acknowledge" in (tmp / "node.log").read_text(), 20)
    # reports kept flowing while the CON notification was being retransmitted (1 per real s)
    assert len(peer.reports) - n >= int(time.time() - t0) - 2
    s.close()
    assert stop_emulator(proc) == 0
