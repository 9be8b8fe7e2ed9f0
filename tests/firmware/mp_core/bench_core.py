"""Timings of the firmware core's flash and schedule paths, each against a baseline measured in
the same run (for bench/firmware_core.py). argv: scratch_dir. Prints one JSON object."""

import json
import sys
import time

from firmware.durable import Record
from firmware.outbox import Outbox
from firmware.schedule import Schedule
from firmware.tzrule import TZ

D = sys.argv[1]
N = 300


def per_op_us(fn, n=N):
    t0 = time.ticks_us()
    for i in range(n):
        fn(i)
    return time.ticks_diff(time.ticks_us(), t0) / n


def raw_write(i):
    with open(D + "/raw.bin", "wb") as f:
        f.write(b"x" * 32)
        f.flush()


def raw_rmw(i):
    with open(D + "/raw.bin", "r+b") as f:
        f.seek((i % 8) * 32)
        f.write(b"y" * 32)  # what the outbox does per slot, without framing


ob = Outbox(D, capacity=208)


def put(i):
    ob.put((i + 1, 1767225600 + i, i, 10.0, 50, i, 0))


rec = Record(D + "/rec")


def save(i):
    rec.save(b"z" * 56)


sch = Schedule([[1, 0, 100], [0, 1350, 40], [0, 0, 0], [0, 300, 40], [2, 0, 0]], 48.85, 2.35,
               TZ("CET-1CEST,M3.5.0,M10.5.0/3"))


def level_same_day(i):
    sch.level_at(1767225600 + i)


def level_new_day(i):
    sch.level_at(1767225600 + i * 86400)


def noop(i):
    pass


out = {}
out["raw_file_write_us"] = per_op_us(raw_write)
raw_rmw(0)
out["raw_slot_rewrite_us"] = per_op_us(raw_rmw)
out["outbox_put_us"] = per_op_us(put, 208)
out["outbox_put_full_merge_us"] = per_op_us(put)
out["record_save_us"] = per_op_us(save)
out["noop_call_us"] = per_op_us(noop, 5000)
out["schedule_level_cached_day_us"] = per_op_us(level_same_day, 2000)
out["schedule_level_new_day_us"] = per_op_us(level_new_day, 100)
out["outbox_put_vs_slot_rewrite"] = out["outbox_put_us"] / out["raw_slot_rewrite_us"]
out["outbox_merge_put_vs_slot_rewrite"] = out["outbox_put_full_merge_us"] / out["raw_slot_rewrite_us"]
out["record_save_vs_plain_write"] = out["record_save_us"] / out["raw_file_write_us"]
print(json.dumps(out))
