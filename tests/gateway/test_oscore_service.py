"""OSCORE on the real `slgw serve` (issue 11) against real peers: key files made by the real
`slnode provision` code, `slgw keys`, `aiocoap-client` with OSCORE credentials as a protected
node, plain `aiocoap-client` as the attacker, and a SIGKILL of the gateway between a captured
protected Send and its replay."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import time
from pathlib import Path

import aiocoap
from aiocoap.numbers.codes import Code
from aiocoap.oscore import FilesystemSecurityContext
from slgw_harness import AIOCOAP_CLIENT, SLGW, SlgwProcess

from protocol import lwm2m, report
from tools.slnode import provision


def provision_key(tmp: Path, ep: str) -> tuple[Path, Path]:
    """The gateway key file exactly as `slnode provision` writes it, and the node's side as an
    aiocoap context directory plus an aiocoap-client credentials file."""
    node, gw = provision.new_keys(ep, set())
    keyfile = tmp / f"{ep}.oscore.json"
    provision.write_key_file(keyfile, gw)
    node_dir = tmp / f"node-{ep}"
    node_dir.mkdir(mode=0o700)
    (node_dir / "secret.json").write_text(json.dumps({"secret_hex": node["ms"],
                                                      "salt_hex": node["salt"]}))
    (node_dir / "settings.json").write_text(json.dumps({
        "sender-id_hex": node["sid"], "recipient-id_hex": node["rid"],
        "algorithm": "AES-CCM-16-64-128", "kdf-hashfun": "sha256"}))
    return keyfile, node_dir


def keys(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([SLGW, "keys", *args], capture_output=True, text=True, timeout=60)


def coap(*args: str, creds: Path | None = None) -> subprocess.CompletedProcess:
    extra = ["--credentials", str(creds)] if creds else []
    return subprocess.run([AIOCOAP_CLIENT, *extra, *args], capture_output=True, text=True,
                          timeout=60)


def creds_file(tmp: Path, port: int, node_dir: Path) -> Path:
    f = tmp / f"creds-{node_dir.name}.json"
    f.write_text(json.dumps({f"coap://127.0.0.1:{port}/*": {"oscore": {"contextfile": f"{node_dir}/"}}}))
    return f


def oscore_gw(tmp: Path, kdir: Path, **kw) -> SlgwProcess:
    return SlgwProcess(tmp, "--coap-keys-dir", str(kdir), security="oscore", **kw)


def test_keys_import_list_remove(tmp_path):
    kdir = tmp_path / "keys"
    k1, _ = provision_key(tmp_path, "lamp-1")
    k2, _ = provision_key(tmp_path, "lamp-2")
    r = keys("import", "--keys-dir", str(kdir), "--json", str(k1), str(k2))
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert [(i["node"], i["result"]) for i in doc["imported"]] == [("lamp-1", "added"),
                                                                   ("lamp-2", "added")]
    assert os.stat(kdir).st_mode & 0o777 == 0o700
    assert os.stat(kdir / "lamp-1" / "secret.json").st_mode & 0o777 == 0o600
    secret = json.loads(k1.read_text())["master_secret_hex"]
    salt = json.loads(k1.read_text())["master_salt_hex"]
    r = keys("list", "--keys-dir", str(kdir), "--json")
    assert r.returncode == 0
    listed = json.loads(r.stdout)["keys"]
    assert [k["node"] for k in listed] == ["lamp-1", "lamp-2"]
    assert listed[0]["node_sender_id"] == json.loads(k1.read_text())["node_sender_id_hex"]
    human = keys("list", "--keys-dir", str(kdir))
    for out in (r.stdout + r.stderr, human.stdout + human.stderr, doc.__repr__()):
        assert secret not in out and salt not in out
    # the same file again: unchanged; the same Sender ID under another name: exit 2, named
    assert json.loads(keys("import", "--keys-dir", str(kdir), "--json", str(k1)).stdout)[
        "imported"][0]["result"] == "unchanged"
    forged = tmp_path / "forged.json"
    forged.write_text(json.dumps(dict(json.loads(k1.read_text()), ep="lamp-3")))
    r = keys("import", "--keys-dir", str(kdir), "--json", str(forged))
    assert r.returncode == 2
    assert "already used by lamp-1" in json.loads(r.stdout)["errors"][0]["message"]
    r = keys("remove", "--keys-dir", str(kdir), "lamp-2", "--json")
    assert r.returncode == 0 and json.loads(r.stdout) == {"keys_dir": str(kdir), "removed": "lamp-2"}
    r = keys("remove", "--keys-dir", str(kdir), "lamp-2", "--json")
    assert r.returncode == 4 and json.loads(r.stdout)["error"]["code"] == "not_found"


def test_serve_refuses_keys_open_to_others(tmp_path):
    kdir = tmp_path / "keys"
    k1, _ = provision_key(tmp_path, "lamp-1")
    assert keys("import", "--keys-dir", str(kdir), str(k1)).returncode == 0
    (kdir / "lamp-1" / "secret.json").chmod(0o644)
    gw = oscore_gw(tmp_path, kdir)
    r = subprocess.run(gw.args(), capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert r.returncode == 5
    assert f"chmod -R go-rwx {kdir}" in r.stdout + r.stderr
    assert json.loads(k1.read_text())["master_secret_hex"] not in r.stdout + r.stderr


def test_unprotected_attacks_fail_and_the_protected_node_works(tmp_path):
    kdir = tmp_path / "keys"
    k1, node_dir = provision_key(tmp_path, "lamp-1")
    assert keys("import", "--keys-dir", str(kdir), str(k1)).returncode == 0
    forged = tmp_path / "forged.cbor"
    forged.write_bytes(report.encode_reports([(2**63 - 1, int(time.time()), 10**15, 40, 100, 0, 0)]))
    desc = tmp_path / "desc.cbor"
    desc.write_bytes(report.encode_descriptor("1.0", 48.0, 2.0, "g", "c", 40.0, 100, "UTC"))
    with oscore_gw(tmp_path, kdir) as gw:
        base = f"coap://127.0.0.1:{gw.coap_port}"
        creds = creds_file(tmp_path, gw.coap_port, node_dir)
        reg = f"{base}/rd?ep=lamp-1&lt=300&lwm2m=1.1&b=U"
        # the attacker first: nothing registers, nothing is stored
        for method, uri, cf, payload in (("POST", reg, "application/link-format", "</3311/0>"),
                                         ("PUT", f"{base}/rd", "application/link-format", "</3/0>"),
                                         ("POST", f"{base}/dp?ep=lamp-1", "application/senml+cbor",
                                          f"@{forged}"),
                                         ("PUT", f"{base}/dp", "application/senml+cbor", f"@{forged}")):
            r = coap("-m", method, uri, "--content-format", cf, "--payload", payload)
            assert r.returncode != 0 and "4.01" in r.stdout + r.stderr, (method, uri, r)
        assert gw.api("GET", "/api/nodes")["nodes"] == []
        # the protected node (aiocoap-client with the key): Register, descriptor, a report
        r = coap("-m", "POST", reg, "--content-format", "application/link-format",
                 "--payload", "</3/0>,</3311/0>", creds=creds)
        assert r.returncode == 0, r.stderr
        for payload in (desc, ):
            r = coap("-m", "POST", f"{base}/dp", "--content-format", "application/senml+cbor",
                     "--payload", f"@{payload}", creds=creds)
            assert r.returncode == 0, r.stderr
        (node,) = gw.api("GET", "/api/nodes")["nodes"]
        address = node["address"]
        # unprotected again, now that lamp-1 exists: a hijacking Register, a forged ?ep= Send
        r = coap("-m", "POST", reg, "--content-format", "application/link-format", "--payload",
                 "</3311/0>")
        assert "4.01" in r.stdout + r.stderr
        r = coap("-m", "POST", f"{base}/dp?ep=lamp-1", "--content-format",
                 "application/senml+cbor", "--payload", f"@{forged}")
        assert "4.01" in r.stdout + r.stderr
        (node,) = gw.api("GET", "/api/nodes")["nodes"]
        assert node["address"] == address and node["wh"] is None
        health = gw.api("GET", "/api/health")["coap_stats"]
        assert health["unauthorized"] == 6 and health["send"] == 1
        assert "OSCORE required" in gw.log()
        key = json.loads(k1.read_text())
        for secret in (key["master_secret_hex"], key["master_salt_hex"]):
            assert secret not in gw.log() and secret.upper() not in gw.log()
        # `slgw keys rotate` goes through the API: a node without a key is "not found"
        r = gw.cli("keys", "rotate", "lamp-9", "--json")
        assert r.returncode == 4 and "no OSCORE key" in json.loads(r.stdout)["error"]["message"]


def _protected_send(node_dir: Path, seq: int) -> bytes:
    """One protected Send datagram as the node would put it on the wire (captured here)."""
    ctx = FilesystemSecurityContext(str(node_dir))
    try:
        msg = aiocoap.Message(code=Code.POST, uri_path=("dp",),
                              payload=report.encode_reports([(seq, int(time.time()) - 60, 1000 + seq,
                                                              40, 100, 0, 0)]))
        msg.opt.content_format = lwm2m.CF_SENML_CBOR
        protected, _ = ctx.protect(msg)
    finally:
        ctx._destroy()  # persists the sequence number: aiocoap-client continues after it
    protected.mtype = aiocoap.CON
    protected.mid = 0x4242 + seq
    protected.token = bytes((seq,))
    return protected.encode()


def _udp(port: int, datagram: bytes) -> aiocoap.Message:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(10)
        s.sendto(datagram, ("127.0.0.1", port))
        return aiocoap.Message.decode(s.recv(2048))


def test_gateway_sigkill_neither_locks_the_node_out_nor_accepts_a_replay(tmp_path):
    kdir = tmp_path / "keys"
    k1, node_dir = provision_key(tmp_path, "lamp-1")
    assert keys("import", "--keys-dir", str(kdir), str(k1)).returncode == 0
    gw = oscore_gw(tmp_path, kdir).start()
    try:
        base = f"coap://127.0.0.1:{gw.coap_port}"
        creds = creds_file(tmp_path, gw.coap_port, node_dir)
        r = coap("-m", "POST", f"{base}/rd?ep=lamp-1&lt=300&lwm2m=1.1&b=U", "--content-format",
                 "application/link-format", "--payload", "</3/0>,</3311/0>", creds=creds)
        assert r.returncode == 0, r.stderr
        captured = _protected_send(node_dir, 1)
        answer = _udp(gw.coap_port, captured)
        assert answer.opt.oscore is not None  # a protected answer: processed
        assert gw.api("GET", "/api/health")["coap_stats"]["send"] == 1
        # replayed while the gateway runs: its replay window refuses it
        answer = _udp(gw.coap_port, captured[:2] + b"\x99\x99" + captured[4:])  # new MID
        assert answer.code == Code.UNAUTHORIZED
        health = gw.api("GET", "/api/health")
        assert health["coap_stats"]["send"] == 1
        assert health["oscore"] == {"keys": 1, "rotations_pending": 0, "unknown_kid": 0, "replays": 1}
        assert "was a replay" in gw.log()

        gw.kill9()
        # what aiocoap persisted: the sequence number bound, and the replay window as unknown
        seq = json.loads((kdir / "lamp-1" / "sequence.json").read_text())
        assert seq["received"] == "unknown" and seq["next-to-send"] >= 0
        gw2 = oscore_gw(tmp_path, kdir, store=gw.store, coap_port=gw.coap_port).start()
        try:
            # after the crash the replay window is unknown: the replay is not processed (the
            # gateway asks for freshness, RFC 8613 B.1.2), stats start at 0 in the new process
            _udp(gw2.coap_port, captured[:2] + b"\x98\x98" + captured[4:])
            assert gw2.api("GET", "/api/health")["coap_stats"]["send"] == 0
            # the real node is not locked out: aiocoap answers the Echo and it is accepted
            d = tmp_path / "r2.cbor"
            d.write_bytes(report.encode_reports([(2, int(time.time()) - 30, 1010, 40, 100, 0, 0)]))
            r = coap("-m", "POST", f"{base}/dp", "--content-format", "application/senml+cbor",
                     "--payload", f"@{d}", creds=creds)
            assert r.returncode == 0, r.stdout + r.stderr
            assert gw2.api("GET", "/api/health")["coap_stats"]["send"] == 1
            assert "/3311/0/5805" not in r.stdout  # (2.04 carries no payload)
            # and the old capture stays refused once the window is known again
            answer = _udp(gw2.coap_port, captured[:2] + b"\x97\x97" + captured[4:])
            assert answer.code == Code.UNAUTHORIZED
            assert gw2.api("GET", "/api/health")["coap_stats"]["send"] == 1
        finally:
            gw2.stop()
    finally:
        gw.stop()


def test_import_as_root_leaves_the_keys_to_the_owner_of_the_state_directory(tmp_path):
    """`sudo slgw keys import` into the service's state directory: the keys must belong to the
    service's user (here uid 65534), or the gateway could not read them. Runs as root, as CI
    and the development machines do (giving a directory to another user needs it)."""
    state = tmp_path / "state"
    state.mkdir()
    os.chown(state, 65534, 65534)
    k1, _ = provision_key(tmp_path, "lamp-1")
    kdir = state / "keys"
    assert keys("import", "--keys-dir", str(kdir), str(k1)).returncode == 0
    for path in (kdir, kdir / "lamp-1", kdir / "lamp-1" / "secret.json", kdir / "lamp-1" / "settings.json"):
        st = os.stat(path)
        assert (st.st_uid, st.st_gid) == (65534, 65534), path
        assert st.st_mode & 0o077 == 0, path
