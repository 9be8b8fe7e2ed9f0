"""Glue from a node's Send (SPEC §3, §4) to the store: parse, validate, store durably, and say
what the CoAP layer must answer.

Owns ``Ingestor`` (one per service; remembers store health for the 5.03 retry delay and
rate-limits its error logs) and ``Answer``. The CoAP resource for ``/dp`` checks the endpoint
is registered (4.04 otherwise), then calls ``Ingestor.handle_payload`` and sends
``answer.coap_code`` with ``answer.max_age`` and ``answer.diagnostic``.

Answers (SPEC §3, §8):
- 2.04 once every report of the pack is durable (duplicates count as stored);
- 4.00 for a payload that does not parse, a report with a bad value, or one that breaks a
  plausibility rule (gateway/plausibility.py; counted, logged, recorded on the node's row):
  nothing is stored;
- 5.03 with Max-Age when the store cannot write (disk full, I/O error): nothing of the pack
  was acknowledged, the node keeps it and retries; the delay doubles from 5 s to 300 s while
  the store keeps failing and returns to 5 s after the first success;
- 5.00 for anything unexpected (logged with its traceback).
A descriptor pack (no report) updates the node's metadata and is answered 2.04.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any

from protocol import lwm2m, senml_json
from protocol.report_parse import parse_records, parse_send

from .plausibility import REASONS, Implausible, NodeState, Rules, check_rows, check_times
from .store import Store, StoreUnavailable, validate_report

log = logging.getLogger(__name__)

CHANGED = (2, 4)
BAD_REQUEST = (4, 0)
SERVICE_UNAVAILABLE = (5, 3)
INTERNAL_SERVER_ERROR = (5, 0)

# Descriptor record name -> (nodes column, converter). SPEC §4.
_P = lwm2m.format_path
DESCRIPTOR_COLUMNS = {
    _P(lwm2m.OBJ_DEVICE, 0, lwm2m.RES_FIRMWARE_VERSION): ("fw", str),
    _P(lwm2m.OBJ_LOCATION, 0, lwm2m.RES_LATITUDE): ("lat", float),
    _P(lwm2m.OBJ_LOCATION, 0, lwm2m.RES_LONGITUDE): ("lon", float),
    _P(lwm2m.OBJ_STREETLIGHT, 0, lwm2m.RES_GROUP): ("grp", str),
    _P(lwm2m.OBJ_STREETLIGHT, 0, lwm2m.RES_CABINET): ("cabinet", str),
    _P(lwm2m.OBJ_STREETLIGHT, 0, lwm2m.RES_RATED_POWER): ("rated_w", float),
    _P(lwm2m.OBJ_STREETLIGHT, 0, lwm2m.RES_DEFAULT_LEVEL): ("default_level", int),
    _P(lwm2m.OBJ_DEVICE, 0, lwm2m.RES_TIMEZONE): ("tz", str),
}


def parse_payload(payload: bytes, now: float, content_format: int = lwm2m.CF_SENML_CBOR
                  ) -> tuple[list[dict], dict[str, Any]]:
    """Parse a Send with the protocol's one validated parser (issue 16): SenML-CBOR by
    ``protocol.report_parse.parse_send`` (its lane reads the node's own layout fast, anything
    else takes its general path), SenML-JSON (110, LwM2M 1.1 Send) decoded by
    protocol.senml_json into the same records and checked by the same ``parse_records``.

    Returns ``(reports, attrs)``. Raises ValueError (CBORError, SenMLError) for a pack that does
    not parse or holds a bad value (answer 4.00).
    """
    if content_format == lwm2m.CF_SENML_JSON:
        return parse_records(senml_json.decode(payload), now)
    return parse_send(payload, now)


@dataclass
class Answer:
    """What to answer a Send: ``code`` as (class, detail), e.g. (2, 4)."""

    code: tuple[int, int]
    max_age: int | None = None
    diagnostic: str = ""
    stored: int = 0
    duplicates: int = 0
    descriptor: dict[str, Any] = field(default_factory=dict)
    refused: str | None = None  # the plausibility rule that refused the Send (plausibility.REASONS)

    @property
    def coap_code(self) -> int:
        """The code as one integer (class << 5 | detail), as aiocoap's ``Code(int)`` takes it."""
        return self.code[0] << 5 | self.code[1]

    @property
    def code_str(self) -> str:
        return f"{self.code[0]}.{self.code[1]:02d}"


def descriptor_updates(attrs: dict[str, Any], max_rated_w: float = 100000.0) -> dict[str, Any]:
    """Map descriptor attributes (resolved SenML name -> value) to nodes columns.

    Raises ValueError for a value of the wrong type or out of range (a rated power must be in
    (0, ``max_rated_w``]); unknown names are ignored.
    """
    out: dict[str, Any] = {}
    for name, val in attrs.items():
        spec = DESCRIPTOR_COLUMNS.get(name)
        if spec is None:
            continue
        col, conv = spec
        if conv is str:
            if not isinstance(val, str) or len(val) > 64:
                raise ValueError(f"descriptor {name} must be a string of at most 64 characters")
        elif isinstance(val, bool) or not isinstance(val, int | float):
            raise ValueError(f"descriptor {name} must be a number")
        v = conv(val)
        if col == "lat" and not -90 <= v <= 90 or col == "lon" and not -180 <= v <= 180:
            raise ValueError(f"descriptor {name} out of range")
        if col == "rated_w" and not 0 < v <= max_rated_w:
            raise ValueError(f"descriptor rated power {v:g} W not in (0, {max_rated_w:g}]")
        if col == "default_level" and not 0 <= v <= 100:
            raise ValueError(f"descriptor {name} out of range")
        out[col] = v
    return out


class Ingestor:
    """Turns Sends into durable readings; one per service.

    ``rules`` (gateway/plausibility.py) are checked on every node's reports against what was
    last accepted from it (one NodeState per node, loaded from the nodes table on its first
    Send, updated as packs are accepted); ``clock`` says whether the checks against the
    gateway's clock apply (``clock.trusted()``; no clock: they do not).
    """

    MIN_RETRY_S = 5
    MAX_RETRY_S = 300
    LOG_EVERY_S = 60.0

    def __init__(self, store: Store, *, kind: str = "node", rules: Rules | None = None,
                 clock: Any = None) -> None:
        self.store = store
        self.kind = kind
        self.rules = rules or Rules()
        self.clock = clock
        self._retry = 0
        self._last_log = 0.0
        self.failures = 0  # Sends answered 5.03 since start (exposed for status/metrics)
        self.implausible = dict.fromkeys(REASONS, 0)  # Sends refused, by reason (API health)
        self._states: dict[str, NodeState] = {}
        # endpoint -> [state after its refused reports, how many]: a counter that jumped
        self._jumps: dict[str, list] = {}
        self._implausible_log: dict[str, list] = {}  # endpoint -> [last logged (mono), suppressed]

    async def handle_payload(self, endpoint: str, payload: bytes, *, now: float) -> Answer:
        """Parse a Send payload from ``endpoint`` received at ``now`` and store it."""
        try:
            reports, attrs = parse_payload(payload, now)
        except ValueError as e:  # CBORError, SenMLError are ValueErrors
            return Answer(BAD_REQUEST, diagnostic=_short(str(e)))
        if not reports:
            return await self.handle_descriptor(endpoint, attrs)
        return await self.handle_reports(endpoint, reports, received_at=now)

    async def handle_reports(self, endpoint: str, reports: list[dict], *,
                             received_at: float) -> Answer:
        """Store already-decoded reports (``parse_send`` dicts) of one endpoint.

        A report that breaks a plausibility rule makes the whole Send 4.00: nothing of it is
        stored, the refusal is counted (``implausible``, the node's row) and logged.
        """
        try:
            rows = [validate_report(r, received_at) for r in reports]
            if self.clock is not None and self.clock.trusted():
                check_times(reports, self.rules, received_at)
            state = self._states.get(endpoint)
            if state is None:
                state = await self._load_state(endpoint)
            jumped = None
            try:
                rows, old, new_state = check_rows(state, rows, self.rules)
            except Implausible as e:
                if e.reason != "energy" or not self.rules.rebaseline_after:
                    raise
                rows, old, new_state, jumped = self._counter_jump(endpoint, state, rows, e)
            self._jumps.pop(endpoint, None)
            if old:
                await self._check_duplicates(endpoint, old, state.seq)
            if jumped is not None:
                await self._rebase(endpoint, state, rows, jumped)
        except Implausible as e:
            return await self._refuse(endpoint, e, received_at)
        except StoreUnavailable as e:
            return self._unavailable(e)
        except ValueError as e:
            return Answer(BAD_REQUEST, diagnostic=_short(str(e)))
        except Exception:
            log.exception("unexpected failure checking %d report(s) from %s", len(reports), endpoint)
            return Answer(INTERNAL_SERVER_ERROR, diagnostic="internal error")
        # Taken now, not after the commit: a second Send of the node that arrives meanwhile is
        # checked against this one. Dropped again if the store fails (reloaded next time).
        self._states[endpoint] = new_state
        try:
            res = await self.store.ingest_rows(endpoint, rows, kind=self.kind, now=received_at)
        except StoreUnavailable as e:
            self._states.pop(endpoint, None)
            return self._unavailable(e)
        except Exception:
            self._states.pop(endpoint, None)
            log.exception("unexpected failure storing %d report(s) from %s", len(reports), endpoint)
            return Answer(INTERNAL_SERVER_ERROR, diagnostic="internal error")
        self._ok()
        return Answer(CHANGED, stored=res.stored, duplicates=res.duplicates)

    def _counter_jump(self, endpoint: str, state: NodeState, rows: list[tuple],
                      e: Implausible) -> tuple[list[tuple], list[int], NodeState, int]:
        """Rows refused by the energy rule alone: accept them if they continue a chain of at
        least ``rebaseline_after`` refused reports that agree among themselves (a replaced
        meter), else remember them as (the start or the continuation of) such a chain and
        raise ``e``. Returns check_rows' result and the chain's length."""
        chain = self._jumps.get(endpoint)
        if chain is not None:
            try:
                out, old, st = check_rows(chain[0], rows, self.rules)
            except Implausible:
                old = [None]
            rated = state.rated_w if state.rated_w and state.rated_w > 0 else self.rules.max_rated_w
            w = out[0][3] if not old else None
            if not old:
                # the energy across the jump is estimated from this report's power: it must be
                # within the node's own rating before it stands for a new meter
                if chain[1] >= self.rules.rebaseline_after and (
                        w is None or w <= rated * self.rules.energy_margin):
                    return out, [], st, chain[1]
                self._jumps[endpoint] = [st, chain[1] + len(out)]
                raise e
        # a new chain: in order after the stored state (all but energy), and plausible
        # among themselves (energy too, from the first of them)
        try:
            out, old, _st = check_rows(state, rows, self.rules, energy=False)
            _out, _old, st = check_rows(NodeState(rated_w=state.rated_w), out, self.rules)
        except Implausible:
            self._jumps.pop(endpoint, None)
            raise e from None
        if old:
            self._jumps.pop(endpoint, None)
            raise e
        if len(self._jumps) > 10000:
            self._jumps.clear()
        self._jumps[endpoint] = [st, len(out)]
        raise e

    async def _rebase(self, endpoint: str, state: NodeState, rows: list[tuple], n: int) -> None:
        """Record the meter replacement that a counter jump stands for, before its rows."""
        t1 = rows[0][1]
        note = (f"automatic: the counter jumped from {state.wh} Wh to {rows[0][2]:.0f} Wh and "
                f"{n} refused reports agreed with the new counter")
        await self.store.add_meter_event(endpoint, t1, "replacement", note)
        log.warning("node %s: energy counter jumped from %s Wh to %.0f Wh and stayed consistent "
                    "for %d refused reports: accepted as a meter replacement (event recorded); "
                    "the energy across the jump is estimated from power, not from the counters",
                    endpoint, state.wh, rows[0][2], n)

    async def _load_state(self, endpoint: str) -> NodeState:
        """The node's last accepted report and rated power, from the nodes table."""
        def q(conn: Any) -> tuple | None:
            return conn.execute(
                "SELECT n.last_seq, n.last_report, r.rel_time, n.wh, n.rated_w FROM nodes n "
                "LEFT JOIN readings r ON r.source = n.id AND r.seq = n.last_seq WHERE n.id = ?",
                (endpoint,)).fetchone()

        row = await self.store.read(q)
        if row is None:
            return NodeState()
        seq, t, rel, wh, rated = row
        if seq is None:
            return NodeState(rated_w=rated)
        return NodeState(seq, t, bool(rel), wh, rated)

    async def _check_duplicates(self, endpoint: str, seqs: list[int], last: int | None) -> None:
        """Reports at or below the last accepted seq must be stored already (a resent pack)."""
        def q(conn: Any) -> set[int]:
            marks = ",".join("?" * len(seqs))
            return {r[0] for r in conn.execute(
                f"SELECT seq FROM readings WHERE source = ? AND seq IN ({marks})",
                (endpoint, *seqs))}

        stored = await self.store.read(q)
        for seq in seqs:
            if seq not in stored:
                raise Implausible("out_of_order", f"report seq {seq} is older than the node's "
                                  f"newest report (seq {last}) and was never stored")

    async def _refuse(self, endpoint: str, e: Implausible, now: float) -> Answer:
        """Count, record on the node's row and log (once a minute per node) a refused Send."""
        self.implausible[e.reason] = self.implausible.get(e.reason, 0) + 1
        msg = str(e)

        def fn(conn: Any) -> None:
            conn.execute("UPDATE nodes SET implausible = implausible + 1, implausible_reason = ?,"
                         " implausible_at = ? WHERE id = ?", (msg, now, endpoint))

        try:
            await self.store.write(fn)
        except Exception as exc:  # the count on the row is a courtesy; the refusal stands
            log.debug("could not record the refusal on %s's row: %s", endpoint, exc)
        mono = time.monotonic()
        entry = self._implausible_log.get(endpoint)
        if entry is not None and mono - entry[0] < self.LOG_EVERY_S:
            entry[1] += 1
        else:
            extra = f" ({entry[1]} more refused in the last minute)" if entry and entry[1] else ""
            if len(self._implausible_log) > 10000:
                self._implausible_log.clear()
            self._implausible_log[endpoint] = [mono, 0]
            log.warning("node %s: Send refused (4.00), nothing stored: %s%s. A broken meter or "
                        "clock, or a forged report; `slgw node show %s` counts them. A "
                        "replaced meter is accepted by itself after [nodes] rebaseline_after "
                        "consistent reports", endpoint, msg, extra, endpoint)
        return Answer(BAD_REQUEST, diagnostic=_short(f"implausible {e.reason}: {msg}"),
                      refused=e.reason)

    async def handle_descriptor(self, endpoint: str, attrs: dict[str, Any]) -> Answer:
        """Upsert a node's metadata from a descriptor Send (SPEC §4). A changed rated power
        (which bounds the node's energy steps) is logged."""
        try:
            cols = descriptor_updates(attrs, self.rules.max_rated_w)
        except ValueError as e:
            return Answer(BAD_REQUEST, diagnostic=_short(str(e)))
        if cols:
            from .store import ensure_source

            def fn(conn):
                ensure_source(conn, endpoint, self.kind, time.time())
                old = conn.execute("SELECT rated_w FROM nodes WHERE id = ?", (endpoint,)).fetchone()
                sets = ", ".join(f"{c} = ?" for c in cols)
                conn.execute(f"UPDATE nodes SET {sets} WHERE id = ?", (*cols.values(), endpoint))
                return old[0] if old else None

            try:
                old_rated = await self.store.write(fn)
            except StoreUnavailable as e:
                return self._unavailable(e)
            self._ok()
            rated = cols.get("rated_w")
            if rated is not None:
                if old_rated is not None and old_rated != rated:
                    log.warning("node %s: rated power changed from %g W to %g W (its energy "
                                "steps are now checked against %g W)", endpoint, old_rated, rated,
                                rated)
                state = self._states.get(endpoint)
                if state is not None:
                    state.rated_w = rated
        return Answer(CHANGED, descriptor=cols)

    def _unavailable(self, e: Exception) -> Answer:
        self.failures += 1
        self._retry = min(self.MAX_RETRY_S, max(self.MIN_RETRY_S, self._retry * 2))
        mono = time.monotonic()
        if mono - self._last_log >= self.LOG_EVERY_S:
            self._last_log = mono
            log.error("cannot store reports, answering 5.03 (retry in %d s): %s", self._retry, e)
        return Answer(SERVICE_UNAVAILABLE, max_age=self._retry, diagnostic="store unavailable")

    def _ok(self) -> None:
        if self._retry:
            log.warning("store writable again after %d refused Send(s)", self.failures)
        self._retry = 0


def _short(msg: str) -> str:
    """Diagnostic payloads are at most 64 bytes (SPEC §8)."""
    b = msg.encode("utf-8")[:64]
    return b.decode("utf-8", "ignore")
