"""The service as systemd runs it: graceful SIGTERM, Type=notify READY/WATCHDOG/STOPPING,
start-up without IPv6, and refusal (with the documented exit status) of a corrupt config."""

from __future__ import annotations

import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time

import pytest
from slgw_harness import AIOCOAP_CLIENT, SLGW, SlgwProcess


def register(gw: SlgwProcess, ep: str) -> subprocess.CompletedProcess:
    return subprocess.run([AIOCOAP_CLIENT, "-m", "POST",
                           f"coap://127.0.0.1:{gw.coap_port}/rd?ep={ep}&lt=300&lwm2m=1.1&b=U",
                           "--content-format", "application/link-format", "--payload", "</3/0>"],
                          capture_output=True, text=True, timeout=30)


class NotifySocket:
    """The receiving end of NOTIFY_SOCKET, read by a thread the way systemd reads it."""

    def __init__(self, path: str):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(path)
        self.seen: list[str] = []
        self.changed = threading.Condition()
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        while True:
            try:
                data = self.sock.recv(4096)
            except OSError:  # closed by close()
                return
            with self.changed:
                self.seen.append(data.decode())
                self.changed.notify_all()

    def wait_for(self, pred, timeout: float = 30) -> bool:
        with self.changed:
            return self.changed.wait_for(lambda: pred(self.seen), timeout)

    def close(self) -> None:
        self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()
        self.thread.join(5)


def test_sigterm_is_graceful_and_systemd_is_told(tmp_path):
    sock_path = str(tmp_path / "notify.sock")
    systemd = NotifySocket(sock_path)
    gw = SlgwProcess(tmp_path, env={"NOTIFY_SOCKET": sock_path, "WATCHDOG_USEC": "300000"})
    try:
        gw.start()
        assert systemd.wait_for(lambda seen: seen.count("WATCHDOG=1") >= 2), (systemd.seen, gw.log())
        seen = list(systemd.seen)
        assert "READY=1" in seen and seen.index("READY=1") < seen.index("WATCHDOG=1")
        r = register(gw, "s1")
        assert r.returncode == 0, (r.stderr, gw.log())
        assert gw.terminate() == 0, gw.log()
        assert systemd.wait_for(lambda seen: "STOPPING=1" in seen), (systemd.seen, gw.log())
    finally:
        gw.stop()
        systemd.close()
    log = gw.log()
    assert "slgw ready" in log and "slgw stopped" in log and "Traceback" not in log, log
    con = sqlite3.connect(gw.store)  # registration flushed, WAL checkpointed by close()
    assert con.execute("SELECT id FROM nodes").fetchall() == [("s1",)]
    con.close()


def _fill(path: str) -> int:
    """Queue datagrams on the notify socket until it takes no more (a systemd that does not
    read); returns how many."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.connect(path)
    s.setblocking(False)
    n = 0
    try:
        while True:
            s.send(b"FILLER=1")
            n += 1
    except BlockingIOError:
        return n
    finally:
        s.close()


def test_a_stalled_notify_socket_never_stalls_the_gateway(tmp_path):
    # systemd busy or stalled: its notify socket is full. The gateway used to block in
    # send(): READY=1 froze start-up (no API, no CoAP), STOPPING=1 froze a SIGTERM stop until
    # systemd's TimeoutStopSec SIGKILLed it. Now it serves, and sends once systemd reads.
    sock_path = str(tmp_path / "notify.sock")
    rx = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    rx.bind(sock_path)
    rx.settimeout(30)
    gw = SlgwProcess(tmp_path, env={"NOTIFY_SOCKET": sock_path, "WATCHDOG_USEC": "300000"})
    try:
        assert _fill(sock_path) > 0
        gw.start()  # ready: /api/health answers while READY=1 waits
        assert register(gw, "s1").returncode == 0, gw.log()
        assert gw.api("GET", "/api/nodes")["nodes"][0]["id"] == "s1"
        seen = []  # systemd catches up: what waited arrives, READY=1 first
        while "WATCHDOG=1" not in seen:
            seen.append(rx.recv(4096).decode())
        seen = [m for m in seen if m != "FILLER=1"]
        assert seen[0] == "READY=1", seen
        _fill(sock_path)  # stalled again, then SIGTERM
        assert gw.terminate() == 0, gw.log()
    finally:
        gw.stop()
        rx.close()
    log = gw.log()
    assert "slgw stopped" in log and "Traceback" not in log, log


NO_IPV6 = r"""
import errno, socket, sys
_orig = socket.socket
class NoV6(_orig):
    def __init__(self, family=-1, *a, **k):
        if family == socket.AF_INET6:
            raise OSError(errno.EAFNOSUPPORT, "Address family not supported by protocol")
        super().__init__(family, *a, **k)
socket.socket = NoV6
socket.has_ipv6 = False
from gateway.cli.main import main
sys.argv[0] = "slgw"
sys.exit(main())
"""


def test_starts_and_serves_on_a_host_without_ipv6(tmp_path):
    # The kernel of some Raspberry Pi images has IPv6 disabled: socket(AF_INET6) fails.
    gw = SlgwProcess(tmp_path, prefix=[sys.executable, "-c", NO_IPV6])
    try:
        gw.start()
        assert register(gw, "v4only").returncode == 0
        assert gw.api("GET", "/api/nodes")["nodes"][0]["id"] == "v4only"
    finally:
        gw.stop()
    # a wildcard bind needs IPv6 here: refused with advice, exit 1
    bad = SlgwProcess(tmp_path, "--coap-bind", "::", prefix=[sys.executable, "-c", NO_IPV6],
                      security="oscore")  # off loopback only OSCORE is allowed (issue 11)
    r = subprocess.run([*bad.args()[:-2], "--coap-bind", "::"], capture_output=True, text=True,
                       timeout=30, cwd=tmp_path)
    assert r.returncode == 1
    assert "needs IPv6" in r.stdout and "IPv4 address" in r.stdout


@pytest.mark.parametrize("text, words", [
    ("[coap]\nport = \"x\"\n", ["coap.port", "line 2"]),
    ("[coap]\nprot = 5683\n", ["coap.prot", "line 2"]),
    ("[api]\nbind = \"0.0.0.0\"\n", ["api.token"]),
    ("[site\nlatitude = 1\n", ["TOML"]),
])
def test_corrupt_config_stops_startup_with_key_and_line(tmp_path, text, words):
    cfg = tmp_path / "gateway.toml"
    cfg.write_text(text)
    r = subprocess.run([SLGW, "serve", "--config", str(cfg), "--store-path", str(tmp_path / "x.db")],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 5, r.stderr
    for w in words:
        assert w in r.stderr
    assert not (tmp_path / "x.db").exists()


def test_bad_flag_value_and_corrupt_store(tmp_path):
    r = subprocess.run([SLGW, "serve", "--coap-port", "99999"], capture_output=True, text=True,
                       timeout=30)
    assert r.returncode == 5 and "coap.port" in r.stderr
    bad_db = tmp_path / "bad.db"
    bad_db.write_bytes(b"this is not a database" * 100)
    gw = SlgwProcess(tmp_path, store=bad_db)
    r = subprocess.run(gw.args(), capture_output=True, text=True, timeout=30)
    assert r.returncode == 1 and "not a usable SQLite database" in r.stdout
    assert bad_db.read_bytes() == b"this is not a database" * 100  # nothing overwritten


def test_sigint_also_stops_cleanly(tmp_path):
    gw = SlgwProcess(tmp_path)
    try:
        gw.start()
        gw.proc.send_signal(signal.SIGINT)
        assert gw.proc.wait(20) == 0
    finally:
        gw.stop()


def test_invalid_modbus_section_is_a_config_error(tmp_path):
    cfg = tmp_path / "gateway.toml"
    cfg.write_text('[[modbus.meters]]\nname = "m1"\nprofile = "no-such-profile"\ntransport = "tcp"\n'
                   'host = "127.0.0.1"\nport = 1\nunit = 1\ncabinet = "A"\n')
    gw = SlgwProcess(tmp_path, "--config", str(cfg))
    r = subprocess.run(gw.args(), capture_output=True, text=True, timeout=30)
    assert r.returncode == 5 and "no-such-profile" in r.stdout


def test_simulated_clock_flags(tmp_path):
    gw = SlgwProcess(tmp_path, "--clock-start", "2030-01-01T00:00:00Z", "--clock-speed", "60")
    try:
        gw.start()
        clock = gw.api("GET", "/api/health")["clock"]
        assert clock["simulated"] and clock["trusted"]
        assert clock["now"].startswith("2030-01-01T00:")  # ISO 8601 UTC like every time
    finally:
        gw.stop()


def test_second_gateway_on_the_same_ports_refuses_to_start(tmp_path):
    """aiocoap binds with SO_REUSEPORT: a second gateway used to start on the same CoAP port
    and take over nodes. Now it exits 7 naming the port, and the first keeps serving."""
    first = SlgwProcess(tmp_path)
    try:
        first.start()
        for coap, api, words in ((first.coap_port, None, f"UDP 127.0.0.1:{first.coap_port} is in use"),
                                 (None, first.api_port, f"TCP 127.0.0.1:{first.api_port} is in use")):
            second = SlgwProcess(tmp_path, store=tmp_path / "second.db", coap_port=coap, api_port=api)
            r = subprocess.run(second.args(), capture_output=True, text=True, timeout=30)
            assert r.returncode == 7, r.stdout + r.stderr
            assert f"cannot start: {words}" in r.stdout
            assert "--coap-port" in r.stdout if coap else "--api-port" in r.stdout
        assert register(first, "p1").returncode == 0, first.log()
        assert [n["id"] for n in first.api("GET", "/api/nodes")["nodes"]] == ["p1"]
    finally:
        first.stop()


@pytest.mark.parametrize("where, cause", [("dir", "is a directory"), ("/sys/slgw-test.db", "Permission denied")])
def test_unusable_store_path_names_path_and_cause(tmp_path, where, cause):
    path = tmp_path / "slgw.db" if where == "dir" else where
    if where == "dir":
        path.mkdir()
    gw = SlgwProcess(tmp_path, store=path)
    r = subprocess.run(gw.args(), capture_output=True, text=True, timeout=30)
    assert r.returncode == 5, r.stdout + r.stderr
    assert str(path) in r.stdout and cause in r.stdout, r.stdout
    assert "free disk space" not in r.stdout


def test_serve_whose_log_reader_goes_away_keeps_serving_and_logs_on_stderr(tmp_path):
    """`slgw serve | head -1` printed a "Logging error" traceback per log line; now the log
    moves to stderr, the service keeps serving and stops cleanly."""
    gw = SlgwProcess(tmp_path)
    p = subprocess.Popen(gw.args(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=tmp_path)
    try:
        p.stdout.close()  # the reader is gone before the first line
        gw.proc = p
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                gw.api("GET", "/api/health", timeout=1)
                break
            except OSError:
                time.sleep(0.1)
        assert register(gw, "bp1").returncode == 0
        p.send_signal(signal.SIGTERM)
        err = p.stderr.read().decode()
        assert p.wait(20) == 0, err
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    assert "Logging error" not in err and "BrokenPipe" not in err, err[:2000]
    assert "slgw ready" in err and "slgw stopped" in err
