"""Issue 15, gateway side: what a standard LwM2M 1.1 client may do and must get.

Each test cites the clause it encodes (OMA-TS-LightweightM2M-Core 1.1, RFC 7252, RFC 8428).
The peer is aiocoap (a third-party CoAP stack); payloads are built with cbor2/json here, not
with the gateway's own codecs.
"""

from __future__ import annotations

import asyncio
import base64
import json

import cbor2
import pytest
from aiocoap import Code
from coap_peers import AiocoapNode, gateway

from gateway.clock import Clock
from gateway.commands import CommandError
from protocol import lwm2m

SENML_JSON = 110


def _json_report(seq: int, t: int, wh: int, level: int) -> bytes:
    return json.dumps([
        {"bn": "/10250/0/", "bt": t, "n": "0", "v": seq},
        {"bn": "/3311/0/", "n": "5805", "v": wh},
        {"n": "5851", "v": level},
        {"n": "5852", "v": 100},
        {"bn": "/3305/0/", "n": "5800", "v": 12.5},
    ]).encode()


async def test_send_in_senml_json_is_parsed_like_senml_cbor(tmp_path):
    """Core 1.1 §6.4.3 (Send) lets a client use SenML-JSON (110, RFC 8428 §5); Wakaama's
    client does. The gateway stores it through the same validation as SenML-CBOR (112):
    same answers, same stored values, same 4.00 for a value out of range."""
    sim = Clock(start=1_800_000_000.0, speed=1.0)
    async with gateway(tmp_path, clock=sim) as gw:
        node = await AiocoapNode("js1", gw.config.coap.port).start()
        try:
            await node.register()
            t = int(sim.now()) - 60
            desc = json.dumps([{"bn": "/10250/0/", "n": "5", "vs": "rue-J"}, {"n": "7", "v": 45},
                               {"bn": "/3/0/", "n": "3", "vs": "w-1.0"}]).encode()
            r = await node.request(Code.POST, "/dp?ep=js1", desc, SENML_JSON)
            assert r.code == Code.CHANGED, r.payload
            r = await node.request(Code.POST, "/dp?ep=js1", _json_report(7, t, 1234, 40), SENML_JSON)
            assert r.code == Code.CHANGED, r.payload
            shown = await gw.registry.show("js1")
            assert shown["group"] == "rue-J" and shown["rated_w"] == 45 and shown["fw"] == "w-1.0"
            assert shown["wh"] == 1234 and shown["level"] == 40
            # the same bad value is refused the same way in both formats
            bad_json = await node.request(Code.POST, "/dp?ep=js1", _json_report(8, t, 1300, 150), SENML_JSON)
            bad_cbor = await node.request(Code.POST, "/dp?ep=js1", cbor2.dumps([
                {-2: "/10250/0/", -3: t, 0: "0", 2: 8}, {-2: "/3311/0/", 0: "5805", 2: 1300},
                {0: "5851", 2: 150}]), lwm2m.CF_SENML_CBOR)
            assert bad_json.code == bad_cbor.code == Code.BAD_REQUEST
            assert bad_json.payload == bad_cbor.payload and b"level" in bad_json.payload
            # not JSON, not an array, a bad base64url vd: 4.00, and nothing stored
            for junk in (b"{", b'{"n": "x"}', b'[{"n": "/10250/0/2", "vd": "!!"}]', b"\xff"):
                r = await node.request(Code.POST, "/dp?ep=js1", junk, SENML_JSON)
                assert r.code == Code.BAD_REQUEST, junk
            vd = base64.urlsafe_b64encode(cbor2.dumps([[0, 60, 30]])).rstrip(b"=").decode()
            r = await node.request(Code.POST, "/dp?ep=js1",
                                   json.dumps([{"n": "/10250/0/2", "vd": vd}]).encode(), SENML_JSON)
            assert r.code == Code.CHANGED  # an opaque descriptor-style record: accepted, ignored
            assert (await gw.registry.show("js1"))["wh"] == 1234
            # other formats are still 4.15 (RFC 7252 §5.10.3)
            r = await node.request(Code.POST, "/dp?ep=js1", b"1", lwm2m.CF_TEXT)
            assert r.code == Code.UNSUPPORTED_CONTENT_FORMAT
        finally:
            await node.stop()


async def test_short_lifetime_is_refused_as_stated_policy(tmp_path):
    """Core 1.1 §6.2.1 sets no minimum lifetime; the gateway's 60 s floor is its own policy
    (SPEC §2), and the 4.00 says so in its diagnostic (RFC 7252 §5.5.2)."""
    async with gateway(tmp_path) as gw:
        node = await AiocoapNode("lt1", gw.config.coap.port).start()
        try:
            r = await node.request(Code.POST, "/rd?ep=lt1&lt=30&lwm2m=1.1&b=U", b"</3/0>", lwm2m.CF_LINK_FORMAT)
            assert r.code == Code.BAD_REQUEST
            assert r.payload.decode() == "lt must be 60-86400 s (gateway policy; LwM2M has no floor)"
            assert r.opt.content_format == lwm2m.CF_TEXT
            r = await node.request(Code.POST, "/rd?ep=lt1&lt=60&lwm2m=1.1&b=U", b"</3/0>", lwm2m.CF_LINK_FORMAT)
            assert r.code == Code.CREATED
        finally:
            await node.stop()


async def test_commands_to_an_object_the_client_never_registered_are_refused(tmp_path):
    """Core 1.1 §6.2.1: the Register body lists the client's objects. A command whose object
    is not among them would be answered 4.04 (§5.4); the gateway refuses it up front with a
    clear message (CLI exit 2 / HTTP 400), fails only those nodes of a mixed group, and
    remembers the object list across a restart (it is in the store)."""
    links_std = b'</>;rt="oma.lwm2m";ct=112,</1/0>,</3/0>,</3311/0>'  # a client without 10250
    async with gateway(tmp_path) as gw:
        std = await AiocoapNode("std", gw.config.coap.port).start()
        ours = await AiocoapNode("ours", gw.config.coap.port).start()
        try:
            await std.register(links=links_std)
            await ours.register()
            assert gw.registry.objects("std") == [1, 3, 3311] and gw.registry.formats("std") == [112]
            assert (await gw.registry.show("std"))["objects"] == [1, 3, 3311]  # slgw node show
            with pytest.raises(CommandError, match=r"node std did not register object 10250"):
                await gw.commands.submit("std", "schedule", {"steps": [[0, 60, 30]]})
            assert await gw.commands.list(node="std") == []  # nothing queued
            # over HTTP: 400 with the reason
            import aiohttp
            async with aiohttp.ClientSession() as http:
                r = await http.put(f"http://127.0.0.1:{gw.config.api.port}/api/schedules/std",
                                   json={"steps": [[0, 60, 30]]})
                body = await r.json()
                assert r.status == 400 and "10250" in json.dumps(body)
            # a level (object 3311) is fine for it
            res = await gw.commands.submit("std", "level", {"level": 30}, wait=5)
            assert res["commands"][0]["state"] == "delivered"
            # a mixed target: the node without 10250 fails at once, the other is delivered
            res = await gw.commands.submit("all", "override", {"level": 20, "seconds": 600}, wait=5)
            by_node = {c["node"]: c for c in res["commands"]}
            assert by_node["std"]["state"] == "failed" and "10250" in by_node["std"]["reason"]
            assert by_node["ours"]["state"] == "delivered"
            assert not [w for w in std.writes if w[0] == "/10250/0/4"]
        finally:
            await std.stop()
            await ours.stop()
    async with gateway(tmp_path) as gw:  # same store: the object list survived the restart
        assert gw.registry.objects("std") == [1, 3, 3311]
        with pytest.raises(CommandError, match="10250"):
            await gw.commands.submit("std", "schedule", {"steps": []})


def test_register_body_summary():
    """Core 1.1 §6.2.1: `</>;rt="oma.lwm2m";ct=...` carries the content formats (one number or
    a quoted list) and may name an alternate root path that prefixes the object links."""
    from gateway.nodes.registry import summarize_links
    from protocol import linkformat

    def s(text: str) -> tuple:
        return summarize_links(linkformat.parse(text))

    assert s('</>;rt="oma.lwm2m";ct=112,</1/0>,</3/0>,</3311/0>,</3311/1>') == ([1, 3, 3311], [112])
    assert s('</lwm2m>;rt="oma.lwm2m";ct="110 112",</lwm2m/3/0>,</lwm2m/5>') == ([3, 5], [110, 112])
    assert s("</3/0>,</10250/0>") == ([3, 10250], [])
    assert s("") == ([], [])



async def test_failed_time_write_is_retried_at_the_next_update(tmp_path):
    """A time Write is NON (SPEC §6) and may be lost or refused; a client that never Sends (an
    LwM2M 1.0 client has no Send) would wait for its next Register. The gateway retries at
    the client's next Update (Core 1.1 §6.2.2) while the time is not set; once set, an Update
    writes nothing."""
    sim = Clock(start=1_800_000_000.0, speed=1.0)
    async with gateway(tmp_path, clock=sim) as gw:
        node = await AiocoapNode("upd1", gw.config.coap.port).start()
        node.answer["/3/0/13"] = Code.SERVICE_UNAVAILABLE
        try:
            await node.register()
            await node.wait_writes(1)
            node.answer.clear()
            assert (await node.request(Code.POST, node.location)).code == Code.CHANGED
            await node.wait_writes(2)
            assert [w[0] for w in node.writes] == ["/3/0/13", "/3/0/13"]
            await asyncio.sleep(0.3)
            assert gw.timesync.writes == 1
            assert (await node.request(Code.POST, node.location)).code == Code.CHANGED
            await asyncio.sleep(0.5)
            assert len(node.writes) == 2  # set already: an Update does not write again
        finally:
            await node.stop()
