"""Request planner: merge a profile's registers into as few reads as the device allows.

Reading neighbouring registers one by one wastes the bus (field-notes §7). The planner
sorts a profile's registers by function code and address and grows one read while the
next value (a) uses the same function code, (b) starts no more than ``max_gap`` unmapped
registers after the current read's end, and (c) still fits in ``max_registers``. Pure
data in, data out: the poller executes the plan, the benches price it on the wire.

What the poller learns from a meter that differs from its profile (docs/modbus.md, "A
meter that lacks registers") comes back as two sets of register names: ``missing``
values the meter refuses on their own (left out, and no read spans their addresses) and
``breaks`` values a read must start at, because merging them with the previous value
made the meter refuse the read (a missing address in the gap between them).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .decode import decode
from .profiles import Profile, Register


@dataclass
class ReadRequest:
    """One Modbus read: function code, first address, count, and the values inside it."""

    function: int
    address: int
    count: int
    registers: list[Register] = field(default_factory=list)

    def decode(self, words: list[int]) -> dict[str, float]:
        """Decode every value of this read from the registers the device returned.

        Raises:
            ValueError: the device returned a different number of registers.
        """
        if len(words) != self.count:
            raise ValueError(f"asked for {self.count} registers at {self.address:#06x}, got {len(words)}")
        out: dict[str, float] = {}
        for reg in self.registers:
            off = reg.address - self.address
            out[reg.name] = decode(words[off:off + reg.count], reg.type, reg.word_order,
                                   reg.byte_order, reg.scale)
        return out


def span(registers: list[Register]) -> ReadRequest:
    """The one read that covers these registers (same function code, address order)."""
    first = registers[0]
    return ReadRequest(first.function, first.address, max(r.end for r in registers) - first.address,
                       list(registers))


def plan(profile: Profile, missing: frozenset[str] | set[str] = frozenset(),
         breaks: frozenset[str] | set[str] = frozenset()) -> list[ReadRequest]:
    """Return the reads that cover every register of the profile but the ``missing`` ones.

    Args:
        missing: names of registers the meter lacks: not read, and no read spans them.
        breaks: names of registers a read must start at (never merged with the previous one).

    Returns:
        Reads in (function, address) order; each read's count is at most
        ``profile.max_registers`` and spans gaps of at most ``profile.max_gap``.
    """
    out: list[ReadRequest] = []
    cur: ReadRequest | None = None
    for reg in sorted(profile.registers, key=lambda r: (r.function, r.address)):
        if reg.name in missing:
            cur = None  # registers do not overlap: ending the read here keeps it off them
            continue
        if (cur is not None and reg.function == cur.function and reg.name not in breaks
                and reg.address - (cur.address + cur.count) <= profile.max_gap
                and reg.end - cur.address <= profile.max_registers):
            cur.count = reg.end - cur.address
            cur.registers.append(reg)
            continue
        cur = ReadRequest(reg.function, reg.address, reg.count, [reg])
        out.append(cur)
    return out


def rtu_wire_bits(requests: list[ReadRequest], bits_per_char: int = 11) -> int:
    """Bits on an RTU line for one poll of these reads, frames only (no silences).

    A read request is 8 bytes (unit, fc, address, count, CRC); its response is
    5 bytes (unit, fc, byte count, CRC) plus 2 bytes per register.
    """
    return sum((8 + 5 + 2 * r.count) * bits_per_char for r in requests)
