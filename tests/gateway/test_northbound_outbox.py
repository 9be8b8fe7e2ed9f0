"""The durable outbox (gateway/northbound/outbox.py) on a real store: written in the same
transaction as its data, deterministic keys, bounded with the oldest dropped and counted,
exported energy totals that never decrease, and nothing queued while MQTT is off."""

from __future__ import annotations

import json

import pytest

from gateway.northbound import outbox
from gateway.store import Store

T0 = 1_767_225_600  # 2026-01-01T00:00Z, a bucket boundary


def rep(seq: int, wh: float, faults: int = 0) -> dict:
    return {"seq": seq, "t": T0 + 300 * seq, "wh": wh, "w": 40.0, "level": 50, "on_time": seq,
            "faults": faults, "rel_time": False}


async def rows(store: Store) -> list[tuple]:
    """(id, key, topic, payload) as the publisher reads them (payloads built where lazy)."""
    return await store.read(lambda c: outbox.pending(c, 0, 10**6))


@pytest.fixture
async def store(tmp_path):
    s = await Store.open(str(tmp_path / "gw.db"), timezone="UTC")
    await s.write(lambda c: outbox.install(c, 1000))
    yield s
    await s.close()


async def test_every_announcement_has_a_deterministic_key_and_original_time(store):
    await store.ingest_reports("n1", [rep(1, 100), rep(2, 110), rep(3, 120, faults=1)],
                               received_at=T0 + 7200)
    await store.ingest_reports("n1", [rep(3, 120, faults=1)], received_at=T0 + 7200)  # a duplicate
    await store.refresh()
    got = {k: (topic, json.loads(p)) for _i, k, topic, p in await rows(store)}
    assert {"r/n1/1", "r/n1/2", "r/n1/3", "f/n1/3", "s/n1", f"b/n1/{T0}"} <= set(got)
    assert [k for k in got if k.startswith("r/")] == ["r/n1/1", "r/n1/2", "r/n1/3"]  # no dup
    assert got["r/n1/2"][0] == "node/n1/report" and got["r/n1/2"][1]["t"] == T0 + 600
    assert got["f/n1/3"][1]["raised"] == ["lampFailure"]
    assert got["s/n1"][1]["energy_wh"] == pytest.approx(20.0)
    assert got[f"b/n1/{T0}"][1] == {"type": "energy", "node": "n1", "start": T0, "end": T0 + 900,
                                    "wh": pytest.approx(20.0), "quality": "measured"}


async def test_announcement_commits_with_its_data_or_not_at_all(store):
    def fails(conn):
        conn.execute("INSERT INTO readings(source, seq, t, wh) VALUES ('n2', 1, ?, 5)", (T0,))
        raise RuntimeError("the write fails after its insert")

    with pytest.raises(RuntimeError):
        await store.write(fails)
    assert await rows(store) == []
    assert await store.read(lambda c: c.execute("SELECT COUNT(*) FROM readings").fetchone()[0]) == 0


async def test_full_outbox_drops_the_oldest_and_counts_them(store):
    await store.write(lambda c: outbox.install(c, 10))
    n = 3 * outbox.BOUND_EVERY
    for s in range(1, n + 1):
        await store.ingest_reports("n1", [rep(s, 100 + s)], received_at=T0 + 86400 * 30)
    left = await rows(store)
    st = await store.read(outbox.status)
    assert st["depth"] == len(left) <= 10 + outbox.BOUND_EVERY
    assert st["dropped"] > 0 and st["dropped"] + len(left) >= n  # reports + states
    keys = {k for _i, k, _t, _p in left}
    assert f"r/n1/{n}" in keys and "s/n1" in keys  # the newest are kept
    assert "r/n1/1" not in keys and f"r/n1/{n - outbox.BOUND_EVERY - 10}" not in keys


async def test_a_report_pruned_before_it_was_sent_is_announced_as_nothing(store):
    await store.ingest_reports("n1", [rep(1, 100), rep(2, 110)], received_at=T0 + 7200)
    await store.write(lambda c: c.execute("DELETE FROM readings WHERE seq = 1"))
    got = {k: p for _i, k, _t, p in await rows(store)}
    assert got["r/n1/1"] is None and json.loads(got["r/n1/2"])["seq"] == 2


async def test_exported_energy_never_decreases(store):
    await store.ingest_reports("n1", [rep(1, 100), rep(2, 130)], received_at=T0 + 7200)
    await store.refresh()
    assert (await store.read(outbox.energy_totals))["n1"] == pytest.approx(30.0)

    def rebuild_lower(conn):  # a rebuild that finds less energy in a bucket (a re-read reset)
        conn.execute("DELETE FROM buckets WHERE source = 'n1'")
        conn.execute("INSERT INTO buckets(source, start, wh, quality) VALUES ('n1', ?, 12, "
                     "'measured')", (T0,))

    await store.write(rebuild_lower)
    assert (await store.read(outbox.energy_totals))["n1"] == pytest.approx(30.0)
    state = [json.loads(p) for _i, k, _t, p in await rows(store) if k == "s/n1"][-1]
    assert state["energy_wh"] == pytest.approx(30.0)
    bucket = [json.loads(p) for _i, k, _t, p in await rows(store) if k == f"b/n1/{T0}"]
    assert [b["wh"] for b in bucket] == [12]  # the bucket itself tells the truth, replaced
    await store.write(lambda c: c.execute(
        "INSERT INTO buckets(source, start, wh, quality) VALUES ('n1', ?, 25, 'measured')",
        (T0 + 900,)))
    assert (await store.read(outbox.energy_totals))["n1"] == pytest.approx(37.0)  # 12 + 25


async def test_acknowledged_rows_go_and_replaced_rows_stay(store):
    await store.ingest_reports("n1", [rep(1, 100)], received_at=T0 + 7200)
    first = await rows(store)
    state_id = [i for i, k, _t, _p in first if k == "s/n1"][0]
    await store.ingest_reports("n1", [rep(2, 101)], received_at=T0 + 7200)  # a newer state
    n = await store.write(outbox.acknowledge([i for i, *_ in first]))
    assert n == len(first) - 1  # the old state row was replaced: its ack deletes nothing
    keys = [k for _i, k, _t, _p in await rows(store)]
    assert sorted(keys) == ["r/n1/2", "s/n1"]
    assert [i for i, k, _t, _p in await rows(store) if k == "s/n1"][0] > state_id


async def test_nothing_is_queued_with_mqtt_off(tmp_path):
    s = await Store.open(str(tmp_path / "gw.db"), timezone="UTC")
    try:
        await s.write(lambda c: outbox.install(c, 1000))
        await s.ingest_reports("n1", [rep(1, 100)], received_at=T0 + 7200)
        waiting = await s.write(outbox.uninstall)
        assert waiting == len(await rows(s)) > 0
        await s.ingest_reports("n1", [rep(2, 110)], received_at=T0 + 7200)
        await s.refresh()
        assert len(await rows(s)) == waiting  # kept, and nothing new
        assert (await s.read(outbox.status))["recording"] is False
    finally:
        await s.close()


def test_publisher_yields_to_a_busy_writer_but_not_forever():
    from gateway.northbound.publisher import YieldToIngest

    t, busy = [0.0], [0.0]
    y = YieldToIngest(lambda: busy[0], busy_fraction=0.5, max_defer_s=10.0, clock=lambda: t[0])

    def step(dt: float, busy_dt: float) -> bool:
        t[0] += dt
        busy[0] += busy_dt
        return y.should_wait()

    assert step(0.2, 0.02) is False  # an idle writer: publish
    assert step(0.2, 0.18) is True  # 90 % busy with Sends: hold back
    waits = [step(0.2, 0.18) for _ in range(60)]  # 12 s of constant load
    assert waits[0] is True and False in waits  # ... but at most 10 s in a row
    assert waits.index(False) <= 50
    assert step(0.2, 0.01) is False


def test_one_short_write_is_not_a_busy_writer():
    """A single commit (a few ms of fsync) seen over a few ms must not read as a writer over
    half busy: the publisher then paused 0.2 s for its own acknowledgement deletes."""
    from gateway.northbound.publisher import YieldToIngest

    t, busy = [0.0], [0.0]
    y = YieldToIngest(lambda: busy[0], busy_fraction=0.5, max_defer_s=10.0, clock=lambda: t[0])
    t[0], busy[0] = 0.005, 0.004  # one 4 ms commit, looked at 5 ms after the last look
    assert y.should_wait() is False and y.deferred == 0
    t[0], busy[0] = 0.3, 0.25  # sustained load over a long enough window still counts
    assert y.should_wait() is True


async def test_acknowledgement_deletes_are_not_counted_as_writer_load(store):
    """The store's busy time (what the aggregation and YieldToIngest measure) is ingest load;
    the publisher deleting acknowledged rows is its own bookkeeping, counted apart."""
    def noop(_c) -> None:
        return None

    noop.background = True  # type: ignore[attr-defined]

    async def settle() -> None:
        # a write resolves before the writer adds up its time: the next write's return
        # means the previous group is counted
        await store.write(noop)

    await store.ingest_reports("n1", [rep(s, 100 + s) for s in range(1, 50)], received_at=T0)
    ids = [r[0] for r in await rows(store)]
    await settle()
    busy = store.busy_s
    assert await store.write(outbox.acknowledge(ids)) == len(ids)
    await settle()
    assert store.busy_s == busy and store.background_s > 0
    assert await rows(store) == []
    await store.ingest_reports("n1", [rep(60, 200)], received_at=T0)
    await settle()
    assert store.busy_s > busy  # an ingest still counts


async def test_packed_read_gives_every_row_in_order_and_falls_back_on_a_separator(store):
    """pending() reads a batch as one packed value: same rows, same order, None payloads kept,
    and a payload holding a separator character still comes back intact."""
    await store.ingest_reports("n1", [rep(s, 100 + s) for s in range(1, 30)], received_at=T0)
    await store.write(lambda c: c.execute("DELETE FROM readings WHERE seq = 3"))
    one_by_one = await store.read(lambda c: c.execute(outbox._PENDING, (0, 10**6)).fetchall())
    got = await rows(store)
    assert got == one_by_one and len(got) > 29
    assert [r[0] for r in got] == sorted(r[0] for r in got)
    assert {k: p for _i, k, _t, p in got}["r/n1/3"] is None
    assert await store.read(lambda c: outbox.pending(c, got[4][0], 3)) == got[5:8]
    odd = 'x{"a":"\x1fb\x1e"}'
    await store.write(lambda c: c.execute(
        "INSERT INTO nb_outbox(key, topic, payload, t, created_at) VALUES ('g/x', 'x', ?, 0, 0)",
        (odd,)))
    last = (await rows(store))[-1]
    assert last[1:] == ("g/x", "x", odd)
