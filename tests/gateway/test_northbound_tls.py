"""[mqtt] TLS and credentials against a real mosquitto (issue 13): the gateway checks the
broker against its CA file and shows a client certificate; a broker signed by another CA is
refused (and says why in `slgw northbound status`); an unreadable password file stops the
start with exit 5 naming the key."""

from __future__ import annotations

import datetime
import ipaddress
import subprocess

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from mqtt_peers import BIN, Broker, Gw
from test_northbound_broker import until


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def make_ca(d, name: str):
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(_name(name)).issuer_name(_name(name))
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=30))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    (d / f"{name}.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return key, cert


def issue(d, ca, name: str, server: bool) -> None:
    ca_key, ca_cert = ca
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    b = (x509.CertificateBuilder().subject_name(_name(name)).issuer_name(ca_cert.subject)
         .public_key(key.public_key()).serial_number(x509.random_serial_number())
         .not_valid_before(now - datetime.timedelta(days=1))
         .not_valid_after(now + datetime.timedelta(days=30)))
    if server:
        b = b.add_extension(x509.SubjectAlternativeName(
            [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
    cert = b.sign(ca_key, hashes.SHA256())
    (d / f"{name}.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (d / f"{name}.key").write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))
    (d / f"{name}.key").chmod(0o600)


async def test_tls_with_ca_and_client_certificate(procs, tmp_path):
    pki = tmp_path / "pki"
    pki.mkdir()
    ca = make_ca(pki, "town-ca")
    make_ca(pki, "other-ca")
    issue(pki, ca, "broker", server=True)
    issue(pki, ca, "gw", server=False)
    broker = Broker(procs, tmp_path / "broker", tls=[
        f"cafile {pki / 'town-ca.pem'}", f"certfile {pki / 'broker.pem'}",
        f"keyfile {pki / 'broker.key'}", "require_certificate true"]).start()
    gw = Gw(procs, tmp_path / "gw", broker.port, "gwT", "--mqtt-ca-file", str(pki / "town-ca.pem"),
            "--mqtt-cert-file", str(pki / "gw.pem"), "--mqtt-key-file", str(pki / "gw.key")).start()
    st = await until(lambda: (lambda s: s if s["connected"] else None)(gw.status()), 20,
                     "a TLS connection")
    assert st["tls"] is True
    # the same broker, but the gateway trusts another CA: refused, and status says why
    wrong = Gw(procs, tmp_path / "gw2", broker.port, "gwW",
               "--mqtt-ca-file", str(pki / "other-ca.pem"), "--mqtt-cert-file", str(pki / "gw.pem"),
               "--mqtt-key-file", str(pki / "gw.key")).start()
    st = await until(lambda: (lambda s: s if s["last_error"] else None)(wrong.status()), 20,
                     "the refused connection")
    assert not st["connected"] and "certificate verify failed" in st["last_error"].lower()


def test_unreadable_password_file_stops_the_start(tmp_path):
    r = subprocess.run([str(BIN / "slgw"), "serve", "--store-path", str(tmp_path / "gw.db"),
                        "--coap-security", "none", "--coap-port", "0", "--api-port", "0",
                        "--mqtt-enabled", "true", "--mqtt-password-file",
                        str(tmp_path / "missing")], capture_output=True, text=True, timeout=60)
    assert r.returncode == 5, r.stdout + r.stderr
    assert "password_file" in r.stdout + r.stderr
