"""The LwM2M objects the node serves (SPEC §5): Read, Discover, Write, Write-Attributes,
Execute, Observe (OMA-TS-LightweightM2M-Core 1.1 §5.4, §5.5).

Owns the mapping from CoAP requests on ``/obj/inst/res`` to the application, the content
formats (60 CBOR, 0 text/plain, 112 SenML-CBOR, 40 link-format for Discover; SPEC §5.1), range
and type checks, and the error codes of SPEC §8 (unknown path 4.04, out of range 4.00 with
state unchanged, oversize 4.13, operation not allowed 4.05, Accept not producible 4.06,
Content-Format not taken 4.15). It also keeps the Observe registrations (RFC 7641), the
notification attributes pmin/pmax/gt/lt/st (Core 1.1 §5.1.2), and decides when to notify
(SPEC §5.4).

The application (firmware/node.py) is reached through three calls, by resource *name*:
``app.res_get(name) -> value``, ``app.res_set(name, value) -> None or an error string`` (the
value has passed the checks here), ``app.res_exec(name)``. So this module knows LwM2M, and
the node knows what a level or a schedule does.

Decisions: a Write without Content-Format is read as text/plain (LwM2M 1.0 servers and
aiocoap-client send bare text); an opaque resource (schedule, override) takes its CBOR value
directly in CF 60, or wrapped in a byte string (CF 60 or SenML ``vd``); a Write of an instance
(CF 112) is validated as a whole before anything is applied; a PUT (Replace) and a POST
(Partial Update) of an instance both write only the resources the pack names (none of our
resources is optional, so Replace has nothing to remove). A PUT that carries a Uri-Query is a
Write-Attributes: it never writes a value, and a payload with it is refused (4.00).
"""

try:
    from micropython import const
except ImportError:  # CPython

    def const(x):
        return x


from protocol import cbor, coap, senml
from protocol.lwm2m import (
    CF_CBOR,
    CF_LINK_FORMAT,
    CF_SENML_CBOR,
    CF_TEXT,
    FAULT_LAMP_FAILURE,
    FAULT_LAMP_UNEXPECTED_ON,
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
_K_KEYS = const(7)  # write-only OSCORE key material (SPEC §10.5): never read back

_MAX_STEPS = const(16)
_MAX_OBSERVERS = const(4)
_NOTIFY_MAX_S = const(300)  # default pmax (Server object /1/0/3)
_NOTIFY_MIN_S = const(1)  # default pmin (Server object /1/0/2): a fade notifies once a second
_MAX_ATTR_SETS = const(8)  # paths carrying Write-Attributes (bounds the memory they take)
_ATTRS = ("pmin", "pmax", "gt", "lt", "st")

# (obj, inst, res) -> (ops, kind, lo, hi, name); lo/hi are the range (max length for strings)
_TABLE = {
    (1, 0, 0): (_R, _K_INT, 0, 65535, "srv_id"),
    (1, 0, 1): (_R, _K_INT, 60, 86400, "lifetime"),
    (1, 0, 2): (_R, _K_INT, 0, 0, "def_pmin"),
    (1, 0, 3): (_R, _K_INT, 0, 0, "def_pmax"),
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
    (10250, 0, 30): (_W, _K_KEYS, 0, 0, "oscore_keys"),
    # Firmware Update 5 (application bundles, SPEC §13; firmware/ota.py), and the vendor object
    # 10251 beside it: the slot running (and its mode), the reason of the last Update Result
    (5, 0, 1): (_R | _W, _K_STR, 0, 255, "fw_uri"),
    (5, 0, 2): (_E, _K_NONE, 0, 0, "fw_update"),
    (5, 0, 3): (_R | _O, _K_INT, 0, 0, "fw_state"),
    (5, 0, 5): (_R | _O, _K_INT, 0, 0, "fw_result"),
    (5, 0, 6): (_R, _K_STR, 0, 0, "fw_name"),
    (5, 0, 7): (_R, _K_STR, 0, 0, "fw_version"),
    (5, 0, 9): (_R, _K_INT, 0, 0, "fw_delivery"),
    (10251, 0, 0): (_R, _K_STR, 0, 0, "fw_slot"),
    (10251, 0, 1): (_R, _K_STR, 0, 0, "fw_why"),
    # uCIFI Outdoor lamp controller 3416 (object version 2.0): the resources that are ours under
    # another number (SPEC §12). Command = a manual level (as /3311/0/5851), read as the level
    # in force; dimming level = the actual level; failures from the fault flags.
    (3416, 0, 1): (_R | _W, _K_INT, 0, 100, "command"),
    (3416, 0, 2): (_R, _K_INT, 0, 0, "command"),
    (3416, 0, 3): (_R | _O, _K_INT, 0, 0, "level"),
    (3416, 0, 4): (_R | _W, _K_INT, 0, 100, "default"),
    (3416, 0, 5): (_R, _K_BOOL, 0, 1, "lamp_failure"),
    (3416, 0, 10): (_R, _K_BOOL, 0, 1, "day_burner"),
    (3416, 0, 15): (_R, _K_FLOAT, 0, 0, "op_hours"),
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
    elif kind == _K_KEYS:
        lim = 48
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
    if kind == _K_KEYS:
        return check_keys(v)
    raise Bad(coap.METHOD_NOT_ALLOWED, "not writable")


def check_keys(v):
    """[master secret (16 bytes), master salt (8), new node Sender ID (1-7)] (SPEC §10.5).
    Returns the tuple; raises Bad naming the field (never echoing key bytes)."""
    if not isinstance(v, list) or len(v) != 3:
        raise Bad(coap.BAD_REQUEST, "keys: [ms, salt, sid] expected")
    for i, (what, lo, hi) in enumerate((("ms", 16, 16), ("salt", 8, 8), ("sid", 1, 7))):
        if not isinstance(v[i], (bytes, bytearray)) or not lo <= len(v[i]) <= hi:
            raise Bad(coap.BAD_REQUEST, "keys: %s must be %d..%d bytes" % (what, lo, hi))
    return (bytes(v[0]), bytes(v[1]), bytes(v[2]))


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
    if kind in (_K_SCHED, _K_OVERRIDE, _K_KEYS):
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


def _num(text):
    """An attribute value (Core 1.1 §5.1.2): int when it has no fraction, else float."""
    try:
        return int(text)
    except ValueError:
        pass
    try:
        v = float(text)
    except ValueError:
        v = None
    if v is None or v != v or v in (float("inf"), float("-inf")):
        raise Bad(coap.BAD_REQUEST, "attribute value must be a number")
    return v


def _attr_text(name, v):
    return ";%s=%s" % (name, ("%d" % v) if isinstance(v, int) else repr(v))


class Resources:
    """The node's LwM2M resource tree (SPEC §5), bound to one application object."""

    def __init__(self, app):
        self.app = app
        # observers: [peer, token, key, accept, last_value, last_time, count, last_mid]
        self.observers = []
        self.obs_seq = 0
        self.attrs = {}  # path tuple (1-3 ids) -> {"pmin": 5, ...} set by Write-Attributes
        self._defaults = {"pmin": _NOTIFY_MIN_S, "pmax": _NOTIFY_MAX_S}  # read-only: shared

    def _get(self, key):
        name = _TABLE[key][4]
        if name == "def_pmin":
            return _NOTIFY_MIN_S
        if name == "def_pmax":
            return _NOTIFY_MAX_S
        if name == "lamp_failure":
            return bool(self.app.res_get("faults") & FAULT_LAMP_FAILURE)
        if name == "day_burner":
            return bool(self.app.res_get("faults") & FAULT_LAMP_UNEXPECTED_ON)
        if name == "op_hours":
            return round(self.app.res_get("on_time") / 3600, 2)
        return self.app.res_get(name)

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
            if req.accept() == CF_LINK_FORMAT:
                self._discover(resp, ids, keys)
            else:
                self._read(req, resp, peer, ids, keys)
        elif code == coap.PUT:
            if req.get_option(coap.URI_QUERY) is not None:
                self._write_attrs(req, resp, ids, keys)
            else:
                self._write(req, resp, ids, keys)
        elif code == coap.POST:
            if len(ids) == 2:  # Partial Update of an instance (Core 1.1 §5.4.3)
                self._write(req, resp, ids, keys)
                return
            if len(ids) != 3 or not _TABLE[keys[0]][0] & _E:
                raise Bad(coap.METHOD_NOT_ALLOWED, "not executable" if len(ids) == 3 else "Create not supported")
            resp.code = coap.CHANGED
            why = self.app.res_exec(_TABLE[keys[0]][4])
            if why:  # e.g. Update /5/0/2 with nothing downloaded (LwM2M: 4.05)
                raise Bad(coap.METHOD_NOT_ALLOWED, why)
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
                raise Bad(coap.NOT_ACCEPTABLE, "CF 60, 112, 0 or 40")
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
                recs.append(_record(k, ent[1], self._get(k)))
        resp.payload = senml.encode(recs)
        resp.add_option(coap.CONTENT_FORMAT, CF_SENML_CBOR)

    def render(self, resp, key, accept):
        """Put resource ``key``'s current value in ``resp`` in the format asked for."""
        kind = _TABLE[key][1]
        v = self._get(key)
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

    # -- Discover (Core 1.1 §5.4.2) -------------------------------------------------------
    def _discover(self, resp, ids, keys):
        """Link-format list of the target and what is under it, each link with the attributes
        set on it; a Resource's link carries its effective (inherited) attributes."""
        parts = []
        if len(ids) == 3:
            parts.append("</%d/%d/%d>" % keys[0] + self._attr_links(self.effective(keys[0])))
        else:
            seen = {}
            for k in keys:
                for n in range(len(ids), 4):
                    p = k[:n]
                    if p in seen:
                        continue
                    seen[p] = 1
                    parts.append("<" + "".join("/%d" % i for i in p) + ">" + self._attr_links(self.attrs.get(p)))
        resp.payload = ",".join(parts).encode()
        resp.add_option(coap.CONTENT_FORMAT, CF_LINK_FORMAT)

    @staticmethod
    def _attr_links(a):
        if not a:
            return ""
        return "".join(_attr_text(n, a[n]) for n in _ATTRS if n in a)

    # -- Write-Attributes (Core 1.1 §5.4.4, §5.1.2) ---------------------------------------
    def _write_attrs(self, req, resp, ids, keys):
        """Set or clear (``?pmin`` with no value) notification attributes; never a value."""
        if req.payload:
            raise Bad(coap.BAD_REQUEST, "Write-Attributes takes no payload")
        path = tuple(ids)
        new = dict(self.attrs.get(path) or {})
        numeric = len(ids) == 3 and _TABLE[keys[0]][1] in (_K_INT, _K_FLOAT)
        for q in req.query():
            i = q.find("=")
            name, eq, val = (q, "", "") if i < 0 else (q[:i], "=", q[i + 1 :])
            if name not in _ATTRS:
                raise Bad(coap.BAD_REQUEST, "unsupported attribute " + name[:16])
            if name in ("gt", "lt", "st") and not numeric:
                raise Bad(coap.BAD_REQUEST, name + " needs a numeric resource")
            if not eq:
                new.pop(name, None)  # "?pmin" alone removes the attribute
                continue
            v = _num(val)
            if v < 0 and name in ("pmin", "pmax", "st"):
                raise Bad(coap.BAD_REQUEST, name + " must be >= 0")
            if name in ("pmin", "pmax") and not isinstance(v, int):
                raise Bad(coap.BAD_REQUEST, name + " must be whole seconds")
            new[name] = v
        if "pmin" in new and "pmax" in new and new["pmax"] and new["pmax"] < new["pmin"]:
            raise Bad(coap.BAD_REQUEST, "pmax must be >= pmin")
        if "lt" in new and "gt" in new and new["lt"] + 2 * new.get("st", 0) >= new["gt"]:
            raise Bad(coap.BAD_REQUEST, "need lt + 2*st < gt")
        if new:
            if path not in self.attrs and len(self.attrs) >= _MAX_ATTR_SETS:
                raise Bad(coap.BAD_REQUEST, "too many paths with attributes")
            self.attrs[path] = new
        else:
            self.attrs.pop(path, None)
        resp.code = coap.CHANGED

    def effective(self, key):
        """The attributes in force for resource ``key``: Object, then Instance, then Resource
        level (Core 1.1 §5.1.2 inheritance); pmin/pmax default to /1/0/2 and /1/0/3."""
        if not self.attrs:  # the usual case: no allocation per observer and control tick
            return self._defaults
        out = dict(self._defaults)
        for n in (1, 2, 3):
            a = self.attrs.get(key[:n])
            if a:
                out.update(a)
        return out

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
            if len(ids) != 2:
                raise Bad(coap.METHOD_NOT_ALLOWED, "write an instance, not an object")
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
        self.observers.append([peer, token, key, accept, self._get(key), self.app.now(), 0, -1])

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
        """Return [(observer, Message, confirmable)] for observations that need a notification
        (SPEC §5.4, Core 1.1 §5.1.2): never sooner than pmin after the last one; at pmax at the
        latest (0 = no periodic one); in between on a change: a crossing of gt or lt, a step of
        st or more, or, with none of those set, level on any change and power on > 5 % or 1 W.
        Every tenth notification is CON."""
        out = []
        for ob in self.observers:
            key = ob[2]
            a = self.effective(key)
            elapsed = now - ob[5]
            if elapsed < a["pmin"]:
                continue
            v = self._get(key)
            last = ob[4]
            if a["pmax"] and elapsed >= a["pmax"]:
                changed = True
            elif "gt" in a or "lt" in a or "st" in a:
                changed = "st" in a and abs(v - last) >= a["st"]
                for th in ("gt", "lt"):
                    if th in a and (last > a[th]) != (v > a[th]):
                        changed = True
            elif _TABLE[key][1] == _K_FLOAT:
                changed = abs(v - last) > max(1.0, 0.05 * abs(last))
            else:
                changed = v != last
            if not changed:
                continue
            msg = coap.Message(coap.NON, coap.CONTENT, 0, ob[1])
            msg.add_option(coap.OBSERVE, self._next_obs())
            self.render(msg, key, ob[3])
            ob[4] = v
            ob[5] = now
            ob[6] += 1
            out.append((ob, msg, ob[6] % 10 == 0))
        return out
