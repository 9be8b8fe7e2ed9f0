"""From cumulative meter readings to 15-minute energy buckets: pure functions, no SQL.

Rules (field-notes §5; decisions written down in docs/energy.md):
- Buckets are UTC, half-open ``[start, start + 900)``; ``start`` is a multiple of 900.
- Energy is the difference of the cumulative Wh between consecutive readings in the source's
  own order (``seq``: the counter grows in that order whatever the node's clock did). A delta
  is spread over ``[t0, t1)`` in proportion to time, so energy is conserved across bucket
  edges and gaps (over at most the last ``MAX_SPREAD_S`` of a longer gap). Two readings with
  the same ``t`` put their delta in the bucket holding ``t``; a clock that stepped back puts
  the delta at the later report's time (estimated).
- A reading below 0.9 x the previous one starts a new meter cycle (a reset): the delta is the
  new reading itself (the counter restarted from 0), marked estimated since the moment of the
  reset is unknown. An integer counter within ``WRAP_ZONE`` below 2**32 that comes back below
  ``WRAP_ZONE`` wrapped: the delta is taken modulo 2**32, so a wrap adds less than
  2 x ``WRAP_ZONE`` (a reading at or above 2**32 never wraps: its "wrap" would be negative
  energy). A smaller dip is noise: that reading is skipped and the next one is
  compared with the last accepted one (nothing is counted twice when it recovers).
- An explicit ``replacement`` event between two readings: the old and new counters are
  unrelated, so the interval gets the power integral (trapezoid of ``w``) marked estimated,
  or nothing (missing) when power is unknown. A ``reset`` event: the delta is the new reading.
- Quality of a delta: ``measured`` when both readings have node time and are at most
  ``MEASURED_MAX_GAP_S`` apart; ``interpolated`` when spread over a longer gap; ``estimated``
  when a reading's time was resolved by the gateway (relative time) or the energy came from a
  reset or the power integral. A bucket takes the worst quality of what fell into it; a
  ``missing`` interval mixed with known energy makes the bucket ``estimated``.
"""

from __future__ import annotations

import math
from bisect import bisect_right
from collections.abc import Iterable, Iterator

BUCKET_S = 900
MEASURED_MAX_GAP_S = 1800.0  # two buckets: up to 30-minute report periods count as measured
RESET_RATIO = 0.9
WRAP = 2**32
WRAP_ZONE = 2**24  # a counter within this of 2**32 (16.8 MWh) that restarts below it has wrapped
# One interval spreads over at most this span (the last MAX_SPREAD_S before its later
# reading): one reading creates at most MAX_SPREAD_S / BUCKET_S + 1 bucket rows, whatever its
# time (a back-dated report once made 1.45 million rows from 12 datagrams).
MAX_SPREAD_S = 35 * 86400

MEASURED, INTERPOLATED, ESTIMATED, MISSING = 0, 1, 2, 3
QUALITY_NAMES = ("measured", "interpolated", "estimated", "missing")
QUALITY_RANK = {n: i for i, n in enumerate(QUALITY_NAMES)}


def floor_bucket(t: float) -> int:
    """Start of the bucket holding ``t``."""
    return int(math.floor(t / BUCKET_S)) * BUCKET_S


def delta_of(prev_wh: float, wh: float) -> tuple[str, float]:
    """Classify the step between two accepted cumulative readings.

    Returns ``("delta", d)``, ``("wrap", d)``, ``("reset", d)`` or ``("noise", 0.0)``.
    """
    if wh >= prev_wh:
        return "delta", wh - prev_wh
    if WRAP - WRAP_ZONE <= prev_wh < WRAP and wh < WRAP_ZONE and float(prev_wh).is_integer():
        return "wrap", wh + WRAP - prev_wh
    if wh < RESET_RATIO * prev_wh:
        return "reset", wh
    return "noise", 0.0


def intervals(readings: Iterable[tuple], events: Iterable[tuple] = ()) -> Iterator[tuple]:
    """Turn readings into energy intervals.

    ``readings``: ``(t, wh, w, rel_time)`` in the source's own report order (by seq: the
    cumulative counter grows in that order whatever the clock did). Time normally grows with
    it; after a clock correction it may step back: that delta is put at the later report's
    time, estimated, never taken as a meter reset.
    ``events``: ``(t, kind)`` with kind ``replacement`` or ``reset``, any order; an event
    applies to the pair of readings around it (``t0 < event <= t1``).
    Yields ``(t0, t1, wh, quality_rank)`` for consecutive accepted readings.
    """
    evs = sorted(events)
    ev_t = [e[0] for e in evs]
    prev = None
    for r in readings:
        if prev is None:
            prev = r
            continue
        t, wh, w, rel = r
        pt, pwh, pw, prel = prev
        backwards = t < pt
        t0 = t if backwards else pt
        kinds = () if backwards else [k for _t, k in evs[bisect_right(ev_t, pt):bisect_right(ev_t, t)]]
        if "replacement" in kinds:
            if w is not None and pw is not None:
                yield pt, t, max(0.0, (w + pw) / 2 * (t - pt) / 3600.0), ESTIMATED
            else:
                yield pt, t, 0.0, MISSING
            prev = r
            continue
        if "reset" in kinds:
            yield pt, t, wh, ESTIMATED
            prev = r
            continue
        kind, d = delta_of(pwh, wh)
        if kind == "noise":
            continue  # keep the last accepted reading as the reference
        if kind == "reset" or backwards or rel or prel:
            q = ESTIMATED
        elif t - pt <= MEASURED_MAX_GAP_S:
            q = MEASURED
        else:
            q = INTERPOLATED
        yield t0, t, d, q
        prev = r


def spread(iv: Iterable[tuple], lo: int | None = None, hi: int | None = None) -> dict[int, list]:
    """Split intervals into buckets in proportion to time.

    Returns ``{bucket_start: [wh, worst_known_rank, has_missing, has_known]}``, restricted to
    buckets in ``[lo, hi)`` when given.
    """
    out: dict[int, list] = {}

    def add(b: int, wh: float, q: int) -> None:
        if lo is not None and b < lo or hi is not None and b >= hi:
            return
        cell = out.get(b)
        if cell is None:
            cell = out[b] = [0.0, -1, False, False]
        cell[0] += wh
        if q == MISSING:
            cell[2] = True
        else:
            cell[3] = True
            if q > cell[1]:
                cell[1] = q

    for t0, t1, wh, q in iv:
        if t1 <= t0:
            add(floor_bucket(t0), wh, q)
            continue
        if t1 - t0 > MAX_SPREAD_S:  # energy conserved, put in the span's last MAX_SPREAD_S
            t0 = t1 - MAX_SPREAD_S
        span = t1 - t0
        b = floor_bucket(t0)
        while b < t1:
            a, e = max(b, t0), min(b + BUCKET_S, t1)
            if e > a:
                add(b, wh * (e - a) / span, q)
            b += BUCKET_S
    return out


def combine_quality(known_max: int | None, any_missing: bool) -> int:
    """The quality rank of a sum: the worst known quality; missing parts next to known energy
    make it at least estimated; nothing known is missing. (Buckets, roll-ups and queries.)"""
    if known_max is None:
        return MISSING
    return max(known_max, ESTIMATED) if any_missing else known_max


def bucket_quality(cell: list) -> int:
    """The rank of a bucket built by ``spread``."""
    _wh, worst, has_missing, has_known = cell
    return combine_quality(worst if has_known else None, has_missing)


def buckets_from_readings(readings: Iterable[tuple], events: Iterable[tuple] = ()
                          ) -> dict[int, tuple[float, str]]:
    """Convenience for tests and tools: ``{start: (wh, quality_name)}`` over all readings."""
    cells = spread(intervals(readings, events))
    return {b: (c[0], QUALITY_NAMES[bucket_quality(c)]) for b, c in sorted(cells.items())}
