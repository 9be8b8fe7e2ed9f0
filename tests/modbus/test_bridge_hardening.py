"""The SCADA bridge against hostile or careless clients (issue 11): who may write, how fast,
and bind addresses that cannot work refused at start-up with a clear message. Writes go
through `mbpoll` (an independent master) and pymodbus's client."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import pytest
from pymodbus.client import AsyncModbusTcpClient
from test_bridge import bridge_env, fl, mbpoll  # noqa: F401  (bridge_env is a fixture)

from gateway.modbus.bridge import NODE_BASE, WriteLimiter
from gateway.modbus.config import ModbusConfigError, parse_server

SLGW = str(Path(sys.executable).parent / "slgw")


def free_port(kind: int = socket.SOCK_STREAM) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def _slot_reg(env, node):
    slots = await env.store.read(lambda c: dict(c.execute("SELECT id, modbus_slot FROM nodes")))
    return NODE_BASE + 10 * slots[node]


async def test_writes_only_from_the_allow_list(bridge_env):  # noqa: F811
    h = await bridge_env.start(writable=True, write_allow=["192.0.2.7", "10.0.0.0/8"])
    reg = await _slot_reg(bridge_env, "lamp-2")
    rc, _ = await mbpoll(h.bridge.port, "-t", "4", "-r", str(reg), values=["42"])
    assert rc != 0 and bridge_env.calls == []  # 127.0.0.1 is not on the list
    assert h.bridge_status()["refused_writes"] == 1
    rc, tot = await mbpoll(h.bridge.port, *fl(h.bridge.port, 4, 1))
    assert rc == 0 and tot[4] == 3  # reads stay open to every client
    client = AsyncModbusTcpClient("127.0.0.1", port=h.bridge.port)
    await client.connect()
    try:
        rr = await client.write_register(reg, 42, device_id=1)
        assert rr.isError() and rr.exception_code == 1
    finally:
        client.close()

    h2 = await bridge_env.start(writable=True, write_allow=["127.0.0.0/8"])
    rc, _ = await mbpoll(h2.bridge.port, "-t", "4", "-r", str(reg), values=["42"])
    assert rc == 0 and bridge_env.calls == [("lamp-2", "level", {"level": 42})]


async def test_writes_are_rate_limited(bridge_env):  # noqa: F811
    h = await bridge_env.start(writable=True, max_writes_per_s=1)  # bursts of 2
    reg = await _slot_reg(bridge_env, "lamp-2")
    client = AsyncModbusTcpClient("127.0.0.1", port=h.bridge.port)
    await client.connect()
    try:
        codes = []
        for level in range(10, 16):
            rr = await client.write_register(reg, level, device_id=1)
            codes.append(rr.exception_code if rr.isError() else 0)
    finally:
        client.close()
    assert codes[:2] == [0, 0] and set(codes[2:]) <= {0, 6} and codes.count(6) >= 3, codes
    assert len(bridge_env.calls) == codes.count(0) <= 3
    rc, _ = await mbpoll(h.bridge.port, "-t", "4", "-r", str(reg), values=["50"])
    assert rc != 0  # mbpoll sees "server busy" too


def test_write_limiter_refills():
    t = [0.0]
    lim = WriteLimiter(2.0, clock=lambda: t[0])
    assert [lim.take() for _ in range(5)] == [True, True, True, True, False]
    t[0] += 0.5
    assert lim.take() and not lim.take()
    assert not lim.take(3)


@pytest.mark.parametrize("raw, words", [
    ({"bind": "scada-gw"}, "must be an IP address"),
    ({"bind": "127.0.0.1:5020"}, "must be an IP address"),
    ({"bind": "0.0.0.0", "writable": True}, "write_allow"),
    ({"bind": "192.168.1.10", "writable": True, "write_allow": []}, "write_allow"),
    ({"write_allow": "10.0.0.1"}, "must be a list"),
    ({"write_allow": ["10.0.0.300"]}, "not an IP address"),
    ({"max_writes_per_s": 0}, "max_writes_per_s"),
    ({"max_connections": 0}, "max_connections"),
    ({"idle_timeout": "0s"}, "idle_timeout"),
])
def test_bad_server_settings_are_refused(raw, words):
    with pytest.raises(ModbusConfigError, match=words):
        parse_server({"enabled": True, **raw})
    parse_server({"enabled": True, "bind": "0.0.0.0", "writable": True, "write_allow": ["10.0.0.5"]})


async def test_an_address_this_host_does_not_have_is_refused(bridge_env):  # noqa: F811
    with pytest.raises(ModbusConfigError, match="cannot listen on 192.0.2.55"):
        await bridge_env.start(bind="192.0.2.55")  # TEST-NET-1: never a local address


def test_service_exits_5_with_the_reason(tmp_path):
    cfg = tmp_path / "gw.toml"
    cfg.write_text('[modbus_server]\nenabled = true\nbind = "192.0.2.55"\nport = 5020\n')
    r = subprocess.run([SLGW, "serve", "--config", str(cfg), "--store-path", str(tmp_path / "x.db"),
                        "--coap-port", str(free_port(socket.SOCK_DGRAM)), "--api-port", str(free_port())],
                       capture_output=True, text=True, timeout=60, cwd=tmp_path)
    out = r.stdout + r.stderr
    assert r.returncode == 5 and "cannot listen on 192.0.2.55:5020" in out, out


async def _closed_by_peer(sock: socket.socket, within: float = 10.0) -> bool:
    """True once the bridge has closed `sock` (recv gives b""), polling up to `within` s."""
    import asyncio
    import time
    sock.setblocking(False)
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        try:
            if sock.recv(64) == b"":
                return True
        except BlockingIOError:
            pass
        except ConnectionResetError:
            return True
        await asyncio.sleep(0.05)
    return False


async def test_silent_connections_are_capped_and_time_out(bridge_env):  # noqa: F811
    h = await bridge_env.start(max_connections=2, idle_timeout="1s")
    port = h.bridge.port
    silent = [socket.create_connection(("127.0.0.1", port)) for _ in range(2)]
    extra = socket.create_connection(("127.0.0.1", port))
    try:
        assert await _closed_by_peer(extra)  # over the cap: closed at once, the first two stay
        assert h.bridge_status()["refused_connections"] == 1
        for s in silent:  # no request for idle_timeout: closed, the slots free again
            assert await _closed_by_peer(s)
        assert h.bridge_status()["idle_closed"] == 2
        rc, tot = await mbpoll(port, *fl(port, 4, 1))
        assert rc == 0 and tot[4] == 3
    finally:
        for s in (*silent, extra):
            s.close()


async def test_a_polling_client_is_not_idle(bridge_env):  # noqa: F811
    import asyncio
    h = await bridge_env.start(max_connections=2, idle_timeout="1s")
    client = AsyncModbusTcpClient("127.0.0.1", port=h.bridge.port)
    await client.connect()
    try:
        for _ in range(12):  # 3 s of polling every 0.25 s, three idle timeouts long
            rr = await client.read_input_registers(4, count=2, device_id=1)
            assert not rr.isError()
            await asyncio.sleep(0.25)
    finally:
        client.close()
    assert h.bridge_status()["idle_closed"] == 0
