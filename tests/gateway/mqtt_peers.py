"""Real MQTT peers for the northbound tests: a `mosquitto` broker on a free loopback port with
its own config file (never the system's service or its port 1883), started and stopped by pid
through the `procs` fixture; a reconnecting aiomqtt subscriber that records what it receives;
and `slgw serve` with MQTT on, run through `procs` too."""

from __future__ import annotations

import asyncio
import contextlib
import getpass
import json
import shutil
import socket
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import aiomqtt
from slgw_harness import free_port

BIN = Path(sys.executable).parent


def mosquitto_bin() -> str:
    """The Debian package puts it in /usr/sbin, which a user's PATH may lack."""
    found = shutil.which("mosquitto") or shutil.which("mosquitto", path="/usr/sbin:/usr/local/sbin")
    assert found, "mosquitto is not installed: `make sysdeps` (Makefile SYSPKGS) installs it"
    return found


class Broker:
    """One mosquitto with persistence in its own directory, so a subscriber's session and its
    queued QoS 1 messages survive a stop and restart, as on a real installation."""

    def __init__(self, procs: Any, workdir: Path, acl: str | None = None,
                 passwords: dict[str, str] | None = None, tls: list[str] | None = None):
        self.procs, self.dir = procs, Path(workdir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.proc: Any = None
        # `user`: started as root, mosquitto would switch to the `mosquitto` account, which
        # cannot read this test's private directory; stay who we are
        lines = [f"listener {self.port} 127.0.0.1", f"user {getpass.getuser()}", "persistence true",
                 f"persistence_location {self.dir}/", "autosave_interval 1",
                 "log_dest stderr", "log_type error", "log_type warning", "log_type notice",
                 "max_queued_messages 100000", "set_tcp_nodelay true"]
        if passwords:
            pw = self.dir / "passwd"
            pw.write_text("".join(f"{u}:{p}\n" for u, p in passwords.items()))
            pw.chmod(0o600)
            tool = shutil.which("mosquitto_passwd") or shutil.which("mosquitto_passwd",
                                                                      path="/usr/bin:/usr/sbin")
            subprocess_run([tool, "-U", str(pw)])  # hashes the file in place
            lines += ["allow_anonymous false", f"password_file {pw}"]
        else:
            lines.append("allow_anonymous true")
        lines += tls or []  # cafile/certfile/keyfile/require_certificate for the listener
        if acl:
            (self.dir / "acl").write_text(acl)
            lines.append(f"acl_file {self.dir / 'acl'}")
        self.conf = self.dir / "mosquitto.conf"
        self.conf.write_text("\n".join(lines) + "\n")
        self.starts = 0

    def start(self) -> Broker:
        self.starts += 1
        self.proc = self.procs.start(f"mosquitto-{self.port}-{self.starts}",
                                     [mosquitto_bin(), "-c", str(self.conf)])
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            assert self.proc.alive(), f"mosquitto exited:\n{self.proc.tail()}"
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port), 0.2):
                return self
            time.sleep(0.05)
        raise RuntimeError(f"mosquitto did not listen on {self.port}:\n{self.proc.tail()}")

    def stop(self) -> None:
        """SIGTERM (mosquitto saves its persistence file) and wait."""
        if self.proc is not None:
            self.proc.terminate(timeout=10)


def subprocess_run(argv: list[str]) -> None:
    import subprocess
    subprocess.run(argv, check=True, capture_output=True, timeout=30)


class Subscriber:
    """A consumer with a persistent session (clean_session False, QoS 1) that reconnects on
    its own and records every message: ``messages`` in arrival order, ``by_id`` the newest
    rev per id."""

    def __init__(self, port: int, topic: str, client_id: str = "test-consumer",
                 username: str | None = None, password: str | None = None):
        self.port, self.topic, self.client_id = port, topic, client_id
        self.username, self.password = username, password
        self.messages: list[tuple[str, dict]] = []
        self.by_id: dict[str, dict] = {}
        self.connected = asyncio.Event()
        self.connects = 0
        self._task: asyncio.Task | None = None

    async def start(self) -> Subscriber:
        self._task = asyncio.create_task(self._run())
        await asyncio.wait_for(self.connected.wait(), 10)
        return self

    async def _run(self) -> None:
        while True:
            try:
                async with aiomqtt.Client("127.0.0.1", self.port, identifier=self.client_id,
                                          clean_session=False, username=self.username,
                                          password=self.password) as c:
                    await c.subscribe(self.topic, qos=1)
                    self.connects += 1
                    self.connected.set()
                    async for m in c.messages:
                        try:
                            doc = json.loads(m.payload)
                        except ValueError:
                            doc = {"raw": m.payload.decode(errors="replace")}
                        self.messages.append((str(m.topic), doc))
                        if isinstance(doc, dict) and "id" in doc:
                            old = self.by_id.get(doc["id"])
                            if old is None or doc.get("rev", 0) >= old.get("rev", 0):
                                self.by_id[doc["id"]] = doc
            except aiomqtt.MqttError:
                self.connected.clear()
                await asyncio.sleep(0.2)

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def ids(self, kind: str) -> set[str]:
        return {i for i in self.by_id if i.split("/")[1] == kind}


class Gw:
    """`slgw serve` with MQTT on, started through `procs` (stopped by pid in every case)."""

    def __init__(self, procs: Any, workdir: Path, broker_port: int, gateway_id: str, *extra: str):
        self.procs, self.dir = procs, Path(workdir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.coap_port = free_port(socket.SOCK_DGRAM)
        self.api_port = free_port()
        self.url = f"http://127.0.0.1:{self.api_port}"
        self.argv = [str(BIN / "slgw"), "serve", "--store-path", str(self.dir / "gw.db"),
                     "--coap-bind", "127.0.0.1", "--coap-port", str(self.coap_port),
                     "--coap-security", "none", "--api-port", str(self.api_port),
                     "--store-aggregate-interval-s", "0.5", "--site-timezone", "UTC",
                     "--mqtt-enabled", "true", "--mqtt-port", str(broker_port),
                     "--mqtt-gateway-id", gateway_id, "--mqtt-reconnect-max-s", "0.5",
                     "--mqtt-topic-prefix", "town", *extra]
        self.proc: Any = None
        self.starts = 0

    def start(self) -> Gw:
        self.starts += 1
        self.proc = self.procs.start(f"slgw-{self.api_port}-{self.starts}", self.argv)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            assert self.proc.alive(), f"slgw exited:\n{self.proc.tail()}"
            try:
                self.api("/api/health")
                return self
            except OSError:
                time.sleep(0.1)
        raise RuntimeError(f"slgw did not start:\n{self.proc.tail()}")

    def api(self, path: str) -> dict:
        with urllib.request.urlopen(self.url + path, timeout=10) as r:
            return json.loads(r.read())

    def status(self) -> dict:
        return self.api("/api/northbound")
