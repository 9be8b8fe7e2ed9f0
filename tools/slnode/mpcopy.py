"""`slnode flash --mpremote`: copy a provisioned image's files to a board already running
MicroPython, with mpremote.

Steps: probe the port ourselves (mpremote reports a missing and a busy port alike and waits
forever on a silent board), interrupt the running program, delete the old ``firmware/`` and
``protocol/`` trees (a stale ``.py`` would shadow the new ``.mpy``; the node's own data files
stay), copy the files of the image, have the board compute the sha256 of every file of its
manifest and compare, then ask the board to reset (``machine.reset()``; mpremote does not wait
for it, so the result says "reset requested").
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from tools.slnode import partitions
from tools.slnode.flash import FlashError, explain, open_port
from tools.slnode.partitions import ImageError

# --- mpremote --------------------------------------------------------------------------------

_RM_TREES = (
    "import os\n"
    "def rm(p):\n"
    "    try:\n"
    "        m = os.stat(p)[0]\n"
    "    except OSError:\n"
    "        return\n"
    "    if m & 0x4000:\n"
    "        for n in os.listdir(p):\n"
    "            rm(p + '/' + n)\n"
    "        os.rmdir(p)\n"
    "    else:\n"
    "        os.remove(p)\n"
    "for p in ('firmware', 'protocol'):\n"
    "    rm(p)\n"
)


_VERIFY = (
    "import json, hashlib, binascii\n"
    "m = json.load(open('manifest.json'))\n"
    "bad = []\n"
    "for p, meta in m['files'].items():\n"
    "    h = hashlib.sha256()\n"
    "    try:\n"
    "        with open(p, 'rb') as f:\n"
    "            while True:\n"
    "                b = f.read(512)\n"
    "                if not b:\n"
    "                    break\n"
    "                h.update(b)\n"
    "        if binascii.hexlify(h.digest()).decode() != meta['sha256']:\n"
    "            bad.append(p)\n"
    "    except OSError:\n"
    "        bad.append(p)\n"
    "print('@slnode-verify ' + json.dumps({'n': len(m['files']), 'bad': bad}))\n"
)


def mpremote_command(port: str, stage: Path, names: list[str]) -> list[str]:
    """The mpremote command line that replaces the node's files with those in ``stage``.

    ``resume``: the probe already stopped the running program at the REPL, so mpremote need
    not soft-reset the board (which also keeps it working with boards that are slow to boot).
    """
    tops = sorted({n.split("/", 1)[0] for n in names})
    dirs = [t for t in tops if (stage / t).is_dir()]
    files = [t for t in tops if (stage / t).is_file()]
    cmd = [sys.executable, "-m", "mpremote", "connect", port, "resume", "exec", _RM_TREES]
    if dirs:
        cmd += ["+", "fs", "cp", "-r", *dirs, ":./"]
    if files:
        cmd += ["+", "fs", "cp", *files, ":./"]
    return cmd


def mpremote_verify_command(port: str) -> list[str]:
    """mpremote command that makes the board hash every file of its manifest."""
    return [sys.executable, "-m", "mpremote", "connect", port, "resume", "exec", _VERIFY]


def _mpremote(cmd: list[str], port: str, timeout: float, cwd=None, progress_to=None) -> str:
    """Run mpremote; its stdout (the copy progress) goes to ``progress_to`` when given."""
    try:
        r = subprocess.run(
            cmd,
            cwd=cwd,
            stdout=progress_to if progress_to is not None else subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            timeout=timeout,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
    except subprocess.TimeoutExpired as e:
        raise FlashError(explain("could not enter raw repl (timed out)", port)) from e
    if r.returncode != 0:
        raise FlashError(explain(r.stderr or r.stdout or f"mpremote exited with {r.returncode}", port))
    return r.stdout


def probe_repl(port: str, wait: float = 3.0) -> None:
    """Interrupt whatever runs on the board and check that MicroPython answers.

    mpremote gives one message for a missing and a busy port and waits forever on a board
    that does not answer; this probe gives the precise error first. Raises FlashError.
    """
    import time

    ser = open_port(port)
    try:
        ser.write(b"\r\x03\x03")
        deadline = time.monotonic() + wait
        got = b""
        while time.monotonic() < deadline and b">" not in got:
            got += ser.read(256)
    finally:
        ser.close()
    if not got:
        raise FlashError(explain("could not enter raw repl: no answer", port))


def flash_mpremote(
    image: Path,
    port: str,
    block_size: int = partitions.BLOCK_SIZE,
    timeout: float = 120,
    reset: bool = True,
    quiet: bool = False,
) -> dict:
    """Copy the files inside ``image`` to a board running MicroPython, with mpremote, have
    the board hash each of them against the manifest, then reset it (unless ``reset`` is False).

    Returns {"copied": [...], "verified": N, "reset": bool}. Raises FlashError with mpremote's
    error explained, or naming the files whose hash on the board differs.
    """
    from tools.slnode.provision import read_image

    try:
        files = read_image(Path(image).read_bytes(), block_size)
    except OSError as e:
        raise ImageError(f"cannot read image {image}: {e.strerror or e}") from e
    except Exception as e:  # littlefs refuses to mount it
        raise ImageError(f"{image} is not a littlefs image made by slnode provision ({e})") from e
    with tempfile.TemporaryDirectory(prefix="slnode-mpremote-") as tmp:
        stage = Path(tmp)
        for rel, data in files.items():
            dest = stage / rel
            dest.parent.mkdir(parents=True, exist_ok=True)
            dest.write_bytes(data)
        cmd = mpremote_command(port, stage, list(files))
        probe_repl(port)
        # mpremote's own progress bars go to our stderr (stdout stays clean for --json)
        _mpremote(cmd, port, timeout, cwd=stage, progress_to=subprocess.DEVNULL if quiet else sys.stderr)
        out = _mpremote(mpremote_verify_command(port), port, timeout)
    verdict = None
    for line in out.splitlines():
        if line.startswith("@slnode-verify "):
            verdict = json.loads(line[len("@slnode-verify ") :])
    if verdict is None:
        raise FlashError(f"{port}: the files were copied but the board did not report their hashes; retry")
    if verdict["bad"]:
        raise FlashError(
            f"verification failed on {port}: {', '.join(verdict['bad'])} differ from the image "
            "(flash full or worn?). Retry; if it persists, erase and flash with --firmware."
        )
    res = {"copied": sorted(files), "verified": verdict["n"], "reset": False}
    if reset:
        try:
            _mpremote([sys.executable, "-m", "mpremote", "connect", port, "resume", "reset"], port, 30)
        except FlashError as e:
            raise FlashError(
                f"the files were copied and verified, but the reset failed ({e}): press RESET"
            ) from e
        res["reset"] = True
    return res
