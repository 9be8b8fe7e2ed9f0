"""The MQTT publisher: empties the durable outbox (outbox.py) into a broker, at least once.

One connection (aiomqtt, MQTT 3.1.1, clean session: the outbox is the session state that
matters, and it survives a gateway restart, which a broker session would not). Per connection:

- a retained ``PREFIX/GW/status`` "online", with "offline" as the will (retained too), so a
  consumer sees a gateway that vanished;
- the sender reads outbox rows in id order and publishes them at ``[mqtt] qos`` with up to
  ``inflight`` awaiting their PUBACK; acknowledged ids are deleted in batches. Nothing is
  deleted without its acknowledgement, so after a broker outage or a gateway crash the
  unacknowledged rows go again, in order, with their original payloads (and times);
- gateway health on ``PREFIX/GW/health`` (retained) every ``health_interval_s``: a live
  signal, not queued in the outbox;
- commands (commands.py) when ``[mqtt] commands`` is on.

A lost connection is logged once per outage, retried with backoff up to ``reconnect_max_s``,
and shown by ``status()`` (``slgw northbound status``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import socket
import ssl
import time
from collections.abc import Awaitable, Callable
from typing import Any

import aiomqtt

from . import outbox

log = logging.getLogger("slgw.northbound")

READ_BATCH = 1000
ACK_FLUSH_S = 0.05  # acknowledged rows are deleted in one write per this interval
IDLE_POLL_S = 0.1  # how often an empty outbox is looked at again
YIELD_PAUSE_S = 0.2  # pause while the store's writer is busy with Sends (YieldToIngest)
HOUSEKEEPING_S = 60.0


class YieldToIngest:
    """Whether the publisher should hold back now, so that nodes' Sends go first.

    During a mass restore the nodes drain their flash outboxes through the store's single
    writer and the event loop that also publishes; MQTT data waits safely in the durable
    outbox, a node's flash does not. So while the writer is more than ``busy_fraction`` busy
    (measured between calls, like the store's background aggregation) the publisher pauses,
    but never longer than ``max_defer_s`` in a row, so a gateway under constant load still
    publishes. ``busy`` is a function returning the writer's cumulative busy seconds."""

    def __init__(self, busy: Callable[[], float], busy_fraction: float = 0.5,
                 max_defer_s: float = 10.0, clock: Callable[[], float] = time.monotonic,
                 min_window_s: float = 0.1):
        self.busy, self.busy_fraction, self.max_defer_s, self.clock = (
            busy, busy_fraction, max_defer_s, clock)
        self.min_window_s = min_window_s
        self._t, self._b = clock(), busy()
        self._deferring_since: float | None = None
        self._waiting = False
        self.deferred = 0

    def should_wait(self) -> bool:
        """True to pause now (call again after a short sleep)."""
        now = self.clock()
        dt = now - self._t
        if dt < self.min_window_s:
            # too short to tell load from one write (a single commit's fsync in a few ms would
            # read as a busy writer and cost a whole pause): keep the last decision
            if self._waiting:
                self.deferred += 1
            return self._waiting
        self._waiting = self._decide(now, dt)
        return self._waiting

    def _decide(self, now: float, dt: float) -> bool:
        b = self.busy()
        load = (b - self._b) / dt
        self._t, self._b = now, b
        if load > self.busy_fraction:
            if self._deferring_since is None:
                self._deferring_since = now
            if now - self._deferring_since < self.max_defer_s:
                self.deferred += 1
                return True
        self._deferring_since = None
        return False


class NorthboundConfigError(ValueError):
    """An ``[mqtt]`` setting that cannot work (unreadable password file, bad TLS files)."""


def gateway_id(cfg: Any) -> str:
    """``[mqtt] gateway_id``, or the host name when it is empty."""
    return cfg.gateway_id or socket.gethostname().split(".")[0]


def read_password(path: str) -> str | None:
    """The broker password from ``path`` (first line), None if no file is configured.

    Raises NorthboundConfigError naming the file when it cannot be read."""
    if not path:
        return None
    try:
        with open(path, encoding="utf-8") as f:
            return f.readline().rstrip("\r\n")
    except OSError as e:
        raise NorthboundConfigError(f"[mqtt] password_file {path!r} cannot be read: {e.strerror}; "
                                    "create it (mode 0600, owned by the slgw user) or clear "
                                    "the key") from e


def tls_context(cfg: Any) -> ssl.SSLContext | None:
    """The TLS context for ``[mqtt] tls`` (CA file, optional client certificate), or None."""
    if not (cfg.tls or cfg.ca_file or cfg.cert_file):
        return None
    try:
        ctx = ssl.create_default_context(cafile=cfg.ca_file or None)
        if cfg.cert_file:
            ctx.load_cert_chain(cfg.cert_file, cfg.key_file or None)
    except (OSError, ssl.SSLError) as e:
        raise NorthboundConfigError(f"[mqtt] TLS files cannot be used: {e}; check ca_file, "
                                    "cert_file and key_file") from e
    return ctx


class Publisher:
    """Publishes the outbox of one gateway. ``await start()`` / ``await stop()``."""

    def __init__(self, store: Any, cfg: Any, *, health: Callable[[], Awaitable[dict]] | None = None,
                 ):
        self.store = store
        self.cfg = cfg
        self.gateway_id = gateway_id(cfg)
        self.base = f"{cfg.topic_prefix}/{self.gateway_id}"
        self.password = read_password(cfg.password_file)
        self.tls = tls_context(cfg)
        self._health = health
        self._extra: list[tuple[Callable, Callable]] = []
        self._task: asyncio.Task | None = None
        self._housekeeping: asyncio.Task | None = None
        self.connected = False
        self.connected_since: float | None = None
        self.last_error: str | None = None
        self.last_error_at: float | None = None
        self.published = 0  # messages acknowledged by the broker since start
        self.connects = 0
        self._dropped_seen: int | None = None
        self._acks: list[int] = []
        self._flusher: asyncio.Future | None = None
        self._yield = YieldToIngest(lambda: getattr(store, "busy_s", 0.0))
        self._cursor = 0
        self.client: aiomqtt.Client | None = None

    def add_listener(self, on_connect: Callable[[aiomqtt.Client], Awaitable[None]],
                     on_message: Callable[[aiomqtt.Client, aiomqtt.Message], Awaitable[None]]) -> None:
        """Call ``on_connect(client)`` on every connection (to subscribe) and
        ``on_message(client, msg)`` for every message received (commands)."""
        self._extra.append((on_connect, on_message))

    # --- life cycle -------------------------------------------------------------------------
    async def start(self) -> None:
        """Install the outbox triggers and start publishing in the background."""
        await self.store.write(lambda conn: outbox.install(conn, self.cfg.max_outbox))
        st = await self.store.read(outbox.status)
        self._dropped_seen = st["dropped"]
        log.info("northbound: publishing to mqtt%s://%s:%d as %s (topics %s/...), %d messages "
                 "waiting in the outbox", "s" if self.tls else "", self.cfg.host, self.cfg.port,
                 self.gateway_id, self.base, st["depth"])
        self._task = asyncio.create_task(self._run(), name="northbound")
        self._housekeeping = asyncio.create_task(self._housekeeping_loop())

    async def stop(self) -> None:
        """Stop publishing; unacknowledged messages stay in the outbox for the next start."""
        for t in (self._task, self._housekeeping):
            if t is not None:
                t.cancel()
        for t in (self._task, self._housekeeping):
            if t is not None:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await t
        await self._flush_acks()

    async def status(self) -> dict[str, Any]:
        """What ``slgw northbound status`` shows (docs/northbound.md)."""
        st = await self.store.read(outbox.status)
        return {"enabled": True, "connected": self.connected,
                "broker": f"{self.cfg.host}:{self.cfg.port}", "tls": self.tls is not None,
                "gateway_id": self.gateway_id, "topic_base": self.base,
                "connected_since": self.connected_since, "connects": self.connects,
                "published": self.published, "outbox": st,
                "last_error": self.last_error, "last_error_at": self.last_error_at}

    # --- the connection loop ----------------------------------------------------------------
    def _client(self) -> aiomqtt.Client:
        will = aiomqtt.Will(f"{self.base}/status", b"offline", qos=1, retain=True)
        client = aiomqtt.Client(self.cfg.host, self.cfg.port, username=self.cfg.username or None,
                              password=self.password, identifier=f"slgw-{self.gateway_id}",
                              will=will, clean_session=True, tls_context=self.tls,
                              keepalive=int(self.cfg.keepalive_s),
                              max_inflight_messages=0, timeout=30.0)
        # The window is ours (_send keeps at most `inflight` unacknowledged), so paho's own limit
        # is off (0): with one, paho scans every queued message at each PUBACK (O(window)).
        # aiomqtt warns past 10 unacknowledged publishes; the window is ours by design
        client.pending_calls_threshold = self.cfg.inflight + 16
        return client

    async def _run(self) -> None:
        delay = 0.5
        outage_logged = False
        while True:
            try:
                async with self._client() as client:
                    self.client = client
                    self.connected, self.connected_since = True, time.time()
                    self.connects += 1
                    delay = 0.5
                    log.info("northbound: connected to %s:%d%s", self.cfg.host, self.cfg.port,
                             " (outage over)" if outage_logged else "")
                    outage_logged = False
                    await client.publish(f"{self.base}/status", b"online", qos=1, retain=True)
                    for on_connect, _on_message in self._extra:
                        await on_connect(client)
                    tasks = [asyncio.create_task(self._send(client)),
                             asyncio.create_task(self._health_loop(client)),
                             asyncio.create_task(self._receive(client))]
                    try:
                        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
                        for t in done:
                            t.result()  # raises the MqttError that ended the connection
                    finally:
                        for t in tasks:
                            t.cancel()
                        await asyncio.gather(*tasks, return_exceptions=True)
            except aiomqtt.MqttError as e:
                self._error(e)
                if not outage_logged:
                    log.warning("northbound: broker %s:%d unreachable or lost (%s); data stays in "
                                "the outbox and goes once it is back (retrying every %.0f s at "
                                "most); check the broker and [mqtt] host/port/credentials",
                                self.cfg.host, self.cfg.port, e, self.cfg.reconnect_max_s)
                    outage_logged = True
            except Exception as e:  # a bug or the store: never let the publisher die silently
                self._error(e)
                log.exception("northbound: publisher failed; reconnecting")
            finally:
                self.connected, self.client = False, None
                await self._flush_acks()
            await asyncio.sleep(delay)
            delay = min(delay * 2, self.cfg.reconnect_max_s)

    async def _receive(self, client: aiomqtt.Client) -> None:
        """Hand received messages to the listeners. Also how a lost connection is noticed while
        nothing is being published: the iterator raises MqttError when the client disconnects
        (keep-alive, broker gone)."""
        async for msg in client.messages:
            for _on_connect, on_message in self._extra:
                await on_message(client, msg)
        raise aiomqtt.MqttError("the message stream ended")

    def _error(self, e: BaseException) -> None:
        self.last_error, self.last_error_at = f"{type(e).__name__}: {e}", time.time()

    async def _send(self, client: aiomqtt.Client) -> None:
        """Publish every outbox row from the oldest, PUBACK by PUBACK; never returns normally.

        Lean path: rows are handed to the paho client that aiomqtt drives (``client._client``,
        aiomqtt 2.x) and their PUBACKs come back through its on_publish callback, one dict
        entry per message, instead of an asyncio task, event and wait_for per message
        (aiomqtt's publish()): the publisher shares the event loop with the CoAP server, and
        this cut its CPU per message by more than half (bench/northbound_mqtt.py). Both run
        in the event loop's thread (aiomqtt reads the socket with add_reader), so no lock.
        A lost connection ends this through _receive (or a publish refused here); rows whose
        PUBACK did not come stay in the outbox.
        """
        paho = client._client  # noqa: SLF001 - see the docstring
        gw = json.dumps(self.gateway_id)
        qos, window = self.cfg.qos, self.cfg.inflight
        inflight: dict[int, int] = {}  # paho mid -> outbox row id
        left: dict[int, int] = {}  # row id -> messages of the row not yet acknowledged
        room = asyncio.Event()
        idle = [False]  # the last read found nothing to publish
        self._cursor = 0  # every connection starts again from the oldest row
        aiomqtt_on_publish = paho.on_publish

        def on_publish(c: Any, userdata: Any, mid: int, *rest: Any) -> None:
            row = inflight.pop(mid, None)
            if row is None:  # status, health, command results: aiomqtt's own publish()
                aiomqtt_on_publish(c, userdata, mid, *rest)
                return
            n = left[row] - 1
            if n:
                left[row] = n
            else:
                del left[row]
                self._acks.append(row)
            if len(inflight) < window:
                room.set()
                if not inflight and idle[0]:  # the outbox is empty and the last PUBACK came:
                    self._flush_in_background()  # delete now, not at the next idle poll

        paho.on_publish = on_publish
        discovered: set[str] = set()  # nodes whose HA discovery went on this connection
        extras = self.cfg.ha_discovery or self.cfg.thingsboard
        id_head, base = f'{{"id":"{self.gateway_id}/', f"{self.base}/"
        gw_rev = f',"gateway":{gw},"rev":'
        last_flush = time.monotonic()

        def read_after(after: int) -> asyncio.Task:
            return asyncio.ensure_future(
                self.store.read(lambda c: outbox.pending(c, after, READ_BATCH)))

        nxt = read_after(0)
        try:
            while True:
                rows = await nxt
                idle[0] = not rows
                if not rows:
                    await self._flush_acks()
                    last_flush = time.monotonic()
                    await asyncio.sleep(IDLE_POLL_S)
                    nxt = read_after(self._cursor)
                    continue
                self._cursor = rows[-1][0]
                # the next batch is read (in the store's reader thread) while this one goes out
                nxt = read_after(self._cursor)
                while self._yield.should_wait():  # nodes' Sends keep the writer busy: they first
                    await asyncio.sleep(YIELD_PAUSE_S)
                last_flush = await self._publish_rows(paho, rows, inflight, left, room, window,
                                                      qos, extras, discovered, id_head, gw_rev,
                                                      base, last_flush)
        finally:
            nxt.cancel()

    async def _publish_rows(self, paho: Any, rows: list[tuple], inflight: dict, left: dict,
                            room: asyncio.Event, window: int, qos: int, extras: bool,
                            discovered: set[str], id_head: str, gw_rev: str, base: str,
                            last_flush: float) -> float:
        """Hand one batch of outbox rows to paho, keeping at most ``window`` unacknowledged."""
        for row_id, key, topic, payload in rows:
            if payload is None:  # its node or reading was deleted meanwhile
                self._acks.append(row_id)
                if key[0] == "r":
                    log.warning("northbound: report %s was pruned by retention before it could "
                                "be published; raise [store] retention_raw_days above the "
                                "longest broker outage", key)
                continue
            while len(inflight) >= window:
                room.clear()
                await room.wait()
            # the envelope: the deterministic id, the gateway, and rev (the outbox id: a newer
            # value of the same id always has a larger rev). Keys and ids are JSON-safe
            # (endpoint names are [A-Za-z0-9._-], gateway_id is checked by the config).
            body = f"{id_head}{key}\"{gw_rev}{row_id},{payload[1:]}".encode()
            if extras:
                msgs = self._extras(key, payload, discovered)
                msgs.append((base + topic, body, key[0] == "s"))
            else:
                msgs = ((base + topic, body, key[0] == "s"),)
            left[row_id] = len(msgs)
            for t, b, retain in msgs:
                info = paho.publish(t, b, qos, retain)
                if info.rc != 0:  # not connected any more: _receive ends the connection
                    raise aiomqtt.MqttCodeError(info.rc, "could not publish")
                inflight[info.mid] = row_id
            if time.monotonic() - last_flush > ACK_FLUSH_S:
                self._flush_in_background()  # the commit's fsync must not stall publishing
                last_flush = time.monotonic()
        await asyncio.sleep(0)  # let the loop (CoAP, PUBACKs) in between batches
        return last_flush

    def _extras(self, key: str, payload: str, discovered: set[str]) -> list[tuple[str, bytes, bool]]:
        """Messages that go with an outbox row before its own: Home Assistant discovery before
        a node's first state on this connection, ThingsBoard telemetry of a report."""
        from .discovery import TB_TOPIC, ha_configs, thingsboard_telemetry

        out: list[tuple[str, bytes, bool]] = []
        kind, _, rest = key.partition("/")
        if kind == "s" and self.cfg.ha_discovery and rest not in discovered:
            discovered.add(rest)
            out += [(t, b, True) for t, b in ha_configs(self.gateway_id, self.base,
                                                         self.cfg.ha_prefix, rest)]
        if kind == "r" and self.cfg.thingsboard:
            out.append((TB_TOPIC, thingsboard_telemetry(json.loads(payload)), False))
        return out

    def _flush_in_background(self) -> None:
        """Start deleting acknowledged rows unless a deletion is still running (then the next
        call takes them): one write at a time, and the sender does not wait for its fsync."""
        if self._acks and (self._flusher is None or self._flusher.done()):
            self._flusher = asyncio.ensure_future(self._flush_acks())

    async def _flush_acks(self) -> None:
        if self._flusher is not None and not self._flusher.done() \
                and self._flusher is not asyncio.current_task():
            await asyncio.shield(self._flusher)  # keep the deletes in order, one at a time
        if not self._acks:
            return
        ids, self._acks = self._acks, []
        try:
            await self.store.write(outbox.acknowledge(ids))
            self.published += len(ids)
        except Exception as e:  # the store will not write now: keep them for the next flush
            log.error("northbound: cannot delete %d acknowledged messages from the outbox (%s); "
                      "they may be sent again (consumers discard duplicates by id)", len(ids), e)
            self._acks = ids + self._acks

    async def _health_loop(self, client: aiomqtt.Client) -> None:
        while True:
            body = await self.health_message()
            await client.publish(f"{self.base}/health", json.dumps(body).encode(), qos=1,
                                 retain=True)
            await asyncio.sleep(self.cfg.health_interval_s)

    async def health_message(self) -> dict[str, Any]:
        """The gateway health message (docs/northbound.md)."""
        st = await self.store.read(outbox.status)
        self._check_dropped(st["dropped"])
        body: dict[str, Any] = {"id": f"{self.gateway_id}/health", "gateway": self.gateway_id,
                                "type": "health", "t": time.time(),
                                "outbox": {"depth": st["depth"], "dropped": st["dropped"],
                                           "oldest_age_s": (st["oldest"] or {}).get("age_s")}}
        if self._health is not None:
            body.update(await self._health())
        return body

    def _check_dropped(self, dropped: int) -> None:
        if self._dropped_seen is not None and dropped > self._dropped_seen:
            log.warning("northbound: the outbox was full: %d oldest messages dropped (%d in all); "
                        "the broker was unreachable too long for [mqtt] max_outbox = %d; raise it "
                        "or restore the broker link. Energy totals are not lost: every report and "
                        "state carries the meter's cumulative Wh", dropped - self._dropped_seen,
                        dropped, self.cfg.max_outbox)
        self._dropped_seen = dropped

    async def _housekeeping_loop(self) -> None:
        while True:
            await asyncio.sleep(HOUSEKEEPING_S)
            try:
                await self.store.write(outbox.housekeeping)
                self._check_dropped((await self.store.read(outbox.status))["dropped"])
            except Exception as e:
                log.error("northbound: outbox housekeeping failed (%s); will retry", e)
