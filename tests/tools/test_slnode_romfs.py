"""The build for an ESP32 without PSRAM: `slnode build --romfs`, its image run in the real
`micropython` against an aiocoap LwM2M peer, `slnode provision` of such a build, and `slnode
flash --romfs` (fits-check, then the real esptool against the simulated loader)."""

import asyncio
import json
import os
import shutil
import subprocess
import sys
import tty

import pytest
from slnode_support import ROOT, STOCK_4MIB, make_firmware, slnode_json

from tools.slnode import build, emulate, flash, partitions, provision, romfs
from tools.slnode.partitions import ImageError

sys.path.insert(0, os.path.join(ROOT, "tests", "firmware"))
from app_support import Proc, emulator_spec, free_udp_port, stop_emulator  # noqa: E402
from lwm2m_peer import Peer  # noqa: E402

# MicroPython's ports/esp32/partitions-4MiB-romfs.csv (no vfs row: the filesystem is the flash
# after the last partition)
ROMFS_4MIB = [
    ("nvs", 1, 2, 0x9000, 0x6000),
    ("phy_init", 1, 1, 0xF000, 0x1000),
    ("factory", 0, 0, 0x10000, 0x1D0000),
    ("romfs", 1, 0x8F, 0x1E0000, 0x20000),
]


@pytest.fixture(scope="module")
def rom_build(tmp_path_factory):
    out = tmp_path_factory.mktemp("rom") / "b"
    code, res = slnode_json("build", "--romfs", "--out", str(out), timeout=120)
    assert code == 0, res
    return out, res


def test_build_romfs_output(rom_build):
    out, res = rom_build
    img = (out / "romfs.img").read_bytes()
    assert res["layout"] == "romfs" and res["romfs_bytes"] == len(img) and img[:3] == romfs.MAGIC
    m = romfs.read_manifest(out)
    assert set(m["files"]) == {"main.py"}  # the only code on the filesystem is the launcher
    assert "firmware/node.mpy" in m["romfs"]["files"] and "protocol/coap.mpy" in m["romfs"]["files"]
    assert not (out / "firmware").exists()
    # the image fits MicroPython's stock romfs partition (128 KiB), with no warning
    assert len(img) <= romfs.STOCK_PARTITION_BYTES and res["warnings"] == []
    # reproducible: the same tree gives the same image
    again = romfs.build(out.parent / "again", quiet=True)
    assert again.manifest["romfs"]["sha256"] == m["romfs"]["sha256"]
    (out.parent / "again" / "romfs.img").write_bytes(img[:-1] + b"\0")
    with pytest.raises(build.BuildError, match="romfs.img is missing or does not match"):
        build.load_build(out.parent / "again")


async def test_node_from_the_romfs_image_registers_and_reports(rom_build, tmp_path):
    """The image slnode built, mounted with vfs.VfsRom outside the heap, runs the real node in
    a 144k heap (the .mpy build's code alone takes ~141 KB there): it registers with an aiocoap
    LwM2M peer, answers a Read, and its reports arrive; every firmware/protocol module it ran
    came from /rom."""
    out, _ = rom_build
    port = free_udp_port()
    peer = await Peer.start(port)
    spec = emulator_spec(tmp_path / "flash", "lamp-rom", port, speed=3600.0, report_period=900,
                         clock_start="2025-03-01T12:00:00Z", time_valid=True, ack_timeout=200)
    cmd, env = emulate.build_command(spec, "144k", romfs=str(out / "romfs.img"))
    log = open(tmp_path / "node.log", "ab")
    proc = Proc(cmd, env=env, stdin=subprocess.PIPE, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
    try:
        await asyncio.wait_for(peer.registered.wait(), 45)  # generous: a loaded 2-core CI machine
        code, _ = await peer.read("/3311/0/5851")
        assert code.is_successful()
        await peer.wait_for(lambda: len(peer.reports) >= 3, 45)
        assert stop_emulator(proc) == 0
    finally:
        proc.kill()
        log.close()
        await peer.stop()
    text = (tmp_path / "node.log").read_text()
    assert "Traceback" not in text and "MemoryError" not in text, text[-2000:]
    mods = romfs.loaded_from(text)
    assert "firmware.node" in mods and "protocol.coap" in mods, text[-2000:]
    assert all(f.startswith("/rom/") and f.endswith(".mpy") for f in mods.values()), mods


def _tiny_image(tmp_path):
    """An image with the real boot selector and stand-ins for the entry points, and a
    filesystem directory holding an old firmware/ that would shadow it."""
    tree = tmp_path / "tree" / "firmware"
    tree.mkdir(parents=True)
    (tree / "__init__.py").write_text("")
    shutil.copy(os.path.join(ROOT, "firmware", "boot_select.py"), tree / "boot_select.py")
    for name in ("main", "emulator"):
        (tree / f"{name}.py").write_text("def main():\n    print('ran from', __file__)\n")
    img = tmp_path / "t.img"
    img.write_bytes(romfs.pack(tmp_path / "tree"))
    fs = tmp_path / "fs"
    (fs / "firmware").mkdir(parents=True)
    (fs / "firmware" / "__init__.py").write_text("")
    for name in ("main", "emulator"):
        (fs / "firmware" / f"{name}.py").write_text("def main():\n    print('ran from the filesystem')\n")
    return img, fs


def _device_path_script(launcher_path):
    """On the device sys.path is ['', '.frozen', '/rom', '/rom/lib'] with '' the littlefs root."""
    return f"sys.path[:] = ['', '.frozen', '/rom', '/rom/lib']\nexec(open({str(launcher_path)!r}).read())\n"


def test_launcher_runs_the_image_even_with_a_stale_firmware_on_the_filesystem(tmp_path):
    """An old firmware/ on the filesystem would shadow the image: the ROMFS launchers put /rom
    first (the .mpy build's launcher, run the same way, imports the filesystem's)."""
    img, fs = _tiny_image(tmp_path)
    script = _device_path_script(tmp_path / "main.py")
    for launcher, want in ((romfs.LAUNCHER, "ran from /rom/firmware/main.py"),
                           (romfs.LAUNCHER_SELECT, "ran from /rom/firmware/emulator.py"),  # argv: emulation
                           (build.LAUNCHER, "ran from the filesystem")):
        (tmp_path / "main.py").write_text(launcher)
        cmd, env = romfs.command(str(img), script, str(tmp_path))
        r = subprocess.run(cmd, env=env, cwd=fs, capture_output=True, text=True, timeout=30)
        assert r.returncode == 0 and r.stdout.strip().splitlines()[-1] == want, r.stderr + r.stdout
    # no firmware in /rom: the launcher says what to do
    empty = tmp_path / "empty.img"
    empty.write_bytes(romfs.pack(tmp_path / "fs" / "firmware"))  # an image without firmware/
    (tmp_path / "main.py").write_text(romfs.LAUNCHER_SELECT)
    cmd, env = romfs.command(str(empty), script.replace("''", "'/nowhere'"), str(tmp_path))
    r = subprocess.run(cmd, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=30)
    assert r.returncode != 0 and "no node firmware in /rom" in r.stdout and "slnode flash --romfs" in r.stdout


def test_a_pending_application_update_on_a_romfs_node_is_reported_failed_not_booted(tmp_path):
    """An over-the-air application bundle (firmware/ota.py) lands in a filesystem slot, which a
    ROMFS node cannot run: the launcher clears the trial, records Update Result 8 with the reason
    for the gateway, and boots /rom through the boot selector (boot counted)."""
    img, fs = _tiny_image(tmp_path)
    (tmp_path / "main.py").write_text(romfs.LAUNCHER_SELECT)
    state = {"active": "", "trial": "a", "tries": 0, "boots": 0, "result": 0, "why": "", "version": "",
             "trial_version": "0.2.0", "running": "", "mode": "normal"}
    (tmp_path / "ota.json").write_text(json.dumps(state))  # the root: the boot script's directory
    cmd, env = romfs.command(str(img), _device_path_script(tmp_path / "main.py"), str(tmp_path))
    r = subprocess.run(cmd, env=env, cwd=fs, capture_output=True, text=True, timeout=30)
    assert r.returncode == 0 and r.stdout.strip().splitlines()[-1] == "ran from /rom/firmware/emulator.py", r.stderr
    st = json.loads((tmp_path / "ota.json").read_text())
    assert (st["trial"], st["active"], st["result"], st["running"], st["mode"], st["boots"]) == ("", "", 8, "", "normal", 1)
    assert st["why"].startswith("ROMFS build: the code runs from /rom")


def test_provision_of_a_romfs_build_puts_no_code_on_the_filesystem(rom_build):
    out, _ = rom_build
    cfg = provision.check_config({"id": "lamp-r", "gateway": "coap://10.0.0.2"})
    files = provision.image_files(out, cfg)
    assert sorted(files) == ["config.json", "main.py", "manifest.json"]
    assert files["main.py"].decode() == romfs.LAUNCHER_SELECT  # the tree has the boot selector
    image = provision.make_image(files, partitions.board_geometry("esp32"))
    assert provision.read_image(image)["main.py"].decode() == romfs.LAUNCHER_SELECT


def test_flash_plan_puts_the_image_in_the_romfs_partition(tmp_path, rom_build):
    out, _ = rom_build
    fw = make_firmware(tmp_path, "esp32", ROMFS_4MIB)
    img = out / "romfs.img"
    p = flash.plan(fw, None, romfs=img)
    assert [(off, label.split(" (")[0]) for off, _, label in p.regions] == [(0x1000, "MicroPython esp32"), (0x1E0000, "ROMFS image")]
    assert p.regions[1][1] == img.read_bytes()
    # the filesystem is the flash after the last partition: 0x200000, 2 MiB on a 4 MiB board
    assert (p.fs.offset, p.fs.size) == (0x200000, 0x200000)


def test_flash_refuses_an_oversized_image_before_touching_the_board(tmp_path):
    fw = make_firmware(tmp_path, "esp32", ROMFS_4MIB)
    big = tmp_path / "big.img"
    big.write_bytes(romfs.MAGIC + bytes(0x20000 + 5 - 3))
    with pytest.raises(ImageError) as e:
        flash.plan(fw, None, romfs=big)
    assert str(e.value).startswith(f"ROMFS image {big} does not fit: 131077 bytes > 131072 bytes (0x20000)")
    assert "5 bytes too many" in str(e.value) and "Nothing was written" in str(e.value)
    # through the CLI: exit 2, a port that does not exist is never opened
    code, res = slnode_json("flash", "--port", "/dev/nonexistent-port", "--firmware", str(fw), "--romfs", str(big))
    assert code == 2 and "does not fit" in res["error"]


def test_flash_refuses_a_stock_firmware_and_a_file_that_is_not_romfs(tmp_path, rom_build):
    out, _ = rom_build
    with pytest.raises(ImageError, match="has no 'romfs' partition: it is not a MicroPython built for ROMFS"):
        flash.plan(make_firmware(tmp_path, "esp32", STOCK_4MIB, name="stock.bin"), None, romfs=out / "romfs.img")
    fw = make_firmware(tmp_path, "esp32", ROMFS_4MIB)
    with pytest.raises(ImageError, match="is not a ROMFS image .* pass it as --firmware"):
        flash.plan(fw, None, romfs=fw)
    with pytest.raises(ImageError, match="--romfs needs --firmware"):
        flash.plan(None, None, romfs=out / "romfs.img")


def test_cli_flash_romfs_through_esptool_lands_in_the_partition(tmp_path, rom_build):
    """The real esptool against the simulated loader: MicroPython at 0x1000, the ROMFS image at
    0x1E0000, both verified; the bytes read back from the simulated flash mount in MicroPython
    and hold the node's firmware."""
    from esp_rom_sim import Esp32Sim

    out, _ = rom_build
    fw = make_firmware(tmp_path, "esp32", ROMFS_4MIB)
    master, slave = os.openpty()
    tty.setraw(master)
    tty.setraw(slave)
    sim = Esp32Sim(master).start()
    try:
        code, res = slnode_json("flash", "--port", os.ttyname(slave), "--firmware", str(fw), "--romfs",
                                str(out / "romfs.img"), "--connect-attempts", "1")
    finally:
        sim.stop()
        os.close(master)
        os.close(slave)
    assert code == 0, res
    img = (out / "romfs.img").read_bytes()
    assert bytes(sim.flash[0x1E0000 : 0x1E0000 + len(img)]) == img
    assert any(w.startswith("ROMFS image (partition 'romfs'") and "verified" in w for w in res["written"])
    part = tmp_path / "part.bin"
    part.write_bytes(bytes(sim.flash[0x1E0000:0x200000]))  # the whole partition, as the board maps it
    cmd, env = romfs.command(str(part), "import firmware.node\nprint(firmware.node.__file__)\n", str(tmp_path))
    r = subprocess.run(cmd, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=30)
    assert r.returncode == 0 and r.stdout.strip() == "/rom/firmware/node.mpy", r.stderr


def test_cli_provision_romfs_for_a_romfs_firmware_and_refusal_for_a_stock_one(tmp_path):
    toml = tmp_path / "n.toml"
    toml.write_text('id = "lamp-r"\ngateway = "coap://10.0.0.2"\n')
    fw = make_firmware(tmp_path, "esp32", ROMFS_4MIB)
    img = tmp_path / "lamp-r.bin"
    code, res = slnode_json("provision", "--romfs", "--config", str(toml), "--firmware", str(fw), "--image", str(img),
                            "--no-oscore", timeout=120)
    assert code == 0 and res["layout"] == "romfs" and res["fs_offset"] == "0x200000", res
    files = provision.read_image(img.read_bytes())
    assert sorted(files) == ["config.json", "main.py", "manifest.json"]  # no code on the filesystem
    # a stock download has no romfs partition: the node would boot without code
    stock = make_firmware(tmp_path, "esp32", STOCK_4MIB, name="stock.bin")
    code, res = slnode_json("provision", "--romfs", "--config", str(toml), "--firmware", str(stock), "--image",
                            str(tmp_path / "x.bin"), "--no-oscore", timeout=120)
    assert code == 2 and "a ROMFS build needs a MicroPython with a 'romfs' partition" in res["error"], res
    assert not (tmp_path / "x.bin").exists()
    # the .mpy build for a firmware that has a romfs partition: a warning that names --romfs
    code, res = slnode_json("provision", "--config", str(toml), "--firmware", str(fw), "--image", str(img),
                            "--no-oscore", timeout=120)
    assert code == 0 and res["layout"] == "mpy"
    assert any("has a 'romfs' partition" in w and "--romfs" in w for w in res["warnings"]), res
