"""The gateway's OSCORE (issue 11, SPEC "OSCORE" gateway side) in-process, against aiocoap's
own OSCORE as the node stand-in: identity from the key, 4.01 for unprotected or unknown-kid
requests, 4.03 for a Register of another endpoint, every gateway request protected."""

from __future__ import annotations

import asyncio
import json
import os
import socket

import aiocoap
import cbor2
import pytest
from aiocoap import Code, resource
from aiocoap.oscore import NotAProtectedMessage
from aiocoap.transports.oscore import OSCOREAddress
from coap_peers import AiocoapNode, gateway, make_node_key, write_node_context
from slgw_harness import AIOCOAP_CLIENT, free_port

from gateway.coap import keystore
from gateway.coap.client import NodeClient, NodeRefused, NodeUnreachable
from gateway.coap.security import NodeCredentials
from protocol import lwm2m, report

R1 = (1, 1767286800, 1000.0, 20.0, 40, 60, 0)  # seq, t, wh, w, level, on_time, faults


def install(gw_or_dir, keyfile) -> None:
    keys_dir = gw_or_dir if isinstance(gw_or_dir, str) else gw_or_dir.config.coap.keys_dir
    keystore.import_key(keys_dir, keystore.load_key_file(str(keyfile)))


async def nodes_rows(gw) -> dict:
    return {n["id"]: n for n in await gw.registry.list_nodes()}


async def raw(ctx: aiocoap.Context, code: Code, uri: str, payload: bytes = b"",
              cf: int | None = None) -> aiocoap.Message:
    msg = aiocoap.Message(code=code, uri=uri, payload=payload)
    if cf is not None:
        msg.opt.content_format = cf
    return await asyncio.wait_for(ctx.request(msg).response, 20)


async def test_protected_node_registers_sends_and_gets_protected_writes(tmp_path):
    keyfile, node_dir = make_node_key(tmp_path, "lamp-1")
    async with gateway(tmp_path / "gw", coap__security="oscore") as gw:
        install(gw, keyfile)  # imported while the gateway runs: picked up at the unknown kid
        node = await AiocoapNode("lamp-1", gw.config.coap.port, oscore_dir=node_dir).start()
        try:
            await node.register()
            assert (await node.describe()).code == Code.CHANGED
            assert (await node.send([R1])).code == Code.CHANGED
            res = await gw.commands.submit("lamp-1", "level", {"level": 40}, wait=5)
            assert [c["state"] for c in res["commands"]] == ["delivered"]
            # the stand-in answers 4.01 to anything unprotected, so this Write was protected
            assert [(p, v) for p, _cf, v in node.writes] == [("/3311/0/5851", 40)]
            assert gw.coap.stats["send"] == 2 and gw.coap.stats["unauthorized"] == 0
        finally:
            await node.stop()


async def test_unprotected_and_unknown_kid_requests_get_401_and_change_nothing(tmp_path):
    keyfile, node_dir = make_node_key(tmp_path, "lamp-1")
    _other_file, stranger_dir = make_node_key(tmp_path, "lamp-9")  # a key never imported
    async with gateway(tmp_path / "gw", coap__security="oscore") as gw:
        install(gw, keyfile)
        base = f"coap://127.0.0.1:{gw.config.coap.port}"
        plain = await aiocoap.Context.create_client_context()
        stranger = await AiocoapNode("lamp-1", gw.config.coap.port, oscore_dir=stranger_dir).start()
        try:
            r = await raw(plain, Code.POST, f"{base}/rd?ep=lamp-1&lt=300&lwm2m=1.1&b=U",
                          b"</3/0>", lwm2m.CF_LINK_FORMAT)
            assert r.code == Code.UNAUTHORIZED
            r = await raw(plain, Code.POST, f"{base}/dp?ep=lamp-1", report.encode_reports([R1]),
                          lwm2m.CF_SENML_CBOR)
            assert r.code == Code.UNAUTHORIZED
            # an unknown kid: the gateway's 4.01 is unprotected (it has no context to protect
            # it with), which aiocoap's client reports as such
            with pytest.raises(NotAProtectedMessage) as exc:
                await stranger.request(Code.POST, "/rd?ep=lamp-1&lt=300&lwm2m=1.1&b=U",
                                       b"</3/0>", lwm2m.CF_LINK_FORMAT)
            assert exc.value.plain_message.code == Code.UNAUTHORIZED
            assert gw.credentials.unknown_kid == 1
            assert await nodes_rows(gw) == {}
            # the real node registers; then unprotected Update/De-register of its reg-id fail
            node = await AiocoapNode("lamp-1", gw.config.coap.port, oscore_dir=node_dir).start()
            try:
                await node.register()
                for code in (Code.POST, Code.DELETE):
                    r = await raw(plain, code, f"{base}{node.location}")
                    assert r.code == Code.UNAUTHORIZED
                assert gw.registry.is_registered("lamp-1")
                assert gw.registry.address("lamp-1") == f"127.0.0.1:{node.port}"
            finally:
                await node.stop()
            assert gw.coap.stats["send"] == 0
        finally:
            await stranger.stop()
            await plain.shutdown()


async def test_identity_is_the_key_not_ep_or_address(tmp_path):
    key1, dir1 = make_node_key(tmp_path, "lamp-1")
    key2, dir2 = make_node_key(tmp_path, "lamp-2")
    async with gateway(tmp_path / "gw", coap__security="oscore") as gw:
        install(gw, key1)
        install(gw, key2)
        n1 = await AiocoapNode("lamp-1", gw.config.coap.port, oscore_dir=dir1).start()
        n2 = await AiocoapNode("lamp-2", gw.config.coap.port, oscore_dir=dir2).start()
        try:
            await n1.register()
            # lamp-2's key registering as lamp-1: 4.03, lamp-1's registration untouched
            r = await n2.request(Code.POST, "/rd?ep=lamp-1&lt=300&lwm2m=1.1&b=U", b"</3/0>",
                                 lwm2m.CF_LINK_FORMAT)
            assert r.code == Code.FORBIDDEN
            assert gw.registry.address("lamp-1") == f"127.0.0.1:{n1.port}"
            # lamp-2's key updating or de-registering lamp-1's registration: 4.03
            for code in (Code.POST, Code.DELETE):
                r = await n2.request(code, n1.location)
                assert r.code == Code.FORBIDDEN
            assert gw.registry.is_registered("lamp-1")
            # lamp-2 (never registered) sends with ?ep=lamp-1: the key wins, not the query
            r = await n2.request(Code.POST, "/dp?ep=lamp-1", report.encode_reports([R1]),
                                 lwm2m.CF_SENML_CBOR)
            assert r.code == Code.NOT_FOUND
            await n2.register()
            r = await n2.request(Code.POST, "/dp?ep=lamp-1", report.encode_reports([R1]),
                                 lwm2m.CF_SENML_CBOR)
            assert r.code == Code.CHANGED
            rows = await nodes_rows(gw)
            assert rows["lamp-2"]["last_report"] is not None
            assert rows["lamp-1"]["last_report"] is None
        finally:
            await n1.stop()
            await n2.stop()


async def test_no_unprotected_request_to_a_node_without_key(tmp_path):
    """A node registered in the past (store) whose key is gone: the gateway does not fall
    back to an unprotected Write."""
    keyfile, node_dir = make_node_key(tmp_path, "lamp-1")
    async with gateway(tmp_path / "gw", coap__security="oscore",
                       commands__timeout_s=1.0, commands__max_attempts=1) as gw:
        install(gw, keyfile)
        node = await AiocoapNode("lamp-1", gw.config.coap.port, oscore_dir=node_dir).start()
        try:
            await node.register()
            assert keystore.remove_key(gw.config.coap.keys_dir, "lamp-1")
            gw.credentials.rescan_if_changed()
            res = await gw.commands.submit("lamp-1", "level", {"level": 10}, wait=3)
            assert [c["state"] for c in res["commands"]] != ["delivered"]
            assert node.writes == []
        finally:
            await node.stop()


def test_import_list_remove_and_permissions(tmp_path):
    keys_dir = str(tmp_path / "keys")
    keyfile, _ = make_node_key(tmp_path, "lamp-1", sid=bytes.fromhex("0a0b0c0d"))
    key = keystore.load_key_file(str(keyfile))
    assert keystore.import_key(keys_dir, key) == "added"
    assert keystore.import_key(keys_dir, key) == "unchanged"
    listed = keystore.list_keys(keys_dir)
    assert listed == [{"node": "lamp-1", "node_sender_id": "0a0b0c0d", "gateway_sender_id": "00",
                       "alg": "AES-CCM-16-64-128", "next_sequence_number": None}]
    assert key["secret"].hex() not in json.dumps(listed)
    keystore.check_permissions(keys_dir)  # as written: 0700 / 0600
    # the same node Sender ID for another endpoint is refused (the kid names one node)
    other, _ = make_node_key(tmp_path, "lamp-2", sid=bytes.fromhex("0a0b0c0d"))
    try:
        keystore.import_key(keys_dir, keystore.load_key_file(str(other)))
        raise AssertionError("duplicate Sender ID accepted")
    except keystore.KeyFileError as exc:
        assert "lamp-1" in str(exc)
    # a new key for the same endpoint needs replace=True
    (tmp_path / "n").mkdir()
    newer, _ = make_node_key(tmp_path / "n", "lamp-1")
    try:
        keystore.import_key(keys_dir, keystore.load_key_file(str(newer)))
        raise AssertionError("silent key replacement")
    except keystore.KeyFileError as exc:
        assert "--replace" in str(exc)
    assert keystore.import_key(keys_dir, keystore.load_key_file(str(newer)), replace=True) == "replaced"
    # group-readable secret: refused with the chmod to run
    (tmp_path / "keys" / "lamp-1" / "secret.json").chmod(0o640)
    try:
        keystore.check_permissions(keys_dir)
        raise AssertionError("group-readable key accepted")
    except keystore.PermissionProblem as exc:
        assert f"chmod -R go-rwx {keys_dir}" in str(exc)
    assert keystore.remove_key(keys_dir, "lamp-1")
    assert keystore.list_keys(keys_dir) == []
    assert not keystore.remove_key(keys_dir, "lamp-1")


def test_bad_key_files_are_refused_without_echoing_secrets(tmp_path):
    keyfile, _ = make_node_key(tmp_path, "lamp-1")
    doc = json.loads(keyfile.read_text())
    for field, value, words in (("master_secret_hex", doc["master_secret_hex"][:-2], "16 bytes"),
                                ("ep", "../etc", "node name"),
                                ("alg", "AES-CCM-16-128-128", "not supported"),
                                ("node_sender_id_hex", "00", "must differ")):
        bad = tmp_path / "bad.json"
        bad.write_text(json.dumps(dict(doc, **{field: value})))
        try:
            keystore.load_key_file(str(bad))
            raise AssertionError(f"{field}={value!r} accepted")
        except keystore.KeyFileError as exc:
            assert words in str(exc)
            assert doc["master_secret_hex"][:8] not in str(exc)



async def test_none_mode_refuses_a_register_hijack_while_the_node_answers(tmp_path):
    """Unprotected mode (issue 11: "A Register with an existing ep from another address
    replaced the registration"): refused 4.03 while the registered node still answers at its
    address; a node that rebooted onto a new port (nothing answers at the old one) is let in."""
    async with gateway(tmp_path / "gw") as gw:  # security = none
        node = await AiocoapNode("lamp-1", gw.config.coap.port).start()
        try:
            await node.register()
            old = gw.registry.address("lamp-1")
            attacker = await asyncio.create_subprocess_exec(
                AIOCOAP_CLIENT, "-m", "POST",
                f"coap://127.0.0.1:{gw.config.coap.port}/rd?ep=lamp-1&lt=300&lwm2m=1.1&b=U",
                "--content-format", "application/link-format", "--payload", "</3311/0>",
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
            out, _ = await asyncio.wait_for(attacker.communicate(), 60)
            assert attacker.returncode != 0 and b"4.03" in out, out
            assert gw.registry.address("lamp-1") == old
            assert gw.coap.stats["forbidden"] == 1
        finally:
            await node.stop()
        # the same node after a reboot: a new port, nothing at the old one
        rebooted = await AiocoapNode("lamp-1", gw.config.coap.port).start()
        try:
            await rebooted.register()
            assert gw.registry.address("lamp-1") == f"127.0.0.1:{rebooted.port}" != old
        finally:
            await rebooted.stop()


async def test_key_rotation_both_kids_until_the_node_uses_the_new_one(tmp_path):
    keyfile, node_dir = make_node_key(tmp_path, "lamp-1")
    async with gateway(tmp_path / "gw", coap__security="oscore") as gw:
        install(gw, keyfile)
        kdir = gw.config.coap.keys_dir
        node = await AiocoapNode("lamp-1", gw.config.coap.port, oscore_dir=node_dir).start()
        try:
            await node.register()
            await node.describe()
            old_sid = keystore.list_keys(kdir)[0]["node_sender_id"]
            res = await gw.rotate_key("lamp-1", 5.0)
            assert res["state"] == "written" and res["old_node_sender_id"] == old_sid
            assert res["node_sender_id"] != old_sid and node.oscore_dir != node_dir
            assert gw.credentials.pending_rotation("lamp-1")
            # the node now only has its new key (kid 00 for the gateway in both): a Write under
            # the old key would fail to decrypt, so this one went out under the new key
            out = await gw.commands.submit("lamp-1", "level", {"level": 30}, wait=5)
            assert [c["state"] for c in out["commands"]] == ["delivered"]
            # its first request under the new kid completes the rotation
            assert (await node.send([R1])).code == Code.CHANGED
            assert not gw.credentials.pending_rotation("lamp-1")
            assert keystore.list_keys(kdir)[0]["node_sender_id"] == res["node_sender_id"]
            assert sorted(os.listdir(kdir)) == ["lamp-1"]
        finally:
            await node.stop()
        # the old key is dead
        ghost = await AiocoapNode("lamp-1", gw.config.coap.port, oscore_dir=node_dir).start()
        try:
            with pytest.raises(NotAProtectedMessage) as exc:
                await ghost.send([R1])
            assert exc.value.plain_message.code == Code.UNAUTHORIZED
        finally:
            await ghost.stop()


async def test_key_rotation_refused_by_the_node_keeps_the_old_key(tmp_path):
    keyfile, node_dir = make_node_key(tmp_path, "lamp-1")
    async with gateway(tmp_path / "gw", coap__security="oscore") as gw:
        install(gw, keyfile)
        node = await AiocoapNode("lamp-1", gw.config.coap.port, oscore_dir=node_dir).start()
        try:
            await node.register()
            node.answer["/10250/0/30"] = Code.BAD_REQUEST
            with pytest.raises(NodeRefused):
                await gw.rotate_key("lamp-1", 5.0)
            assert not gw.credentials.pending_rotation("lamp-1")
            assert sorted(os.listdir(gw.config.coap.keys_dir)) == ["lamp-1"]
            assert (await node.send([R1])).code == Code.CHANGED
        finally:
            await node.stop()


async def test_a_non_time_write_is_sent_once_under_oscore_too(tmp_path):
    """The time Write goes NON (sent once: a retransmission would carry a stale time, SPEC §6),
    also as the outer OSCORE message (aiocoap does not copy the type; the transport tuning makes
    it NON). A node that never answers sees exactly one datagram."""
    keyfile, _node_dir = make_node_key(tmp_path, "lamp-1")
    kdir = str(tmp_path / "keys")
    install(kdir, keyfile)
    silent = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    silent.bind(("127.0.0.1", 0))
    silent.setblocking(False)
    address = f"127.0.0.1:{silent.getsockname()[1]}"
    creds = NodeCredentials(kdir, lambda a: "lamp-1" if a == address else None)
    creds.load()
    ctx = await aiocoap.Context.create_client_context(transports=["oscore", "udp6"])
    ctx.client_credentials = creds
    try:
        client = NodeClient(ctx, credentials=creds)
        with pytest.raises(NodeUnreachable):
            await client.write(address, "/3/0/13", 1767286800, mtype=aiocoap.NON, timeout=4.5)
        got = []
        while True:
            try:
                got.append(silent.recv(2048))
            except BlockingIOError:
                break
        assert len(got) == 1
        assert aiocoap.Message.decode(got[0]).opt.oscore is not None
        assert aiocoap.Message.decode(got[0]).mtype == aiocoap.NON
    finally:
        await ctx.shutdown()
        creds.close()
        silent.close()


async def test_unconfirmed_rotation_survives_a_gateway_restart(tmp_path):
    """The node took its new key but the 2.04 was lost (here: the node was away): the gateway
    keeps both keys across a restart, and the node's first request under the new key completes
    the rotation."""
    keyfile, node_dir = make_node_key(tmp_path, "lamp-1")
    async with gateway(tmp_path / "gw", coap__security="oscore", commands__timeout_s=1.0) as gw:
        install(gw, keyfile)
        kdir = gw.config.coap.keys_dir
        node = await AiocoapNode("lamp-1", gw.config.coap.port, oscore_dir=node_dir).start()
        await node.register()
        await node.stop()  # away when the key comes
        res = await gw.rotate_key("lamp-1", 2.0)
        assert res["state"] == "unconfirmed"
    pending = os.path.join(kdir, keystore.ROTATE_PREFIX + "lamp-1")
    sec = json.loads(open(os.path.join(pending, "secret.json")).read())
    new_dir = write_node_context(tmp_path, bytes.fromhex(sec["secret_hex"]),
                                 bytes.fromhex(sec["salt_hex"]), bytes.fromhex(res["node_sender_id"]))
    async with gateway(tmp_path / "gw", coap__security="oscore") as gw:
        assert gw.credentials.pending_rotation("lamp-1")
        node = await AiocoapNode("lamp-1", gw.config.coap.port, oscore_dir=new_dir).start()
        try:
            await node.register()
            assert (await node.send([R1])).code == Code.CHANGED
            assert not gw.credentials.pending_rotation("lamp-1")
            assert keystore.list_keys(kdir)[0]["node_sender_id"] == res["node_sender_id"]
        finally:
            await node.stop()
        old = await AiocoapNode("lamp-1", gw.config.coap.port, oscore_dir=node_dir).start()
        try:
            with pytest.raises(NotAProtectedMessage):
                await old.send([R1])
        finally:
            await old.stop()


class _Level(resource.ObservableResource):
    """/3311/0/5851 of a protected node: Read and Observe only under OSCORE."""

    def __init__(self) -> None:
        super().__init__()
        self.value = 40

    def set(self, v: int) -> None:
        self.value = v
        self.updated_state()

    async def render_get(self, request):
        if not isinstance(request.remote, OSCOREAddress):
            return aiocoap.Message(code=Code.UNAUTHORIZED)
        return aiocoap.Message(payload=cbor2.dumps(self.value), content_format=60)


class _Reboot(resource.Resource):
    def __init__(self) -> None:
        super().__init__()
        self.protected = []

    async def render_post(self, request):
        self.protected.append(isinstance(request.remote, OSCOREAddress))
        return aiocoap.Message(code=Code.CHANGED)


async def test_read_execute_observe_are_protected(tmp_path):
    keyfile, node_dir = make_node_key(tmp_path, "lamp-1")
    kdir = str(tmp_path / "keys")
    install(kdir, keyfile)
    from aiocoap.credentials import CredentialsMap
    from aiocoap.oscore import FilesystemSecurityContext
    from aiocoap.oscore_sitewrapper import OscoreSiteWrapper
    node_ctx = FilesystemSecurityContext(str(node_dir))
    site, level, reboot = resource.Site(), _Level(), _Reboot()
    site.add_resource(("3311", "0", "5851"), level)
    site.add_resource(("3", "0", "4"), reboot)
    node_creds = CredentialsMap({":node": node_ctx})
    port = free_port(socket.SOCK_DGRAM)
    server = await aiocoap.Context.create_server_context(
        None, bind=("127.0.0.1", port), transports=["oscore", "simplesocketserver"],
        server_credentials=node_creds)
    server.serversite = OscoreSiteWrapper(site, node_creds)
    address = f"127.0.0.1:{port}"
    creds = NodeCredentials(kdir, lambda a: "lamp-1" if a == address else None)
    creds.load()
    ctx = await aiocoap.Context.create_client_context(transports=["oscore", "udp6"])
    ctx.client_credentials = creds
    try:
        client = NodeClient(ctx, credentials=creds, timeout=10)
        assert await client.read(address, "/3311/0/5851") == 40
        await client.execute(address, "/3/0/4")
        assert reboot.protected == [True]
        seen = []
        obs = client.observe(address, "/3311/0/5851")
        async for v in obs:
            seen.append(v)
            if len(seen) == 1:
                level.set(70)
            else:
                break
        await obs.aclose()
        assert seen == [40, 70]
    finally:
        await ctx.shutdown()
        await server.shutdown()
        creds.close()
        node_ctx._destroy()


async def test_a_full_backlog_pack_goes_through_oscore(tmp_path):
    """A 1,024-byte backlog Send (SPEC §3.2) still fits one protected datagram and is stored."""
    keyfile, node_dir = make_node_key(tmp_path, "lamp-1")
    reps = [(100 + i, 1767286800 + 900 * i, 1000.0 + i, 20.0, 40, 60 * i, 0) for i in range(40)]
    pack = report.pack_reports(reps)[0]
    assert len(report.encode_reports(pack)) > 900
    async with gateway(tmp_path / "gw", coap__security="oscore") as gw:
        install(gw, keyfile)
        node = await AiocoapNode("lamp-1", gw.config.coap.port, oscore_dir=node_dir).start()
        try:
            await node.register()
            await node.describe()
            assert (await node.send(pack)).code == Code.CHANGED
            assert gw.coap.stats["reports"] == len(pack)
        finally:
            await node.stop()


async def test_a_lost_time_write_does_not_drop_the_answer_to_the_nodes_send(tmp_path):
    """HIL s3 on OSCORE (issue 11): the gateway answers a node's Send late (empty ACK, then a
    separate CON response) while the time Write its report triggered is in flight to the same
    node. aiocoap sends one CON at a time per peer (NSTART 1): the separate response waits
    behind the Write; when that Write (sent once) is lost, aiocoap drops every CON queued for
    the peer, the separate response too, and the node waited MAX_TRANSMIT_WAIT (93 s) for an
    answer that never came. The time Write goes NON on the wire: it holds no CON slot."""
    keyfile, _node_dir = make_node_key(tmp_path, "lamp-1")
    kdir = str(tmp_path / "keys")
    install(kdir, keyfile)
    node = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    node.bind(("127.0.0.1", 0))
    node.setblocking(False)
    address = f"127.0.0.1:{node.getsockname()[1]}"
    creds = NodeCredentials(kdir, lambda a: "lamp-1" if a == address else None)
    creds.load()
    seen: list[aiocoap.Message] = []
    write_sent, empty_acked = asyncio.Event(), asyncio.Event()
    holder: dict = {}

    class Dp(resource.Resource):
        async def render_post(self, request):
            # as the gateway does for a report that shows drift: the time Write starts while
            # the Send is being answered; the answer waits until the node has the empty ACK
            holder["w"] = asyncio.ensure_future(holder["client"].write(
                address, "/3/0/13", 1767286800, mtype=aiocoap.NON, timeout=4.5))
            await write_sent.wait()
            await empty_acked.wait()
            return aiocoap.Message(code=Code.CHANGED)

    site = resource.Site()
    site.add_resource(["dp"], Dp())
    port = free_port()
    ctx = await aiocoap.Context.create_server_context(site, bind=("127.0.0.1", port),
                                                       transports=["oscore", "udp6"])
    ctx.client_credentials = creds
    holder["client"] = NodeClient(ctx, credentials=creds)
    loop = asyncio.get_running_loop()
    try:
        send = aiocoap.Message(code=Code.POST, uri_path=["dp"], payload=b"report")
        send.mtype, send.mid, send.token = aiocoap.CON, 0x1234, b"\x5e\x4d"
        node.sendto(send.encode(), ("127.0.0.1", port))
        answer = None
        deadline = loop.time() + 10  # the lost Write gives up after ACK_TIMEOUT (2-3 s)
        while answer is None and loop.time() < deadline:
            try:
                data = node.recv(2048)
            except BlockingIOError:
                await asyncio.sleep(0.01)
                continue
            m = aiocoap.Message.decode(data)
            seen.append(m)
            if m.code.is_request():  # the time Write: lost on the way (never answered)
                write_sent.set()
            elif m.code == Code.EMPTY and m.mid == send.mid:
                empty_acked.set()
            elif m.token == send.token:
                if m.mtype == aiocoap.CON:
                    ack = aiocoap.Message(code=Code.EMPTY)
                    ack.mtype, ack.mid, ack.token = aiocoap.ACK, m.mid, b""
                    node.sendto(ack.encode(), ("127.0.0.1", port))
                answer = m
        assert write_sent.is_set() and empty_acked.is_set(), seen
        assert answer is not None and answer.code == Code.CHANGED, seen
        writes = [m for m in seen if m.code.is_request()]
        assert len(writes) == 1 and writes[0].mtype == aiocoap.NON and writes[0].opt.oscore is not None
        with pytest.raises(NodeUnreachable):
            await holder["w"]
    finally:
        if "w" in holder:
            holder["w"].cancel()
            await asyncio.gather(holder["w"], return_exceptions=True)
        await ctx.shutdown()
        creds.close()
        node.close()


async def test_a_lost_non_leaves_nothing_pending_at_shutdown(tmp_path, caplog):
    """A NON request under OSCORE that gets no answer is ended when it times out: aiocoap's
    OSCORE transport would otherwise wait for its answer until the context stops, and log
    LibraryShutdown errors then (one per lost time Write of the gateway's life)."""
    keyfile, _node_dir = make_node_key(tmp_path, "lamp-1")
    kdir = str(tmp_path / "keys")
    install(kdir, keyfile)
    silent = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    silent.bind(("127.0.0.1", 0))
    address = f"127.0.0.1:{silent.getsockname()[1]}"
    creds = NodeCredentials(kdir, lambda a: "lamp-1" if a == address else None)
    creds.load()
    ctx = await aiocoap.Context.create_client_context(transports=["oscore", "udp6"])
    ctx.client_credentials = creds
    caplog.set_level("DEBUG")
    try:
        client = NodeClient(ctx, credentials=creds)
        for _ in range(2):
            with pytest.raises(NodeUnreachable):
                await client.write(address, "/3/0/13", 1767286800, mtype=aiocoap.NON, timeout=0.3)
        await asyncio.sleep(0.05)
    finally:
        await ctx.shutdown()
        await asyncio.sleep(0.05)
        creds.close()
        silent.close()
    errors = [r for r in caplog.records if r.levelno >= 40]
    assert not errors, [r.getMessage() for r in errors]
