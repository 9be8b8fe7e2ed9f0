"""Helpers for the slnode tests: run the CLI, make firmware files with esptool, mount images.

Firmware files: there is no network here to download MicroPython, so the tests build a
MicroPython-shaped merged image (bootloader header, partition table at 0x8000, app at 0x10000)
with **esptool merge-bin** itself, the way a firmware download is laid out.
"""

import hashlib
import json
import os
import struct
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)
MICROPYTHON = os.path.join(os.path.dirname(sys.executable), "micropython")

CHIP_IDS = {"esp32": 0, "esp32s3": 9, "esp32c3": 5, "esp32c6": 13}
STOCK_4MIB = [
    ("nvs", 1, 2, 0x9000, 0x6000),
    ("phy_init", 1, 1, 0xF000, 0x1000),
    ("factory", 0, 0, 0x10000, 0x1F0000),
    ("vfs", 1, 0x81, 0x200000, 0x200000),
]


def slnode(*args, timeout=60, cwd=ROOT):
    """Run `slnode ARGS` as a technician would; returns CompletedProcess (text)."""
    return subprocess.run(
        [sys.executable, "-m", "tools.slnode.main", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def slnode_json(*args, timeout=60):
    r = slnode("--json", *args, timeout=timeout)
    assert r.stdout.strip(), r.stderr
    return r.returncode, json.loads(r.stdout)


def image_header(chip_id, flash_nibble=2):
    h = bytearray(24)
    h[0] = 0xE9
    h[2] = 2  # DIO
    h[3] = flash_nibble << 4  # 4 MB
    struct.pack_into("<H", h, 12, chip_id)
    return bytes(h)


def partition_table(rows):
    out = b""
    for label, t, st, off, size in rows:
        out += struct.pack("<2sBBLL16sL", b"\xaa\x50", t, st, off, size, label.encode(), 0)
    out += b"\xeb\xeb" + b"\xff" * 14 + hashlib.md5(out).digest()
    return out + b"\xff" * (0xC00 - len(out))


def make_firmware(tmp_path, chip="esp32", rows=STOCK_4MIB, app_size=5000, name=None):
    """A merged MicroPython-style image for ``chip`` written by esptool merge-bin."""
    boot_off = 0x1000 if chip in ("esp32", "esp32s2") else 0x0
    d = tmp_path / ("fw-" + chip)
    d.mkdir(exist_ok=True)
    (d / "boot.bin").write_bytes(image_header(CHIP_IDS[chip]) + bytes(1000))
    (d / "pt.bin").write_bytes(partition_table(rows))
    (d / "app.bin").write_bytes(image_header(CHIP_IDS[chip]) + bytes(app_size))
    out = tmp_path / (name or (chip + "-micropython.bin"))
    r = subprocess.run(
        [sys.executable, "-m", "esptool", "--chip", chip, "merge-bin", "--target-offset", hex(boot_off),
         "-o", str(out), hex(boot_off), str(d / "boot.bin"), "0x8000", str(d / "pt.bin"),
         "0x10000", str(d / "app.bin")],
        capture_output=True, text=True, timeout=60,
    )
    assert r.returncode == 0, r.stderr + r.stdout
    return out


MP_MOUNT = r"""
import os, sys, json
class Bdev:
    def __init__(self, path, bs):
        self.f = open(path, "rb"); self.bs = bs
        self.f.seek(0, 2); self.n = self.f.tell() // bs
    def readblocks(self, n, buf, off=0):
        self.f.seek(n * self.bs + off); self.f.readinto(buf)
    def writeblocks(self, n, buf, off=None):
        raise OSError(30)
    def ioctl(self, op, arg):
        if op == 4: return self.n
        if op == 5: return self.bs
        return 0
os.mount(os.VfsLfs2(Bdev(sys.argv[1], 4096), readsize=32, progsize=32, lookahead=32, mtime=False), "/node", readonly=True)
files = {}
def walk(d):
    for e in os.ilistdir(d):
        p = d + "/" + e[0]
        if e[1] == 0x4000: walk(p)
        else: files[p[6:]] = os.stat(p)[6]
walk("/node")
sys.path.insert(0, "/node")
import firmware.config as fc
cfg, errors = fc.load_file("/node/config.json")
print(json.dumps({"files": files, "config": cfg, "errors": errors, "module": fc.__file__}))
"""


def mount_in_micropython(image_path, tmp_path):
    """Mount ``image_path`` with the real MicroPython VfsLfs2 driver, import firmware.config
    from it, and load config.json with it. Returns the decoded JSON report."""
    script = tmp_path / "mp_mount.py"
    script.write_text(MP_MOUNT)
    env = dict(os.environ, MICROPYPATH=".frozen")  # only the image's own firmware is importable
    r = subprocess.run([MICROPYTHON, str(script), str(image_path)], capture_output=True, text=True,
                       timeout=60, env=env, cwd=str(tmp_path))
    assert r.returncode == 0, r.stderr + r.stdout
    return json.loads(r.stdout)
