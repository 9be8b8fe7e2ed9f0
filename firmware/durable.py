"""Power-cut-safe records in flash, the node's persisted counters, and the report-seq allocator.

``Record``: one small binary record kept as a file ``<name>`` plus its previous generation
``<name>.bak``. A save writes ``<name>.tmp`` completely (flush, ``fsync`` where the port has it),
then ``remove(.bak)``, ``rename(<name> -> .bak)``, ``rename(.tmp -> <name>)``. Every file holds::

    b"SLD1" | gen u32 | len u16 | crc32 u32 (over gen, len, data) | data

A power cut at any point of that sequence leaves at least one complete file (the old ``<name>``,
the new ``.tmp``, or ``.bak``), so ``load()`` reads all three, drops those that are torn or fail
the checksum, and returns the valid one with the highest generation: the newest good copy, or
else the last good one. ``recovered`` tells the caller that a newer copy was found bad.

``Counters``: a fixed tuple of named ints in one ``Record`` (energy base, pulse remainder, Modbus
meter offset, on-time, seq high-water mark...). Callers decide *when* to flush (batching spares
the flash; see firmware/meter.py for the energy policy and its stated loss bound).

``SeqAllocator``: report sequence numbers that never repeat across power cuts. The high-water
mark is persisted *ahead of use* in blocks of ``block`` (16): before handing out a number at or
beyond the persisted mark, the mark moves up one block and is flushed. A cut therefore skips at
most ``block - 1`` numbers and never repeats one (SPEC §3.1).
"""

import os
import struct


def crc32_py(data, crc=0):
    """CRC-32 (IEEE 802.3, as zlib/binascii), bitwise: the fallback for ports without binascii."""
    crc ^= 0xFFFFFFFF
    for b in data:
        crc ^= b
        for _ in range(8):
            crc = (crc >> 1) ^ (0xEDB88320 & -(crc & 1))
    return crc ^ 0xFFFFFFFF


try:
    from binascii import crc32
except ImportError:  # a port built without binascii.crc32
    crc32 = crc32_py

try:
    from micropython import const
except ImportError:  # CPython

    def const(x):
        return x


_MAGIC = b"SLD1"
_HDR = "<4sIHI"
_HDR_LEN = const(14)
MAX_DATA = const(4096)


def _crc(gen, data):
    return crc32(data, crc32(struct.pack("<IH", gen, len(data)))) & 0xFFFFFFFF


def encode(gen, data):
    """The bytes of one record file for generation ``gen`` holding ``data``."""
    if len(data) > MAX_DATA:
        raise ValueError("record larger than %d bytes" % MAX_DATA)
    return struct.pack(_HDR, _MAGIC, gen, len(data), _crc(gen, data)) + data


def decode(blob):
    """Return ``(gen, data)`` of a record file's bytes, or None if torn, foreign or corrupt."""
    if blob is None or len(blob) < _HDR_LEN:
        return None
    magic, gen, n, crc = struct.unpack(_HDR, blob[:_HDR_LEN])
    if magic != _MAGIC or len(blob) != _HDR_LEN + n:
        return None
    data = bytes(blob[_HDR_LEN:])
    if _crc(gen, data) != crc:
        return None
    return gen, data


def _read(path):
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError:
        return None


def _remove(path):
    try:
        os.remove(path)
    except OSError:
        pass


class Record:
    """One atomic, checksummed, two-generation record at ``path`` (see module docstring)."""

    def __init__(self, path):
        self.path = path
        self.gen = 0
        self.recovered = False  # a newer copy was torn/corrupt: the last good one was used
        self.corrupt = 0  # how many bad copies the last load() saw
        self._main_ok = None  # is <name> a valid copy? None: not looked yet

    def load(self):
        """Return the newest valid data (bytes), or None if no valid copy exists."""
        best = None
        best_suffix = ""
        self.corrupt = 0
        self._main_ok = False
        for suffix in ("", ".tmp", ".bak"):
            blob = _read(self.path + suffix)
            if blob is None:
                continue
            rec = decode(blob)
            if rec is None:
                self.corrupt += 1
                continue
            if suffix == "":
                self._main_ok = True
            if best is None or rec[0] > best[0]:
                best = rec
                best_suffix = suffix
        self.recovered = self.corrupt > 0
        if best is None:
            return None
        self.gen = best[0]
        if best_suffix == ".tmp":
            # a cut between the two renames: finish the save, so the next one starts clean
            if self._main_ok:
                _remove(self.path + ".bak")
                os.rename(self.path, self.path + ".bak")
            else:
                _remove(self.path)
            os.rename(self.path + ".tmp", self.path)
            self._main_ok = True
        return best[1]

    def save(self, data):
        """Write ``data`` as the next generation, atomically (see module docstring)."""
        if self._main_ok is None:
            self.load()  # learn the generation on flash first, so the new copy is the newest
        self.gen += 1
        blob = encode(self.gen, data)
        tmp = self.path + ".tmp"
        with open(tmp, "wb") as f:
            f.write(blob)
            f.flush()
            fsync = getattr(os, "fsync", None)
            if fsync is not None:
                fsync(f.fileno())
        bak = self.path + ".bak"
        if self._main_ok:
            # the current copy becomes the last good one
            _remove(bak)
            try:
                os.rename(self.path, bak)
            except OSError:
                pass
        else:
            # missing or known bad: never rotate a bad copy over the good .bak
            _remove(self.path)
        os.rename(tmp, self.path)
        self._main_ok = True

    def erase(self):
        for suffix in ("", ".tmp", ".bak"):
            _remove(self.path + suffix)
        self.gen = 0


class Counters:
    """Named ints persisted together in one Record. ``fields``: a tuple of names.

    Values are stored as signed 64-bit ints, in field order; a record written by an older
    firmware with fewer fields loads with the missing ones at 0.
    """

    def __init__(self, path, fields):
        self.fields = fields
        self.rec = Record(path)
        self.values = [0] * len(fields)
        self.saved = [0] * len(fields)
        self.writes = 0
        self.loaded = False

    def load(self):
        """Load the newest good copy. Returns True if one was found (else all values are 0)."""
        data = self.rec.load()
        if data is None or len(data) % 8:
            self.loaded = False
            return False
        n = min(len(data) // 8, len(self.fields))
        vals = struct.unpack("<%dq" % (len(data) // 8), data)
        for i in range(n):
            self.values[i] = vals[i]
            self.saved[i] = vals[i]
        self.loaded = True
        return True

    def index(self, name):
        return self.fields.index(name)

    def get(self, name):
        return self.values[self.fields.index(name)]

    def set(self, name, value):
        self.values[self.fields.index(name)] = int(value)

    def dirty(self):
        return self.values != self.saved

    def flush(self, force=False):
        """Persist if anything changed (or ``force``). Returns True if it wrote."""
        if not force and not self.dirty():
            return False
        self.rec.save(struct.pack("<%dq" % len(self.values), *self.values))
        self.saved = list(self.values)
        self.writes += 1
        return True


class SeqAllocator:
    """Report sequence numbers 1, 2, 3... that never repeat across power cuts.

    ``counters`` holds the persisted high-water mark in field ``field`` (the first number not
    yet reserved). ``last`` is the last number handed out.
    """

    def __init__(self, counters, field="seq_hw", block=16):
        self.c = counters
        self.field = field
        self.block = block
        hw = counters.get(field)
        if hw < 1:
            hw = 1
        # numbers below the persisted mark may have been used before the cut: skip them all
        self.next_seq = hw
        self.last = hw - 1

    def peek(self):
        """The number ``next()`` will return."""
        return self.next_seq

    def next(self):
        """Hand out the next number, persisting a new high-water mark first when needed."""
        seq = self.next_seq
        if seq >= self.c.get(self.field):
            self.c.set(self.field, seq + self.block)
            self.c.flush()
        self.next_seq = seq + 1
        self.last = seq
        return seq
