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
import math
import re
import time
from dataclasses import dataclass, field
from typing import Any

import cbor2

from protocol import lwm2m, senml_json
from protocol.report import parse_send
from protocol.report_parse import parse_records
from protocol.senml import REL_TIME_LIMIT

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


# The SPEC §3.1 layout of one report as the node encodes it: (base name or None, name) of
# its records, the first carrying the base time; the fault record (second) is left out when
# the node has no fault.
_BN_SL = _P(lwm2m.OBJ_STREETLIGHT, 0) + "/"
_BN_LIGHT = _P(lwm2m.OBJ_LIGHT, 0) + "/"
_BN_POWER = _P(lwm2m.OBJ_POWER, 0) + "/"
_SEQ_REC = (_BN_SL, str(lwm2m.RES_SEQ))
_FAULT_REC = (None, str(lwm2m.RES_FAULTS))
_TAIL = ((_BN_LIGHT, str(lwm2m.RES_CUMULATIVE_ENERGY)), (None, str(lwm2m.RES_DIMMER)),
         (None, str(lwm2m.RES_ON_TIME)), (_BN_POWER, str(lwm2m.RES_ACTIVE_POWER)))
_SEQ_LIMIT = 1 << 63


def _fast_value(rec: Any, bn: str | None, n: str, first: bool = False) -> int | float | None:
    """The value of one record of the node's own layout, or None if it is anything else."""
    if type(rec) is not dict or rec.get(0) != n or rec.get(-2) != bn:
        return None
    if len(rec) != (2 if bn is None else 3) + first:
        return None
    v = rec.get(2)
    if type(v) not in (int, float) or not math.isfinite(v):
        return None
    return v


def _cstr(text: str) -> bytes:
    """The CBOR encoding of a short text string (under 24 bytes), escaped for a regex."""
    b = text.encode()
    return re.escape(bytes((0x60 + len(b),)) + b)


# The node's own encoding of one report, byte for byte (protocol.report.encode_reports: map
# keys in the order 0 n, 2 v, -2 bn, -3 bt), with the values left open: an unsigned integer
# (seq, faults) or any CBOR integer or float. Every value encoding is self-delimiting by its
# first byte, so the pattern is unambiguous. Matching it is a C regex scan over the datagram
# instead of building six dicts per report.
_UINT = rb"([\x00-\x17]|\x18.|\x19..|\x1a....|\x1b........)"
_NUM = (rb"([\x00-\x17\x20-\x37]|[\x18\x38].|[\x19\x39\xf9]..|[\x1a\x3a\xfa]...."
        rb"|[\x1b\x3b\xfb]........)")
_REPORT_RE = re.compile(
    b"\xa4\x00" + _cstr(_SEQ_REC[1]) + b"\x02" + _UINT + b"\x21" + _cstr(_BN_SL)
    + b"\x22" + _NUM
    + b"(?:\xa2\x00" + _cstr(_FAULT_REC[1]) + b"\x02" + _UINT + b")?"
    + b"\xa3\x00" + _cstr(_TAIL[0][1]) + b"\x02" + _NUM + b"\x21" + _cstr(_BN_LIGHT)
    + b"\xa2\x00" + _cstr(_TAIL[1][1]) + b"\x02" + _NUM
    + b"\xa2\x00" + _cstr(_TAIL[2][1]) + b"\x02" + _NUM
    + b"\xa3\x00" + _cstr(_TAIL[3][1]) + b"\x02" + _NUM + b"\x21" + _cstr(_BN_POWER),
    re.DOTALL)


def _template_parse_reports(data: bytes) -> list[dict] | None:
    """The node's own byte layout (see _REPORT_RE): all values decoded by ONE cbor2 call."""
    if not data:
        return None
    b0 = data[0]
    if 0x80 <= b0 <= 0x97:
        n, pos = b0 - 0x80, 1
    elif b0 == 0x98 and len(data) > 1:
        n, pos = data[1], 2
    elif b0 == 0x99 and len(data) > 2:
        n, pos = data[1] << 8 | data[2], 3
    else:
        return None
    end = len(data)
    match = _REPORT_RE.match
    parts = [b"\x9f"]
    records = 0
    while pos < end:
        m = match(data, pos)
        if m is None:
            return None
        g = m.groups()
        if g[2] is None:
            parts += (g[0], g[1], b"\x00", *g[3:])  # no fault record: faults 0
            records += 5
        else:
            parts += g
            records += 6
        pos = m.end()
    if records != n or not records:
        return None
    parts.append(b"\xff")
    try:
        vals = cbor2.loads(b"".join(parts))
    except Exception:
        return None
    out = []
    for k in range(0, len(vals), 7):
        seq, t, faults, wh, level, on_time, w = vals[k:k + 7]
        # x - x == 0 is false exactly for inf and nan (ints pass)
        if (seq >= _SEQ_LIMIT or faults >= _SEQ_LIMIT or t - t != 0 or t < REL_TIME_LIMIT
                or wh - wh != 0 or wh < 0 or on_time - on_time != 0 or on_time < 0
                or w - w != 0 or not 0 <= level <= 100):
            return None
        out.append({"seq": seq, "t": t, "wh": wh, "w": w, "level": level, "on_time": on_time,
                    "faults": faults, "rel_time": False})
    return out


def fast_parse_reports(data: bytes) -> list[dict] | None:
    """Decode a Send in exactly the node's own layout (SPEC §3.1 records, absolute time)
    with C code (a regex over the node's byte layout, then the ``cbor2`` decoder); None for
    anything else, which then goes to the authoritative ``protocol.report.parse_send`` (same
    result, about 10x slower in pure Python).

    Only values that parse_send would accept are returned; any doubt gives None. Known
    leniency: cbor2 accepts indefinite-length items, non-minimal integer heads and keeps the
    last of duplicate map keys, which protocol.cbor rejects; none can change an unambiguous
    value.
    """
    out = _template_parse_reports(data)
    if out is not None:
        return out
    return _dict_parse_reports(data)


def _dict_parse_reports(data: bytes) -> list[dict] | None:
    """The node's records in any key order or encoding, decoded to dicts by cbor2."""
    try:
        recs = cbor2.loads(data)
    except Exception:
        return None
    if type(recs) is not list or not recs:
        return None
    out = []
    i, end = 0, len(recs)
    while i < end:
        seq = _fast_value(recs[i], *_SEQ_REC, first=True)
        if seq is None:
            return None
        t = recs[i].get(-3)
        i += 1
        faults = 0
        if i < end and type(recs[i]) is dict and recs[i].get(0) == _FAULT_REC[1]:
            faults = _fast_value(recs[i], *_FAULT_REC)
            if faults is None:
                return None
            i += 1
        if i + len(_TAIL) > end:
            return None
        vals = [_fast_value(recs[i + k], bn, n) for k, (bn, n) in enumerate(_TAIL)]
        i += len(_TAIL)
        if None in vals:
            return None
        wh, level, on_time, w = vals
        if (type(t) not in (int, float) or not math.isfinite(t) or t < REL_TIME_LIMIT
                or type(seq) is not int or not 0 <= seq < _SEQ_LIMIT
                or type(faults) is not int or not 0 <= faults < _SEQ_LIMIT
                or wh < 0 or on_time < 0 or not 0 <= level <= 100):
            return None
        out.append({"seq": seq, "t": t, "wh": wh, "w": w, "level": level, "on_time": on_time,
                    "faults": faults, "rel_time": False})
    return out


def parse_payload(payload: bytes, now: float, content_format: int = lwm2m.CF_SENML_CBOR
                  ) -> tuple[list[dict], dict[str, Any]]:
    """``protocol.report.parse_send`` with the fast path in front: same result, same errors.

    ``content_format`` 110 (SenML-JSON, LwM2M 1.1 Send) is decoded by protocol.senml_json
    into the same records and validated by the same ``parse_records``. Returns
    ``(reports, attrs)``. Raises ValueError (CBORError, SenMLError) for a pack that does not
    parse or holds a bad value (answer 4.00).
    """
    if content_format == lwm2m.CF_SENML_JSON:
        return parse_records(senml_json.decode(payload), now)
    reports = fast_parse_reports(payload)
    if reports is not None:
        return reports, {}
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
            rows, old, new_state = check_rows(state, rows, self.rules)
            if old:
                await self._check_duplicates(endpoint, old, state.seq)
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
                        "clock, or a forged report; `slgw node show %s` counts them. If the "
                        "meter was replaced, its counter must restart below 2**32 and grow "
                        "from there", endpoint, msg, extra, endpoint)
        return Answer(BAD_REQUEST, diagnostic=_short(f"implausible {e.reason}: {msg}"))

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
