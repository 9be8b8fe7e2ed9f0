"""slnode flash: image checks and offsets per chip (no hardware), then the real esptool and
mpremote driven up to the serial port: a pty that never answers, a missing port, a busy port,
and a port this user may not open. No test claims a successful flash: there is no board."""

import json
import os
import signal
import subprocess
import time
import tty
from pathlib import Path

import pytest
import serial
from slnode_support import make_firmware, slnode, slnode_json

from tools.slnode import build, flash, mpcopy, partitions, provision
from tools.slnode.partitions import ImageError


@pytest.fixture(scope="module")
def fs_image(tmp_path_factory):
    d = tmp_path_factory.mktemp("img")
    build.build(d / "b", quiet=True)
    cfg = provision.check_config({"id": "lamp-1", "gateway": "coap://10.0.0.2"})
    img = d / "fs.bin"
    img.write_bytes(provision.make_image(provision.image_files(d / "b", cfg), partitions.board_geometry("esp32")))
    return img


@pytest.fixture
def pty():
    """A pseudo-terminal: a real serial device on which no ESP32 will ever answer."""
    master, slave = os.openpty()
    try:
        yield os.ttyname(slave)
    finally:
        os.close(master)
        os.close(slave)


def test_chip_table_agrees_with_esptool():
    from esptool.targets import CHIP_DEFS

    for chip_id, (name, offset) in partitions.CHIPS.items():
        assert CHIP_DEFS[name].IMAGE_CHIP_ID == chip_id
        assert CHIP_DEFS[name].BOOTLOADER_FLASH_OFFSET == offset, name


@pytest.mark.parametrize("chip,offset", [("esp32", 0x1000), ("esp32s3", 0x0), ("esp32c3", 0x0)])
def test_offsets_per_chip(tmp_path, fs_image, chip, offset):
    fw = make_firmware(tmp_path, chip)
    p = flash.plan(fw, fs_image, "auto")
    assert p.chip == chip
    assert [(off, label) for off, _, label in p.regions] == [(offset, "MicroPython " + chip), (0x200000, "filesystem")]
    assert p.regions[0][1] == fw.read_bytes() and p.regions[1][1] == fs_image.read_bytes()


def test_whole_flash_image_from_offset_zero(tmp_path):
    """esptool merge-bin without --target-offset pads an ESP32 image from 0x0."""
    d = tmp_path
    fw = make_firmware(d, "esp32")
    padded = d / "padded.bin"
    padded.write_bytes(b"\xff" * 0x1000 + fw.read_bytes())
    info = partitions.inspect_firmware(padded)
    assert (info.chip, info.offset, info.fs.offset, info.fs.size) == ("esp32", 0, 0x200000, 0x200000)


@pytest.mark.parametrize(
    "content,why",
    [
        (b"", "an empty file"),
        (b"\x7fELF" + bytes(60), "first byte 0x7F"),
        (b":10000000" + bytes(60), "first byte 0x3A"),  # Intel hex
        (b"UF2\n" + bytes(60), "first byte 0x55"),
    ],
)
def test_refuses_a_file_that_is_not_an_esp_image(tmp_path, fs_image, content, why):
    fw = tmp_path / "fw.bin"
    fw.write_bytes(content)
    code, res = slnode_json("flash", "--port", "/dev/null", "--firmware", str(fw), "--image", str(fs_image))
    assert code == 2 and "is not an ESP firmware image" in res["error"] and why in res["error"]


def test_refuses_an_app_only_image(tmp_path):
    app = tmp_path / "app.bin"
    from slnode_support import image_header

    app.write_bytes(image_header(0) + bytes(0x9000))
    with pytest.raises(ImageError, match="no partition table at 0x8000"):
        flash.plan(app, None)


def test_wrong_chip_option(tmp_path):
    fw = make_firmware(tmp_path, "esp32s3")
    with pytest.raises(ImageError, match="wrong chip: .* built for esp32s3 but --chip esp32c3"):
        flash.plan(fw, None, "esp32c3")


def test_unsupported_chip(tmp_path):
    fw = make_firmware(tmp_path, "esp32c6")
    with pytest.raises(ImageError, match="MicroPython for esp32c6"):
        flash.plan(fw, None)


def test_image_too_large_or_wrong_size_or_swapped(tmp_path, fs_image):
    small = [r if r[0] != "vfs" else ("vfs", 1, 0x81, 0x310000, 0xF0000) for r in
             [("nvs", 1, 2, 0x9000, 0x6000), ("factory", 0, 0, 0x10000, 0x300000), ("vfs", 0, 0, 0, 0)]]
    fw = make_firmware(tmp_path, "esp32", small)
    with pytest.raises(ImageError, match="too large for the filesystem partition"):
        flash.plan(fw, fs_image)
    half = tmp_path / "half.bin"
    half.write_bytes(fs_image.read_bytes()[: 0x100000])
    with pytest.raises(ImageError, match="MicroPython could not mount it"):
        flash.plan(make_firmware(tmp_path, "esp32", name="ok.bin"), half)
    with pytest.raises(ImageError, match="pass it as --firmware"):
        flash.plan(None, fw)
    blank = tmp_path / "blank.bin"
    blank.write_bytes(b"\xff" * 0x200000)
    with pytest.raises(ImageError, match="not a littlefs image"):
        flash.plan(None, blank)


def test_pty_that_never_answers_gives_no_esp32_answered(tmp_path, fs_image, pty):
    fw = make_firmware(tmp_path, "esp32")
    t0 = time.monotonic()
    code, res = slnode_json("flash", "--port", pty, "--firmware", str(fw), "--image", str(fs_image),
                            "--connect-attempts", "1")
    assert code == 3 and not res["ok"]
    assert res["error"].startswith(f"no ESP32 answered on {pty}") and "hold BOOT" in res["error"]
    assert "verified" not in str(res)
    assert time.monotonic() - t0 < 50


def test_missing_port(tmp_path, fs_image):
    r = slnode("flash", "--port", "/dev/ttyUSB-nonexistent", "--firmware", str(make_firmware(tmp_path, "esp32")))
    assert r.returncode == 3
    assert "no serial port /dev/ttyUSB-nonexistent" in r.stderr and "charge-only" in r.stderr


def test_busy_port(tmp_path, pty):
    holder = serial.Serial(pty, exclusive=True)  # another program holding the port
    try:
        code, res = slnode_json("flash", "--port", pty, "--firmware", str(make_firmware(tmp_path, "esp32")),
                                "--connect-attempts", "1")
        assert code == 3 and f"{pty} is busy" in res["error"]
        code, res = slnode_json("flash", "--port", pty, "--mpremote", "--image", str(_img(tmp_path)))
        assert code == 3 and f"{pty} is busy" in res["error"]
    finally:
        holder.close()


def _img(tmp_path):
    p = tmp_path / "img.bin"
    if not p.exists():
        build.build(tmp_path / "b", quiet=True)
        cfg = provision.check_config({"id": "n", "gateway": "coap://h"})
        p.write_bytes(provision.make_image(provision.image_files(tmp_path / "b", cfg), partitions.board_geometry("esp32")))
    return p


def test_permission_denied_as_an_unprivileged_user(tmp_path, pty):
    """A forked child drops to `nobody` and runs the real esptool on a root-owned 0600 port."""
    os.chmod(pty, 0o600)
    import esptool.loader  # noqa: F401
    from esptool import cmds  # noqa: F401 - imported before dropping privileges

    fw = make_firmware(tmp_path, "esp32")
    p = flash.plan(fw, None)
    rfd, wfd = os.pipe()
    pid = os.fork()
    if pid == 0:  # child
        msg = "no error"
        signal.alarm(30)  # a hung child dies instead of hanging the test
        try:
            os.setgroups([])
            os.setgid(65534)
            os.setuid(65534)
            flash.flash_esptool(p, pty, connect_attempts=1, quiet=True)
        except flash.FlashError as e:
            msg = str(e)
        except BaseException as e:  # noqa: BLE001 - report anything to the parent
            msg = f"unexpected {type(e).__name__}: {e}"
        os.write(wfd, msg.encode())
        os._exit(0)
    os.close(wfd)
    try:
        data = b""
        while chunk := os.read(rfd, 4096):
            data += chunk
    finally:
        os.close(rfd)
        os.waitpid(pid, 0)
    msg = data.decode()
    assert msg.startswith(f"permission denied on {pty}"), msg
    assert "sudo usermod -aG dialout $USER" in msg and "log out" in msg


@pytest.mark.parametrize(
    "text,starts",
    [
        ("Could not open /dev/ttyUSB0, the port is busy or doesn't exist.\n([Errno 13] could not open port "
         "/dev/ttyUSB0: [Errno 13] Permission denied: '/dev/ttyUSB0')", "permission denied on /dev/ttyUSB0"),
        ("Could not open /dev/ttyUSB0, the port is busy or doesn't exist.\n(Could not exclusively lock port "
         "/dev/ttyUSB0: [Errno 11] Resource temporarily unavailable)", "/dev/ttyUSB0 is busy"),
        ("[Errno 16] could not open port /dev/ttyUSB0: [Errno 16] Device or resource busy: '/dev/ttyUSB0'",
         "/dev/ttyUSB0 is busy"),
        ("Could not open /dev/ttyUSB0, the port is busy or doesn't exist.\n([Errno 2] could not open port "
         "/dev/ttyUSB0: [Errno 2] No such file or directory: '/dev/ttyUSB0')", "no serial port /dev/ttyUSB0"),
        ("Failed to connect to ESP32: No serial data received.", "no ESP32 answered on /dev/ttyUSB0"),
        ("Failed to connect to ESP32: Wrong boot mode detected (0x13)! The chip needs to be in download mode.",
         "no ESP32 answered on /dev/ttyUSB0"),
        ("This chip is ESP32-S3, not ESP32. Wrong chip argument?", "wrong chip on /dev/ttyUSB0"),
        ("File md5 does not match data written to flash", "verification failed on /dev/ttyUSB0"),
    ],
)
def test_error_mapping_of_esptool_texts(text, starts):
    assert flash.explain(text, "/dev/ttyUSB0").startswith(starts)


def test_mpremote_on_a_silent_port_is_a_clear_error(tmp_path, pty):
    code, res = slnode_json("flash", "--port", pty, "--mpremote", "--image", str(_img(tmp_path)))
    assert code == 3 and "did not give a MicroPython prompt" in res["error"]


def test_mpremote_command_replaces_the_trees(tmp_path):
    (tmp_path / "firmware").mkdir()
    (tmp_path / "protocol").mkdir()
    for n in ("main.py", "config.json", "manifest.json"):
        (tmp_path / n).write_text("x")
    cmd = mpcopy.mpremote_command(
        "/dev/ttyACM0", Path(tmp_path), ["firmware/a.mpy", "protocol/b.mpy", "main.py", "config.json", "manifest.json"]
    )
    assert cmd[1:6] == ["-m", "mpremote", "connect", "/dev/ttyACM0", "resume"]
    assert cmd[6] == "exec" and "rm(p)" in cmd[7] and "'firmware', 'protocol'" in cmd[7]
    i = cmd.index("-r")
    assert cmd[i + 1 : i + 4] == ["firmware", "protocol", ":./"]
    j = cmd.index("config.json")
    assert cmd[j - 3 : j + 4] == ["+", "fs", "cp", "config.json", "main.py", "manifest.json", ":./"]
    assert cmd[-1] == ":./"
    verify = mpcopy.mpremote_verify_command("/dev/ttyACM0")
    assert verify[4:7] == ["/dev/ttyACM0", "resume", "exec"] and "hashlib.sha256" in verify[-1]


@pytest.fixture
def repl_board(tmp_path):
    """The MicroPython Unix port's REPL on a pty: a board already running MicroPython, whose
    flash is a directory (with a stale firmware module and a data file of the node's own)."""
    flash_dir = tmp_path / "board"
    (flash_dir / "firmware").mkdir(parents=True)
    (flash_dir / "firmware" / "node.py").write_text("STALE = True\n")  # would shadow node.mpy
    (flash_dir / "energy.dat").write_bytes(b"\x01\x02")
    master, slave = os.openpty()
    tty.setraw(slave)
    from slnode_support import MICROPYTHON

    proc = subprocess.Popen([MICROPYTHON], stdin=master, stdout=master, stderr=master, cwd=flash_dir)
    try:
        yield os.ttyname(slave), flash_dir
    finally:
        proc.kill()
        proc.wait(timeout=10)
        os.close(master)
        os.close(slave)


def test_mpremote_mode_copies_and_verifies_on_a_micropython_repl(tmp_path, fs_image, repl_board):
    port, flash_dir = repl_board
    code, res = slnode_json("flash", "--port", port, "--mpremote", "--image", str(fs_image), "--no-reset")
    assert code == 0, res
    files = provision.read_image(fs_image.read_bytes())
    on_board = {p.relative_to(flash_dir).as_posix(): p.read_bytes() for p in flash_dir.rglob("*") if p.is_file()}
    assert on_board == {**files, "energy.dat": b"\x01\x02"}  # stale node.py gone, node data kept
    assert res["verified"] == len(json.loads(files["manifest.json"])["files"]) and res["reset"] is False
    # a second run over the same board works (the trees are replaced, not merged)
    code, res = slnode_json("flash", "--port", port, "--mpremote", "--image", str(fs_image))
    assert code == 0 and res["reset"] is True, res


# --- the esptool API boundary -----------------------------------------------------------------
# Without a board, the calls slnode makes into esptool's Python API are checked against that
# API's real signatures (inspect.signature(...).bind), and the board's answers are stand-ins.


class _Board:
    def __init__(self, chip_name="ESP32", flash="4MB"):
        self.CHIP_NAME = chip_name
        self.flash = flash
        self.baud = None
        self.closed = False

    def change_baud(self, baud):
        import inspect

        from esptool.loader import ESPLoader

        inspect.signature(ESPLoader.change_baud).bind(self, baud)
        self.baud = baud

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.closed = True


@pytest.fixture
def esptool_api(monkeypatch):
    """Replace the esptool calls that need a board; record each call after binding its
    arguments to the real function's signature."""
    import inspect

    from esptool import cmds

    state = {"calls": [], "board": _Board(), "fail": {}}

    def stand_in(name, result):
        sig = inspect.signature(getattr(cmds, name))

        def f(*args, **kwargs):
            sig.bind(*args, **kwargs)  # a wrong call into esptool fails here, as it would live
            state["calls"].append((name, args, kwargs))
            if name in state["fail"]:
                raise state["fail"][name]
            return result(state) if callable(result) else result

        monkeypatch.setattr(cmds, name, f)

    stand_in("detect_chip", lambda s: s["board"])
    stand_in("run_stub", lambda s: s["board"])
    stand_in("attach_flash", None)
    stand_in("detect_flash_size", lambda s: s["board"].flash)
    stand_in("erase_flash", None)
    stand_in("write_flash", None)
    stand_in("verify_flash", None)
    stand_in("reset_chip", None)
    return state


def _names(state):
    return [c[0] for c in state["calls"]]


def test_esptool_sequence_offsets_verify_and_reset(tmp_path, fs_image, esptool_api):
    fw = make_firmware(tmp_path, "esp32")
    res = flash.flash_esptool(flash.plan(fw, fs_image), "/dev/ttyUSB0", baud=921600, quiet=True)
    assert _names(esptool_api) == ["detect_chip", "run_stub", "attach_flash", "detect_flash_size",
                                   "write_flash", "verify_flash", "reset_chip"]
    calls = {c[0]: c for c in esptool_api["calls"]}
    written = calls["write_flash"][1][1]
    assert [(off, len(d)) for off, d in written] == [(0x1000, fw.stat().st_size), (0x200000, 0x200000)]
    assert written[0][1] == fw.read_bytes() and written[1][1] == fs_image.read_bytes()
    assert calls["verify_flash"][1][1] == written  # the same regions read back
    assert calls["reset_chip"][1][1] == "hard-reset"
    assert esptool_api["board"].baud == 921600 and esptool_api["board"].closed
    assert res["chip"] == "esp32" and all("verified" in w for w in res["written"])


def test_esptool_s3_at_offset_zero_with_erase(tmp_path, fs_image, esptool_api):
    esptool_api["board"] = _Board("ESP32-S3")
    flash.flash_esptool(flash.plan(make_firmware(tmp_path, "esp32s3"), fs_image), "/dev/ttyACM0",
                        erase=True, quiet=True)
    assert "erase_flash" in _names(esptool_api)
    written = [c for c in esptool_api["calls"] if c[0] == "write_flash"][0][1][1]
    assert [off for off, _ in written] == [0x0, 0x200000]


def test_esptool_wrong_chip_on_the_board_writes_nothing(tmp_path, fs_image, esptool_api):
    esptool_api["board"] = _Board("ESP32-C3")
    with pytest.raises(flash.FlashError, match="wrong chip: the board on /dev/ttyUSB0 is an ESP32-C3 but the firmware is for esp32"):
        flash.flash_esptool(flash.plan(make_firmware(tmp_path, "esp32"), fs_image), "/dev/ttyUSB0", quiet=True)
    assert "write_flash" not in _names(esptool_api)


def test_esptool_flash_too_small_writes_nothing(tmp_path, fs_image, esptool_api):
    esptool_api["board"] = _Board("ESP32", flash="2MB")
    with pytest.raises(flash.FlashError, match=r"the board's flash \(2MB\) is too small"):
        flash.flash_esptool(flash.plan(make_firmware(tmp_path, "esp32"), fs_image), "/dev/ttyUSB0", quiet=True)
    assert "write_flash" not in _names(esptool_api)


def test_esptool_failed_verification_is_reported_and_no_reset(tmp_path, fs_image, esptool_api):
    from esptool.util import FatalError

    esptool_api["fail"]["write_flash"] = FatalError("MD5 of file does not match data in flash!")
    with pytest.raises(flash.FlashError, match="verification failed on /dev/ttyUSB0"):
        flash.flash_esptool(flash.plan(make_firmware(tmp_path, "esp32"), fs_image), "/dev/ttyUSB0", quiet=True)
    assert "reset_chip" not in _names(esptool_api)


# --- the real esptool against a simulated ESP32 loader (tests/tools/esp_rom_sim.py) -----------


@pytest.fixture
def sim_board():
    from esp_rom_sim import Esp32Sim

    master, slave = os.openpty()
    tty.setraw(master)
    tty.setraw(slave)
    sim = Esp32Sim(master).start()
    try:
        yield os.ttyname(slave), sim
    finally:
        sim.stop()
        os.close(master)
        os.close(slave)


def test_cli_flash_through_esptool_lands_at_the_offsets_and_mounts(tmp_path, fs_image, sim_board):
    """`slnode flash` drives the real esptool (stub upload, compressed write, MD5 checks, reset)
    against the simulated loader; the bytes at 0x200000 of its flash mount in MicroPython."""
    from slnode_support import mount_in_micropython

    port, sim = sim_board
    fw = make_firmware(tmp_path, "esp32")
    code, res = slnode_json("flash", "--port", port, "--firmware", str(fw), "--image", str(fs_image),
                            "--connect-attempts", "1")
    assert code == 0, res
    assert res["chip"] == "esp32" and res["flash_size"] == "4MB"
    assert bytes(sim.flash[0x1000 : 0x1000 + fw.stat().st_size]) == fw.read_bytes()
    vfs = bytes(sim.flash[0x200000:0x400000])
    assert vfs == fs_image.read_bytes()
    assert 0x13 in sim.commands  # MD5 of the written regions was asked for (verification)
    part = tmp_path / "vfs.bin"
    part.write_bytes(vfs)
    rep = mount_in_micropython(part, tmp_path)
    assert rep["config"]["id"] == "lamp-1" and rep["errors"] == []


def test_corrupted_write_is_caught_by_verification(tmp_path, fs_image, sim_board):
    port, sim = sim_board
    sim.corrupt = True
    code, res = slnode_json("flash", "--port", port, "--firmware", str(make_firmware(tmp_path, "esp32")),
                            "--connect-attempts", "1")
    assert code == 3 and res["error"].startswith(f"verification failed on {port}")


def test_wrong_chip_on_the_simulated_board_writes_nothing(tmp_path, fs_image, sim_board):
    port, sim = sim_board
    code, res = slnode_json("flash", "--port", port, "--firmware", str(make_firmware(tmp_path, "esp32s3")),
                            "--image", str(fs_image), "--connect-attempts", "1")
    assert code == 3 and res["error"].startswith(f"wrong chip: the board on {port} is an ESP32 but the firmware is for esp32s3")
    assert sim.flash == bytearray(b"\xff" * len(sim.flash))
