"""Log floods (issue 11): odd requests are logged once per kind per interval, whatever their
source address or path, with one summary line per interval for the rest."""

from __future__ import annotations

import logging

from gateway.coap.server import RateLimitedLog


class FakeClock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def test_flood_from_many_hosts_and_paths_is_one_line_per_kind(caplog):
    clock = FakeClock()
    badlog = RateLimitedLog(interval=60.0, clock=clock)
    caplog.set_level(logging.WARNING, logger="slgw.coap")
    for i in range(5000):  # 5,000 bad requests from 500 hosts to 5,000 paths in one interval
        clock.t += 0.01
        badlog.bad(f"10.0.{i // 10 % 50}.{i % 10}", "4.04", f"no resource /x/{i}")
        badlog.bad(f"10.1.{i // 10 % 50}.{i % 10}", "RST", "datagram is not CoAP")
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 2, lines[:5]
    assert "bad request from 10.0.0.0 answered 4.04: no resource /x/0" in lines[0]
    clock.t += 60.0
    badlog.bad("10.9.9.9", "4.04", "no resource /y")
    summary = caplog.records[-1].getMessage()
    assert len(caplog.records) == 3
    assert "4999 more of this kind from 500 host(s)" in summary, summary
    assert "no resource /x/4999" in summary and "10.0.49.9" in summary  # the last example
    assert len(badlog._seen) == 2  # memory: one entry per kind, not per host or path


def test_kinds_are_kept_apart():
    clock = FakeClock()
    badlog = RateLimitedLog(interval=60.0, clock=clock)
    assert badlog.bad("h1", "4.00", "report: bad seq 12")
    assert not badlog.bad("h2", "4.00", "report: bad seq 13")  # same kind, numbers blanked
    assert badlog.bad("h1", "4.05", "/rd takes POST (Register)")
    assert badlog.bad("h1", "4.02", "unknown critical option 9")
    assert not badlog.bad("h1", "4.02", "unknown critical option 13")


def test_one_summary_per_interval_even_when_the_flood_stops(caplog):
    clock = FakeClock()
    badlog = RateLimitedLog(interval=60.0, clock=clock)
    caplog.set_level(logging.WARNING, logger="slgw.coap")
    badlog.bad("10.0.0.1", "4.04", "no resource /a")
    for i in range(100):
        badlog.bad(f"10.0.0.{i % 7}", "4.04", f"no resource /b{i}")
    assert badlog.flush() == 0  # the interval is not over
    clock.t += 61.0
    assert badlog.flush() == 1  # no further request needed for the summary
    assert "100 more of this kind from 7 host(s)" in caplog.records[-1].getMessage()
    assert badlog.flush() == 0 and len(caplog.records) == 2
    for _ in range(5):  # the flood goes on in the next interval: counted, not logged
        badlog.bad("10.0.0.9", "4.04", "no resource /c")
    assert len(caplog.records) == 2
    clock.t += 61.0
    assert badlog.flush() == 1 and "5 more of this kind" in caplog.records[-1].getMessage()


async def test_the_summary_is_written_by_a_timer(caplog):
    import asyncio
    import time
    badlog = RateLimitedLog(interval=0.2)
    caplog.set_level(logging.WARNING, logger="slgw.coap")
    for _ in range(10):
        badlog.bad("10.0.0.1", "RST", "datagram is not CoAP")
    assert len(caplog.records) == 1
    deadline = time.monotonic() + 10
    while len(caplog.records) < 2 and time.monotonic() < deadline:
        await asyncio.sleep(0.05)  # no further datagram arrives
    assert "9 more of this kind" in caplog.records[-1].getMessage()
