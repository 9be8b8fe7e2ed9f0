"""`slnode provision`: validate a node config and write the node's littlefs filesystem image.

The image holds the compiled firmware (a fresh build, or ``--build DIR``), ``manifest.json``
(the build manifest plus the node id and the hash of ``config.json``) and ``config.json``.
It is flashed at the filesystem partition (see ``tools.slnode.partitions``); MicroPython mounts
it as ``/`` and runs ``/main.py``.

Validation is the firmware's own: ``firmware.config.validate(cfg, require_identity=True)``,
the same code the node runs at boot, so a config this tool accepts is one the node accepts.
Every error names its field (``lat: 95.0 is out of range -90..90``).

Keys (SPEC "OSCORE", docs/security.md): each node gets a fresh OSCORE security context (master
secret 16 random bytes, master salt 8, node Sender ID 4, gateway Sender ID 0x00). The image holds
``oscore.json`` for the node; ``<id>.oscore.json`` (mode 0600) is written beside the image for
``slgw keys import``. Keys are never printed, neither in the summary nor in ``--json``. Keys are
never reused across provisionings: a new image restarts the node's sequence numbers, and the
same key with the same sequence number would reuse an AEAD nonce. ``--no-oscore`` makes an
image without keys (the node then runs unprotected: demo/tests only).

Batch form (``--csv nodes.csv --out-dir DIR``): each CSV row overrides or extends the base
TOML (``--config``, optional). Columns are config keys; ``meter.type``, ``meter.unit``... set the
meter table; an empty cell keeps the base value. Cells are typed by the schema's defaults, so
an id such as ``0042`` stays a string. All rows are validated before any image is written:
one bad row writes nothing, and every bad row is reported with its line number.
"""

from __future__ import annotations

import csv
import json
import os
import sys
import tempfile
import tomllib
from pathlib import Path

from tools.slnode import build as buildmod
from tools.slnode import partitions

# MicroPython's littlefs v2 driver (extmod/vfs_lfs.c) defaults: readsize=32, progsize=32,
# lookahead=32. littlefs checks at mount that the superblock's block_count equals the
# partition's, so the image must be exactly the partition size.
LFS_READ_SIZE = 32
LFS_PROG_SIZE = 32
LFS_LOOKAHEAD = 32
LFS_DISK_VERSION = 0x00020000  # on-disk format 2.0: mountable by every littlefs 2.x in MicroPython
CONFIG_NAME = "config.json"
KEYS_NAME = "oscore.json"  # the node's key file in the image (firmware/secure.py)
GATEWAY_SENDER_ID = b"\x00"


class ProvisionError(Exception):
    """A config or image that cannot be made; the message names the field or the fix."""

    exit_code = 2


def _validator():
    """The seam to the firmware's validator (one schema, shared with the node)."""
    if str(buildmod.REPO) not in sys.path:
        sys.path.insert(0, str(buildmod.REPO))
    from firmware.config import defaults, dumps, meter_defaults, validate

    return validate, defaults, meter_defaults, dumps


def load_toml(path: Path) -> dict:
    """Read a node.toml. Raises ProvisionError with the parser's line and column."""
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except FileNotFoundError as e:
        raise ProvisionError(f"config file {path} not found") from e
    except OSError as e:
        raise ProvisionError(f"cannot read config file {path}: {e.strerror or e}") from e
    except UnicodeDecodeError as e:
        raise ProvisionError(f"{path} is not UTF-8 text (save it as UTF-8): {e}") from e
    except tomllib.TOMLDecodeError as e:
        raise ProvisionError(f"{path} is not valid TOML: {e}") from e


def check_config(src: dict, where: str = "") -> dict:
    """Validate ``src`` with the firmware's rules (id and gateway required).

    Returns the complete, normalised config. Raises ProvisionError listing every bad field.
    """
    validate = _validator()[0]
    cfg, errors = validate(src, require_identity=True)
    if errors:
        prefix = (where + ": ") if where else ""
        raise ProvisionError("invalid node config:\n" + "\n".join("  " + prefix + e for e in errors))
    return cfg


def _typed(key: str, raw: str, template: dict):
    """Convert a CSV cell to the type of the schema default for ``key``."""
    if key not in template:
        return raw  # unknown column: the validator will name it
    default = template[key]
    if isinstance(default, bool):
        return raw.strip().lower() in ("1", "true", "yes", "on")
    if isinstance(default, int):
        try:
            return int(raw)
        except ValueError as e:
            raise ValueError(f"{raw!r} is not an integer") from e
    if isinstance(default, float):
        try:
            return float(raw)
        except ValueError as e:
            raise ValueError(f"{raw!r} is not a number") from e
    return raw


def merge_row(base: dict, row: dict[str, str]) -> tuple[dict, list[str]]:
    """Overlay one CSV row on the base config. Returns (config, conversion errors)."""
    _, defaults, meter_defaults, _ = _validator()
    top, meter_t = defaults(), meter_defaults()
    cfg = json.loads(json.dumps(base))  # deep copy of plain TOML data
    errors = []
    for col, raw in row.items():
        if col is None:  # more cells than header columns
            errors.append("row has more cells than the header has columns")
            continue
        col = col.strip()
        if raw is None or raw.strip() == "" or not col:
            continue
        raw = raw.strip()
        try:
            if col.startswith("meter."):
                sub = col[6:]
                meter = cfg.setdefault("meter", {})
                if not isinstance(meter, dict):
                    errors.append("meter: base config's meter is not a table")
                    continue
                meter[sub] = _typed(sub, raw, meter_t)
            else:
                cfg[col] = _typed(col, raw, top)
        except ValueError as e:
            errors.append(f"{col}: {e}")
    return cfg, errors


def read_csv(path: Path, base: dict) -> list[dict]:
    """Merge every row of ``path`` over ``base`` and validate all of them.

    Returns the list of configs. Raises ProvisionError listing each bad row (by line number),
    duplicate ids included; nothing is written when any row is bad.
    """
    try:
        f = open(path, newline="", encoding="utf-8-sig")
    except OSError as e:
        raise ProvisionError(f"cannot read {path}: {e}") from e
    try:
        with f:
            return _read_rows(f, path, base)
    except UnicodeDecodeError as e:
        raise ProvisionError(f"{path} is not UTF-8 text (export the CSV as UTF-8): {e}") from e
    except csv.Error as e:
        raise ProvisionError(f"{path} is not a readable CSV: {e}") from e


def _read_rows(f, path: Path, base: dict) -> list[dict]:
    # Skip comments and blank lines but keep each row's line number in the file for messages
    # (a cell spanning lines is not supported: node configs have none).
    lines = [(n, ln) for n, ln in enumerate(f, start=1) if ln.strip() and not ln.lstrip().startswith("#")]
    reader = csv.DictReader(ln for _, ln in lines)
    if not reader.fieldnames or "id" not in [c.strip() for c in reader.fieldnames]:
        raise ProvisionError(f"{path}: the header must have an 'id' column")
    problems, configs, seen = [], [], {}
    for i, row in enumerate(reader, start=1):
        n = lines[i][0] if i < len(lines) else i + 1
        cfg, errs = merge_row(base, row)
        where = f"{Path(path).name} line {n}"
        if errs:
            problems.extend(f"  {where}: {e}" for e in errs)
            continue
        try:
            cfg = check_config(cfg, where)
        except ProvisionError as e:
            problems.append(str(e).split("\n", 1)[1])
            continue
        if cfg["id"] in seen:
            problems.append(f"  {where}: id: {cfg['id']!r} already used on line {seen[cfg['id']]}")
            continue
        seen[cfg["id"]] = n
        configs.append(cfg)
    if problems:
        raise ProvisionError("invalid rows in {} (no image written):\n{}".format(path, "\n".join(problems)))
    if not configs:
        raise ProvisionError(f"{path} has no node rows")
    return configs


def new_keys(ep: str, used: set[bytes]) -> tuple[dict, dict]:
    """A fresh OSCORE context for node ``ep``: (the node's oscore.json, the gateway's key file).

    The node Sender ID is 4 random bytes not in ``used`` (the batch so far); it is added there.
    """
    while True:
        sid = os.urandom(4)
        if sid not in used:
            break
    used.add(sid)
    ms, salt = os.urandom(16), os.urandom(8)
    node = {"ms": ms.hex(), "salt": salt.hex(), "sid": sid.hex(), "rid": GATEWAY_SENDER_ID.hex()}
    gateway = {
        "ep": ep,
        "master_secret_hex": ms.hex(),
        "master_salt_hex": salt.hex(),
        "node_sender_id_hex": sid.hex(),
        "gateway_sender_id_hex": GATEWAY_SENDER_ID.hex(),
        "alg": "AES-CCM-16-64-128",
        "hkdf": "sha256",
    }
    return node, gateway


def write_key_file(path: Path, data: dict) -> None:
    """Write a gateway-side key file, mode 0600 from its creation (never readable by others)."""
    tmp = Path(str(path) + ".tmp")
    try:
        tmp.unlink(missing_ok=True)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=1)
            f.write("\n")
        os.chmod(tmp, 0o600)  # whatever the umask did
        tmp.replace(path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise ProvisionError(f"cannot write the key file {path}: {e.strerror or e}") from e


def image_files(build_dir: Path, cfg: dict, node_keys: dict | None = None) -> dict[str, bytes]:
    """The files of one node's filesystem: the build, config.json, the extended manifest, and
    ``oscore.json`` when ``node_keys`` is given (not in the manifest: no hash of key material
    goes where a console can show it; the manifest names the node's Sender ID only)."""
    dumps = _validator()[3]
    manifest = buildmod.load_build(build_dir)
    files = {rel: (Path(build_dir) / rel).read_bytes() for rel in manifest["files"]}
    config_bytes = dumps(cfg).encode()
    files[CONFIG_NAME] = config_bytes
    manifest = dict(manifest)
    manifest["node"] = cfg["id"]
    manifest["files"] = dict(manifest["files"])
    manifest["files"][CONFIG_NAME] = {"sha256": buildmod.sha256_hex(config_bytes), "size": len(config_bytes)}
    if node_keys is not None:
        files[KEYS_NAME] = json.dumps(node_keys).encode()
        manifest["oscore_sender_id"] = node_keys["sid"]
    files[buildmod.MANIFEST] = (json.dumps(manifest, indent=1, sort_keys=True) + "\n").encode()
    return files


def make_image(files: dict[str, bytes], geometry: partitions.FsGeometry) -> bytes:
    """Format a littlefs image of ``geometry`` and write ``files`` into it.

    Returns the image (exactly ``geometry.size`` bytes). Raises ProvisionError if the files do
    not fit in the partition.
    """
    from littlefs import LittleFS, LittleFSError

    fs = LittleFS(
        block_size=geometry.block_size,
        block_count=geometry.block_count,
        read_size=LFS_READ_SIZE,
        prog_size=LFS_PROG_SIZE,
        lookahead_size=LFS_LOOKAHEAD,
        disk_version=LFS_DISK_VERSION,
    )
    try:
        for rel in sorted(files):
            parent = rel.rpartition("/")[0]
            if parent:
                fs.makedirs(parent, exist_ok=True)
            with fs.open(rel, "wb") as f:
                f.write(files[rel])
    except LittleFSError as e:
        total = sum(len(b) for b in files.values())
        raise ProvisionError(
            f"the firmware and config ({total} bytes) do not fit in the {geometry.size}-byte "
            f"filesystem partition ({e})"
        ) from e
    image = bytes(fs.context.buffer)
    assert len(image) == geometry.size
    return image


def read_image(image: bytes, block_size: int = 4096) -> dict[str, bytes]:
    """Mount an image with littlefs-python and return {path: content} of every file."""
    from littlefs import LittleFS

    fs = LittleFS(
        block_size=block_size,
        block_count=len(image) // block_size,
        read_size=LFS_READ_SIZE,
        prog_size=LFS_PROG_SIZE,
        lookahead_size=LFS_LOOKAHEAD,
        mount=False,
    )
    fs.context.buffer[:] = image
    fs.mount()
    out = {}
    for root, _dirs, names in fs.walk("/"):
        for name in names:
            path = (root.rstrip("/") + "/" + name).lstrip("/")
            with fs.open(path, "rb") as f:
                out[path] = f.read()
    return out


def _geometry(args) -> partitions.FsGeometry:
    if getattr(args, "firmware", None):
        info = partitions.inspect_firmware(Path(args.firmware))
        if info.fs is None:
            raise ProvisionError(f"{args.firmware} has no filesystem partition in its table; use --board instead")
        return info.fs
    return partitions.board_geometry(args.board)


def _layout_check(layout: str, args) -> list[str]:
    """A ROMFS build needs a firmware with a ``romfs`` partition (else the node has no code);
    returns warnings, raises ProvisionError for that mismatch."""
    if not getattr(args, "firmware", None):
        if layout == "romfs":
            return ["a ROMFS build: this image holds no code; flash the ROMFS image too (slnode flash --romfs) on a "
                    "MicroPython built with ROMFS (docs/technician.md)"]
        return []
    info = partitions.inspect_firmware(Path(args.firmware))
    ota_warning = []
    try:  # the layout is fixed now: a partition table cannot change over the air (docs/ota.md)
        ota = partitions.check_app_fits(max(0, info.size - (partitions.APP_OFFSET - info.offset)),
                                        info.partitions, str(args.firmware))
    except partitions.ImageError as e:
        raise ProvisionError(str(e)) from None
    if ota.startswith("no OTA slots"):
        ota_warning = [f"{Path(args.firmware).name}: {ota}"]
    has_romfs = any(p.type == 1 and p.label == "romfs" for p in info.partitions)
    if layout == "romfs" and not has_romfs:
        raise ProvisionError(
            f"a ROMFS build needs a MicroPython with a 'romfs' partition, and {args.firmware} has none (stock "
            "ESP32 downloads do not): the node would boot without code. Use a MicroPython built with ROMFS, or "
            "the .mpy build (without --romfs) on a board with PSRAM (docs/technician.md)"
        )
    if layout == "mpy" and has_romfs:
        return [f"{Path(args.firmware).name} has a 'romfs' partition (a board without PSRAM?): the .mpy build "
                "loads its code into the heap; provision with --romfs and flash with --romfs for such a board",
                *ota_warning]
    return ota_warning


def add_arguments(parser) -> None:
    parser.add_argument("--config", type=Path, help="node config (TOML); the base for --csv rows")
    parser.add_argument("--image", type=Path, help="filesystem image to write (single node)")
    parser.add_argument("--csv", type=Path, help="batch: one node per row, columns override --config")
    parser.add_argument("--out-dir", type=Path, help="batch: directory for the images, one <id>.bin per node")
    parser.add_argument("--build", type=Path, help="use this `slnode build` output instead of building now")
    parser.add_argument("--src", type=Path, default=buildmod.REPO, help="checkout to build from (default: this one)")
    parser.add_argument(
        "--romfs",
        action="store_true",
        help="build the ROMFS build (slnode build --romfs) for a board without PSRAM: no code on the filesystem",
    )
    parser.add_argument(
        "--board",
        default="esp32",
        choices=sorted(partitions.BOARDS),
        help="board variant, selects the stock partition geometry (default: esp32)",
    )
    parser.add_argument(
        "--firmware",
        type=Path,
        help="MicroPython .bin to take the filesystem partition from (overrides --board)",
    )
    parser.add_argument(
        "--no-oscore",
        action="store_true",
        help="no OSCORE keys: the node talks to its gateway UNPROTECTED (demo/tests on loopback only)",
    )


def run(args) -> dict:
    if args.csv is None and args.config is None:
        raise ProvisionError("give --config node.toml (and --image), or --csv nodes.csv --out-dir DIR")
    if args.csv is None and args.image is None:
        raise ProvisionError("--image FILE is required with --config (or use --csv ... --out-dir DIR)")
    if args.csv is not None and args.out_dir is None:
        raise ProvisionError("--out-dir DIR is required with --csv")
    base = load_toml(args.config) if args.config else {}
    if args.csv is not None:
        configs = read_csv(args.csv, base)
    else:
        configs = [check_config(base, str(args.config))]
    geometry = _geometry(args)
    with tempfile.TemporaryDirectory(prefix="slnode-build-") as tmp:
        build_dir = args.build
        warnings = []
        if build_dir is None:
            build_dir = Path(tmp)
            if getattr(args, "romfs", False):
                from tools.slnode import romfs

                warnings = romfs.build(build_dir, root=args.src, quiet=args.quiet).warnings
            else:
                warnings = buildmod.build(build_dir, root=args.src, quiet=args.quiet).warnings
        elif "main.py" not in buildmod.load_build(build_dir)["files"]:
            warnings = [f"build {build_dir} has no main.py: the node will not start by itself"]
        layout = buildmod.load_build(build_dir).get("layout", "mpy")
        warnings = [*warnings, *_layout_check(layout, args)]
        written = []
        key_files = []
        used_sids: set[bytes] = set()
        if args.csv is not None:
            args.out_dir.mkdir(parents=True, exist_ok=True)
        from tools.slnode.progress import progress

        for cfg in progress(configs, desc="images", unit="node", disable=args.quiet or len(configs) < 2 or None):
            dest = args.image if args.csv is None else args.out_dir / (cfg["id"] + ".bin")
            node_keys = gw_keys = None
            if not args.no_oscore:
                node_keys, gw_keys = new_keys(cfg["id"], used_sids)
            image = make_image(image_files(build_dir, cfg, node_keys), geometry)
            tmpdest = Path(str(dest) + ".tmp")
            try:
                tmpdest.write_bytes(image)
                tmpdest.replace(dest)
            except OSError as e:
                tmpdest.unlink(missing_ok=True)
                raise ProvisionError(f"cannot write {dest}: {e.strerror or e}") from e
            written.append(str(dest))
            if gw_keys is not None:
                key_path = Path(dest).parent / (cfg["id"] + ".oscore.json")
                write_key_file(key_path, gw_keys)
                key_files.append(str(key_path))
    if args.no_oscore:
        warnings = [*warnings, "--no-oscore: these nodes talk to their gateway UNPROTECTED (demo/tests only)"]
    keys_note = (f"; OSCORE key files (0600, import on the gateway with `slgw keys import`): {', '.join(key_files)}"
                 if key_files else "")
    return {
        "images": written,
        "key_files": key_files,
        "nodes": [c["id"] for c in configs],
        "layout": layout,
        "fs_offset": f"0x{geometry.offset:x}",
        "fs_size": f"0x{geometry.size:x}",
        "block_size": geometry.block_size,
        "warnings": warnings,
        "summary": f"wrote {len(written)} image(s) ({geometry.source}, littlefs {geometry.block_count} x "
        f"{geometry.block_size}-byte blocks, flash at 0x{geometry.offset:x}): {', '.join(written)}{keys_note}",
    }
