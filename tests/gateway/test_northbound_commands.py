"""Commands from MQTT (issue 13) through the real broker, its password file and ACL: a valid
one reaches the lamps through the command queue; a malformed one, and one from an account the
ACL does not allow, are refused and the lamps' level is unchanged. Home Assistant discovery and
ThingsBoard telemetry on the same broker; `slgw northbound status`."""

from __future__ import annotations

import json
import subprocess

import aiomqtt
from coap_peers import RawCrowd
from mqtt_peers import BIN, Broker, Gw, Subscriber
from test_northbound_broker import send, until

ACL = """user gw
topic readwrite town/#
topic write homeassistant/#

user operator
topic write town/gwC/command
topic read town/gwC/command/result

user intruder
topic read town/#
topic write town/#
pattern read $SYS/#
"""
# the intruder may write anywhere under town/ EXCEPT the command topic: mosquitto denies a
# publish unless some rule allows it, so it gets its own, narrower rule set below
ACL = ACL.replace("user intruder\ntopic read town/#\ntopic write town/#\n",
                  "user intruder\ntopic read town/#\ntopic write town/gwC/elsewhere\n")
PASSWORDS = {"gw": "gw-secret", "operator": "op-secret", "intruder": "in-secret"}


async def publish(user: str, topic: str, payload: bytes) -> None:
    async with aiomqtt.Client("127.0.0.1", PORT[0], username=user, password=PASSWORDS[user],
                              identifier=f"{user}-pub") as c:
        await c.publish(topic, payload, qos=1)


PORT = [0]


def levels(crowd: RawCrowd, idx: int) -> list:
    return [v for path, v in crowd.writes[idx] if path == "/3311/0/5851"]


async def test_commands_from_mqtt_validated_queued_and_authorised_by_acl(procs, tmp_path):
    broker = Broker(procs, tmp_path / "broker", acl=ACL, passwords=PASSWORDS).start()
    PORT[0] = broker.port
    pw = tmp_path / "gw.password"
    pw.write_text("gw-secret\n")
    pw.chmod(0o600)
    gw = Gw(procs, tmp_path / "gw", broker.port, "gwC", "--mqtt-commands", "true",
            "--mqtt-username", "gw", "--mqtt-password-file", str(pw)).start()
    crowd = await RawCrowd(2, gw.coap_port, prefix="c").start()
    results = await Subscriber(broker.port, "town/gwC/command/result", "op-results",
                               username="operator", password="op-secret").start()
    try:
        await crowd.register_all("west")
        await until(lambda: gw.status()["connected"], 20, "the gateway on the broker")
        topic = "town/gwC/command"

        def result(cid):
            return next((d for _t, d in results.messages if d.get("id") == cid), None)

        await publish("operator", topic, json.dumps(
            {"id": "c1", "target": "group:west", "kind": "level", "level": 40}).encode())
        r1 = await until(lambda: result("c1"), 20, "the result of c1")
        assert r1["ok"] and r1["commands"] == 2
        await until(lambda: levels(crowd, 0) == [40] and levels(crowd, 1) == [40], 20,
                    "level 40 on both lamps")
        bad = [b"not json", json.dumps({"id": "c2", "target": "group:west", "kind": "level",
                                        "level": 400}).encode(),
               json.dumps({"id": "c3", "target": "group:west", "kind": "schedule"}).encode(),
               json.dumps({"id": "c4", "target": "group:nowhere", "kind": "level",
                           "level": 10}).encode(),
               json.dumps({"id": "c5", "target": "group:west", "kind": "override",
                           "level": 10, "seconds": -5}).encode()]
        for b in bad:
            await publish("operator", topic, b)
        # the intruder's command is well formed: only the broker's ACL stops it
        await publish("intruder", topic, json.dumps(
            {"id": "evil", "target": "group:west", "kind": "level", "level": 0}).encode())
        await publish("operator", topic, json.dumps(
            {"id": "c9", "target": "group:west", "kind": "level", "level": 60}).encode())
        r9 = await until(lambda: result("c9"), 20, "the result of c9")
        assert r9["ok"]
        await until(lambda: len(crowd.writes[0]) >= 2 and len(crowd.writes[1]) >= 2, 20,
                    "level 60 on both lamps")
        for cid, code in (("c2", "bad_request"), ("c3", "bad_request"), ("c4", "not_found"),
                          ("c5", "bad_request")):
            r = result(cid)
            assert r is not None and r["ok"] is False and r["error"]["code"] == code, (cid, r)
        assert any(d.get("ok") is False and d.get("id") is None and "JSON" in d["error"]["message"]
                   for _t, d in results.messages)
        assert result("evil") is None
        for i in range(2):  # only c1 and c9 reached the lamps; the level never went to 0
            assert crowd.writes[i] == [("/3311/0/5851", 40), ("/3311/0/5851", 60)]
        log = gw.proc.log.read_text()
        assert "command c2 from town/gwC/command refused" in log
    finally:
        crowd.close()
        await results.stop()


async def test_home_assistant_discovery_thingsboard_and_status_cli(procs, tmp_path):
    broker = Broker(procs, tmp_path / "broker").start()
    sub = await Subscriber(broker.port, "#").start()
    gw = Gw(procs, tmp_path / "gw", broker.port, "gwH", "--mqtt-ha-discovery", "true",
            "--mqtt-thingsboard", "true").start()
    crowd = await RawCrowd(1, gw.coap_port, prefix="h").start()
    try:
        await crowd.register_all("g")
        await send(crowd, 0, range(1, 31), 5)
        gw.api("/api/energy")
        await until(lambda: gw.status()["outbox"]["depth"] == 0, 20, "the outbox to empty")
        topics = {t: d for t, d in sub.messages}
        energy = topics.get("homeassistant/sensor/gwH_h-0000/energy/config")
        assert energy is not None
        assert energy["device_class"] == "energy" and energy["state_class"] == "total_increasing"
        assert energy["state_topic"] == "town/gwH/node/h-0000/state"
        assert energy["device"]["identifiers"] == ["gwH_h-0000"]
        assert "homeassistant/binary_sensor/gwH_h-0000/fault/config" in topics
        # the energy the HA entity reads never decreases, and ends at the gateway's total
        states = [d["energy_wh"] for t, d in sub.messages if t == "town/gwH/node/h-0000/state"]
        assert states == sorted(states) and states[-1] > 0
        assert topics["town/gwH/status"] == {"raw": "online"}
        health = topics["town/gwH/health"]
        assert health["type"] == "health" and health["gateway"] == "gwH" and "depth" in health["outbox"]
        tb = [d for t, d in sub.messages if t == "v1/gateway/telemetry"]
        seqs = sorted(v["values"]["seq"] for d in tb for v in d["h-0000"])
        assert seqs == list(range(1, 31))
        r = subprocess.run([str(BIN / "slgw"), "--url", gw.url, "northbound", "status", "--json"],
                           capture_output=True, text=True, timeout=30)
        assert r.returncode == 0, r.stderr
        doc = json.loads(r.stdout)
        assert doc["connected"] is True and doc["outbox"]["depth"] == 0
        assert doc["gateway_id"] == "gwH" and doc["published"] > 0
        broker.stop()
        await until(lambda: not gw.status()["connected"], 20, "the gateway to see the outage")
        r = subprocess.run([str(BIN / "slgw"), "--url", gw.url, "northbound", "status"],
                           capture_output=True, text=True, timeout=30)
        assert r.returncode == 0 and "NOT connected" in r.stdout and "last error" in r.stdout
    finally:
        crowd.close()
        await sub.stop()
