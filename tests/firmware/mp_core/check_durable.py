import os
import sys

import mprun

from firmware.durable import Counters, Record, SeqAllocator, decode, encode

D = sys.argv[1]


def _write(path, blob):
    with open(path, "wb") as f:
        f.write(blob)


def _read(path):
    with open(path, "rb") as f:
        return f.read()


def _exists(path):
    try:
        os.stat(path)
        return True
    except OSError:
        return False


def test_roundtrip_and_generations():
    r = Record(D + "/r1")
    assert r.load() is None
    r.save(b"one")
    r.save(b"two")
    r2 = Record(D + "/r1")
    assert r2.load() == b"two" and r2.gen == 2 and not r2.recovered
    assert decode(_read(D + "/r1.bak"))[1] == b"one"  # last good copy kept
    assert not _exists(D + "/r1.tmp")


def test_checksum_mismatch_detected():
    blob = bytearray(encode(5, b"hello"))
    assert decode(blob) == (5, b"hello")
    blob[-1] ^= 1
    assert decode(blob) is None
    blob = bytearray(encode(5, b"hello"))
    blob[6] ^= 0x40  # the generation
    assert decode(blob) is None
    assert decode(b"") is None and decode(b"SLD1") is None and decode(b"x" * 40) is None


def test_corrupt_main_falls_back_to_last_good():
    r = Record(D + "/r2")
    r.save(b"good-1")
    r.save(b"good-2")
    blob = bytearray(_read(D + "/r2"))
    blob[-2] ^= 0xFF
    _write(D + "/r2", blob)
    r2 = Record(D + "/r2")
    assert r2.load() == b"good-1" and r2.recovered and r2.corrupt == 1
    # the next save must not rotate the bad copy over the good .bak
    r2.save(b"good-3")
    assert decode(_read(D + "/r2.bak"))[1] == b"good-1"
    assert Record(D + "/r2").load() == b"good-3"


def test_torn_tmp_is_ignored_and_complete_tmp_wins():
    r = Record(D + "/r3")
    r.save(b"A" * 50)
    full = encode(2, b"B" * 50)
    _write(D + "/r3.tmp", full[:30])  # cut while writing the new copy
    r2 = Record(D + "/r3")
    assert r2.load() == b"A" * 50 and r2.recovered
    # cut after the tmp was complete and the main copy had been rotated away
    os.rename(D + "/r3", D + "/r3.bak")
    _write(D + "/r3.tmp", full)
    r3 = Record(D + "/r3")
    assert r3.load() == b"B" * 50
    # the interrupted save was completed: the new copy is the main one, the old one the .bak
    assert not _exists(D + "/r3.tmp") and decode(_read(D + "/r3"))[1] == b"B" * 50
    assert decode(_read(D + "/r3.bak"))[1] == b"A" * 50
    r3.save(b"C")
    assert Record(D + "/r3").load() == b"C" and decode(_read(D + "/r3.bak"))[1] == b"B" * 50


def test_truncated_main_every_length():
    r = Record(D + "/r4")
    r.save(b"first")
    r.save(b"second")
    blob = _read(D + "/r4")
    for n in range(len(blob)):
        _write(D + "/r4", blob[:n])
        got = Record(D + "/r4").load()
        assert got == b"first", (n, got)


def test_counters_and_missing_fields():
    c = Counters(D + "/c1", ("a", "b"))
    assert not c.load()
    c.set("a", 5)
    c.set("b", -7)
    assert c.dirty() and c.flush() and not c.flush()
    c2 = Counters(D + "/c1", ("a", "b", "c"))
    assert c2.load() and c2.get("a") == 5 and c2.get("b") == -7 and c2.get("c") == 0
    big = 1 << 40
    c2.set("c", big)
    c2.flush()
    c3 = Counters(D + "/c1", ("a", "b", "c"))
    c3.load()
    assert c3.get("c") == big


def test_seq_allocator_never_repeats_after_cut():
    path = D + "/c2"
    used = []
    for boot in range(5):
        c = Counters(path, ("seq_hw",))
        c.load()
        sa = SeqAllocator(c, "seq_hw", 16)
        for _ in range(boot * 7 + 3):  # a "cut" after a varying number of reports
            used.append(sa.next())
    assert len(used) == len(set(used))
    assert used == sorted(used) and used[0] == 1
    # skips are bounded by the block size
    for k in range(len(used) - 1):
        a, b = used[k], used[k + 1]
        assert 1 <= b - a <= 16


def test_seq_allocator_writes_once_per_block():
    c = Counters(D + "/c3", ("seq_hw",))
    c.load()
    sa = SeqAllocator(c, "seq_hw", 16)
    for _ in range(40):
        sa.next()
    assert c.writes == 3 and sa.last == 40 and c.get("seq_hw") == 49


mprun.run(globals())
