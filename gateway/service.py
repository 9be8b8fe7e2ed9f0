"""The gateway service: starts and stops its parts, handles signals, talks to systemd.

Start order: store (open + migrate) -> registry -> CoAP server (explicit bind, see
coap/transport.py) and client -> command queue -> Modbus (only if configured) -> HTTP API ->
READY=1. Stop order is the reverse of what matters for data: the CoAP server stops first (no
new 2.04 can be promised), then commands, Modbus and the API, and the store last, which
flushes every queued write, re-aggregates and checkpoints the WAL. SIGTERM and SIGINT start a
graceful stop.

systemd (Type=notify): READY=1 once every part listens, STATUS= with counters, WATCHDOG=1 every
WatchdogSec/2 but only after the store answered a read, so a wedged store gets the service
restarted. All of this is skipped when NOTIFY_SOCKET is not set.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import signal
import sqlite3
from typing import Any

import aiocoap
import cbor2
from aiohttp import web

from gateway import backup as backup_rules
from gateway.api.app import check_bind, make_app
from gateway.api.guard import ConnectionGuard, raise_nofile_limit
from gateway.clock import Clock
from gateway.coap import dedup, transport
from gateway.coap.client import NodeClient, NodeRefused, NodeUnreachable
from gateway.coap.server import LwM2MServer
from gateway.commands import CommandQueue, submit_command
from gateway.commands.timesync import TimeSync
from gateway.config import Config
from gateway.ingest import CHANGED, Answer, Ingestor
from gateway.nodes import Registry
from gateway.plausibility import Rules
from gateway.store import Store, StorePathError
from gateway.timefmt import iso

log = logging.getLogger("slgw")
EXIT_CONFIG = 5  # gateway.cli.main: a config value that cannot work (also [store] path)
EXIT_PORT_IN_USE = 7  # gateway.cli.main: another program listens on a port slgw needs
PROBE_TIMEOUT_S = 3.0  # "none" mode: how long the old address of a re-registering node may take


class PortInUse(OSError):
    """A port the gateway must listen on is taken; the message names protocol, address, key."""

    def __init__(self, proto: str, host: str, port: int, section: str):
        super().__init__(errno.EADDRINUSE, f"{proto} {host}:{port} is in use (another slgw or "
                         "another program listens there); stop it, or choose another port with "
                         f"[{section}] port or --{section}-port")
        self.message = self.strerror


async def _exclusive(proto: str, host: str, port: int, section: str, bind: Any) -> Any:
    """Await `bind()`; a taken port becomes PortInUse naming it."""
    try:
        return await bind()
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            raise PortInUse(proto, host, port, section) from exc
        raise


class Notifier:
    """systemd notifications (sd_notify) over NOTIFY_SOCKET; a no-op without it.

    Never blocks the event loop: the socket is non-blocking. A datagram socket whose reader
    does not keep up (systemd busy, or stalled) fills after a few messages (the kernel's
    net.unix.max_dgram_qlen, 10 by default), and a blocking send then froze the whole gateway:
    no CoAP, no API, and a SIGTERM stop stuck in sending STOPPING=1 until systemd's
    TimeoutStopSec killed it. Messages that do not fit wait here, in order, and go out when
    the socket is writable again; a waiting WATCHDOG=1 or STATUS= is replaced by the newer one
    rather than queued twice. What still waits when the service stops is dropped.
    """

    def __init__(self) -> None:
        self.enabled = bool(os.environ.get("NOTIFY_SOCKET"))
        self._sock: Any = None
        self._pending: list[bytes] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        if self.enabled:
            import sdnotify
            self._sock = sdnotify.SystemdNotifier().socket  # connected; None if it could not be
            if self._sock is not None:
                self._sock.setblocking(False)
        usec = os.environ.get("WATCHDOG_USEC", "")
        self.watchdog_interval = int(usec) / 2e6 if usec.isdigit() and int(usec) > 0 else None

    def notify(self, state: str) -> None:
        """Send `state` now, or as soon as systemd reads its socket (never blocks)."""
        if self._sock is None:
            return
        data = state.encode()
        if self._pending:
            self._queue(data)
            return
        try:
            self._sock.send(data)
        except BlockingIOError:
            self._queue(data)
            self._watch()
        except OSError:
            pass  # systemd is gone: there is nobody to tell

    def _queue(self, data: bytes) -> None:
        key = data.split(b"=", 1)[0]
        if key in (b"WATCHDOG", b"STATUS"):
            self._pending = [d for d in self._pending if d.split(b"=", 1)[0] != key]
        self._pending.append(data)

    def _watch(self) -> None:
        try:
            self._loop = asyncio.get_running_loop()
        except RuntimeError:  # no loop to wait in: drop rather than block
            self._pending.clear()
            return
        self._loop.add_writer(self._sock, self._flush)

    def _flush(self) -> None:
        while self._pending:
            try:
                self._sock.send(self._pending[0])
            except BlockingIOError:
                return
            except OSError:
                self._pending.clear()
                break
            self._pending.pop(0)
        self.close()

    def close(self) -> None:
        """Stop waiting to send (at the end of a stop); what still waits is dropped."""
        if self._loop is not None and self._sock is not None:
            self._loop.remove_writer(self._sock)
        self._loop = None
        self._pending.clear()


class Gateway:
    """The running service: every part, and the facade the HTTP API uses."""

    def __init__(self, config: Config, clock: Clock | None = None):
        self.config = config
        self.clock = clock or Clock.from_config(config)
        self.store: Store | None = None
        self.registry: Registry | None = None
        self.commands: CommandQueue | None = None
        self.timesync: TimeSync | None = None
        self.coap: LwM2MServer | None = None
        self.ingestor: Ingestor | None = None
        self.modbus: Any = None
        self.northbound: Any = None  # gateway.northbound.publisher.Publisher when [mqtt] enabled
        self.credentials: Any = None  # gateway.coap.security.NodeCredentials in "oscore" mode
        self._ctx: aiocoap.Context | None = None
        self._client_ctx: aiocoap.Context | None = None
        self._runner: web.AppRunner | None = None
        self._tasks: list[asyncio.Task] = []
        self.notifier = Notifier()
        self.client: NodeClient | None = None
        self.firmware: Any = None  # gateway.ota.rollout.FirmwareService
        self.coap_address = ""
        self.api_url = ""
        self.api_guard: ConnectionGuard | None = None
        self.nofile = (0, 0)

    # --- life cycle -------------------------------------------------------------------------
    async def start(self) -> None:
        """Start every part. Raises on a part that cannot start (after stopping the others)."""
        cfg = self.config
        try:
            check_bind(cfg.api.bind, cfg.api.token, cfg.api.read_token)
            self.nofile = raise_nofile_limit()  # half-open API connections: gateway/api/guard.py
            server_tr, client_tr = transport.choose(cfg.coap.bind)
            self.store = await Store.open(cfg.store.path, commit_interval_ms=cfg.store.commit_interval_ms,
                                          timezone=cfg.site.timezone,
                                          aggregate_interval_s=cfg.store.aggregate_interval_s)
            self.registry = Registry.from_config(self.store, self.clock, cfg.nodes)
            await self.registry.load()
            self.ingestor = Ingestor(self.store, rules=Rules.from_config(cfg.nodes), clock=self.clock)
            oscore = cfg.coap.security == "oscore"
            if oscore:
                self._load_keys()
                server_tr, client_tr = ["oscore", *server_tr], ["oscore", *client_tr]
            else:
                log.warning("[coap] security = \"none\": node exchanges are NOT protected; anyone "
                            "who can reach %s:%d can pose as a node and anyone who can reach a "
                            "node can command it. Use this only for a demo on loopback; set "
                            "security = \"oscore\" and import the nodes' keys (slgw keys "
                            "import) for a real installation", cfg.coap.bind, cfg.coap.port)
            # aiocoap binds with SO_REUSEPORT, which lets a second gateway share the port and
            # take over nodes; without it a taken port fails the bind (PortInUse, exit 7)
            os.environ["AIOCOAP_REUSE_PORT"] = "0"
            self._ctx = await _exclusive("UDP", cfg.coap.bind, cfg.coap.port, "coap",
                                         lambda: aiocoap.Context.create_server_context(
                                             None, bind=(cfg.coap.bind, cfg.coap.port),
                                             transports=server_tr,
                                             server_credentials=self.credentials))
            if client_tr == server_tr:  # requests to nodes from the registered address
                transport.quiet_server_socket_requests()
                self._client_ctx = self._ctx
            else:
                self._client_ctx = await aiocoap.Context.create_client_context(transports=client_tr)
            if oscore:
                self._client_ctx.client_credentials = self.credentials
            client = NodeClient(self._client_ctx, limit=cfg.commands.concurrency,
                                timeout=cfg.commands.timeout_s, credentials=self.credentials)
            self.client = client
            self.commands = CommandQueue(self.store, self.registry, client, self.clock,
                                         max_attempts=cfg.commands.max_attempts)
            await self.commands.start()
            self.timesync = TimeSync(client, self.clock, self.registry)
            self.coap = LwM2MServer(self.registry, self._ingest, self.clock,
                                    on_registered=self._on_registered,
                                    on_reports=self.timesync.after_reports,
                                    default_lifetime=cfg.nodes.default_lifetime,
                                    security=cfg.coap.security, probe=self._probe)
            self.firmware = self._firmware(client)
            self.coap.firmware = self.firmware
            if oscore:
                from aiocoap.oscore_sitewrapper import OscoreSiteWrapper
                self._ctx.serversite = OscoreSiteWrapper(self.coap, self.credentials)
            else:
                self._ctx.serversite = self.coap
            dedup.install(self._ctx, cfg.coap.dedup_entries)  # bounded memory under a flood
            transport.rst_unparsable(self._ctx, lambda host: self.coap.badlog.bad(
                host, "RST", "datagram is not CoAP"))
            self.coap_address = f"{cfg.coap.bind}:{cfg.coap.port}"
            await self._start_modbus()
            from gateway.northbound import start_northbound  # issue 13: MQTT, off by default
            self.northbound = await start_northbound(self)
            self._runner = web.AppRunner(make_app(self), access_log=None,
                                         keepalive_timeout=cfg.api.header_timeout_s)
            await self._runner.setup()
            self.api_guard = ConnectionGuard(self._runner.server, cfg.api.max_connections)
            site = web.TCPSite(self._runner, cfg.api.bind, cfg.api.port)
            await _exclusive("TCP", cfg.api.bind, cfg.api.port, "api", site.start)
            self.api_url = f"http://{cfg.api.bind}:{cfg.api.port}"
            if cfg.store.retention_raw_days or cfg.store.retention_bucket_days:
                self._tasks.append(asyncio.create_task(self._retention_loop()))
            self._tasks.append(asyncio.create_task(self._expiry_loop()))
        except BaseException:
            await self.stop()
            raise
        if self.notifier.watchdog_interval:
            self._tasks.append(asyncio.create_task(self._watchdog_loop()))
        log.info("slgw ready: CoAP (LwM2M) on %s, HTTP API on %s, store %s, clock %s%s",
                 self.coap_address, self.api_url, cfg.store.path, self.clock,
                 "" if self.clock.trusted() else " (not NTP-synchronised: node time sync paused)")
        self.notifier.notify("READY=1")
        self.notifier.notify("STATUS=serving")

    def _firmware(self, client: NodeClient) -> Any:
        """The update service (gateway/ota): bundles in [firmware] dir, else beside the store."""
        from gateway.ota.rollout import FirmwareService
        fw = self.config.firmware
        root = fw.dir or os.path.join(os.path.dirname(os.path.abspath(self.config.store.path)), "firmware")
        host = self.config.coap.bind if self.config.coap.bind not in ("", "0.0.0.0", "::") else "gateway"
        return FirmwareService(root, self.registry, client, f"{host}:{self.config.coap.port}",
                               max_downloads=fw.max_downloads, max_block_rate=fw.max_block_rate,
                               halt_pct=fw.halt_pct, poll_s=fw.poll_s,
                               download_timeout_s=fw.download_timeout_s, trial_timeout_s=fw.trial_timeout_s)

    def _load_keys(self) -> None:
        """Load every node's OSCORE context; raises keystore.PermissionProblem (naming the
        chmod/chown to run) when the keys are open to other users."""
        from gateway.coap.security import NodeCredentials
        cfg = self.config
        self.credentials = NodeCredentials(cfg.coap.keys_dir, self.registry.endpoint_at)
        n = self.credentials.load()
        if n:
            log.info("OSCORE: keys of %d nodes loaded from %s", n, cfg.coap.keys_dir)
        else:
            log.warning("OSCORE: no node keys in %s, so every node request is refused 4.01; "
                        "import each node's key with `slgw keys import <ep>.oscore.json` (made "
                        "by `slnode provision`)", cfg.coap.keys_dir)

    async def _probe(self, address: str) -> bool:
        """True when something answers a CoAP request at `address` ("none" mode, see
        LwM2MServer._guard_takeover)."""
        try:
            await self.client.request(aiocoap.GET, address, "/3/0/0", timeout=PROBE_TIMEOUT_S)
        except NodeRefused:
            return True
        except NodeUnreachable:
            return False
        return True

    async def _start_modbus(self) -> None:
        # --- MODBUS HOOK: the one call site of gateway/modbus (issue 5). Runs only when the
        # config declares meters or enables the bridge server; then the module is required.
        cfg = self.config
        if cfg.modbus_raw.get("meters") or cfg.modbus_server_raw.get("enabled"):
            from gateway.modbus.service import start_modbus
            self.modbus = await start_modbus(cfg, self.store, submit_command,
                                             registry=self.registry, clock=self.clock)

    async def stop(self) -> None:
        """Stop every started part; the store last, flushing all writes. Idempotent."""
        self.notifier.notify("STOPPING=1")
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []
        steps = [
            ("firmware roll-out", self.firmware.stop if self.firmware else None),
            ("CoAP server", self._stop_coap),
            ("time sync", self.timesync.stop if self.timesync else None),
            ("command queue", self.commands.stop if self.commands else None),
            ("Modbus", self.modbus.stop if self.modbus else None),
            ("northbound", self.northbound.stop if self.northbound else None),
            ("HTTP API", self._runner.cleanup if self._runner else None),
            ("store", self.store.close if self.store else None),
        ]
        for name, fn in steps:
            if fn is None:
                continue
            try:
                await fn()
            except Exception:
                log.exception("error while stopping the %s; continuing the shutdown", name)
        if self.credentials is not None:
            self.credentials.close()  # after the CoAP context: no message uses them any more
        self.timesync = self.commands = self.modbus = self._runner = self.store = None
        self.northbound = None
        self.notifier.close()
        log.info("slgw stopped; every accepted report and command state is on disk")

    async def _stop_coap(self) -> None:
        if self._client_ctx is not None and self._client_ctx is not self._ctx:
            await self._client_ctx.shutdown()
        if self._ctx is not None:
            await self._ctx.shutdown()
        self._ctx = self._client_ctx = None

    # --- glue -------------------------------------------------------------------------------
    async def _ingest(self, ep: str, reports: list[dict], attrs: dict, now: float) -> Answer:
        """Make a Send durable (descriptor, then reports) and say what to answer."""
        assert self.ingestor is not None
        if attrs or not reports:
            answer = await self.ingestor.handle_descriptor(ep, attrs)
            if answer.code != CHANGED or not reports:
                if answer.descriptor:
                    log.info("node %s described itself: %s", ep, answer.descriptor)
                return answer
        answer = await self.ingestor.handle_reports(ep, reports, received_at=now)
        if answer.refused in ("time_future", "time_old", "time_order") and self.timesync:
            # refused for its clock: set it now (a stored Send would have triggered this too),
            # or a node whose clock went wrong would be refused until its next Register
            self.timesync.after_reports(ep, reports)
        return answer

    def _on_registered(self, ep: str, registered: bool) -> None:
        assert self.commands is not None and self.timesync is not None
        self.timesync.after_register(ep, registered)
        asyncio.ensure_future(self.commands.node_reachable(ep))

    async def _watchdog_loop(self) -> None:
        assert self.notifier.watchdog_interval
        while True:
            await asyncio.sleep(self.notifier.watchdog_interval)
            try:
                await asyncio.wait_for(self.store.read(lambda c: c.execute("SELECT 1").fetchone()),
                                       self.notifier.watchdog_interval)
            except Exception as exc:
                log.error("store did not answer the watchdog check (%s); not pinging systemd, "
                          "which will restart the service if this persists", exc)
                continue
            self.notifier.notify("WATCHDOG=1")
            s = self.coap.stats if self.coap else {}
            self.notifier.notify(f"STATUS=serving: {len(self.registry.online_endpoints())} nodes "
                                 f"online, {s.get('reports', 0)} reports stored")

    async def _expiry_loop(self) -> None:
        """Registrations that never reported expire even when no new node registers."""
        while True:
            await asyncio.sleep(self.registry.SWEEP_EVERY_S)
            try:
                await self.registry.expire_pending()
            except Exception as exc:
                log.error("expiring stale registrations failed (%s); will retry", exc)

    async def _retention_loop(self) -> None:
        while True:
            try:
                n = await self.store.prune(self.clock.now(), self.config.store.retention_raw_days,
                                           self.config.store.retention_bucket_days)
                log.info("retention: deleted %s", n)
            except Exception as exc:
                log.error("retention pruning failed (%s); will retry in an hour", exc)
            await asyncio.sleep(3600)

    # --- the API's facade -------------------------------------------------------------------
    async def health(self) -> dict[str, Any]:
        return {"status": "ok", "coap": self.coap_address, "clock": {
            "now": iso(self.clock.now()), "simulated": self.clock.simulated,
            "trusted": self.clock.trusted()},
            "nodes_online": len(self.registry.online_endpoints()),
            "coap_stats": dict(self.coap.stats) if self.coap else {},
            "implausible": dict(self.ingestor.implausible) if self.ingestor else {},
            "registrations": {"pending": self.registry.pending(), "refused": self.registry.refused,
                              "expired": self.registry.expired},
            "time_writes": self.timesync.writes if self.timesync else 0,
            "oscore": self.credentials.stats() if self.credentials is not None else None}

    async def energy(self, node: str | None, group: str | None, cabinet: str | None,
                     start: str | None, end: str | None, by: str) -> dict[str, Any]:
        """Energy of the selection; see gateway.energy. Raises ValueError on bad arguments."""
        from gateway.energy.query import circuit_check, energy
        from gateway.timefmt import parse
        t0 = parse(start, "from") if start else None
        t1 = parse(end, "to") if end else None
        await self.store.refresh()

        def q(conn: sqlite3.Connection) -> dict[str, Any]:
            res = energy(conn, node=node, group=group, cabinet=cabinet, start=t0, end=t1, by=by)
            if cabinet and res["rows"]:  # issue 5: the cabinet meter against its luminaires
                res["circuit"] = circuit_check(conn, cabinet, res["start"], res["end"])
            return res

        return await self.store.read(q)

    async def savings(self, start: str | None, end: str | None, node: str | None = None,
                      group: str | None = None, cabinet: str | None = None) -> dict[str, Any]:
        """Savings against the configured baseline; default period: the 30 days up to the last
        whole quarter hour (the current one is still being reported)."""
        from gateway.energy.savings import savings
        from gateway.timefmt import parse
        t1 = parse(end, "to") if end else self.clock.now() // 900 * 900
        t0 = parse(start, "from") if start else t1 - 30 * 86400
        await self.store.refresh()
        return await self.store.read(lambda conn: savings(
            conn, start=t0, end=t1, node=node, group=group, cabinet=cabinet, config=self.config))

    async def backup(self, path: str | None) -> dict[str, Any]:
        """Online backup into [store] backup_dir (rules: gateway.backup). Raises BackupRefused."""
        path = backup_rules.resolve(path, self.config.store.backup_dir, self.config.store.path,
                                    self.clock.now())
        await self.store.backup(path)
        size = os.path.getsize(path)
        log.info("backup written to %s (%d bytes)", path, size)
        return {"path": path, "bytes": size}

    async def rotate_key(self, ep: str, wait: float) -> dict[str, Any]:
        """Give node `ep` a new OSCORE key (SPEC §10.5): the new master secret, salt and node
        Sender ID go to the node in a PUT /10250/0/30 protected with its current key.

        Returns {"node", "old_node_sender_id", "node_sender_id", "state"}: "written" when the
        node answered 2.04, "unconfirmed" when it did not answer (both keys stay accepted until
        it uses one). Raises LookupError (no key / not registered), RuntimeError (OSCORE off,
        or a rotation already pending), NodeRefused (the node refused; its key is unchanged).
        """
        creds = self.credentials
        if creds is None:
            raise RuntimeError("[coap] security is \"none\": there are no keys to rotate")
        old = creds.context(ep)
        if old is None:
            raise LookupError(f"{ep} has no OSCORE key; import one with `slgw keys import`")
        address = self.registry.address(ep)
        if not address:
            raise LookupError(f"{ep} is not registered, so its new key cannot be sent; rotate "
                              "once it is online")
        ms, salt, sid = creds.begin_rotation(ep)
        out = {"node": ep, "old_node_sender_id": old.recipient_id.hex(), "node_sender_id": sid.hex()}
        try:
            await self.client.request(aiocoap.PUT, address, "/10250/0/30",
                                      cbor2.dumps([ms, salt, sid]), content_format=60,
                                      timeout=wait)
        except NodeRefused:
            creds.abort_rotation(ep)
            raise
        except NodeUnreachable as exc:
            log.warning("key rotation of %s: no answer (%s); both its old and new key stay "
                        "accepted until it uses one", ep, exc)
            return {**out, "state": "unconfirmed"}
        creds.confirm_rotation(ep)
        log.info("key rotation of %s: the node took its new key (kid %s -> %s)", ep,
                 out["old_node_sender_id"], out["node_sender_id"])
        return {**out, "state": "written"}

    def meters_status(self) -> list[dict[str, Any]]:
        return self.modbus.status() if self.modbus else []


async def serve(config: Config, clock: Clock | None = None) -> int:
    """Run the gateway until SIGTERM/SIGINT. Returns the process exit status."""
    gw = Gateway(config, clock)
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await gw.start()
    except Exception as exc:  # StoreCorrupt, TransportError, ... each message carries the advice
        if type(exc).__name__ == "ModbusConfigError":  # [modbus] is part of the config: exit 5
            log.error("cannot start: configuration error: %s", exc)
            return EXIT_CONFIG
        if isinstance(exc, StorePathError) or type(exc).__name__ == "NorthboundConfigError":
            log.error("cannot start: %s", exc)
            return EXIT_CONFIG
        if type(exc).__name__ == "PermissionProblem":  # node keys open to others
            log.error("cannot start: unsafe OSCORE keys: %s", exc)
            return EXIT_CONFIG
        if isinstance(exc, PortInUse):
            log.error("cannot start: %s", exc.message)
            return EXIT_PORT_IN_USE
        if isinstance(exc, OSError) and exc.errno == errno.EADDRINUSE:
            log.error("cannot start: an address is already in use (%s): another slgw (or another "
                      "program) is listening on [coap] %s:%d or [api] %s:%d; stop it or change "
                      "the port", exc, config.coap.bind, config.coap.port, config.api.bind,
                      config.api.port)
            return 1
        log.error("cannot start: %s", exc)
        return 1
    await stop.wait()
    log.info("stop requested: finishing in-flight work and flushing the store")
    await gw.stop()
    return 0
