"""Store-and-forward queue of reports the gateway has not acknowledged (SPEC §3, §3.3).

Design: a ring of fixed-size slots in one preallocated flash file, plus an "acknowledged
through" mark in a ``durable.Record``.

- ``outbox.ring``: ``capacity`` slots of 32 bytes (default 208 slots = 6.5 KB, more than the
  192 reports of 48 h at a 15-min period). A slot is::

      seq u32 | t i64 | wh u32 | w f32 | on_time u32 | level u8 | faults u8 | pad 2 | crc32 u32

  ``seq`` 0 or a failed CRC means "empty". Appending writes one slot in place (seek + 32-byte
  write): no file is ever rewritten, so the cost of an append is constant and small.
- ``outbox.ack``: the highest acknowledged seq, an atomic two-generation record. A slot whose
  seq is at or below it is free. Acknowledging writes only that record.
- Order: slots are written round the ring in seq order, so pending reports are read oldest
  first from the write position.

Full ring (every slot pending): the oldest report is merged into the second oldest (SPEC §3.3:
the summary keeps the *later* seq, t, wh, level, power and on-time, and ORs the fault flags),
then the new report takes the oldest slot. Energy and on-time are cumulative, so nothing is lost;
nothing is ever dropped silently (``merged`` counts the merges).

Power cuts (SIGKILL at any instant): the merge writes the second-oldest slot before the oldest
one is overwritten, so a cut between them only repeats fault bits; a torn slot fails its CRC and
reads as empty (at worst the one report being written is lost, whose energy the next report
carries anyway). A torn ack record falls back to the previous mark: reports are re-sent, and
the gateway's (endpoint, seq) key makes that harmless.

RAM: one ``array('I')`` of slot seqs (4 bytes per slot) and a 32-byte buffer.
"""

import struct
from array import array

from firmware.durable import Record, crc32

_FMT = "<IqIfIBB2x"
_SLOT = 32
_BODY = 28
DEFAULT_CAPACITY = 208


def pack_slot(report, buf=None):
    """32 bytes for a report tuple ``(seq, t, wh, w, level, on_time, faults)``."""
    seq, t, wh, w, level, on_time, faults = report
    if buf is None:
        buf = bytearray(_SLOT)
    struct.pack_into(_FMT, buf, 0, seq, t, wh, w, on_time, level, faults)
    struct.pack_into("<I", buf, _BODY, crc32(memoryview(buf)[:_BODY]) & 0xFFFFFFFF)
    return buf


def unpack_slot(buf):
    """The report tuple in a slot, or None if empty or corrupt."""
    if len(buf) < _SLOT:
        return None
    crc = struct.unpack_from("<I", buf, _BODY)[0]
    if crc != crc32(memoryview(buf)[:_BODY]) & 0xFFFFFFFF:
        return None
    seq, t, wh, w, on_time, level, faults = struct.unpack_from(_FMT, buf, 0)
    if seq == 0:
        return None
    return (seq, t, wh, w, level, on_time, faults)


def _zeros(n):
    """An array('I') of n zeros without a temporary list (MicroPython takes a raw buffer)."""
    try:
        a = array("I", bytes(4 * n))
        if len(a) == n:
            return a
    except TypeError:  # CPython
        pass
    return array("I", [0]) * n


class Outbox:
    """The node's queue of unacknowledged reports, in ``directory`` (see module docstring)."""

    def __init__(self, directory, capacity=DEFAULT_CAPACITY):
        if capacity < 2:
            raise ValueError("outbox capacity must be at least 2")
        self.path = directory + "/outbox.ring"
        try:
            import os

            # a ring written with a larger capacity keeps it: shrinking would drop reports
            on_flash = os.stat(self.path)[6] // _SLOT
            if on_flash > capacity:
                capacity = on_flash
        except OSError:
            pass
        self.capacity = capacity
        self.ack_rec = Record(directory + "/outbox.ack")
        self.seqs = _zeros(capacity)
        self.buf = bytearray(_SLOT)
        self.acked = 0
        self.wpos = 0
        self.merged = 0
        self.corrupt = 0
        self._open()

    # --- flash ------------------------------------------------------------------------------
    def _open(self):
        data = self.ack_rec.load()
        if data is not None and len(data) == 4:
            self.acked = struct.unpack("<I", data)[0]
        try:
            f = open(self.path, "r+b")
        except OSError:
            f = None
        if f is None:
            with open(self.path, "wb") as g:
                zero = bytes(_SLOT)
                for _ in range(self.capacity):
                    g.write(zero)
            return
        with f:
            n = 0
            best_seq = 0
            best_pos = -1
            while n < self.capacity:
                k = f.readinto(self.buf)
                if not k:
                    break
                r = unpack_slot(self.buf) if k == _SLOT else None
                if r is None:
                    if k == _SLOT and any(self.buf):
                        self.corrupt += 1
                    self.seqs[n] = 0
                else:
                    self.seqs[n] = r[0]
                    if r[0] > best_seq:
                        best_seq = r[0]
                        best_pos = n
                n += 1
            if n < self.capacity:  # short file (older, smaller capacity or torn growth): extend
                f.seek(n * _SLOT)
                zero = bytes(_SLOT)
                for _ in range(self.capacity - n):
                    f.write(zero)
        self.wpos = (best_pos + 1) % self.capacity if best_pos >= 0 else 0

    def _write_slot(self, pos, report):
        pack_slot(report, self.buf)
        # No flush/fsync: close() commits on littlefs, the kernel keeps the data when the Unix
        # port is killed, and a slot torn by a real power cut fails its CRC (module docstring).
        with open(self.path, "r+b") as f:
            f.seek(pos * _SLOT)
            f.write(self.buf)
        self.seqs[pos] = report[0]

    def _read_slot(self, f, pos):
        f.seek(pos * _SLOT)
        f.readinto(self.buf)
        return unpack_slot(self.buf)

    # --- queue ------------------------------------------------------------------------------
    def _pending_positions(self):
        out = []
        cap = self.capacity
        acked = self.acked
        for k in range(cap):
            pos = (self.wpos + k) % cap
            s = self.seqs[pos]
            if s and s > acked:
                out.append(pos)
        seqs = self.seqs
        out.sort(key=lambda p: seqs[p])  # ring order already is seq order, unless resized
        return out

    def __len__(self):
        acked = self.acked
        n = 0
        for s in self.seqs:
            if s and s > acked:
                n += 1
        return n

    def put(self, report):
        """Append a report tuple ``(seq, t, wh, w, level, on_time, faults)`` (seq > 0).

        When every slot is pending, the two oldest are merged first (SPEC §3.3).
        """
        if report[0] <= 0:
            raise ValueError("report seq must be > 0")
        cap = self.capacity
        pos = self.wpos
        s = self.seqs[pos]
        if s and s > self.acked:
            # full: the slot to overwrite is the oldest pending; fold it into the next oldest
            nxt = (pos + 1) % cap
            with open(self.path, "rb") as f:
                old = self._read_slot(f, pos)
                newer = self._read_slot(f, nxt)
            if newer is not None and newer[0] > self.acked:
                if old is not None and old[6] & ~newer[6]:
                    self._write_slot(nxt, newer[:6] + (newer[6] | old[6],))
                self.merged += 1
        self._write_slot(pos, report)
        self.wpos = (pos + 1) % cap

    def peek(self, n):
        """Up to ``n`` pending reports, oldest first (list of tuples)."""
        out = []
        with open(self.path, "rb") as f:
            for pos in self._pending_positions():
                if len(out) >= n:
                    break
                r = self._read_slot(f, pos)
                if r is None:  # went bad on flash since the scan: forget it
                    self.seqs[pos] = 0
                    self.corrupt += 1
                    continue
                out.append(r)
        return out

    def ack_through(self, seq):
        """Mark every report with seq <= ``seq`` delivered (persisted atomically)."""
        if seq <= self.acked:
            return
        self.acked = seq
        self.ack_rec.save(struct.pack("<I", seq))

    def remove(self, k):
        """Mark the ``k`` oldest pending reports delivered."""
        pend = self.peek(k)
        if pend:
            self.ack_through(pend[-1][0])

    def last_seq(self):
        """The highest seq ever stored (0 if none): the node's seq must continue above it."""
        m = self.acked
        for s in self.seqs:
            if s > m:
                m = s
        return m
