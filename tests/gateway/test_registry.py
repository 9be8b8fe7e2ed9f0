"""The node registry: registration lifetime and online status on a simulated clock, re-Register,
Update/De-register, persistence across restarts, stable Modbus slots, the address fallback."""

from __future__ import annotations

import asyncio

from aiocoap import Code
from coap_peers import AiocoapNode, gateway

from gateway.clock import Clock


async def test_lifetime_online_offline_and_reregister(tmp_path):
    clock = Clock(start=1_800_000_000.0, speed=200.0)  # 60 s lifetime = 0.3 s real
    async with gateway(tmp_path, clock=clock) as gw:
        node = await AiocoapNode("r1", gw.config.coap.port).start()
        try:
            await node.register(lt=60)
            first = node.location
            (n,) = await gw.registry.list_nodes()
            assert n["online"] and n["lifetime"] == 60 and n["registered"]
            await asyncio.sleep(0.6)  # > 60 simulated seconds without an Update
            (n,) = await gw.registry.list_nodes()
            assert not n["online"] and n["registered"]
            # an Update brings it back; a Register replaces the registration
            r = await node.request(Code.POST, first + "?lt=120")
            assert r.code == Code.CHANGED
            assert (await gw.registry.list_nodes())[0]["lifetime"] == 120
            assert (await gw.registry.list_nodes())[0]["online"]
            await node.register()
            assert node.location != first
            r = await node.request(Code.POST, first)
            assert r.code == Code.NOT_FOUND  # the old registration is gone
            r = await node.request(Code.DELETE, node.location)
            assert r.code == Code.DELETED
            (n,) = await gw.registry.list_nodes()
            assert not n["online"] and not n["registered"]
        finally:
            await node.stop()


async def test_registrations_and_slots_survive_restart(tmp_path):
    async with gateway(tmp_path) as gw:
        port = gw.config.coap.port
        nodes = [await AiocoapNode(f"s{i}", port).start() for i in range(3)]
        for n in nodes:
            await n.register()
        await nodes[0].register()  # re-registering keeps the slot
        slots = {n["id"]: n["modbus_slot"] for n in await gw.registry.list_nodes()}
        assert slots == {"s0": 0, "s1": 1, "s2": 2}
        # standard LwM2M Send without the ep query: found by source address
        r = await nodes[1].request(Code.POST, "/dp", b"\x80", 112)  # empty pack
        assert r.code == Code.BAD_REQUEST  # identified (not 4.04), then refused: empty
    async with gateway(tmp_path, coap__port=port) as gw:
        # an Update sent after the gateway restarted is still known (2.04, not 4.04)
        r = await nodes[2].request(Code.POST, nodes[2].location)
        assert r.code == Code.CHANGED
        assert {n["id"]: n["modbus_slot"] for n in await gw.registry.list_nodes()} == slots
        late = await AiocoapNode("s3", port).start()
        await late.register()
        assert (await gw.registry.show("s3"))["modbus_slot"] == 3
        assert gw.registry.endpoint_at(gw.registry.address("s1")) == "s1"
        for n in [*nodes, late]:
            await n.stop()


async def test_targets(tmp_path):
    async with gateway(tmp_path) as gw:
        port = gw.config.coap.port
        ns = [await AiocoapNode(f"t{i}", port).start() for i in range(3)]
        try:
            for i, n in enumerate(ns):
                await n.register()
                await n.describe(group="even" if i % 2 == 0 else "odd", cabinet="K")
            assert await gw.registry.resolve_target("group:even") == ["t0", "t2"]
            assert await gw.registry.resolve_target("cabinet:K") == ["t0", "t1", "t2"]
            assert await gw.registry.resolve_target("all") == ["t0", "t1", "t2"]
            assert await gw.registry.resolve_target("t1") == ["t1"]
            assert await gw.registry.resolve_target("group:none") == []
        finally:
            for n in ns:
                await n.stop()
