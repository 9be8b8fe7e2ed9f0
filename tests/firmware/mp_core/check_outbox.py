import os
import sys

import mprun

from firmware.outbox import DEFAULT_CAPACITY, Outbox, pack_slot, unpack_slot

D = sys.argv[1]
for _n in "abcdef":
    try:
        os.mkdir(D + "/" + _n)
    except OSError:
        pass


def rep(seq, faults=0):
    return (seq, 1767225600 + 900 * seq, 1000 + 10 * seq, 40.25, 50, 60 * seq, faults)


def test_slot_roundtrip_and_crc():
    r = (7, -120, 123456, 17.75, 40, 99, 0x81)
    b = pack_slot(r)
    assert len(b) == 32 and unpack_slot(b) == r
    b[3] ^= 1
    assert unpack_slot(b) is None
    assert unpack_slot(bytearray(32)) is None


def test_capacity_covers_48h():
    assert DEFAULT_CAPACITY >= 192
    ob = Outbox(D + "/a")
    for s in range(1, 193):
        ob.put(rep(s))
    assert len(ob) == 192 and ob.merged == 0
    got = ob.peek(300)
    assert [r[0] for r in got] == list(range(1, 193))


def test_oldest_first_and_ack():
    ob = Outbox(D + "/b", capacity=10)
    for s in range(1, 6):
        ob.put(rep(s))
    assert [r[0] for r in ob.peek(3)] == [1, 2, 3]
    ob.remove(3)
    assert [r[0] for r in ob.peek(10)] == [4, 5]
    ob2 = Outbox(D + "/b", capacity=10)  # reopen: acks and order persisted
    assert [r[0] for r in ob2.peek(10)] == [4, 5]
    for s in range(6, 14):  # wraps the ring over acknowledged slots
        ob2.put(rep(s))
    assert [r[0] for r in ob2.peek(20)] == list(range(4, 14)) and ob2.merged == 0


def test_overflow_merges_never_drops_energy():
    ob = Outbox(D + "/c", capacity=5)
    for s in range(1, 13):
        ob.put(rep(s, 1 << (s % 8)))
    got = ob.peek(10)
    assert len(got) == 5 and ob.merged == 7
    assert [r[0] for r in got] == [8, 9, 10, 11, 12]
    oldest = got[0]
    # the summary keeps the last seq/t/wh of the merged ones and ORs their faults
    assert oldest[1] == rep(8)[1] and oldest[2] == rep(8)[2]
    want = 0
    for s in range(1, 9):
        want |= 1 << (s % 8)
    assert oldest[6] == want
    assert got[-1][2] == rep(12)[2]  # the newest energy is intact
    ob2 = Outbox(D + "/c", capacity=5)
    assert ob2.peek(10) == got


def test_ack_through_ignores_lower():
    ob = Outbox(D + "/d", capacity=4)
    ob.put(rep(1))
    ob.put(rep(2))
    ob.ack_through(2)
    ob.ack_through(1)
    assert len(ob) == 0 and ob.acked == 2
    assert ob.last_seq() == 2


def test_smaller_capacity_never_drops():
    ob = Outbox(D + "/f", capacity=8)
    for s in range(1, 8):
        ob.put(rep(s))
    ob2 = Outbox(D + "/f", capacity=4)
    assert ob2.capacity == 8 and [r[0] for r in ob2.peek(10)] == list(range(1, 8))
    ob3 = Outbox(D + "/f", capacity=16)  # growing extends the ring, order kept
    ob3.put(rep(8))
    assert ob3.capacity == 16 and [r[0] for r in ob3.peek(20)] == list(range(1, 9))


def test_corrupt_slot_reads_as_empty():
    ob = Outbox(D + "/e", capacity=4)
    for s in range(1, 4):
        ob.put(rep(s))
    with open(D + "/e/outbox.ring", "r+b") as f:
        f.seek(32 + 5)
        f.write(b"\xff\xff")
    ob2 = Outbox(D + "/e", capacity=4)
    assert [r[0] for r in ob2.peek(10)] == [1, 3] and ob2.corrupt == 1


mprun.run(globals())
