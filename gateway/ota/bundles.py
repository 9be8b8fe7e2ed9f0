"""Application bundles kept by the gateway (what `slnode build` writes), by manifest hash.

A bundle is stored as ``<dir>/<sha256 of manifest.json>/`` holding the build's files exactly as
built, the manifest included. The hash of the manifest names the bundle everywhere: in the
Package URI a node is given (``coap://<gateway>/fw/<sha>``, SPEC §13), in `slgw firmware
status`, in the roll-outs. Adding checks every file against the manifest (size and SHA-256)
before anything is stored, and stores through a temporary directory renamed into place, so a
half-copied bundle is never served.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any

MANIFEST = "manifest.json"
BLOCK_SZX_MAX = 6  # 1024-byte blocks at most (the node's 1152-byte message limit, SPEC §1)


class BundleError(Exception):
    """A bundle that cannot be added or found; the message says what to do."""


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _safe_rel(rel: str) -> bool:
    parts = rel.split("/")
    return bool(rel) and not rel.startswith("/") and all(p not in ("", ".", "..") for p in parts)


class BundleStore:
    """The bundles under ``root`` (created on first use)."""

    def __init__(self, root: str | Path):
        self.root = Path(root)

    def add(self, src: str | Path) -> dict[str, Any]:
        """Check the build directory ``src`` against its manifest and store it.

        Returns the bundle's summary (`summary`). Raises BundleError naming the first missing
        or altered file, or a manifest that is not a `slnode build` manifest.
        """
        src = Path(src)
        try:
            raw = (src / MANIFEST).read_bytes()
            man = json.loads(raw)
            files = man["files"]
            str(man["version"])  # a manifest without a version is refused here
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise BundleError(f"{src} is not a `slnode build` output ({exc}); build it with "
                              f"`slnode build --out DIR`") from exc
        image = man.get("image")  # a whole firmware image (docs/ota.md), else an application bundle
        if image is not None and (not isinstance(image, dict) or image.get("file") not in files):
            raise BundleError(f"{src}: the manifest's image must name one of its files")
        if image is None and not any(k.startswith("firmware/main.") for k in files):
            raise BundleError(f"{src}: the manifest has no firmware/main: a node could not boot it")
        for rel, meta in files.items():
            if not _safe_rel(rel):
                raise BundleError(f"{src}: manifest path {rel!r} is not a plain relative path")
            try:
                data = (src / rel).read_bytes()
            except OSError as exc:
                raise BundleError(f"{src}: {rel} is missing ({exc.strerror}); rebuild it") from exc
            if len(data) != meta.get("size") or _sha(data) != meta.get("sha256"):
                raise BundleError(f"{src}: {rel} does not match its manifest; rebuild it")
        sha = _sha(raw)
        dest = self.root / sha
        if not dest.is_dir():
            self.root.mkdir(parents=True, exist_ok=True)
            tmp = self.root / f".add-{sha}-{os.getpid()}"
            shutil.rmtree(tmp, ignore_errors=True)
            for rel in files:
                (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(src / rel, tmp / rel)
            (tmp / MANIFEST).write_bytes(raw)
            os.replace(tmp, dest)
        return self.summary(sha)

    def manifest(self, sha: str) -> dict[str, Any]:
        """The stored manifest of bundle ``sha``. Raises BundleError when unknown."""
        try:
            return json.loads((self.root / sha / MANIFEST).read_bytes())
        except (OSError, ValueError) as exc:
            raise BundleError(f"no bundle {sha}; add it with `slgw firmware add BUILD_DIR`") from exc

    def summary(self, sha: str) -> dict[str, Any]:
        man = self.manifest(sha)
        return {"bundle": sha, "version": str(man["version"]), "git": man.get("git"),
                "files": len(man["files"]), "bytes": sum(int(m["size"]) for m in man["files"].values())}

    def list(self) -> list[dict[str, Any]]:
        """Every stored bundle, sorted by version then hash."""
        if not self.root.is_dir():
            return []
        out = [self.summary(p.name) for p in self.root.iterdir()
               if p.is_dir() and len(p.name) == 64 and not p.name.startswith(".")]
        return sorted(out, key=lambda b: (b["version"], b["bundle"]))

    def find(self, ref: str) -> str:
        """The hash of the bundle named by ``ref``: a full hash, a unique prefix (>= 8 hex) or
        a version. Raises BundleError when none or several match."""
        found = [b["bundle"] for b in self.list()
                 if b["version"] == ref or (len(ref) >= 8 and b["bundle"].startswith(ref.lower()))]
        if len(found) != 1:
            raise BundleError(f"no bundle {ref!r}" if not found else
                              f"{ref!r} names {len(found)} bundles: give the hash")
        return found[0]

    def read(self, sha: str, rel: str) -> bytes | None:
        """The bytes of file ``rel`` of bundle ``sha`` (the manifest too), or None."""
        if len(sha) != 64 or not _safe_rel(rel) or any(c not in "0123456789abcdef" for c in sha):
            return None
        p = self.root / sha / rel
        try:
            return p.read_bytes() if p.is_file() else None
        except OSError:
            return None
