"""`slnode flash`: write MicroPython and the node's filesystem image to a board over USB.

Two modes:

- esptool (default): checks the firmware file (ESP image magic 0xE9, chip id in the extended
  header, partition table of a full MicroPython download), checks the filesystem image fits
  the ``vfs`` partition *of that firmware* exactly, then, through esptool's Python API:
  detect the chip (refuse a wrong one), [erase], write MicroPython at the chip's offset
  (ESP32 0x1000; S3 and C3 0x0) and the image at the partition offset, verify both against
  the flash (esptool checks an MD5 of each region after writing; ``verify_flash`` re-reads
  them), and hard-reset the board. ``--romfs IMG`` (a ROMFS image from ``slnode build --romfs``)
  goes to the partition labelled ``romfs`` of that firmware's table, after checking it is a ROMFS
  image no larger than the partition (a ROMFS image need not fill it: its header gives its length).
- ``--mpremote``: for a board already running MicroPython (``tools/slnode/mpcopy.py``).

Every serial failure is turned into a message that says what to do (:func:`explain`).
Nothing here claims a flash succeeded unless esptool read the data back.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path

from tools.slnode import partitions
from tools.slnode.partitions import ImageError

CHIP_CHOICES = ("auto", *partitions.SUPPORTED_CHIPS)
DEFAULT_BAUD = 460800


class FlashError(Exception):
    """The board, port or flash step failed; the message says how to fix it."""

    exit_code = 3


@dataclass
class FlashPlan:
    chip: str | None  # expected chip ("esp32"...), None when unknown (image-only, --chip auto)
    regions: list[tuple[int, bytes, str]] = field(default_factory=list)  # (offset, data, label)
    fs: partitions.FsGeometry | None = None
    ota: str = ""  # the OTA layout of the firmware's partition table (partitions.check_app_fits)


def _norm_chip(name: str) -> str:
    return name.lower().replace("-", "").replace("_", "")


def check_fs_image(data: bytes, geometry: partitions.FsGeometry, what: str = "image") -> None:
    """Refuse a filesystem image that is not littlefs or does not match the partition.

    Raises ImageError: too large, wrong size (littlefs refuses to mount a different block
    count, and MicroPython then stops at boot with "The filesystem appears to be corrupted"),
    an ESP firmware given as --image, or no littlefs superblock.
    """
    if data[:1] == bytes([partitions.ESP_IMAGE_MAGIC]):
        raise ImageError(f"{what} is an ESP firmware image, not a filesystem image: pass it as --firmware")
    if len(data) > geometry.size:
        raise ImageError(
            f"{what} is too large for the filesystem partition: {len(data)} bytes > 0x{geometry.size:x} "
            f"({geometry.source}). Provision it for this firmware: "
            "slnode provision --firmware FIRMWARE.bin ..."
        )
    if len(data) != geometry.size:
        raise ImageError(
            f"{what} is {len(data)} bytes but the filesystem partition is 0x{geometry.size:x} bytes "
            f"({geometry.source}); MicroPython could not mount it. Re-run slnode provision with "
            "--firmware FIRMWARE.bin (or the matching --board)."
        )
    bs = geometry.block_size
    if not any(data[b * bs + 8 : b * bs + 16] == b"littlefs" for b in (0, 1)):
        raise ImageError(f"{what} is not a littlefs image (no superblock); make it with slnode provision")


def plan(firmware: Path | None, image: Path | None, chip: str = "auto", board: str = "esp32",
         romfs: Path | None = None) -> FlashPlan:
    """Check the files and compute what goes where. Touches no hardware.

    Returns a FlashPlan. Raises ImageError for a file that is not an ESP image, a chip that
    contradicts --chip, an image that does not fit, or a firmware overlapping the filesystem;
    for ``romfs`` (a ROMFS image), a firmware without a ``romfs`` partition or an image larger
    than that partition.
    """
    if firmware is None and image is None and romfs is None:
        raise ImageError("nothing to flash: give --firmware micropython.bin and/or --image fs.bin")
    p = FlashPlan(chip=None if chip == "auto" else chip)
    if firmware is not None:
        info = partitions.inspect_firmware(firmware)
        if info.chip not in partitions.SUPPORTED_CHIPS:
            raise ImageError(
                f"{firmware} is MicroPython for {info.chip}; slnode supports {', '.join(partitions.SUPPORTED_CHIPS)}"
            )
        if p.chip and p.chip != info.chip:
            raise ImageError(
                f"wrong chip: {firmware} is built for {info.chip} but --chip {p.chip} was given. "
                f"Download the MicroPython firmware for {p.chip} (micropython.org/download)."
            )
        p.chip = info.chip
        p.fs = info.fs
        app_at = partitions.APP_OFFSET - info.offset
        p.ota = partitions.check_app_fits(max(0, info.size - app_at), info.partitions, str(firmware))
        p.regions.append((info.offset, Path(firmware).read_bytes(), "MicroPython " + info.chip))
        if info.fs and info.offset + info.size > info.fs.offset:
            raise ImageError(
                f"{firmware} ({info.size} bytes at 0x{info.offset:x}) overlaps the filesystem partition "
                f"at 0x{info.fs.offset:x}: corrupt or wrong file"
            )
    if image is not None:
        if p.fs is None:
            want = board
            bchip = partitions.BOARDS.get(board, (None,))[0]
            if p.chip and bchip != p.chip:
                want = p.chip  # --chip esp32c3 without --firmware: that chip's stock table
            p.fs = partitions.board_geometry(want)
        try:
            data = Path(image).read_bytes()
        except OSError as e:
            raise ImageError(f"cannot read image {image}: {e.strerror or e}") from e
        check_fs_image(data, p.fs, str(image))
        p.regions.append((p.fs.offset, data, "filesystem"))
    if romfs is not None:
        p.regions.append(_romfs_region(firmware, romfs))
    return p


def _romfs_region(firmware: Path | None, romfs: Path) -> tuple[int, bytes, str]:
    """(offset, data, label) of a ROMFS image in the ``romfs`` partition of ``firmware``'s own
    table, after checking it is a ROMFS image that fits. Raises ImageError."""
    from tools.slnode.romfs import RomfsError, check_image

    if firmware is None:
        raise ImageError(
            "--romfs needs --firmware: the romfs partition is read from the partition table of the MicroPython "
            "you flash (stock ESP32 downloads have none; docs/technician.md, 'Which build for which board')"
        )
    info = partitions.inspect_firmware(firmware)
    parts = [p for p in info.partitions if p.type == 1 and p.label == "romfs"]
    if not parts:
        raise ImageError(
            f"{firmware} has no 'romfs' partition: it is not a MicroPython built for ROMFS (stock ESP32 "
            "downloads are not). Build MicroPython with MICROPY_VFS_ROM and partitions-4MiB-romfs.csv, or use "
            "the .mpy build on a board with PSRAM (docs/technician.md)"
        )
    part = parts[0]
    try:
        data = Path(romfs).read_bytes()
    except OSError as e:
        raise ImageError(f"cannot read ROMFS image {romfs}: {e.strerror or e}") from e
    try:
        check_image(data, str(romfs))
    except RomfsError as e:
        raise ImageError(str(e)) from e
    if len(data) > part.size:
        raise ImageError(
            f"ROMFS image {romfs} does not fit: {len(data)} bytes > {part.size} bytes (0x{part.size:x}), the "
            f"romfs partition of {Path(firmware).name} at 0x{part.offset:x} ({len(data) - part.size} bytes too "
            "many). Nothing was written. Use a MicroPython whose romfs partition is larger, or a smaller build."
        )
    if info.offset + info.size > part.offset and part.offset >= info.offset:
        raise ImageError(f"{firmware} ({info.size} bytes at 0x{info.offset:x}) overlaps its own romfs partition "
                         f"at 0x{part.offset:x}: corrupt or wrong file")
    return part.offset, data, f"ROMFS image (partition 'romfs', {part.size} bytes)"


# --- error mapping ---------------------------------------------------------------------------


def explain(text: str, port: str) -> str:
    """Turn an esptool / pyserial / mpremote error text into what the technician should do."""
    t = text.lower()
    if "permission denied" in t or "errno 13" in t:
        return (
            f"permission denied on {port}: your user may not use serial ports. Fix: "
            "sudo usermod -aG dialout $USER, then log out and back in (or reboot)."
        )
    if (
        "busy" in t
        and ("errno 16" in t or "resource busy" in t)
        or "exclusively lock" in t
        or "resource temporarily unavailable" in t
        or "in use by another program" in t
    ):
        return (
            f"{port} is busy: another program holds it (a serial monitor, Thonny, mpremote, "
            f"slnode console, ModemManager). Close it and retry; `fuser {port}` shows who."
        )
    if (
        "errno 2" in t
        or "no such file" in t
        or "doesn't exist" in t
        and "errno" in t
        or "failed to access" in t
    ):
        return (
            f"no serial port {port}: is the board plugged in, with a data (not charge-only) "
            "USB cable? List ports with: python -m serial.tools.list_ports"
        )
    if "this chip is" in t or "wrong chip" in t or "unexpected chip" in t:
        return f"wrong chip on {port}: {text.strip().splitlines()[0]}"
    if (
        "failed to connect" in t
        or "no serial data received" in t
        or "wrong boot mode" in t
        or "timed out" in t
    ):
        return (
            f"no ESP32 answered on {port}. Check the cable and port, then put the board in download "
            "mode: hold BOOT (IO0), press and release EN/RESET, release BOOT, and retry."
        )
    if "raw repl" in t:
        return (
            f"the board on {port} did not give a MicroPython prompt: it may not run MicroPython yet "
            "(flash it with --firmware), or a program is stuck; press RESET and retry."
        )
    if "md5" in t or "verify" in t or "digest" in t:
        return f"verification failed on {port}: the flash does not hold what was written ({text.strip()}). Retry at a lower --baud 115200."
    return f"{port}: {text.strip()}"


# --- esptool ---------------------------------------------------------------------------------


def _install_logger(quiet: bool):
    """Route esptool's messages to stderr and its progress to tqdm; returns a restore callable."""
    from esp_pylib.logger import EspLog
    from esptool.logger import TemplateLogger, log

    from tools.slnode.progress import progress

    class TqdmLogger(TemplateLogger):
        def __init__(self):
            self.bar = None

        def print(self, *args, **kwargs):
            if not quiet:
                kwargs.pop("file", None)
                print(*args, file=sys.stderr, **kwargs)

        def note(self, message):
            self.print("note: " + message)

        def warning(self, message):
            self.print("warning: " + message)

        def error(self, message):
            print(message, file=sys.stderr)

        def stage(self, finish=False):
            pass

        def progress_bar(self, cur_iter, total_iters, prefix="", suffix="", bar_length=30):
            if quiet or total_iters <= 0:
                return
            if self.bar is None:
                self.bar = progress(total=total_iters, desc=prefix.strip() or "flash")
            self.bar.n = cur_iter
            self.bar.refresh()
            if cur_iter >= total_iters:
                self.bar.close()
                self.bar = None

        def set_verbosity(self, verbosity):
            pass

    old = EspLog.instance
    log.set_logger(TqdmLogger())

    def restore():
        EspLog.instance = old

    return restore


def flash_esptool(
    p: FlashPlan,
    port: str,
    baud: int = DEFAULT_BAUD,
    erase: bool = False,
    connect_attempts: int = 7,
    quiet: bool = False,
) -> dict:
    """Write the plan's regions with esptool, verify them, and reset the board.

    Returns {"chip", "flash_size", "written": [...]} after esptool read every region back.
    Raises FlashError (with the fix) for a missing, busy or forbidden port, a board that does
    not answer, a wrong chip, a flash too small, or a failed verification.
    """
    import serial
    from esptool import cmds
    from esptool.util import FatalError

    restore = _install_logger(quiet)
    try:
        try:
            esp = cmds.detect_chip(port, 115200, "default-reset", connect_attempts=connect_attempts)
        except (FatalError, serial.SerialException, OSError) as e:
            raise FlashError(explain(str(e), port)) from e
        with esp:
            try:
                board_chip = _norm_chip(esp.CHIP_NAME)
                if p.chip and board_chip != p.chip:
                    raise FlashError(
                        f"wrong chip: the board on {port} is an {esp.CHIP_NAME} but the firmware is for "
                        f"{p.chip}. Download MicroPython for {esp.CHIP_NAME} (micropython.org/download) "
                        "and provision with the matching --board/--firmware."
                    )
                esp = cmds.run_stub(esp)
                if baud != 115200:
                    esp.change_baud(baud)
                cmds.attach_flash(esp)
                size_name = cmds.detect_flash_size(esp)
                flash_bytes = _size_bytes(size_name)
                end = max(off + len(d) for off, d, _ in p.regions)
                if flash_bytes and end > flash_bytes:
                    raise FlashError(
                        f"the board's flash ({size_name}) is too small: the files end at 0x{end:x}. "
                        "Use the firmware and --board for this board's flash size."
                    )
                if erase:
                    cmds.erase_flash(esp)
                addr_data = [(off, data) for off, data, _ in p.regions]
                cmds.write_flash(esp, addr_data, flash_size="keep")
                cmds.verify_flash(esp, addr_data)
                cmds.reset_chip(esp, "hard-reset")
            except (FatalError, serial.SerialException, OSError) as e:
                raise FlashError(explain(str(e), port)) from e
    finally:
        restore()
    return {
        "chip": board_chip,
        "flash_size": size_name,
        "written": [f"{label} at 0x{off:x} ({len(d)} bytes, verified)" for off, d, label in p.regions],
    }


def _size_bytes(name: str | None) -> int | None:
    if not name or not name.endswith("MB"):
        return None
    return int(name[:-2]) << 20


# --- serial port ---------------------------------------------------------------------------


def open_port(port: str, baud: int = 115200, timeout: float = 0.2):
    """Open ``port`` exclusively with pyserial. Raises FlashError with the fix (missing/busy/forbidden)."""
    import serial

    try:
        return serial.Serial(port, baud, timeout=timeout, exclusive=True)
    except (serial.SerialException, OSError) as e:
        raise FlashError(explain(str(e), port)) from e


# --- CLI -------------------------------------------------------------------------------------


def add_arguments(parser) -> None:
    parser.add_argument("--port", required=True, help="serial port, e.g. /dev/ttyUSB0 or /dev/ttyACM0")
    parser.add_argument(
        "--firmware", type=Path, help="MicroPython .bin for the board (micropython.org/download)"
    )
    parser.add_argument("--image", type=Path, help="filesystem image from slnode provision")
    parser.add_argument(
        "--romfs",
        type=Path,
        help="ROMFS image from slnode build --romfs, written to the firmware's 'romfs' partition (needs --firmware)",
    )
    parser.add_argument("--chip", default="auto", choices=CHIP_CHOICES, help="expected chip (default: auto)")
    parser.add_argument(
        "--board",
        default="esp32",
        choices=sorted(partitions.BOARDS),
        help="partition geometry when flashing --image without --firmware",
    )
    parser.add_argument(
        "--baud", type=int, default=DEFAULT_BAUD, help=f"write speed (default {DEFAULT_BAUD})"
    )
    parser.add_argument(
        "--erase", action="store_true", help="erase the whole flash first (a board with old data)"
    )
    parser.add_argument(
        "--connect-attempts", type=int, default=7, help="esptool connection attempts (default 7)"
    )
    parser.add_argument(
        "--no-reset", action="store_true", help="leave the board at the REPL afterwards (--mpremote)"
    )
    parser.add_argument(
        "--mpremote",
        action="store_true",
        help="copy the files in --image with mpremote to a board already running MicroPython",
    )


def run(args) -> dict:
    if args.mpremote:
        if getattr(args, "romfs", None) is not None:
            raise ImageError("--romfs is written with esptool (drop --mpremote); on a board already running a "
                             "MicroPython with ROMFS: mpremote connect PORT romfs deploy IMAGE")
        if args.image is None:
            raise ImageError("--mpremote copies the files of a provisioned image: give --image fs.bin")
        from tools.slnode.mpcopy import flash_mpremote

        res = flash_mpremote(args.image, args.port, reset=not args.no_reset, quiet=args.quiet)
        res["summary"] = (
            f"copied {len(res['copied'])} files to {args.port}, {res['verified']} verified by hash"
            + (", reset requested" if res["reset"] else " (not reset: press RESET to start the node)")
        )
        return res
    p = plan(args.firmware, args.image, args.chip, args.board, getattr(args, "romfs", None))
    res = flash_esptool(p, args.port, args.baud, args.erase, args.connect_attempts, args.quiet)
    res["summary"] = f"{res['chip']} on {args.port}: " + "; ".join(res["written"]) + "; board reset"
    if p.ota:
        res["ota"] = p.ota
    return res
