"""Register codec: Modbus register words <-> typed values.

Owns the data types a profile may declare (u16, i16, u32, i32, float32, float64), their
word and byte order, and the scale. Pure functions, no I/O, so the poller, the bridge
server and the meter emulators share one codec.

Word order "big" means the most significant register comes first (Modbus convention and
Eastron's); byte order "big" means the high byte of each register comes first (the Modbus
wire order). Devices that swap bytes inside a register ("byte_order = little") exist
(some Schneider and Chinese meters); this is why both orders are separate settings.
"""

from __future__ import annotations

import math
import struct

#: type name -> (struct code, number of 16-bit registers)
TYPES: dict[str, tuple[str, int]] = {
    "u16": ("H", 1),
    "i16": ("h", 1),
    "u32": ("I", 2),
    "i32": ("i", 2),
    "float32": ("f", 2),
    "float64": ("d", 4),
}
ORDERS = ("big", "little")


def register_count(dtype: str) -> int:
    """Return how many 16-bit registers a value of `dtype` occupies.

    Raises:
        KeyError: unknown type (profiles validate types before this is called).
    """
    return TYPES[dtype][1]


def _to_bytes(words: list[int] | tuple[int, ...], word_order: str, byte_order: str) -> bytes:
    if word_order == "little":
        words = list(reversed(words))
    raw = b"".join(w.to_bytes(2, "big") for w in words)
    if byte_order == "little":
        # swap the two bytes inside every register
        raw = b"".join(raw[i + 1:i + 2] + raw[i:i + 1] for i in range(0, len(raw), 2))
    return raw


def decode(words: list[int] | tuple[int, ...], dtype: str, word_order: str = "big",
           byte_order: str = "big", scale: float = 1.0) -> float:
    """Decode the registers of one value and apply the scale.

    Returns:
        The scaled value (int types come back as float when scale != 1). NaN and
        infinities from float registers are returned as they are; the caller decides
        whether a value is plausible.
    Raises:
        ValueError: wrong number of registers for the type.
    """
    code, count = TYPES[dtype]
    if len(words) != count:
        raise ValueError(f"{dtype} needs {count} registers, got {len(words)}")
    (value,) = struct.unpack(">" + code, _to_bytes(words, word_order, byte_order))
    if scale != 1:
        return value * scale
    return value


def encode(value: float, dtype: str, word_order: str = "big", byte_order: str = "big",
           scale: float = 1.0) -> list[int]:
    """Encode a value into registers, dividing by the scale first (the inverse of decode).

    Integer types round to the nearest integer and clamp to the type's range, so an
    emulator or the bridge never raises on an out-of-range figure.
    """
    code, count = TYPES[dtype]
    raw_value = value / scale if scale != 1 else value
    if code in "fd":
        packed = struct.pack(">" + code, float(raw_value))
    else:
        bits = 16 * count
        if code.islower():
            lo, hi = -(1 << (bits - 1)), (1 << (bits - 1)) - 1
        else:
            lo, hi = 0, (1 << bits) - 1
        iv = 0 if (isinstance(raw_value, float) and math.isnan(raw_value)) else round(raw_value)
        packed = struct.pack(">" + code, min(hi, max(lo, iv)))
    words = [int.from_bytes(packed[i:i + 2], "big") for i in range(0, len(packed), 2)]
    if byte_order == "little":
        words = [((w & 0xFF) << 8) | (w >> 8) for w in words]
    if word_order == "little":
        words.reverse()
    return words
