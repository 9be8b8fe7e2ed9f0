"""The SCADA bridge server, read by `mbpoll` (an independent Modbus master in C) and
written through it; values must match what the store holds."""

from __future__ import annotations

import asyncio
import re
import struct
import time
from types import SimpleNamespace

import pytest
from pymodbus.client import AsyncModbusTcpClient

from gateway.modbus.bridge import IMAGE_SIZE, MAX_SLOT, NODE_BASE, build_image
from gateway.modbus.decode import decode
from gateway.modbus.service import start_modbus
from gateway.store import Store
from protocol import lwm2m


async def mbpoll(port: int, *args: str, values: list[str] | None = None) -> tuple[int, dict[int, float]]:
    """Run mbpoll once against 127.0.0.1:port; returns (exit code, {reference: value})."""
    argv = ["mbpoll", "-m", "tcp", "-p", str(port), "-a", "1", "-1", "-0", "-o", "2", *args, "127.0.0.1"]
    if values:
        argv += ["--", *values]
    proc = await asyncio.create_subprocess_exec(*argv, stdout=asyncio.subprocess.PIPE,
                                                stderr=asyncio.subprocess.STDOUT)
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), 15)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    vals = {int(m[1]): float(m[2]) for m in re.finditer(r"^\[(\d+)\]:\s+(\S+)", out.decode(), re.M)}
    return proc.returncode, vals


def fl(port, ref, count):
    return ("-t", "3:float", "-B", "-r", str(ref), "-c", str(count))


@pytest.fixture
async def bridge_env(tmp_path):
    store = await Store.open(str(tmp_path / "slgw.db"))
    now = time.time()
    await store.ingest_reports("lamp-1", [{"seq": 1, "t": now - 5, "wh": 12345.0, "w": 42.5, "level": 75,
                                           "faults": lwm2m.FAULT_LAMP_FAILURE}])
    await store.ingest_reports("lamp-2", [{"seq": 7, "t": now - 60, "wh": 500.0, "w": 10.0, "level": 30,
                                           "faults": lwm2m.FAULT_METER_FAILURE}])
    await store.ingest_reports("lamp-3", [{"seq": 1, "t": now - 4000, "wh": 2000.0, "w": 60.0, "level": 100}])
    calls: list[tuple] = []

    async def submit(target, kind, payload):
        if target == "lamp-3":
            raise RuntimeError("node unknown to the queue")
        calls.append((target, kind, payload))
        return "batch-1"

    handles = []

    async def start(**server):
        cfg = SimpleNamespace(source=None, modbus_raw={},
                              modbus_server_raw={"enabled": True, "port": 0, "refresh": 0, **server})
        h = await start_modbus(cfg, store, submit)
        handles.append(h)
        return h

    try:
        yield SimpleNamespace(store=store, start=start, calls=calls, now=now)
    finally:
        for h in handles:
            await h.stop()
        await store.close()


async def test_mbpoll_reads_totals_and_node_blocks_matching_the_store(bridge_env):
    h = await bridge_env.start()
    port = h.bridge.port
    rows = await bridge_env.store.read(lambda c: {r[0]: r[1:] for r in c.execute(
        "SELECT id, modbus_slot, level, power_w, wh FROM nodes WHERE kind = 'node'")})
    rc, tot = await mbpoll(port, *fl(port, 0, 5))
    assert rc == 0
    # lamp-3 reported 4000 s ago with the default 300 s lifetime: offline, so not in the power
    assert tot == {0: pytest.approx(52.5), 2: pytest.approx(14.845), 4: 3, 6: 2, 8: 2}
    for node, (slot, level, power, wh) in rows.items():
        base = NODE_BASE + 10 * slot
        rc, blk = await mbpoll(port, *fl(port, base, 5))
        assert rc == 0
        assert blk[base] == pytest.approx(level) and blk[base + 2] == pytest.approx(power)
        assert blk[base + 4] == pytest.approx(wh / 1000, rel=1e-6)
        expected_status = {"lamp-1": 1 | 2, "lamp-2": 1 | 4, "lamp-3": 0}[node]
        assert blk[base + 6] == expected_status
        age = {"lamp-1": 5, "lamp-2": 60, "lamp-3": 4000}[node]
        assert age <= blk[base + 8] <= age + 30
    # an unused slot reads zeros, not an error
    rc, empty = await mbpoll(port, *fl(port, NODE_BASE + 10 * 50, 5))
    assert rc == 0 and set(empty.values()) == {0.0}


async def test_new_reports_appear_after_refresh(bridge_env):
    h = await bridge_env.start()
    port = h.bridge.port
    await bridge_env.store.ingest_reports("lamp-1", [{"seq": 2, "t": time.time(), "wh": 13000.0, "w": 20.0, "level": 40}])
    rc, blk = await mbpoll(port, *fl(port, NODE_BASE, 6))
    assert rc == 0 and blk[NODE_BASE] == 40 and blk[NODE_BASE + 4] == pytest.approx(13.0)


async def test_read_only_bridge_refuses_writes(bridge_env):
    h = await bridge_env.start()
    rc, _ = await mbpoll(h.bridge.port, "-t", "4", "-r", str(NODE_BASE), values=["42"])
    assert rc != 0 and bridge_env.calls == []
    assert h.bridge_status()["refused_writes"] == 1
    # reading still works after the refusal
    rc, tot = await mbpoll(h.bridge.port, *fl(h.bridge.port, 4, 1))
    assert rc == 0 and tot[4] == 3


async def test_writable_bridge_queues_level_commands(bridge_env):
    h = await bridge_env.start(writable=True)
    port = h.bridge.port
    slots = await bridge_env.store.read(lambda c: dict(c.execute("SELECT id, modbus_slot FROM nodes")))
    reg2 = NODE_BASE + 10 * slots["lamp-2"]
    rc, _ = await mbpoll(port, "-t", "4", "-r", str(reg2), values=["42"])       # function 06
    assert rc == 0 and bridge_env.calls == [("lamp-2", "level", {"level": 42})]
    # reading back (function 03) gives the level the node reports: still 30 until the node
    # has applied the queued command and reported again
    rc, back = await mbpoll(port, "-t", "4", "-r", str(reg2))
    assert rc == 0 and back[reg2] == 30
    # refusals, each with its exception code, none reaching the queue
    client = AsyncModbusTcpClient("127.0.0.1", port=port)
    await client.connect()
    try:
        rr = await client.write_registers(NODE_BASE + 10 * slots["lamp-1"], [10], device_id=1)  # function 16
        assert not rr.isError()
        for addr, value, code in ((reg2 + 2, 5, 2), (reg2, 101, 3), (NODE_BASE + 10 * 60, 5, 2),
                                  (NODE_BASE + 10 * slots["lamp-3"], 5, 4)):
            rr = await client.write_register(addr, value, device_id=1)
            assert rr.isError() and rr.exception_code == code, (addr, value, rr)
    finally:
        client.close()
    assert bridge_env.calls == [("lamp-2", "level", {"level": 42}), ("lamp-1", "level", {"level": 10})]


def test_image_edge_cases():
    now = 1_800_000_000.0
    rows = [("a", 0, None, None, None, 0, None, None, None),          # registered, never reported
            ("b", MAX_SLOT, 50.0, 20.0, 1000.0, 0, now - 10, None, 300),
            ("c", MAX_SLOT + 1, 50.0, 20.0, 1000.0, 0, now, None, 300)]  # beyond the address space
    img, slots = build_image(rows, now, lambda r: r[0] != "a")
    assert len(img) == IMAGE_SIZE <= 65536 and slots == {0: "a", MAX_SLOT: "b"}
    assert decode(img[NODE_BASE + 8:NODE_BASE + 10], "float32") == -1.0  # never reported
    assert decode(img[NODE_BASE + 6:NODE_BASE + 8], "float32") == 0.0    # offline, no fault
    last = NODE_BASE + 10 * MAX_SLOT
    assert struct.unpack(">f", struct.pack(">HH", *img[last + 8:last + 10]))[0] == 10.0
    assert decode(img[4:6], "float32") == 3 and decode(img[6:8], "float32") == 2
    assert decode(img[0:2], "float32") == 40.0                           # b and c online
