"""Crash safety: a process ingesting a burst is SIGKILLed; every report it acknowledged is in
the database when it is opened again. And a real full filesystem (a tiny tmpfs in a private
mount namespace) answers 5.03 and recovers."""

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

BURST = textwrap.dedent("""
    import asyncio, sys
    from gateway.store import Store

    async def node(store, name, start):
        seq = 0
        while True:
            seq += 1
            rep = {"seq": seq, "t": start + 60 * seq, "wh": 100 + seq, "w": 30.0}
            await store.ingest_reports(name, [rep], received_at=start + 60 * seq)
            # acknowledged = durable: tell the parent
            sys.stdout.write(f"{name} {seq}\\n")
            sys.stdout.flush()

    async def main():
        store = await Store.open(sys.argv[1], aggregate_interval_s=0.05)
        await asyncio.gather(*(node(store, f"n{i}", 1_768_000_000) for i in range(32)))

    asyncio.run(main())
""")


def test_sigkill_during_burst_loses_no_acknowledged_report(tmp_path):
    import sqlite3

    db = str(tmp_path / "slgw.db")
    proc = subprocess.Popen([sys.executable, "-c", BURST, db], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd=ROOT)
    acked = set()
    try:
        deadline = time.monotonic() + 40
        while len(acked) < 1500 and time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            name, seq = line.split()
            acked.add((name, int(seq)))
        os.kill(proc.pid, signal.SIGKILL)  # mid-burst: writes are queued and in flight
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=10)
    # what was written to the pipe before the kill is acknowledged too
    for line in proc.stdout.read().splitlines():
        if line.strip():
            name, seq = line.split()
            acked.add((name, int(seq)))
    assert len(acked) >= 1500, proc.stderr.read()[-2000:]
    conn = sqlite3.connect(db)
    try:
        stored = set(conn.execute("SELECT source, seq FROM readings"))
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    finally:
        conn.close()
    missing = acked - stored
    assert not missing, f"{len(missing)} acknowledged reports lost, e.g. {sorted(missing)[:5]}"


FULL_DISK = textwrap.dedent("""
    import asyncio, json, os, sys, time
    from gateway.store import Store
    from gateway.ingest import Ingestor
    from protocol.report import encode_reports

    async def main(d):
        store = await Store.open(os.path.join(d, "slgw.db"))
        ing = Ingestor(store)
        t0 = 1_768_000_000
        out = {}
        pack = lambda s0: encode_reports([(s, t0 + 60 * s, 100 + s, 30.0, 100, 60 * s, 0)
                                          for s in range(s0, s0 + 8)])
        a = await ing.handle_payload("n1", pack(1), now=t0 + 1000)
        out["before"] = a.code_str
        # fill the filesystem
        fd = os.open(os.path.join(d, "junk"), os.O_WRONLY | os.O_CREAT)
        try:
            while True:
                os.write(fd, b"x" * 512)
        except OSError:
            pass
        finally:
            os.close(fd)
        codes = []
        for k in range(40):
            a = await ing.handle_payload("n1", pack(9 + 8 * k), now=t0 + 2000)
            codes.append((a.code_str, a.max_age))
        out["full"] = codes
        out["count_full"] = await store.read(
            lambda c: c.execute("SELECT COUNT(*) FROM readings").fetchone()[0])
        os.unlink(os.path.join(d, "junk"))
        a = await ing.handle_payload("n1", pack(9), now=t0 + 3000)
        out["after"] = a.code_str
        out["count_after"] = await store.read(
            lambda c: c.execute("SELECT COUNT(*) FROM readings").fetchone()[0])
        await store.close()
        print(json.dumps(out))

    asyncio.run(main(sys.argv[1]))
""")


def test_real_full_filesystem_answers_503_then_recovers(tmp_path):
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    # unshare (util-linux) gives a private mount namespace, as root or not
    cmd = ["unshare", "--user", "--map-root-user", "--mount", "sh", "-c",
           'mount -t tmpfs -o size=300k tmpfs "$1" && exec "$2" -c "$3" "$1"', "sh",
           str(mnt), sys.executable, FULL_DISK]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert p.returncode == 0, p.stderr[-3000:]
    out = json.loads(p.stdout.strip().splitlines()[-1])
    assert out["before"] == "2.04"
    codes = [c for c, _ in out["full"]]
    assert "5.03" in codes, out  # the pack was refused, not acknowledged
    # every pack that was acknowledged while the disk was full is really stored
    assert out["count_full"] == 8 + 8 * codes.count("2.04")
    ages = [a for c, a in out["full"] if c == "5.03"]
    assert ages[0] == 5 and max(ages) <= 300 and ages == sorted(ages)
    assert out["after"] == "2.04" and out["count_after"] >= 16


def test_unshare_is_available():
    # the full-disk test depends on util-linux's unshare; fail loudly if it is missing
    assert subprocess.run(["unshare", "--version"], capture_output=True).returncode == 0
