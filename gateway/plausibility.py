"""Plausibility of a node's reports: what a broken or compromised meter may not do to a town's
figures (issue 11), checked before a Send is stored, even when the node is authenticated.

Owns ``Rules`` (the thresholds, from ``[nodes]`` in the config), ``NodeState`` (what the
gateway last accepted from a node: seq, time, energy reference, rated power), ``check_times``
and ``check_rows`` (the rules), and ``Implausible`` (a rejection: the Send is answered 4.00 and
nothing of it is stored). gateway/ingest.py keeps one NodeState per node and calls these.

The rules, each reasoned against an honest node (protocol/SPEC.md §3, firmware/node.py):
* **Energy step.** Between two reports the cumulative counter may grow by at most the node's
  rated power (its descriptor's ``/10250/0/7``, or ``max_rated_w`` while unknown) x the time
  between them x ``energy_margin``, plus ``GRACE_S`` of that power and 1 Wh of rounding. The
  step is read as gateway/energy/buckets.py reads it (``delta_of``): a counter wrap and a reset
  guess count with the energy they would add, so both have an upper bound; a small dip
  (noise) adds nothing. A backlog after days offline is allowed days of energy, since its
  first report is days after the last one.
* **Counter.** A node's ``wh`` is below 2**32 (SPEC §3.1: an integer counter, which wraps
  there): one forged ``wh = 1e15`` is refused whatever came before.
* **Sequence.** seq may run ahead of the last one by ``seq_jump_max`` plus one per second of
  report time elapsed: a node skips at most its high-water block after a power cut, and an
  outbox summary (SPEC §3.3) skips the merged reports, which took time. ``seq = 2**63 - 1``
  (which froze a node's live state) is refused. A report with a seq at or below the last
  accepted one is only accepted as a duplicate of a stored report (the node resends a pack
  whose answer it missed); a new report older than the newest one is out of order.
* **Time.** An absolute report time more than ``time_back_s`` before the node's previous
  (absolute) report is refused (a back-dated report created 1.45 million bucket rows); so is
  one more than ``time_future_s`` ahead of the gateway's clock or older than
  ``max_report_age_s``, checked only while the gateway's clock is trusted (an unsynchronised
  Raspberry Pi boots in the past and would refuse every honest node). Relative times (a node
  whose clock was not set yet, SPEC §6) are the gateway's own estimate: no time rule
  refuses them, and their energy is marked estimated (buckets.py).

* **Power.** A report's power is at most ``max_rated_w`` x ``energy_margin``: not the node's
  own rating, since a failing lamp (the faults a town wants to see) may draw more than twice
  it (the hardware-in-the-loop energy-fault scenario does). The energy across a meter
  replacement is estimated from power, so a re-basing report must also stay within its own
  rating x ``energy_margin``.
* **Counter jump.** A meter replaced by one whose counter does not start near 0 would have every
  later report refused by the energy rule. So a node whose reports keep breaking only that rule
  while agreeing among themselves (seq, time and energy steps plausible from one to the next)
  is re-based after ``rebaseline_after`` such reports: the next one is accepted, with a
  ``replacement`` meter event before it, so the energy across the jump is estimated from power
  (bounded by the power rule), never taken from the counters (gateway/ingest.py).

A node that is refused drops a single refused report (firmware/node.py): since ``wh`` is
cumulative, its next accepted report still brings the energy. Pure; no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from gateway.energy.buckets import WRAP, delta_of

GRACE_S = 300.0  # elapsed time every energy step is allowed on top of the real one
COUNTER_LIMIT = float(WRAP)  # a node's cumulative counter is a uint32 (SPEC §3.1)
SEQ_LIMIT = 1 << 32  # SPEC §3.1: seq below 2^32 (honest nodes: one per report)

REASONS = ("energy", "counter", "power", "seq", "out_of_order", "time_order", "time_future",
           "time_old")


class Implausible(ValueError):
    """A report that breaks a plausibility rule. ``reason`` is one of REASONS; the message
    names the report, the values and the limit."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass
class Rules:
    """The thresholds (docs/configuration.md, ``[nodes]``)."""

    max_rated_w: float = 2000.0
    energy_margin: float = 2.0
    seq_jump_max: int = 1000
    time_back_s: float = 900.0
    time_future_s: float = 600.0
    max_report_age_s: float = 31 * 86400.0
    rebaseline_after: int = 3

    @classmethod
    def from_config(cls, nodes: Any) -> Rules:
        """From a gateway.config ``[nodes]`` section."""
        return cls(max_rated_w=nodes.max_rated_w, energy_margin=nodes.energy_margin,
                   seq_jump_max=nodes.seq_jump_max, time_back_s=nodes.time_back_s,
                   time_future_s=nodes.time_future_s, max_report_age_s=nodes.max_report_age_s,
                   rebaseline_after=nodes.rebaseline_after)


class NodeState:
    """What was last accepted from one node: newest seq and its time (and whether that time
    was the gateway's estimate), the energy reference (``delta_of`` skips noise dips, so this
    is the last reading it accepted) and the rated power. None = nothing yet."""

    __slots__ = ("seq", "t", "rel", "wh", "wh_t", "rated_w")

    def __init__(self, seq: int | None = None, t: float | None = None, rel: bool = False,
                 wh: float | None = None, rated_w: float | None = None) -> None:
        self.seq, self.t, self.rel, self.wh, self.wh_t, self.rated_w = seq, t, rel, wh, t, rated_w

    def copy(self) -> NodeState:
        c = NodeState(self.seq, self.t, self.rel, self.wh, self.rated_w)
        c.wh_t = self.wh_t
        return c


def check_times(reports: list[dict], rules: Rules, now: float) -> None:
    """The rules against the gateway's clock, on the parser's reports (before the store
    re-times a time it finds implausible). Call only while the clock is trusted.

    Raises Implausible.
    """
    hi, lo = now + rules.time_future_s, now - rules.max_report_age_s
    for r in reports:
        t = r.get("t")
        if r.get("rel_time") or type(t) not in (int, float) or t < 0:
            continue
        if t > hi:
            raise Implausible("time_future", f"report seq {r.get('seq')}: time {t:.0f} is "
                              f"{t - now:.0f} s ahead of the gateway's clock "
                              f"(limit {rules.time_future_s:.0f} s)")
        if t < lo:
            raise Implausible("time_old", f"report seq {r.get('seq')}: time {t:.0f} is "
                              f"{(now - t) / 86400:.1f} days old (limit "
                              f"{rules.max_report_age_s / 86400:.1f} days)")


def check_rows(state: NodeState, rows: list[tuple], rules: Rules, *, energy: bool = True
               ) -> tuple[list[tuple], list[int], NodeState]:
    """Check validated readings rows (``(seq, t, wh, w, level, on_time, faults, rel, recv)``,
    see gateway/store/readings.py) of one node against ``state`` and each other.

    Returns ``(rows_in_seq_order, old_seqs, new_state)``: ``old_seqs`` are the seqs at or
    below the state's, which are acceptable only as duplicates of stored reports (the caller
    checks); ``new_state`` is the state after the rows. ``state`` is not changed.
    ``energy=False`` skips the energy rule (a counter that jumped, see ``Ingestor``).
    Raises Implausible for the first row that breaks a rule.
    """
    rated = state.rated_w if state.rated_w and state.rated_w > 0 else rules.max_rated_w
    per_s = rated * rules.energy_margin / 3600.0
    w_max = rules.max_rated_w * rules.energy_margin  # a failing lamp may draw twice its rating
    st = state.copy()
    old: list[int] = []
    out = sorted(rows, key=lambda r: r[0]) if len(rows) > 1 else rows
    last_seq = None
    for row in out:
        seq, t, wh, rel = row[0], row[1], row[2], row[7]
        if seq == last_seq:
            raise Implausible("seq", f"report seq {seq} given twice in one Send")
        last_seq = seq
        if wh >= COUNTER_LIMIT:
            raise Implausible("counter", f"report seq {seq}: energy counter {wh:.0f} Wh is "
                              "beyond a 32-bit counter")
        if seq >= SEQ_LIMIT:
            # Also the first report of a node, which has no previous seq to bound its jump:
            # one such report would make every genuine later one "out of order".
            raise Implausible("seq", f"report seq {seq} is beyond 2^32 (a node reporting once a "
                              "second would take 136 years to get there)")
        w = row[3]
        if w is not None and w > w_max:
            raise Implausible("power", f"report seq {seq}: power {w:g} W is more than "
                              f"{rules.max_rated_w:.0f} W x {rules.energy_margin:g}")
        if st.seq is not None and seq <= st.seq:
            old.append(seq)
            continue
        if st.seq is not None:
            elapsed = t - st.t
            if not rel and not st.rel and elapsed < -rules.time_back_s:
                raise Implausible("time_order", f"report seq {seq}: time {t:.0f} is "
                                  f"{-elapsed:.0f} s before the previous report (seq {st.seq}; "
                                  f"limit {rules.time_back_s:.0f} s)")
            jump = seq - st.seq
            if jump > rules.seq_jump_max + max(0.0, elapsed):
                raise Implausible("seq", f"report seq {seq} is {jump} ahead of the last one "
                                  f"({st.seq}) after {max(0.0, elapsed):.0f} s (limit "
                                  f"{rules.seq_jump_max} + 1 per s)")
        if st.wh is not None and energy:
            kind, d = delta_of(st.wh, wh)
            if kind == "noise":
                st.seq, st.t, st.rel = seq, t, bool(rel)
                continue
            span = max(0.0, t - st.wh_t)
            allowed = per_s * (span + GRACE_S) + 1.0
            if d > allowed:
                what = "a counter wrap of" if kind == "wrap" else (
                    "a counter reset to" if kind == "reset" else "an energy step of")
                raise Implausible("energy", f"report seq {seq}: {what} {d:.0f} Wh in {span:.0f} s "
                                  f"is more than {rated:.0f} W x {rules.energy_margin:g} allows "
                                  f"({allowed:.0f} Wh)")
        st.seq, st.t, st.rel, st.wh, st.wh_t = seq, t, bool(rel), wh, t
    return out, old, st
