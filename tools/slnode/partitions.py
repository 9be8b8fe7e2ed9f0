"""Flash geometry: ESP image headers, partition tables, and where MicroPython's filesystem lives.

Stock MicroPython ESP32 downloads (micropython.org/download/<BOARD>) are *merged* images: the
second-stage bootloader, the partition table (at flash 0x8000) and the application, written at
the chip's bootloader offset (0x1000 on the ESP32 and ESP32-S2, 0x0 on the S3, C3 and later).
The filesystem partition is the data partition labelled ``vfs``; MicroPython formats it with
littlefs v2, 4096-byte blocks, and mounts it at ``/``.

The authoritative geometry is the partition table inside the firmware file you are about to
flash (:func:`inspect_firmware`): releases have moved the ``vfs`` partition (since 1.26 the tables
have no ``vfs`` row and the filesystem is the flash after the last partition; "4MiBplus" tables
grow the app; a ``romfs`` partition exists only in custom builds, see tools/slnode/romfs.py).
``BOARDS`` holds the geometry of the stock tables for provisioning before the firmware file is
at hand:

    board       MicroPython board      firmware at   vfs offset   vfs size            table
    esp32       ESP32_GENERIC          0x1000        0x200000     0x200000 (2 MiB)    partitions-4MiB.csv
    esp32s3     ESP32_GENERIC_S3       0x0           0x200000     0x600000 (6 MiB)    partitions-8MiB.csv
    esp32s3-4m  ESP32_GENERIC_S3 4M    0x0           0x200000     0x200000 (2 MiB)    partitions-4MiB.csv
    esp32c3     ESP32_GENERIC_C3       0x0           0x200000     0x200000 (2 MiB)    partitions-4MiB.csv
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from pathlib import Path

ESP_IMAGE_MAGIC = 0xE9
PARTITION_TABLE_OFFSET = 0x8000
PARTITION_TABLE_SIZE = 0xC00
BLOCK_SIZE = 4096

# Chip id in the extended image header (esptool's IMAGE_CHIP_ID) -> (name, bootloader offset).
CHIPS = {
    0: ("esp32", 0x1000),
    2: ("esp32s2", 0x1000),
    5: ("esp32c3", 0x0),
    9: ("esp32s3", 0x0),
    12: ("esp32c2", 0x0),
    13: ("esp32c6", 0x0),
    16: ("esp32h2", 0x0),
    18: ("esp32p4", 0x2000),
}
SUPPORTED_CHIPS = ("esp32", "esp32s3", "esp32c3")
# Flash-size nibble of image header byte 3 -> bytes.
FLASH_SIZES = {i: (1 << 20) << i for i in range(8)}


class ImageError(Exception):
    """A firmware or filesystem file that is not what it must be; the message says the fix."""

    exit_code = 2


@dataclass(frozen=True)
class FsGeometry:
    offset: int
    size: int
    block_size: int = BLOCK_SIZE
    source: str = ""

    @property
    def block_count(self) -> int:
        return self.size // self.block_size


@dataclass
class Partition:
    label: str
    type: int
    subtype: int
    offset: int
    size: int


@dataclass
class FirmwareInfo:
    path: Path
    chip: str
    offset: int  # where the file is written
    size: int
    flash_size: int | None
    partitions: list[Partition] = field(default_factory=list)
    fs: FsGeometry | None = None


BOARDS = {
    "esp32": ("esp32", FsGeometry(0x200000, 0x200000, source="ESP32_GENERIC stock 4 MiB table")),
    "esp32s3": ("esp32s3", FsGeometry(0x200000, 0x600000, source="ESP32_GENERIC_S3 stock 8 MiB table")),
    "esp32s3-4m": ("esp32s3", FsGeometry(0x200000, 0x200000, source="ESP32_GENERIC_S3 FLASH_4M table")),
    "esp32c3": ("esp32c3", FsGeometry(0x200000, 0x200000, source="ESP32_GENERIC_C3 stock 4 MiB table")),
}


def board_geometry(board: str) -> FsGeometry:
    """Filesystem geometry of a stock board table. Raises ImageError for an unknown board."""
    try:
        return BOARDS[board][1]
    except KeyError as e:
        raise ImageError("unknown board {!r}; one of {}".format(board, ", ".join(sorted(BOARDS)))) from e


def firmware_offset(chip: str) -> int:
    """Flash offset of a merged MicroPython image for ``chip`` (ESP32 0x1000, S3/C3 0x0)."""
    for name, off in CHIPS.values():
        if name == chip:
            return off
    raise ImageError(f"unknown chip {chip!r}")


def esp_image_chip(head: bytes, what: str = "file") -> tuple[str, int | None]:
    """Check an ESP image header. Returns (chip name, flash size in bytes or None).

    Raises ImageError if the magic byte is not 0xE9 or the chip id is unknown.
    """
    if len(head) < 24 or head[0] != ESP_IMAGE_MAGIC:
        got = (f"0x{head[0]:02X}") if head else "an empty file"
        raise ImageError(
            f"{what} is not an ESP firmware image (first byte {got}, expected 0xE9). Download the "
            "MicroPython .bin for your board from https://micropython.org/download/ "
            "(not the .uf2, .elf, .hex or .zip)."
        )
    chip_id = struct.unpack_from("<H", head, 12)[0]
    if chip_id not in CHIPS:
        raise ImageError(f"{what}: unknown chip id {chip_id} in the image header (corrupt file?)")
    return CHIPS[chip_id][0], FLASH_SIZES.get(head[3] >> 4)


def parse_partition_table(data: bytes) -> list[Partition]:
    """Decode an ESP-IDF binary partition table (32-byte rows, magic 0xAA 0x50)."""
    parts = []
    for i in range(0, min(len(data), PARTITION_TABLE_SIZE) - 31, 32):
        row = data[i : i + 32]
        if row[:2] != b"\xaa\x50":
            break  # 0xEBEB MD5 row or erased 0xFF: end of table
        _m, ptype, sub, off, size, label, _flags = struct.unpack("<2sBBLL16sL", row)
        parts.append(Partition(label.rstrip(b"\0").decode("ascii", "replace"), ptype, sub, off, size))
    return parts


APP_OFFSET = 0x10000  # the application in every ESP32 MicroPython table (factory or ota_0)
OTA_SUBTYPES = (0x10, 0x11)  # app ota_0, ota_1 (ESP-IDF partition subtypes)
OTADATA_SUBTYPE = 0x00  # data "ota": which slot boots, and the rollback state


def ota_slots(parts: list[Partition]) -> list[Partition]:
    """The two application slots of an OTA partition table (ota_0, ota_1), or [] when the
    table cannot take whole-image updates (no otadata, or fewer than two slots).

    The layout is fixed when the board is flashed by USB: a partition table cannot be changed
    over the air. docs/ota.md states the one whole-image updates need."""
    slots = [p for p in parts if p.type == 0 and p.subtype in OTA_SUBTYPES]
    otadata = [p for p in parts if p.type == 1 and p.subtype == OTADATA_SUBTYPE]
    return slots if len(slots) == 2 and otadata else []


def check_app_fits(app_size: int, parts: list[Partition], what: str = "firmware") -> str:
    """Check that an application image fits the slot(s) it will be written to.

    Returns a one-line statement of the OTA layout. Raises ImageError when the application is
    larger than its partition, or than the smaller OTA slot (an image that could be flashed
    by USB but never updated over the air)."""
    slots = ota_slots(parts)
    if slots:
        room = min(p.size for p in slots)
        if app_size > room:
            raise ImageError(
                f"{what}: the application ({app_size} bytes) does not fit its OTA slot ({room} bytes, "
                f"{' and '.join(p.label for p in slots)}): it could never be updated over the air. "
                "Build a smaller image or use a table with larger slots (docs/ota.md)")
        return (f"OTA slots {slots[0].label} and {slots[1].label} of {room} bytes each; "
                f"the application takes {app_size} ({100 * app_size // room} %)")
    apps = [p for p in parts if p.type == 0]
    if apps and app_size > max(p.size for p in apps):
        raise ImageError(f"{what}: the application ({app_size} bytes) is larger than its partition "
                         f"({max(p.size for p in apps)} bytes): wrong or corrupt file")
    return ("no OTA slots (ota_0, ota_1, otadata): application updates over the air work, whole-image "
            "updates do not (docs/ota.md)")


def inspect_firmware(path: Path) -> FirmwareInfo:
    """Read a MicroPython firmware file: chip, flash offset, partition table, filesystem.

    Returns FirmwareInfo. Raises ImageError when the file is missing, not an ESP image, or an
    application-only image without the partition table of a full download.
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as e:
        raise ImageError(f"cannot read firmware {path}: {e.strerror or e}") from e
    if data[:1] == b"\xff" and data[0x1000:0x1001] == bytes([ESP_IMAGE_MAGIC]):
        # A whole-flash image from offset 0 (esptool merge-bin without --target-offset):
        # erased padding, then the ESP32/S2 bootloader at 0x1000.
        chip, flash_size = esp_image_chip(data[0x1000:0x1040], str(path))
        offset = 0
    else:
        chip, flash_size = esp_image_chip(data[:64], str(path))
        offset = firmware_offset(chip)
    pt_at = PARTITION_TABLE_OFFSET - offset
    parts = parse_partition_table(data[pt_at : pt_at + PARTITION_TABLE_SIZE]) if pt_at >= 0 else []
    if not parts:
        raise ImageError(
            f"{path} is an ESP image for {chip} but has no partition table at 0x{PARTITION_TABLE_OFFSET:x}: it is an application "
            "or bootloader alone, not the full MicroPython download. Use the .bin from "
            f"https://micropython.org/download/ (it is flashed at 0x{offset:x})."
        )
    info = FirmwareInfo(path, chip, offset, len(data), flash_size, parts)
    vfs = [p for p in parts if p.type == 1 and p.label in ("vfs", "ffat")]
    if vfs:
        p = vfs[0]
        info.fs = FsGeometry(p.offset, p.size, source=f"partition {p.label!r} of {path.name}")
    elif flash_size:
        end = max(p.offset + p.size for p in parts)
        info.fs = FsGeometry(end, flash_size - end, source=f"flash after the last partition of {path.name}")
    return info
