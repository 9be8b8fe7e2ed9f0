"""The LwM2M objects the node serves (SPEC §5): Read, Write, Execute, Observe.

Owns the mapping from CoAP requests on ``/obj/inst/res`` to the application, the content
formats (60 CBOR, 0 text/plain, 112 SenML-CBOR; SPEC §5.1), range and type checks, and the
error codes of SPEC §8 (unknown path 4.04, out of range 4.00 with state unchanged, oversize
4.13, operation not allowed 4.05, Accept not producible 4.06, Content-Format not taken 4.15).
It also keeps the Observe registrations (RFC 7641) and decides when to notify (SPEC §5.4).

The application (firmware/node.py) is reached through three calls, by resource *name*:
``app.res_get(name) -> value``, ``app.res_set(name, value) -> None or an error string`` (the
value has passed the checks here), ``app.res_exec(name)``. So this module knows LwM2M, and
the node knows what a level or a schedule does.

Decisions: a Write without Content-Format is read as text/plain (LwM2M 1.0 servers and
aiocoap-client send bare text); an opaque resource (schedule, override) takes its CBOR value
directly in CF 60, or wrapped in a byte string (CF 60 or SenML ``vd``); a Write of an instance
(CF 112) is validated as a whole before anything is applied.
"""

try:
    from micropython import const
except ImportError:  # CPython

    def const(x):
        return x


from protocol import cbor, coap, senml
from protocol.lwm2m import (
    CF_CBOR,
    CF_SENML_CBOR,
    CF_TEXT,
    MAX_PAYLOAD,
    SENML_N,
    SENML_V,
    SENML_VB,
    SENML_VD,
    SENML_VS,
    parse_path,
)

_R = const(1)
_W = const(2)
_E = const(4)
_O = const(8)  # observable

# kinds
_K_INT = const(0)
_K_FLOAT = const(1)
_K_BOOL = const(2)
_K_STR = const(3)
_K_SCHED = const(4)
_K_OVERRIDE = const(5)
_K_NONE = const(6)

_MAX_STEPS = const(16)
_MAX_OBSERVERS = const(4)
_NOTIFY_MAX_S = const(300)

# (obj, inst, res) -> (ops, kind, lo, hi, name); lo/hi are the range (max length for strings)
_TABLE = {
    (1, 0, 0): (_R, _K_INT, 0, 65535, "srv_id"),
    (1, 0, 1): (_R, _K_INT, 60, 86400, "lifetime"),
    (1, 0, 7): (_R, _K_STR, 0, 8, "binding"),
    (3, 0, 0): (_R, _K_STR, 0, 64, "mfr"),
    (3, 0, 1): (_R, _K_STR, 0, 64, "model"),
    (3, 0, 2): (_R, _K_STR, 0, 64, "serial"),
    (3, 0, 3): (_R, _K_STR, 0, 64, "fw"),
    (3, 0, 4): (_E, _K_NONE, 0, 0, "reboot"),
    (3, 0, 11): (_R, _K_INT, 0, 255, "err"),
    (3, 0, 13): (_R | _W, _K_INT, 1600000000, 4200000000, "time"),
    (3, 0, 15): (_R | _W, _K_STR, 3, 64, "tz"),
    (6, 0, 0): (_R | _W, _K_FLOAT, -90, 90, "lat"),
    (6, 0, 1): (_R | _W, _K_FLOAT, -180, 180, "lon"),
    (3311, 0, 5850): (_R | _W, _K_BOOL, 0, 1, "on"),
    (3311, 0, 5851): (_R | _W | _O, _K_INT, 0, 100, "level"),
    (3311, 0, 5852): (_R, _K_INT, 0, 0, "on_time"),
    (3311, 0, 5805): (_R, _K_INT, 0, 0, "wh"),
    (3311, 0, 5820): (_R, _K_FLOAT, 0, 1, "pf"),
    (3305, 0, 5800): (_R | _O, _K_FLOAT, 0, 0, "w"),
    (3305, 0, 5805): (_R, _K_INT, 0, 0, "wh"),
    (10250, 0, 0): (_R, _K_INT, 0, 0, "seq"),
    (10250, 0, 1): (_R, _K_INT, 0, 255, "faults"),
    (10250, 0, 2): (_R | _W, _K_SCHED, 0, 0, "schedule"),
    (10250, 0, 3): (_R | _W, _K_INT, 0, 100, "default"),
    (10250, 0, 4): (_R | _W, _K_OVERRIDE, 1, 604800, "override"),
    (10250, 0, 5): (_R | _W, _K_STR, 0, 32, "group"),
    (10250, 0, 6): (_R | _W, _K_STR, 0, 32, "cabinet"),
    (10250, 0, 7): (_R, _K_FLOAT, 0, 0, "rated"),
    (10250, 0, 8): (_R, _K_BOOL, 0, 1, "time_valid"),
    (10250, 0, 9): (_E, _K_NONE, 0, 0, "identify"),
    (10250, 0, 10): (_R, _K_INT, 0, 0, "override_left"),
}


class Bad(Exception):
    """A request we answer with an error code (and a short text/plain diagnostic)."""

    def __init__(self, code, why):
        super().__init__(why)
        self.code = code
        self.why = why


def _payload_limit(kind, hi, cf):
    if kind == _K_STR:
        lim = 4 * hi + 8
    elif kind == _K_SCHED:
        lim = 16 + _MAX_STEPS * 12
    elif kind == _K_OVERRIDE:
        lim = 24
    else:
        lim = 24
    if cf == CF_SENML_CBOR:
        lim = 2 * lim + 96
    return lim


def check_value(kind, lo, hi, v):
    """Check (and normalise) a value for a resource of ``kind``. Returns the value to apply.

    Raises Bad(4.00) naming what is wrong (SPEC §5 ranges; state is not touched here).
    """
    if kind == _K_INT:
        if isinstance(v, float) and v == int(v):
            v = int(v)
        if not isinstance(v, int) or isinstance(v, bool):
            raise Bad(coap.BAD_REQUEST, "integer expected")
        if hi > lo and not lo <= v <= hi:
            raise Bad(coap.BAD_REQUEST, "out of range %d..%d" % (lo, hi))
        return v
    if kind == _K_FLOAT:
        if not senml.is_number(v):
            raise Bad(coap.BAD_REQUEST, "number expected")
        if hi > lo and not lo <= v <= hi:
            raise Bad(coap.BAD_REQUEST, "out of range %s..%s" % (lo, hi))
        return float(v)
    if kind == _K_BOOL:
        if isinstance(v, int) and not isinstance(v, bool) and v in (0, 1):
            v = bool(v)
        if not isinstance(v, bool):
            raise Bad(coap.BAD_REQUEST, "boolean expected")
        return v
    if kind == _K_STR:
        if not isinstance(v, str):
            raise Bad(coap.BAD_REQUEST, "text expected")
        if not lo <= len(v) <= hi:
            raise Bad(coap.BAD_REQUEST, "length must be %d..%d" % (lo, hi))
        return v
    if isinstance(v, (bytes, bytearray)):  # opaque wrapped in a byte string
        try:
            v = cbor.loads(v)
        except cbor.CBORError:
            raise Bad(coap.BAD_REQUEST, "opaque value is not CBOR") from None
    if kind == _K_SCHED:
        return check_schedule(v)
    if kind == _K_OVERRIDE:
        return check_override(v, lo, hi)
    raise Bad(coap.METHOD_NOT_ALLOWED, "not writable")


def check_schedule(steps):
    """Validate a schedule (SPEC §5.2). Returns a list of [kind, minutes, level]; raises Bad."""
    if not isinstance(steps, list) or len(steps) > _MAX_STEPS:
        raise Bad(coap.BAD_REQUEST, "schedule: list of <= 16 steps")
    out = []
    for st in steps:
        if not isinstance(st, list) or len(st) != 3:
            raise Bad(coap.BAD_REQUEST, "step: [kind, minutes, level]")
        for x in st:
            if not isinstance(x, int) or isinstance(x, bool):
                raise Bad(coap.BAD_REQUEST, "step: integers only")
        kind, minutes, level = st
        if kind == 0:
            ok = 0 <= minutes <= 1439
        elif kind in (1, 2):
            ok = -720 <= minutes <= 720
        else:
            raise Bad(coap.BAD_REQUEST, "step kind must be 0, 1 or 2")
        if not ok or not 0 <= level <= 100:
            raise Bad(coap.BAD_REQUEST, "step minutes or level out of range")
        out.append([kind, minutes, level])
    return out


def check_override(v, lo, hi):
    """Validate an override ``[level, seconds]`` or the cancel ``[null, 0]`` (SPEC §5.3)."""
    if not isinstance(v, list) or len(v) != 2:
        raise Bad(coap.BAD_REQUEST, "override: [level, seconds]")
    level, secs = v
    if level is None:
        if secs not in (0, None) or isinstance(secs, bool):
            raise Bad(coap.BAD_REQUEST, "cancel is [null, 0]")
        return [None, 0]
    for x in v:
        if not isinstance(x, int) or isinstance(x, bool):
            raise Bad(coap.BAD_REQUEST, "override: integers")
    if not 0 <= level <= 100 or not lo <= secs <= hi:
        raise Bad(coap.BAD_REQUEST, "override level 0..100, seconds 1..604800")
    return [level, secs]


def _from_text(kind, text):
    try:
        s = str(text, "utf-8")
    except UnicodeError:
        raise Bad(coap.BAD_REQUEST, "invalid UTF-8") from None
    if kind == _K_STR:
        return s
    s = s.strip()
    try:
        if kind == _K_INT:
            return int(s)
        if kind == _K_FLOAT:
            return float(s)
        if kind == _K_BOOL:
            if s in ("1", "true"):
                return True
            if s in ("0", "false"):
                return False
    except ValueError:
        pass
    if kind in (_K_SCHED, _K_OVERRIDE):
        raise Bad(coap.UNSUPPORTED_CONTENT_FORMAT, "opaque takes CF 60 or 112")
    raise Bad(coap.BAD_REQUEST, "bad text value")


def _senml_value(rec, kind):
    for k in ("v", "vb", "vs", "vd"):
        if k in rec:
            return rec[k]
    raise Bad(coap.BAD_REQUEST, "record without value")


def _record(key, kind, value):
    name = "/%d/%d/%d" % key
    if kind == _K_STR:
        return {SENML_N: name, SENML_VS: value}
    if kind == _K_BOOL:
        return {SENML_N: name, SENML_VB: bool(value)}
    if kind in (_K_SCHED, _K_OVERRIDE):
        return {SENML_N: name, SENML_VD: cbor.dumps(value)}
    return {SENML_N: name, SENML_V: value}


class Resources:
    """The node's LwM2M resource tree (SPEC §5), bound to one application object."""

    def __init__(self, app):
        self.app = app
        # observers: [peer, token, key, accept, last_value, last_time, count, last_mid]
        self.observers = []
        self.obs_seq = 0

    # -- entry point (called by the endpoint) ---------------------------------------------
    def handle(self, req, resp, peer):
        """Fill ``resp`` for ``req`` (Endpoint handler). Never raises on bad input."""
        try:
            self._dispatch(req, resp, peer)
        except Bad as e:
            resp.code = e.code
            resp.options = [o for o in resp.options if o[0] == coap.SIZE1]
            resp.payload = e.why.encode()[:64]
            if resp.payload:
                resp.add_option(coap.CONTENT_FORMAT, CF_TEXT)

    def _target(self, req):
        segs = req.path()
        if not 1 <= len(segs) <= 3:
            raise Bad(coap.NOT_FOUND, "no such path")
        ids = []
        for s in segs:
            if not s.isdigit() or len(s) > 5:
                raise Bad(coap.NOT_FOUND, "no such path")
            ids.append(int(s))
        keys = [k for k in _TABLE if k[: len(ids)] == tuple(ids)]
        if not keys:
            raise Bad(coap.NOT_FOUND, "no such path")
        keys.sort()
        return ids, keys

    def _dispatch(self, req, resp, peer):
        ids, keys = self._target(req)
        code = req.code
        if code == coap.GET:
            self._read(req, resp, peer, ids, keys)
        elif code == coap.PUT:
            self._write(req, resp, ids, keys)
        elif code == coap.POST:
            if len(ids) != 3 or not _TABLE[keys[0]][0] & _E:
                raise Bad(coap.METHOD_NOT_ALLOWED, "not executable")
            resp.code = coap.CHANGED
            self.app.res_exec(_TABLE[keys[0]][4])
        else:
            raise Bad(coap.METHOD_NOT_ALLOWED, "method not allowed")

    # -- Read / Observe -------------------------------------------------------------------
    def _read(self, req, resp, peer, ids, keys):
        accept = req.accept()
        if len(ids) == 3:
            ops = _TABLE[keys[0]][0]
            if not ops & _R:
                raise Bad(coap.METHOD_NOT_ALLOWED, "not readable")
            if accept not in (None, CF_CBOR, CF_SENML_CBOR, CF_TEXT):
                raise Bad(coap.NOT_ACCEPTABLE, "CF 60, 112 or 0")
            if accept == CF_TEXT and _TABLE[keys[0]][1] in (_K_SCHED, _K_OVERRIDE):
                raise Bad(coap.NOT_ACCEPTABLE, "opaque: CF 60 or 112")
            obs = req.observe()
            if obs is not None and ops & _O:
                if obs == 0:
                    self._add_observer(peer, req.token, keys[0], accept)
                    resp.add_option(coap.OBSERVE, self._next_obs())
                elif obs == 1:
                    self.cancel(peer, req.token)
            self.render(resp, keys[0], accept)
            return
        if accept not in (None, CF_SENML_CBOR):
            raise Bad(coap.NOT_ACCEPTABLE, "objects and instances are read as CF 112")
        recs = []
        for k in keys:
            ent = _TABLE[k]
            if ent[0] & _R:
                recs.append(_record(k, ent[1], self.app.res_get(ent[4])))
        resp.payload = senml.encode(recs)
        resp.add_option(coap.CONTENT_FORMAT, CF_SENML_CBOR)

    def render(self, resp, key, accept):
        """Put resource ``key``'s current value in ``resp`` in the format asked for."""
        ops, kind, lo, hi, name = _TABLE[key]
        v = self.app.res_get(name)
        if accept == CF_SENML_CBOR:
            resp.payload = senml.encode([_record(key, kind, v)])
            cf = CF_SENML_CBOR
        elif accept == CF_TEXT:
            if kind == _K_BOOL:
                v = 1 if v else 0
            resp.payload = str(v).encode()
            cf = CF_TEXT
        else:
            resp.payload = cbor.dumps(v)
            cf = CF_CBOR
        resp.add_option(coap.CONTENT_FORMAT, cf)
        return v

    # -- Write ----------------------------------------------------------------------------
    def _write(self, req, resp, ids, keys):
        cf = req.content_format()
        if cf is None:
            cf = CF_TEXT
        if cf not in (CF_TEXT, CF_CBOR, CF_SENML_CBOR):
            raise Bad(coap.UNSUPPORTED_CONTENT_FORMAT, "CF 60, 0 or 112")
        data = req.payload
        if len(ids) == 3:
            ops, kind, lo, hi, name = _TABLE[keys[0]]
            if not ops & _W:
                raise Bad(coap.METHOD_NOT_ALLOWED, "read-only" if ops & _R else "not writable")
            if len(data) > _payload_limit(kind, hi, cf):
                raise Bad(coap.REQUEST_ENTITY_TOO_LARGE, "payload too large for this resource")
            if cf == CF_SENML_CBOR:
                values = self._from_pack(data, keys)
            else:
                if cf == CF_TEXT:
                    v = _from_text(kind, data)
                else:
                    try:
                        v = cbor.loads(data)
                    except cbor.CBORError:
                        raise Bad(coap.BAD_REQUEST, "payload is not CBOR") from None
                values = [(keys[0], check_value(kind, lo, hi, v))]
        else:
            if cf != CF_SENML_CBOR:
                raise Bad(coap.UNSUPPORTED_CONTENT_FORMAT, "instances are written as CF 112")
            if len(data) > MAX_PAYLOAD:
                raise Bad(coap.REQUEST_ENTITY_TOO_LARGE, "payload too large")
            values = self._from_pack(data, keys)
        # everything is checked: apply in order; the application may still refuse (4.00)
        for key, v in values:
            err = self.app.res_set(_TABLE[key][4], v)
            if err:
                raise Bad(coap.BAD_REQUEST, err)
        resp.code = coap.CHANGED

    def _from_pack(self, data, keys):
        try:
            recs = senml.resolve(senml.decode(data))
        except senml.SenMLError:
            raise Bad(coap.BAD_REQUEST, "payload is not SenML-CBOR") from None
        if not recs:
            raise Bad(coap.BAD_REQUEST, "empty pack")
        out = []
        for rec in recs:
            try:
                key = parse_path(rec["n"])
            except ValueError:
                raise Bad(coap.BAD_REQUEST, "bad name in pack") from None
            if key not in keys:
                raise Bad(coap.NOT_FOUND if key not in _TABLE else coap.BAD_REQUEST, "name outside target")
            ops, kind, lo, hi, name = _TABLE[key]
            if not ops & _W:
                raise Bad(coap.METHOD_NOT_ALLOWED, "read-only resource in pack")
            out.append((key, check_value(kind, lo, hi, _senml_value(rec, kind))))
        return out

    # -- Observe --------------------------------------------------------------------------
    def _next_obs(self):
        self.obs_seq = (self.obs_seq + 1) & 0xFFFFFF
        return self.obs_seq

    def _add_observer(self, peer, token, key, accept):
        self.cancel(peer, token)
        for ob in self.observers:  # one observation per (peer, resource): re-register replaces
            if ob[0] == peer and ob[2] == key:
                self.observers.remove(ob)
                break
        if len(self.observers) >= _MAX_OBSERVERS:
            self.observers.pop(0)
        self.observers.append([peer, token, key, accept, self.app.res_get(_TABLE[key][4]), self.app.now(), 0, -1])

    def cancel(self, peer, token):
        """Drop the observation with this token (Observe 1, or a failed CON notification)."""
        for ob in self.observers:
            if ob[1] == token and ob[0] == peer:
                self.observers.remove(ob)
                return True
        return False

    def on_reset(self, peer, mid):
        """An RST for one of our NON notifications cancels that observation (RFC 7641 §3.6)."""
        for ob in self.observers:
            if ob[7] == mid and ob[0] == peer:
                self.observers.remove(ob)
                return

    def due_notifications(self, now):
        """Return [(observer, Message, confirmable)] for observations that need a notification:
        level on any change, power on > 5 % or 1 W, every one at least each 300 s; every tenth
        is CON (SPEC §5.4)."""
        out = []
        for ob in self.observers:
            key = ob[2]
            v = self.app.res_get(_TABLE[key][4])
            last = ob[4]
            if _TABLE[key][1] == _K_FLOAT:
                changed = abs(v - last) > max(1.0, 0.05 * abs(last))
            else:
                changed = v != last
            if not changed and now - ob[5] < _NOTIFY_MAX_S:
                continue
            msg = coap.Message(coap.NON, coap.CONTENT, 0, ob[1])
            msg.add_option(coap.OBSERVE, self._next_obs())
            self.render(msg, key, ob[3])
            ob[4] = v
            ob[5] = now
            ob[6] += 1
            out.append((ob, msg, ob[6] % 10 == 0))
        return out
