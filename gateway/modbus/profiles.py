"""Device profiles: declarative TOML descriptions of a meter's registers.

A user adds a meter model by writing a profile, not code. This module owns the profile
format, its validation (every error names the profile, the register and the key) and the
lookup of shipped profiles (``gateway/modbus/profiles/*.toml``) by name. The format is
documented in docs/modbus.md; in short::

    [device]
    manufacturer = "Eastron"
    model = "SDM630"
    max_registers = 80   # largest read the device accepts (Eastron: 40 values = 80 registers)
    max_gap = 16         # unmapped registers a merged read may span (0 = strict neighbours)
    word_order = "big"   # default for every register
    byte_order = "big"

    [[registers]]
    name = "import_energy"
    function = 4         # 3 holding, 4 input
    address = 0x0048     # protocol (0-based) address
    type = "float32"     # u16 i16 u32 i32 float32 float64
    scale = 1000         # value = raw * scale (kWh -> Wh)
    unit = "Wh"          # unit after scaling; must match the mapping's unit
    map = "import_wh"    # optional: where the value goes in our data model
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from .decode import ORDERS, TYPES, register_count

SHIPPED_DIR = Path(__file__).with_name("profiles")

#: data-model targets a register may map to, with the unit the value must have
MAPPINGS: dict[str, str] = {
    "import_wh": "Wh",
    "export_wh": "Wh",
    "total_wh": "Wh",
    "power_w": "W",
    "apparent_power_va": "VA",
    "reactive_power_var": "var",
    "voltage_v": "V",
    "current_a": "A",
    "frequency_hz": "Hz",
    "power_factor": "",
}
FUNCTIONS = {3: "holding", 4: "input"}
_DEVICE_KEYS = {"manufacturer", "model", "max_registers", "max_gap", "word_order", "byte_order"}
_REG_KEYS = {"name", "function", "address", "type", "scale", "unit", "map", "word_order",
             "byte_order", "description"}


class ProfileError(ValueError):
    """A profile is missing, unreadable or invalid; the message says where and why."""


@dataclass(frozen=True)
class Register:
    """One value in a device: where it lives, how to decode it, where it goes."""

    name: str
    function: int
    address: int
    type: str
    scale: float = 1.0
    unit: str = ""
    map: str | None = None
    word_order: str = "big"
    byte_order: str = "big"

    @property
    def count(self) -> int:
        """Number of 16-bit registers the value occupies."""
        return register_count(self.type)

    @property
    def end(self) -> int:
        """First address after the value."""
        return self.address + self.count


@dataclass
class Profile:
    """A validated device profile."""

    name: str
    source: str
    manufacturer: str = ""
    model: str = ""
    max_registers: int = 125
    max_gap: int = 0
    registers: list[Register] = field(default_factory=list)

    def mapped(self, target: str) -> Register | None:
        """Return the register mapped to a data-model target, or None."""
        for reg in self.registers:
            if reg.map == target:
                return reg
        return None


def shipped_profiles() -> list[str]:
    """Return the names of the profiles shipped with the gateway."""
    return sorted(p.stem for p in SHIPPED_DIR.glob("*.toml"))


def resolve(ref: str, base_dir: Path | None = None) -> Path:
    """Find a profile file from a shipped name or a path (relative to base_dir).

    Raises:
        ProfileError: neither a shipped name nor an existing file.
    """
    if "/" not in ref and not ref.endswith(".toml"):
        path = SHIPPED_DIR / (ref + ".toml")
        if path.is_file():
            return path
        raise ProfileError(
            f"profile {ref!r} is not a shipped profile (shipped: {', '.join(shipped_profiles())}); "
            "give a shipped name or a path to a .toml profile file")
    path = Path(ref)
    if not path.is_absolute() and base_dir is not None:
        path = base_dir / path
    if not path.is_file():
        raise ProfileError(f"profile file {str(path)!r} does not exist")
    return path


def load_profile(ref: str, base_dir: Path | None = None) -> Profile:
    """Load and validate a profile by shipped name or path.

    Raises:
        ProfileError: the file is missing, is not valid TOML, or fails validation.
    """
    path = resolve(ref, base_dir)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise ProfileError(f"profile {str(path)!r} cannot be read: {exc}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ProfileError(f"profile {str(path)!r} is not valid TOML: {exc}") from exc
    return parse_profile(data, name=path.stem, source=str(path))


def _need(cond: bool, where: str, msg: str) -> None:
    if not cond:
        raise ProfileError(f"{where}: {msg}")


def _int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def parse_profile(data: dict, name: str, source: str = "<memory>") -> Profile:
    """Validate a parsed profile document and build a Profile.

    Raises:
        ProfileError: naming the profile, the register and the key at fault.
    """
    where = f"profile {name!r} ({source})"
    dev = data.get("device", {})
    _need(isinstance(dev, dict), where, "[device] must be a table")
    unknown = set(data) - {"device", "registers"}
    _need(not unknown, where, f"unknown top-level key(s) {sorted(unknown)}; expected [device] and [[registers]]")
    unknown = set(dev) - _DEVICE_KEYS
    _need(not unknown, where, f"[device]: unknown key(s) {sorted(unknown)}; known: {sorted(_DEVICE_KEYS)}")
    max_regs = dev.get("max_registers", 125)
    _need(_int(max_regs) and 1 <= max_regs <= 125, where,
          f"[device] max_registers = {max_regs!r}: must be an integer 1..125 (the Modbus limit)")
    max_gap = dev.get("max_gap", 0)
    _need(_int(max_gap) and 0 <= max_gap < max_regs, where,
          f"[device] max_gap = {max_gap!r}: must be an integer 0..max_registers-1")
    d_word = dev.get("word_order", "big")
    d_byte = dev.get("byte_order", "big")
    for key, val in (("word_order", d_word), ("byte_order", d_byte)):
        _need(val in ORDERS, where, f"[device] {key} = {val!r}: expected 'big' or 'little'")
    regs_raw = data.get("registers")
    _need(isinstance(regs_raw, list) and regs_raw, where, "no [[registers]] entries")

    regs: list[Register] = []
    names: set[str] = set()
    maps: dict[str, str] = {}
    for i, raw in enumerate(regs_raw):
        rname = raw.get("name") if isinstance(raw, dict) else None
        rw = f"{where}: register #{i + 1}" + (f" {rname!r}" if rname else "")
        _need(isinstance(raw, dict), rw, "must be a table")
        unknown = set(raw) - _REG_KEYS
        _need(not unknown, rw, f"unknown key(s) {sorted(unknown)}; known: {sorted(_REG_KEYS)}")
        _need(isinstance(rname, str) and rname, rw, "'name' is missing")
        _need(rname not in names, rw, "duplicate register name")
        names.add(rname)
        fc = raw.get("function", 4)
        _need(fc in FUNCTIONS, rw, f"function = {fc!r}: expected 3 (holding) or 4 (input)")
        dtype = raw.get("type")
        _need(dtype in TYPES, rw, f"type = {dtype!r}: unknown type, expected one of {', '.join(TYPES)}")
        addr = raw.get("address")
        _need(_int(addr) and 0 <= addr <= 0xFFFF - register_count(dtype) + 1, rw,
              f"address = {addr!r}: must be an integer 0..65535 (0-based protocol address)")
        scale = raw.get("scale", 1.0)
        _need(isinstance(scale, (int, float)) and not isinstance(scale, bool) and scale != 0, rw,
              f"scale = {scale!r}: must be a non-zero number")
        unit = raw.get("unit", "")
        _need(isinstance(unit, str), rw, f"unit = {unit!r}: must be a string")
        target = raw.get("map")
        if target is not None:
            _need(target in MAPPINGS, rw, f"map = {target!r}: unknown target, expected one of {', '.join(MAPPINGS)}")
            _need(unit == MAPPINGS[target], rw,
                  f"map = {target!r} needs unit {MAPPINGS[target]!r} after scaling, profile says unit = {unit!r} "
                  "(set scale so the value comes out in that unit, e.g. scale = 1000 for kWh -> Wh)")
            _need(target not in maps, rw, f"map = {target!r} is already used by register {maps.get(target)!r}")
            maps[target] = rname
        w_order = raw.get("word_order", d_word)
        b_order = raw.get("byte_order", d_byte)
        for key, val in (("word_order", w_order), ("byte_order", b_order)):
            _need(val in ORDERS, rw, f"{key} = {val!r}: expected 'big' or 'little'")
        reg = Register(rname, fc, addr, dtype, float(scale), unit, target, w_order, b_order)
        _need(reg.count <= max_regs, rw, f"{dtype} needs {reg.count} registers, more than max_registers")
        regs.append(reg)

    ordered = sorted(regs, key=lambda r: (r.function, r.address))
    for a, b in zip(ordered, ordered[1:], strict=False):
        if a.function == b.function and b.address < a.end:
            raise ProfileError(
                f"{where}: registers {a.name!r} (function {a.function}, {a.address:#06x}..{a.end - 1:#06x}) "
                f"and {b.name!r} ({b.address:#06x}..{b.end - 1:#06x}) overlap")
    return Profile(name=name, source=source, manufacturer=str(dev.get("manufacturer", "")),
                   model=str(dev.get("model", "")), max_registers=max_regs, max_gap=max_gap,
                   registers=regs)
