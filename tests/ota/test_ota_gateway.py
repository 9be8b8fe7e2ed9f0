"""The gateway side of updates against real peers, without nodes: `aiocoap-client` (a
third-party CoAP client doing RFC 7959 block-wise by itself) pulls a stored bundle file from the
real `slgw serve` and gets exactly its bytes; bundles that do not match their manifest, or that
name a path outside the build, are refused and nothing is stored; an OSCORE gateway serves no
bundle to an unprotected request; the roll-out's wave sizes."""

from __future__ import annotations

import json
import subprocess

import pytest
from ota_support import build_bundle
from slgw_harness import AIOCOAP_CLIENT, SlgwProcess  # tests/gateway is on sys.path through ota_support

from gateway.ota.bundles import BundleError, BundleStore
from gateway.ota.rollout import FirmwareService
from tools.procs import free_port


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    return build_bundle(tmp_path_factory.mktemp("b"), "0.2.0")


def test_aiocoap_client_pulls_a_bundle_file_block_wise(tmp_path, bundle):
    with SlgwProcess(tmp_path) as gw:
        r = gw.cli("--json", "firmware", "add", str(bundle))
        assert r.returncode == 0, r.stdout + r.stderr
        sha = json.loads(r.stdout)["bundle"]
        big = max((p for p in bundle.rglob("*.mpy")), key=lambda p: p.stat().st_size)
        rel = big.relative_to(bundle).as_posix()
        assert big.stat().st_size > 3 * 1024  # several blocks
        r = subprocess.run([AIOCOAP_CLIENT, f"coap://127.0.0.1:{gw.coap_port}/fw/{sha}/{rel}"],
                           capture_output=True, timeout=30)
        assert r.returncode == 0, r.stderr
        assert r.stdout == big.read_bytes()  # reassembled by aiocoap from our Block2 answers
        r = subprocess.run([AIOCOAP_CLIENT, f"coap://127.0.0.1:{gw.coap_port}/fw/{sha}/manifest.json"],
                           capture_output=True, text=True, timeout=30)
        assert json.loads(r.stdout)["version"] == "0.2.0"
        r = subprocess.run([AIOCOAP_CLIENT, f"coap://127.0.0.1:{gw.coap_port}/fw/{sha}/../../slgw.db"],
                           capture_output=True, text=True, timeout=30)
        assert r.returncode != 0 and "4.04" in r.stdout + r.stderr


def test_oscore_gateway_serves_no_bundle_to_an_unprotected_request(tmp_path, bundle):
    with SlgwProcess(tmp_path, "--coap-keys-dir", str(tmp_path / "keys"), security="oscore",
                     coap_port=free_port()) as gw:
        sha = json.loads(gw.cli("--json", "firmware", "add", str(bundle)).stdout)["bundle"]
        r = subprocess.run([AIOCOAP_CLIENT, f"coap://127.0.0.1:{gw.coap_port}/fw/{sha}/manifest.json"],
                           capture_output=True, text=True, timeout=30)
        assert r.returncode != 0 and "4.01" in r.stdout + r.stderr


def test_altered_or_escaping_bundles_are_refused(tmp_path, bundle):
    import shutil

    store = BundleStore(tmp_path / "store")
    bad = tmp_path / "bad"
    shutil.copytree(bundle, bad)
    victim = next(bad.rglob("*.mpy"))
    victim.write_bytes(victim.read_bytes()[:-1] + b"\0")
    with pytest.raises(BundleError, match="does not match its manifest"):
        store.add(bad)
    esc = tmp_path / "esc"
    shutil.copytree(bundle, esc)
    man = json.loads((esc / "manifest.json").read_text())
    man["files"]["../outside"] = {"size": 1, "sha256": "00"}
    (esc / "manifest.json").write_text(json.dumps(man))
    with pytest.raises(BundleError, match="not a plain relative path"):
        store.add(esc)
    assert store.list() == []  # nothing half-stored
    info = store.add(bundle)
    assert store.add(bundle) == info and len(store.list()) == 1
    assert store.find("0.2.0") == info["bundle"] == store.find(info["bundle"][:8])


def test_waves_start_with_the_canary_and_double():
    assert FirmwareService.waves(10, 10) == [1, 2, 4, 3]
    assert FirmwareService.waves(3, 34) == [2, 1]
    assert FirmwareService.waves(2000, 1) == [20, 40, 80, 160, 320, 640, 740]
    assert FirmwareService.waves(1, 5) == [1]
