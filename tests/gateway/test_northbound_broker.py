"""The northbound publisher against a real mosquitto (issue 13): a broker outage mid-stream, a
SIGKILLed gateway mid-publish, and two gateways feeding one town-wide energy total."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import subprocess
import time

from coap_peers import RawCrowd
from mqtt_peers import BIN, Broker, Gw, Subscriber

from protocol import coap as pc
from protocol import lwm2m, report

T0 = int(time.time()) // 900 * 900 - 6 * 3600  # six hours ago, on a bucket boundary


async def send(crowd: RawCrowd, idx: int, seqs: range, per_send: int = 1) -> None:
    """Reports seq by seq, one minute apart, 0.5 Wh each; every Send must be acknowledged."""
    for i in range(0, len(seqs), per_send):
        batch = [(s, T0 + 60 * s, 1000 + 0.5 * s, 30.0, 50, 60 * s, 0)
                 for s in seqs[i:i + per_send]]
        r = await crowd.request(idx, pc.POST, "/dp", [f"ep={crowd.ep(idx)}"],
                                report.encode_reports(batch), lwm2m.CF_SENML_CBOR)
        assert r.code == pc.CHANGED, r


async def until(pred, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = pred()
        if v:
            return v
        await asyncio.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def report_ids(gw_id: str, crowd: RawCrowd, nodes: int, seqs: range) -> set[str]:
    return {f"{gw_id}/r/{crowd.ep(i)}/{s}" for i in range(nodes) for s in seqs}


async def test_broker_restart_mid_stream_loses_nothing(procs, tmp_path):
    broker = Broker(procs, tmp_path / "broker").start()
    sub = await Subscriber(broker.port, "town/#").start()
    gw = Gw(procs, tmp_path / "gw", broker.port, "gwA").start()
    crowd = await RawCrowd(4, gw.coap_port, prefix="lamp").start()
    try:
        await crowd.register_all("g1")
        seqs = range(1, 121)
        first, second = seqs[:60], seqs[60:]
        await asyncio.gather(*(send(crowd, i, first) for i in range(4)))
        await until(lambda: len(sub.ids("r")) >= 40, 20, "the first reports on the broker")
        broker.stop()  # mid-stream: the gateway keeps taking reports, the outbox keeps them
        await asyncio.gather(*(send(crowd, i, second[:30]) for i in range(4)))
        down = gw.status()
        assert down["connected"] is False and down["outbox"]["depth"] > 0
        assert down["last_error"]
        broker.start()
        await asyncio.gather(*(send(crowd, i, second[30:]) for i in range(4)))
        want = report_ids("gwA", crowd, 4, seqs)
        await until(lambda: want <= set(sub.by_id), 30, "every report id after the restart")
        # no gaps: every node's seqs 1..120, each report with its own original time
        for i in range(4):
            got = sorted(d["seq"] for k, d in sub.by_id.items()
                         if k.startswith(f"gwA/r/{crowd.ep(i)}/"))
            assert got == list(seqs)
        for s in (1, 75, 120):
            assert sub.by_id[f"gwA/r/{crowd.ep(0)}/{s}"]["t"] == T0 + 60 * s
        st = await until(lambda: (lambda s: s if s["outbox"]["depth"] == 0 else None)(gw.status()),
                         20, "the outbox to empty")
        assert st["connected"] and st["connects"] >= 2
        # the broker keeps the newest state per node (retained)
        states = [d for t, d in sub.messages if t == f"town/gwA/node/{crowd.ep(0)}/state"]
        assert states and states[-1]["seq"] == 120
    finally:
        crowd.close()
        await sub.stop()


def outbox_depth(db) -> int:
    with sqlite3.connect(db) as c:
        return c.execute("SELECT COUNT(*) FROM nb_outbox").fetchone()[0]


async def test_sigkill_mid_publish_loses_nothing_unacknowledged(procs, tmp_path):
    broker = Broker(procs, tmp_path / "broker").start()
    # the consumer's session exists before the outage, so the broker queues for it what the
    # gateway sends as soon as the broker is back (persistence keeps the session over a stop)
    sub = await Subscriber(broker.port, "town/#").start()
    # one message in flight at a time: the drain takes long enough to be cut in the middle
    gw = Gw(procs, tmp_path / "gw", broker.port, "gwK", "--mqtt-inflight", "1").start()
    crowd = await RawCrowd(3, gw.coap_port, prefix="k").start()
    try:
        await until(lambda: gw.status()["connected"], 20, "the gateway on the broker")
        broker.stop()
        await crowd.register_all("g1")
        seqs = range(1, 601)
        await asyncio.gather(*(send(crowd, i, seqs, per_send=10) for i in range(3)))
        gw.api("/api/energy")  # buckets rebuilt: they are in the outbox too
        queued = gw.status()["outbox"]["depth"]
        assert queued > 1800
        broker.start()
        await until(lambda: len(sub.ids("r")) >= 50, 20, "publishing to start")
        gw.proc.kill()  # SIGKILL mid-publish
        # mid-publish: the consumer has some, the outbox still holds the rest (and maybe some
        # that were delivered but whose deletion was not committed yet: they go again)
        left = outbox_depth(gw.dir / "gw.db")
        assert left > 0, left
        gw.start()
        want = report_ids("gwK", crowd, 3, seqs)
        await until(lambda: want <= set(sub.by_id), 60, "every report id after the restart")
        await until(lambda: gw.status()["outbox"]["depth"] == 0, 30, "the outbox to empty")
        with sqlite3.connect(gw.dir / "gw.db") as c:
            buckets = {f"gwK/b/{s}/{b}": wh for s, b, wh in
                       c.execute("SELECT source, start, wh FROM buckets")}
        got = {k: d["wh"] for k, d in sub.by_id.items() if k.split("/")[1] == "b"}
        assert got.keys() == buckets.keys()
        assert all(abs(got[k] - buckets[k]) < 1e-9 for k in buckets)
    finally:
        crowd.close()
        await sub.stop()


def slgw_energy_total(gw: Gw) -> float:
    r = subprocess.run([str(BIN / "slgw"), "--url", gw.url, "energy", "--json"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)["total_wh"]


async def test_two_gateways_one_town_total(procs, tmp_path):
    broker = Broker(procs, tmp_path / "broker").start()
    sub = await Subscriber(broker.port, "town/+/node/+/+").start()
    names = ("north", "south")
    gws = [Gw(procs, tmp_path / n, broker.port, n).start() for n in names]
    crowds = [await RawCrowd(3, g.coap_port, prefix=f"{n}-lamp").start() for g, n in zip(gws, names, strict=True)]
    try:
        for c in crowds:
            await c.register_all("g")
        # different histories: north 200 minutes, south 90 minutes plus a late straggler
        await asyncio.gather(*(send(crowds[0], i, range(1, 201), 5) for i in range(3)),
                             *(send(crowds[1], i, range(1, 91), 3) for i in range(3)))
        totals = [slgw_energy_total(g) for g in gws]
        assert totals[0] > 0 and totals[1] > 0
        for g in gws:
            await until(lambda g=g: g.status()["outbox"]["depth"] == 0, 30, "outbox empty")
        await asyncio.sleep(0.5)

        def town(prefix: str = "") -> float:
            return sum(d["wh"] for k, d in sub.by_id.items()
                       if k.startswith(prefix) and d["type"] == "energy")

        assert abs(town("north/") - totals[0]) < 1e-6
        assert abs(town("south/") - totals[1]) < 1e-6
        assert abs(town() - sum(totals)) < 1e-6
        # the nodes' exported totals (never decreasing) add up to the same
        exported = sum(d["energy_wh"] for d in sub.by_id.values() if d["type"] == "state")
        assert abs(exported - sum(totals)) < 1e-6
    finally:
        for c in crowds:
            c.close()
        await sub.stop()


async def test_acknowledged_backlog_is_deleted_at_its_last_puback(procs, tmp_path, monkeypatch):
    """Once the outbox is empty and the last PUBACK came, the acknowledged rows are deleted then,
    not at the next idle poll (made an hour here: before, the last window's rows stayed)."""
    from gateway.config import MqttConfig
    from gateway.northbound import outbox, publisher
    from gateway.store import Store

    monkeypatch.setattr(publisher, "IDLE_POLL_S", 3600.0)
    broker = Broker(procs, tmp_path / "broker").start()
    store = await Store.open(str(tmp_path / "gw.db"), timezone="UTC")
    pub = None
    try:
        await store.write(lambda c: outbox.install(c, 100_000))
        await store.ingest_reports("n1", [
            {"seq": s, "t": T0 + 60 * s, "wh": 1000.0 + s, "w": 40.0, "level": 50,
             "on_time": s, "faults": 0, "rel_time": False} for s in range(1, 2001)],
            received_at=T0 + 200_000)
        cfg = MqttConfig()
        cfg.enabled, cfg.port, cfg.gateway_id, cfg.health_interval_s = True, broker.port, "t", 3600.0
        pub = publisher.Publisher(store, cfg)
        await pub.start()
        depth = await until(lambda: pub.published >= 2001, 30, "every row acknowledged and deleted")
        assert depth and (await store.read(outbox.status))["depth"] == 0
    finally:
        if pub is not None:
            await pub.stop()
        await store.close()
