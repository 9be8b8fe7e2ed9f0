"""Meter polling: one scheduler task per line, quarantine for dead meters, readings to a sink.

Owns ``MeterPoller`` (one meter: its plan, state, counters, quarantine) and ``LineScheduler``
(one task per Modbus line that polls that line's meters in due order). Decisions:

- One task per line, not per meter: an RS-485 bus is half duplex, so meters on it are
  polled one after another in order of their due time; polls are never fired at the same
  instant (field-notes §7). First polls are staggered over at most one second.
- A poll reads every planned request of the profile (``planner.plan``); it succeeds only
  if all reads do, so a reading is always consistent.
- A meter that lacks registers of its profile refuses a merged read with exception 2
  (illegal data address). The read is split in halves, recursively, down to single values;
  a value refused on its own is missing, and two halves that read fine on their own mean a
  missing address in the gap between them (a break). The poll goes on with what the meter
  has, the plan is rebuilt without the missing values and never merges across them or a
  break again, and each missing value is logged once and shown in ``status_dict``. The
  import energy register cannot be done without: refused on its own, it fails the poll.
  What is learnt lives as long as the process (re-learnt in one refused read and a few
  halves after a restart; a replaced meter or a firmware update is thus taken as it is).
- A failed poll (after the meter's retries) puts the meter in quarantine: it is probed
  with a single attempt (no retries) after ``period``, then 2x, 4x ... up to
  ``backoff_max``. A quarantined meter therefore costs its line at most one timeout per
  probe, and the other meters keep their cadence. The first good answer ends the
  quarantine and the meter returns to its period.
- Cadence: the next poll is due one period after the previous due time; a line that fell
  behind skips ahead instead of bursting.
- Nothing stops a line's loop silently: a bug in decoding or in the sink is logged with a
  traceback, counted (``internal_errors`` / ``sink_errors``), and the loop goes on.
- Readings are handed to the sink in the background (one in flight per meter), so a slow
  disk does not lengthen a bus cycle; ``LineScheduler.stop`` waits for the last ones.
  A sink failure loses no energy: the next good reading carries the cumulative register.

Readings go to an async sink ``sink(meter: MeterConfig, reading: dict)``; the reading is
``{"seq", "t", "wh", "w", "values"}`` where ``seq`` is a strictly increasing integer
(poll time in ms), ``t`` the (possibly simulated) wall time, ``wh`` the cumulative import
Wh, ``w`` the power in W (None if the profile maps none) and ``values`` every named value.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
import zlib
from collections.abc import Awaitable, Callable

from .bus import ERROR_KINDS, Bus, BusError
from .config import MeterConfig
from .planner import ReadRequest, plan, span
from .profiles import Register

log = logging.getLogger(__name__)

Sink = Callable[[MeterConfig, dict], Awaitable[None]]
COUNTERS = ("polls", "ok", *ERROR_KINDS, "decode_errors", "sink_errors", "internal_errors", "probes",
            "refused_reads")
ILLEGAL_DATA_ADDRESS = 2  # Modbus exception code: "this address does not exist here"


class MeterPoller:
    """State and one-poll logic of a meter."""

    def __init__(self, cfg: MeterConfig, bus: Bus, sink: Sink,
                 clock: Callable[[], float] = time.time) -> None:
        self.cfg = cfg
        self.bus = bus
        self.sink = sink
        self.clock = clock
        self.requests = plan(cfg.profile)
        self.missing: dict[str, Register] = {}   # values the meter refuses on their own
        self.breaks: set[str] = set()             # values a read must start at (see planner)
        self._new_missing: list[Register] = []    # learnt in this poll, to be logged once
        wh_reg, w_reg = cfg.profile.mapped("import_wh"), cfg.profile.mapped("power_w")
        self._wh_name = wh_reg.name if wh_reg else None  # config.parse_meter requires import_wh
        self._w_name = w_reg.name if w_reg else None
        self.counters = dict.fromkeys(COUNTERS, 0)
        self.status = "starting"      # starting | ok | quarantined
        self.failures = 0             # consecutive failed polls
        self.last_poll: float | None = None   # wall time of the last good poll
        self.last_error: str | None = None
        self.values: dict[str, float] = {}
        self.import_wh: float | None = None
        self.power_w: float | None = None
        self._seq = 0
        self.bus_time = 0.0           # seconds this meter has held its line, in total
        self._storing: asyncio.Task | None = None  # the reading being handed to the sink
        # stagger first polls (stable per name) over at most a second: the line scheduler
        # already serialises a bus, and a 15-min period must not mean 15 min without data
        self.next_due = time.monotonic() + min(cfg.period, 1.0) * (zlib.crc32(cfg.name.encode()) % 1000) / 1000

    @property
    def quarantined(self) -> bool:
        """True while the meter is only probed, with back-off."""
        return self.status == "quarantined"

    def backoff(self) -> float:
        """Delay before the next probe of a quarantined meter."""
        return min(self.cfg.backoff_max, self.cfg.period * 2 ** max(0, self.failures - 1))

    async def poll(self) -> bool:
        """Read every planned request, publish the reading, update state.

        Returns:
            True on a good poll. Never raises on a device or decoding fault (counted).
        """
        t0 = time.monotonic()
        try:
            return await self._poll()
        finally:
            self.bus_time += time.monotonic() - t0

    async def _poll(self) -> bool:
        probing = self.quarantined
        self.counters["polls"] += 1
        if probing:
            self.counters["probes"] += 1
        retries = 0 if probing else self.cfg.retries
        values: dict[str, float] = {}
        facts = len(self.missing) + len(self.breaks)
        try:
            for req in self.requests:
                values.update(await self._read(req, retries))
        except BusError as exc:
            self.counters[exc.kind] += 1
            self._failed(f"{exc.kind}: {exc}")
            return False
        except ValueError as exc:
            self.counters["decode_errors"] += 1
            self._failed(f"decode: {exc}")
            return False
        finally:
            if len(self.missing) + len(self.breaks) != facts:
                self._replan()
        return await self._publish(values)

    async def _read(self, req: ReadRequest, retries: int) -> dict[str, float]:
        """One planned read; a read refused with exception 2 is split (``_split``)."""
        try:
            words = await self.bus.execute(self.cfg.unit, req.function, req.address, req.count,
                                           timeout=self.cfg.timeout, retries=retries)
        except BusError as exc:
            if exc.kind != "exception" or exc.code != ILLEGAL_DATA_ADDRESS:
                raise
            return await self._split(req, retries, exc)
        return req.decode(words)

    async def _split(self, req: ReadRequest, retries: int, exc: BusError) -> dict[str, float]:
        """Read a refused read's values in two halves, learning what the meter lacks."""
        self.counters["refused_reads"] += 1
        if len(req.registers) == 1:
            reg = req.registers[0]
            if reg.name == self._wh_name:
                raise BusError("exception", f"{exc}: the meter has no '{reg.name}' register "
                               f"(fc {reg.function} {reg.address:#06x}), which the energy comes "
                               f"from; check that profile '{self.cfg.profile.name}' fits the meter",
                               exc.code) from exc
            self.missing[reg.name] = reg
            self._new_missing.append(reg)
            return {}
        half = len(req.registers) // 2
        left, right = span(req.registers[:half]), span(req.registers[half:])
        facts = len(self.missing) + len(self.breaks)
        values = await self._read(left, retries)
        values.update(await self._read(right, retries))
        if len(self.missing) + len(self.breaks) == facts:
            # both halves read fine alone: the address the meter lacks lies between them
            self.breaks.add(right.registers[0].name)
            log.warning("meter %s (%s unit %d): refuses the read fc %d %#06x+%d (exception 2) but "
                        "answers its halves %#06x+%d and %#06x+%d; reads no longer merge across "
                        "%#06x..%#06x", self.cfg.name, self.bus.key, self.cfg.unit, req.function,
                        req.address, req.count, left.address, left.count, right.address, right.count,
                        left.address + left.count, right.address)
        return values

    def _replan(self) -> None:
        self.requests = plan(self.cfg.profile, frozenset(self.missing), frozenset(self.breaks))
        if self._new_missing:
            regs, self._new_missing = self._new_missing, []
            log.warning("meter %s (%s unit %d): lacks %s of profile '%s' (exception 2, illegal data "
                        "address); polling the other values in %d read(s) without them. If the "
                        "meter should have them, check its model and firmware against the profile.",
                        self.cfg.name, self.bus.key, self.cfg.unit,
                        ", ".join(f"'{r.name}' (fc {r.function} {r.address:#06x})" for r in regs),
                        self.cfg.profile.name, len(self.requests))

    def _failed(self, why: str) -> None:
        self.failures += 1
        self.last_error = why
        if not self.quarantined:
            log.warning("meter %s (%s unit %d): poll failed (%s); quarantined, probing with back-off "
                        "up to %g s. Check wiring, power, unit id and line settings.",
                        self.cfg.name, self.bus.key, self.cfg.unit, why, self.cfg.backoff_max)
        else:
            log.debug("meter %s: probe failed (%s), next in %.1f s", self.cfg.name, why, self.backoff())
        self.status = "quarantined"

    async def _publish(self, values: dict[str, float]) -> bool:
        wh = values.get(self._wh_name) if self._wh_name else None
        if wh is None or not math.isfinite(wh) or wh < 0:
            self.counters["decode_errors"] += 1
            self._failed(f"implausible import energy {wh!r}")
            return False
        if self.quarantined:
            log.info("meter %s: answering again after %d failed poll(s); back to every %.1f s",
                     self.cfg.name, self.failures, self.cfg.period)
        self.status = "ok"
        self.failures = 0
        self.last_error = None
        self.counters["ok"] += 1
        now = self.clock()
        self._seq = max(self._seq + 1, int(now * 1000))
        w = values.get(self._w_name) if self._w_name else None
        if w is not None and not math.isfinite(w):
            w = None
        self.values, self.import_wh, self.power_w, self.last_poll = values, wh, w, now
        # the line does not wait for the disk: the reading is stored in the background, with
        # at most one reading of this meter in flight (order kept, memory bounded)
        await self.flush()
        self._storing = asyncio.create_task(
            self._store({"seq": self._seq, "t": now, "wh": wh, "w": w, "values": values}))
        return True

    async def _store(self, reading: dict) -> None:
        try:
            await self.sink(self.cfg, reading)
        except Exception:
            self.counters["sink_errors"] += 1
            log.exception("meter %s: storing the reading failed; the next poll carries the "
                          "cumulative energy, so none is lost", self.cfg.name)

    async def flush(self) -> None:
        """Wait until the last reading has been handed to the sink."""
        if self._storing is not None:
            # shielded: stopping the line must not cancel a store write half-way
            await asyncio.shield(self._storing)

    def schedule_next(self, now: float) -> None:
        """Set the next due time after a poll that started at `now` (monotonic)."""
        if self.quarantined:
            self.next_due = now + self.backoff()
            return
        self.next_due += self.cfg.period
        if self.next_due < now:
            self.next_due = now  # fell behind: skip ahead, do not burst

    def status_dict(self) -> dict:
        """The meter's state for `slgw meters` / GET /api/meters."""
        return {
            "name": self.cfg.name, "cabinet": self.cfg.cabinet, "profile": self.cfg.profile.name,
            "transport": self.cfg.transport, "bus": self.bus.key, "unit": self.cfg.unit,
            "status": self.status, "import_wh": self.import_wh, "power_w": self.power_w,
            "last_poll": self.last_poll, "last_error": self.last_error,
            "consecutive_failures": self.failures, "bus_time_s": round(self.bus_time, 3),
            "errors": dict(self.counters),
            "missing_registers": [{"name": r.name, "function": r.function, "address": r.address,
                                   "count": r.count}
                                  for r in sorted(self.missing.values(), key=lambda r: (r.function, r.address))],
        }


class LineScheduler:
    """Polls the meters of one line in due order, in one task."""

    def __init__(self, bus: Bus, pollers: list[MeterPoller]) -> None:
        self.bus = bus
        self.pollers = pollers
        self._task: asyncio.Task | None = None

    def start(self) -> None:
        """Start the line's task."""
        self._task = asyncio.create_task(self._run(), name=f"modbus {self.bus.key}")

    async def stop(self) -> None:
        """Stop the task and close the line."""
        if self._task:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None
        for p in self.pollers:
            try:  # every polled reading reaches the store before we return, unless it hangs
                await asyncio.wait_for(p.flush(), 10.0)
            except TimeoutError:
                log.error("meter %s: the store did not take the last reading within 10 s", p.cfg.name)
        self.bus.close()

    async def _run(self) -> None:
        while True:
            try:
                p = min(self.pollers, key=lambda q: q.next_due)
                wait = p.next_due - time.monotonic()
                if wait > 0:
                    await asyncio.sleep(wait)
                started = time.monotonic()
                await p.poll()
                p.schedule_next(started)
            except asyncio.CancelledError:
                raise
            except Exception:
                # a bug must not end polling: log it, count it, keep the line alive
                log.exception("modbus %s: unexpected error in the poll loop; continuing", self.bus.key)
                for q in self.pollers:
                    if q.next_due <= time.monotonic():
                        q.counters["internal_errors"] += 1
                        q.next_due = time.monotonic() + q.cfg.period
                await asyncio.sleep(0.1)
