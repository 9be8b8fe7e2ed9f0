"""SIGKILL at random instants while the node-core writes counters, seqs and the outbox.

The writer (tests/firmware/mp_core/kill_writer.py) runs under the real `micropython` on a flash
directory; we kill it at random points many times, reopen, and check the invariants the node
relies on: the counter record always loads and never goes back behind a persisted value, a seq
is never handed out twice, the outbox is oldest-first with every stored unacknowledged report
present (or merged into a later one), and report energy never decreases along the queue.
"""

import json
import os
import random
import subprocess
import time

from core_support import MICROPYTHON, MP_CORE, ROOT, mp_env

WRITER = os.path.join(MP_CORE, "kill_writer.py")


def _check_state(d):
    r = subprocess.run([MICROPYTHON, WRITER, str(d), "check"], env=mp_env(), capture_output=True, text=True,
                       timeout=30, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def test_sigkill_at_random_points_keeps_invariants(tmp_path):
    rng = random.Random(1234)
    used = set()
    stored = {}  # seq -> wh of every report whose put() completed
    last_f = 0
    acked = 0
    runs = 0
    full = 0
    # at least 25 power cuts, and more (up to 60) until 5 of them hit a full, merging ring:
    # how far the writer gets before a random cut depends on the machine's load
    for _ in range(60):
        if runs >= 25 and full >= 5:
            break
        log = tmp_path / f"run{runs}.log"
        with open(log, "wb") as fout:
            p = subprocess.Popen([MICROPYTHON, WRITER, str(tmp_path)], env=mp_env(), stdout=fout,
                                 stderr=subprocess.STDOUT, cwd=ROOT)
            try:
                deadline = time.monotonic() + 20
                while not log.read_bytes().startswith(b"B") and time.monotonic() < deadline:
                    assert p.poll() is None, log.read_text()
                    time.sleep(0.002)
                time.sleep(rng.uniform(0.0, 0.2))
            finally:
                p.kill()  # SIGKILL: a power cut
                p.wait(timeout=10)
        runs += 1
        lines = log.read_text(errors="replace").splitlines()
        assert lines and lines[0].startswith("B"), lines[:5]
        boot_seq = int(lines[0].split()[2])
        assert all(boot_seq > s for s in used), "seq restarted below one already used"
        for line in lines[1:]:
            parts = line.split()
            if len(parts) < 2:
                continue  # the line being printed when killed
            try:
                vals = [int(v) for v in parts[1:]]
            except ValueError:
                continue
            if parts[0] == "S":
                assert vals[0] not in used, f"seq {vals[0]} handed out twice"
                used.add(vals[0])
            elif parts[0] == "P" and len(vals) == 2:
                stored[vals[0]] = vals[1]
            elif parts[0] == "F":
                last_f = max(last_f, vals[0])
            elif parts[0] == "A":
                acked = max(acked, vals[0])
        st = _check_state(tmp_path)
        assert st["loaded"]
        assert st["wh"] >= last_f, (st["wh"], last_f)
        assert st["acked"] >= acked
        pend = st["pending"]
        seqs = [r[0] for r in pend]
        assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
        whs = [r[2] for r in pend]
        assert whs == sorted(whs), "energy decreased along the queue"
        for r in pend:
            assert r[0] in used
            if r[0] in stored:
                assert r[2] == stored[r[0]]
        if pend:
            oldest = seqs[0]
            missing = [s for s in stored if s > st["acked"] and s >= oldest and s not in seqs]
            assert not missing, f"stored reports lost: {missing[:5]!r}"
        assert len(pend) <= 40
        full += len(pend) == 40
    assert runs >= 25 and len(used) > 200  # the kills landed across many writes
    assert full >= 5  # ...and the ring was full (merging) at many of them
