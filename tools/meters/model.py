"""The emulated meter: electrical state, energy integration, register image, faults.

A meter integrates its load (W) into cumulative import energy on a clock that may run
faster than real time (``speed``). The load and the fault mode come from a JSON control
file the test rewrites (``Control``), re-read when its mtime changes::

    {"load_w": 1500, "fault": null,                      # defaults for every unit
     "units": {"3": {"load_w": 0, "fault": "unplugged"}}}  # per unit

Faults: ``unplugged`` (no answer), ``crc`` (answer with a broken CRC), ``garbage``
(random bytes instead of the answer), ``exception`` (Modbus exception 04, device failure).

``missing`` ({function: {address, ...}}) takes addresses out of the meter's register map, as
on a meter whose model or firmware differs from its profile: the pymodbus server answers any
read that touches one with exception 02 (illegal data address).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from gateway.modbus.decode import encode
from gateway.modbus.profiles import Profile, load_profile

FAULTS = (None, "unplugged", "crc", "garbage", "exception")
MODELS = {
    # model: (profile, max registers per read, valid input range, valid holding range)
    "sdm630": ("eastron-sdm630", 80, (0, 0x180), None),
    "sdm120": ("eastron-sdm120", 80, (0, 0x180), None),
    "generic": ("generic", 125, None, (0, 16)),
}


class Meter:
    """One emulated meter (one unit id)."""

    def __init__(self, model: str, unit: int, import_kwh: float = 0.0, load_w: float = 0.0,
                 speed: float = 1.0, voltage: float = 230.0, pf: float = 0.95,
                 missing: dict[int, set[int]] | None = None) -> None:
        self.model = model
        self.unit = unit
        self.profile: Profile = load_profile(MODELS[model][0])
        self.max_registers = MODELS[model][1]
        self.ranges = {4: MODELS[model][2], 3: MODELS[model][3]}
        self.missing = {fc: set(addrs) for fc, addrs in (missing or {}).items()}
        self.refused = 0  # answers with an exception code (counted by the server)
        self.import_kwh = import_kwh
        self.load_w = load_w
        self.fault: str | None = None
        self.speed = speed
        self.voltage = voltage
        self.pf = pf
        self.reads = 0
        self._t = time.monotonic()

    def advance(self, now: float | None = None) -> None:
        """Integrate the load up to `now` (monotonic seconds) on the meter's clock."""
        now = time.monotonic() if now is None else now
        dt = max(0.0, now - self._t) * self.speed
        self._t = now
        self.import_kwh += self.load_w * dt / 3_600_000.0

    def set_load(self, load_w: float) -> None:
        """Change the load, integrating the old one up to now first."""
        self.advance()
        self.load_w = float(load_w)

    def values(self) -> dict[str, float]:
        """The electrical values by data-model target (what the registers say)."""
        v, w, pf = self.voltage, self.load_w, self.pf
        phases = 3 if self.model == "sdm630" else 1
        i = w / (v * pf) if w else 0.0
        va = w / pf if w else 0.0
        var = (va * va - w * w) ** 0.5
        return {"voltage_v": v, "current_a": i, "power_w": w, "apparent_power_va": va,
                "reactive_power_var": var, "power_factor": pf if w else 1.0, "frequency_hz": 50.0,
                "import_wh": self.import_kwh * 1000.0, "export_wh": 0.0,
                "total_wh": self.import_kwh * 1000.0, "_phases": phases}

    def check(self, function: int, address: int, count: int) -> int | None:
        """Return a Modbus exception code for an unacceptable read, else None."""
        rng = self.ranges.get(function)
        if rng is None:
            return 1  # illegal function
        if count > self.max_registers:
            return 3  # illegal data value: Eastron answers at most 40 floats
        if address < rng[0] or address + count > rng[1]:
            return 2  # illegal data address
        if self.fault == "exception":
            return 4  # device failure
        return None

    def image(self, function: int) -> dict[int, int]:
        """Sparse register image {address: word} of every profile value on `function`."""
        self.advance()
        vals = self.values()
        phases = vals.pop("_phases")
        out: dict[int, int] = {}
        for reg in self.profile.registers:
            if reg.function != function:
                continue
            if reg.map:
                val = vals[reg.map]
            else:
                val = _per_phase(reg.name, vals, phases)
            for k, word in enumerate(encode(val, reg.type, reg.word_order, reg.byte_order, reg.scale)):
                out[reg.address + k] = word
        return out

    def read(self, function: int, address: int, count: int) -> list[int]:
        """The words of a read (unmapped addresses read 0, as on Eastron meters)."""
        self.reads += 1
        img = self.image(function)
        return [img.get(a, 0) for a in range(address, address + count)]


def _per_phase(name: str, vals: dict[str, float], phases: int) -> float:
    """Values of the unmapped registers (per phase on the SDM630, averages, reactive energy)."""
    n = name
    share = 1.0 / phases
    if n.startswith("voltage"):
        return vals["voltage_v"]
    if n.startswith("current"):
        return vals["current_a"] * share
    if n.startswith("power_factor"):
        return vals["power_factor"]
    if n.startswith("power"):
        return vals["power_w"] * share
    if n.startswith("apparent"):
        return vals["apparent_power_va"] * share
    if n.startswith("reactive_power"):
        return vals["reactive_power_var"] * share
    return 0.0


class Control:
    """The JSON control file: loads and faults per unit, re-read when it changes."""

    def __init__(self, path: str | None) -> None:
        self.path = Path(path) if path else None
        self._mtime: int | None = None

    def apply(self, meters: dict[int, Meter]) -> bool:
        """Apply the file to the meters if it changed. Returns True when it did."""
        if self.path is None:
            return False
        try:
            mtime = os.stat(self.path).st_mtime_ns
        except FileNotFoundError:
            return False
        if mtime == self._mtime:
            return False
        try:
            doc = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return False  # half-written: the next check sees the complete file
        self._mtime = mtime
        units = doc.get("units", {})
        for unit, m in meters.items():
            spec = {**{k: doc[k] for k in ("load_w", "fault") if k in doc}, **units.get(str(unit), {})}
            if "load_w" in spec:
                m.set_load(float(spec["load_w"]))
            if "fault" in spec:
                if spec["fault"] not in FAULTS:
                    raise ValueError(f"control file: unknown fault {spec['fault']!r}; known: {FAULTS}")
                m.fault = spec["fault"]
        return True


def parse_missing(text: str) -> dict[int, set[int]]:
    """Parse "0x46-0x47,3:10" into {4: {0x46, 0x47}, 3: {10}} (function 4 unless given).

    Raises:
        ValueError: a part that is no [FC:]ADDRESS[-ADDRESS] with FC 3 or 4.
    """
    out: dict[int, set[int]] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        fc_text, _, rng = part.rpartition(":")
        lo, _, hi = rng.partition("-")
        try:
            fc, first, last = int(fc_text or "4"), int(lo, 0), int(hi or lo, 0)
        except ValueError:
            fc = first = last = -1
        if fc not in (3, 4) or not 0 <= first <= last <= 0xFFFF:
            raise ValueError(f"missing addresses: {part!r} is not [3:|4:]ADDRESS[-ADDRESS]")
        out.setdefault(fc, set()).update(range(first, last + 1))
    return out


def write_control(path: str | os.PathLike, doc: dict) -> None:
    """Write a control file atomically (for tests and benches)."""
    p = Path(path)
    tmp = p.with_suffix(p.suffix + ".tmp")
    tmp.write_text(json.dumps(doc))
    os.replace(tmp, p)


def save_state(path: str | os.PathLike, meters: dict[int, Meter]) -> None:
    """Write every meter's cumulative energy (the ground truth for tests; the meter's
    non-volatile memory across emulated power cycles)."""
    doc = {"t": time.time(), "units": {str(u): {"model": m.model, "import_kwh": m.import_kwh,
                                               "load_w": m.load_w, "reads": m.reads,
                                               "refused": m.refused}
                                       for u, m in meters.items()}}
    write_control(path, doc)


def load_state(path: str | os.PathLike) -> dict[int, float]:
    """Read the energy per unit saved by save_state ({} if absent)."""
    try:
        doc = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return {}
    return {int(u): float(v["import_kwh"]) for u, v in doc.get("units", {}).items()}
