"""bench/node_heap measures the builds that slnode ships, and only them: its import probe on the
shipped ROMFS image and .mpy build, its refusal of a module that did not come from the build it
measures, the stand-in it uses for a separate (32-bit) interpreter checked against the in-process
ROMFS figure, and what it says when no 32-bit interpreter is at hand. The bench itself (24 h
bisections, minutes) is not run here: CI does not depend on it."""

import os
import shutil

import pytest
from slnode_support import MICROPYTHON, ROOT

from bench import node_heap as nh

FEW = ["asyncio", "protocol.lwm2m", "protocol.cbor", "protocol.coap"]


@pytest.fixture(scope="module")
def builds(tmp_path_factory):
    d = tmp_path_factory.mktemp("nh")
    mpy, img = nh.build_images(str(d))
    return str(d), mpy, img


def test_probes_measure_the_shipped_builds(builds):
    d, mpy, img = builds
    rom = nh._run_rom(img, d, nh.probe(FEW))
    m = nh._run_mp(mpy, nh.probe(FEW))
    assert set(rom["modules"]) == set(FEW) and rom["total"] > 0
    assert m["total"] > rom["total"]  # bytecode copied into the heap vs. run in place


def test_a_module_from_outside_the_measured_build_fails_the_probe(builds, tmp_path):
    """A source file in the build directory (what '' = the repository root does to a build
    when the cwd holds the sources) is caught, not measured as if it were the build."""
    _, mpy, _ = builds
    shadowed = tmp_path / "mpy"
    shutil.copytree(mpy, shadowed)
    os.remove(shadowed / "protocol" / "cbor.mpy")
    shutil.copy(os.path.join(ROOT, "protocol", "cbor.py"), shadowed / "protocol" / "cbor.py")
    with pytest.raises(RuntimeError, match=r"came from elsewhere: \{'protocol.cbor': '.*/protocol/cbor.py'\}"):
        nh._run_mp(str(shadowed), nh.probe(FEW))


def test_the_separate_interpreter_stand_in_agrees_with_the_mapped_image(builds):
    """For a separate binary the image is read into the heap before the baseline; on the venv's
    interpreter that gives the figure of the image mapped outside the heap (within 1 %)."""
    d, mpy, img = builds
    mapped = nh._run_rom(img, d, nh.probe(nh.MODULES))["total"]
    other = nh.measure_other(MICROPYTHON, mpy, img, d, day=False)
    assert other["word_bits"] == 64
    assert abs(other["import_from_romfs_bytes"] - mapped) <= mapped / 100, (other, mapped)


def test_says_when_no_32_bit_interpreter_was_measured(builds, monkeypatch):
    d, mpy, img = builds
    monkeypatch.delenv(nh.ENV_32, raising=False)
    assert nh.interpreter_32(mpy, img, d).startswith("not measured: no 32-bit interpreter here. Set NODE_HEAP_MICROPYTHON32")
    monkeypatch.setenv(nh.ENV_32, MICROPYTHON)
    assert nh.interpreter_32(mpy, img, d) == f"not measured: {MICROPYTHON} is a 64-bit interpreter, not 32-bit"


async def test_romfs_build_runs_the_24_hours_in_its_code_plus_64k(builds):
    """The build for an ESP32 without PSRAM through the simulated day (7200x: 92 reports to an
    aiocoap LwM2M peer, a sun-based programme written over CoAP, Reads) with -X heapsize = its
    import footprint + 64 KB, the bench's own pass criteria (no MemoryError, no traceback, no
    datagram dropped for lack of memory, every report, a clean stop), every module from /rom."""
    d, _, img = builds
    rom = nh._run_rom(img, d, nh.probe(nh.MODULES))
    code = rom["total"] + rom["baseline"]
    heap_k = code // 1024 + 64
    r = await nh._day(nh._romfs_cmd(img), heap_k, os.path.join(d, "day"), grace=60)  # a loaded CI machine
    assert r["ok"], r["why"]
    assert r["modules"] and all(f.startswith("/rom/") for f in r["modules"].values()), r["modules"]
    assert r["live"] - code < 64 * 1024
    print(f"ROMFS: code {code} B, heapsize={heap_k}k: peak {r['peak']} B, live at the end {r['live']} B")
