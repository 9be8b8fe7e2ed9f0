"""The HTTP API against hostile clients (issue 11): half-open connections, slow headers, tokens.
The real `slgw serve` and the real `slgw` CLI, as subprocesses."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import time
import urllib.error

import pytest
from slgw_harness import SLGW, SlgwProcess

from gateway.api.app import check_bind
from gateway.config import ConfigError, load_config

OPERATOR = "op-" + "k3Jx9QmZ2vLr8TyWbN5cHd"  # 25 characters, enough on loopback
READER = "ro-" + "Qa7Wm2Zk9Lx4Vb8Nc6Rt1Y"
LONG = "Zk9Qa7Wm2Lx4Vb8Nc6Rt1YpE3sG5hJ0uF"  # 33 varied characters: fine off loopback


def _cli(url: str, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    base = {k: v for k, v in os.environ.items() if k not in ("SLGW_TOKEN", "SLGW_TOKEN_FILE")}
    return subprocess.run([SLGW, "--url", url, *args], capture_output=True, text=True, timeout=60,
                          env=dict(base, **(env or {})))


def test_half_open_connections_do_not_lock_out_health_nor_flood_the_log(tmp_path):
    # the descriptor limit systemd gives a service without LimitNOFILE (soft 1024), made hard
    # so the gateway cannot raise it: the connection cap alone must keep the API reachable
    g = SlgwProcess(tmp_path, "--api-header-timeout-s", "30",
                    prefix=["prlimit", "--nofile=1024:1024", SLGW])
    socks: list[socket.socket] = []
    try:
        g.start()
        for i in range(1100):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.settimeout(5)
            socks.append(s)
            try:
                s.connect(("127.0.0.1", g.api_port))
                if i % 2:  # half of them start a request and never finish its headers
                    s.send(b"GET /api/nodes HTTP/1.1\r\nHost: x\r\n")
            except OSError:
                pass  # the listen backlog is full: the server is not accepting any more
        t_end = time.monotonic() + 10
        while True:  # the gateway gets to our request even while it sheds the others
            try:
                doc = g.api("GET", "/api/health", timeout=10)
                break
            except (OSError, urllib.error.URLError):
                if time.monotonic() > t_end:
                    raise
        assert doc["status"] == "ok"
        log = g.log()
        assert "Too many open files" not in log and "out of system resource" not in log
        assert len(log.splitlines()) < 20, log[-3000:]
        assert "max_connections" in log  # the summary line says what happened
    finally:
        for s in socks:
            s.close()
        g.stop()


def test_incomplete_headers_are_cut_off(tmp_path):
    with SlgwProcess(tmp_path, "--api-header-timeout-s", "1") as g:
        slow = socket.create_connection(("127.0.0.1", g.api_port))
        silent = socket.create_connection(("127.0.0.1", g.api_port))
        try:
            slow.sendall(b"GET /api/health HTTP/1.1\r\nHost: x\r\n")  # no final blank line
            for s in (slow, silent):
                s.settimeout(15)
                assert s.recv(1024) == b""  # closed by the gateway (was: held for an hour)
        finally:
            slow.close()
            silent.close()
        assert g.api("GET", "/api/health")["status"] == "ok"


def test_read_only_and_operator_tokens(tmp_path):
    with SlgwProcess(tmp_path, "--api-token", OPERATOR, "--api-read-token", READER) as g:
        assert g.api("GET", "/api/nodes", token=READER) == {"nodes": []}
        with pytest.raises(urllib.error.HTTPError) as e:
            g.api("POST", "/api/backup", {}, token=READER)
        assert e.value.code == 403 and "read-only" in json.loads(e.value.read())["error"]["message"]
        with pytest.raises(urllib.error.HTTPError) as e:
            g.api("GET", "/api/nodes", token="guess")
        assert e.value.code == 401
        assert g.api("POST", "/api/backup", {}, token=OPERATOR)["bytes"] > 0

        # the CLI: token from a file or the environment, never from the command line
        tf = tmp_path / "reader.token"
        tf.write_text(READER + "\n")
        tf.chmod(0o600)
        r = _cli(g.url, "--token-file", str(tf), "nodes", "--json")
        assert r.returncode == 0 and json.loads(r.stdout) == {"nodes": []}, r.stderr
        r = _cli(g.url, "backup", "--json", env={"SLGW_TOKEN_FILE": str(tf)})
        assert r.returncode == 6 and "read-only" in r.stderr
        r = _cli(g.url, "backup", "--json", env={"SLGW_TOKEN": OPERATOR})
        assert r.returncode == 0, r.stderr
        r = _cli(g.url, "--token", OPERATOR, "nodes")
        assert r.returncode == 2 and "--token-file" in r.stderr and "SLGW_TOKEN" in r.stderr
        (tmp_path / "empty.token").write_text("\n")
        r = _cli(g.url, "--token-file", str(tmp_path / "empty.token"), "nodes")
        assert r.returncode == 5 and "empty" in r.stderr
        r = _cli(g.url, "--token-file", str(tmp_path / "missing.token"), "nodes")
        assert r.returncode == 5 and "missing.token" in r.stderr
    log = g.log()  # serve's own --api-token flags work, with a warning naming the better place
    assert "api.token was given on the command line (--api-token)" in log
    assert "api.read_token was given on the command line (--api-read-token)" in log
    assert OPERATOR not in log and READER not in log  # never the token itself


def test_non_loopback_needs_a_long_operator_token(tmp_path):
    for token in ("", "s3cret", "a" * 40, "0123456789abcdef0123456789abcde"):  # none, short, regular, 31
        with pytest.raises(ConfigError, match="openssl rand"):
            load_config(None, {"api.bind": "0.0.0.0", "api.token": token})
        with pytest.raises(ValueError, match="openssl rand"):
            check_bind("192.168.1.10", token)
    assert load_config(None, {"api.bind": "0.0.0.0", "api.token": LONG}).api.token == LONG
    check_bind("::", LONG)
    check_bind("127.0.0.1", "s3cret")  # loopback: any token (or none)
    with pytest.raises(ConfigError, match="read_token"):
        load_config(None, {"api.bind": "0.0.0.0", "api.token": LONG, "api.read_token": "short"})
    with pytest.raises(ConfigError, match="api.token too"):
        load_config(None, {"api.read_token": READER})
    # the real service refuses to start (exit 5, config error) and says how to make a token
    r = subprocess.run([SLGW, "serve", "--store-path", str(tmp_path / "x.db"), "--api-bind", "0.0.0.0",
                        "--api-token", "s3cret"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 5 and "openssl rand -base64 24" in r.stderr, r.stderr


def test_a_body_sent_byte_by_byte_is_cut_off(tmp_path):
    with SlgwProcess(tmp_path, "--api-header-timeout-s", "1") as g:
        s = socket.create_connection(("127.0.0.1", g.api_port))
        try:
            s.sendall(b"POST /api/set-level HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                      b"Content-Length: 100\r\n\r\n{\"tar")  # 5 of 100 bytes, then nothing
            s.settimeout(15)
            answer = b""
            while chunk := s.recv(4096):  # until the gateway closes (was: never)
                answer += chunk
        finally:
            s.close()
        assert answer.startswith(b"HTTP/1.1 408") and b'"timeout"' in answer, answer
        assert g.api("GET", "/api/health")["status"] == "ok"


def test_the_descriptor_limit_is_raised_to_the_hard_limit():
    import sys
    code = ("import resource; from gateway.api.guard import raise_nofile_limit; "
            "print(raise_nofile_limit(), resource.getrlimit(resource.RLIMIT_NOFILE))")
    r = subprocess.run(["prlimit", "--nofile=256:4096", sys.executable, "-c", code],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and r.stdout.split() == ["(4096,", "4096)", "(4096,", "4096)"], r


class _FakeHandler:
    def __init__(self, idle: bool) -> None:
        import asyncio
        self._waiter = asyncio.get_running_loop().create_future()
        if not idle:
            self._waiter.set_result(None)  # a request is being handled
        self.closed = False

    def force_close(self) -> None:
        self.closed = True


class _FakeTransport:
    def abort(self) -> None:
        pass


class _FakeServer:
    def __init__(self) -> None:
        self._connections: dict = {}

    def connection_made(self, handler, transport) -> None:
        self._connections[handler] = transport


async def test_guard_sheds_the_oldest_idle_and_logs_one_line_per_interval(caplog):
    import asyncio
    import logging

    from gateway.api.guard import ConnectionGuard
    caplog.set_level(logging.WARNING, logger="slgw.api")
    server = _FakeServer()
    guard = ConnectionGuard(server, max_connections=3, log_interval=0.3)
    busy = _FakeHandler(idle=False)
    server.connection_made(busy, _FakeTransport())
    handlers = [_FakeHandler(idle=True) for _ in range(50)]
    for h in handlers:
        server.connection_made(h, _FakeTransport())
        for gone in [c for c in server._connections if c.closed]:
            del server._connections[gone]  # what aiohttp's connection_lost does
    assert not busy.closed  # a connection whose request is being handled is never shed
    assert [h.closed for h in handlers] == [True] * 48 + [False] * 2  # oldest idle first
    assert guard.closed_idle == 48
    assert len(caplog.records) == 1 and "closed 1 connection(s)" in caplog.records[0].getMessage()
    for _ in range(100):  # the flood stopped: the rest is logged by a timer, in one line
        if len(caplog.records) == 2:
            break
        await asyncio.sleep(0.05)
    assert "closed 47 connection(s)" in caplog.records[-1].getMessage()
