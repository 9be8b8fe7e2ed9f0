"""The node's OSCORE layer (RFC 8613; SPEC "OSCORE"): keys from flash, every exchange protected.

Owns: loading the node's security context (``oscore.json`` written by ``slnode provision``, or
the rotated keys in the durable record ``oscore.key``), the Sender Sequence Number bound on
flash, and the wrapping of the CoAP endpoint (firmware/endpoint.py) on both sides:

* requests the node SENDS (Register, Update, Send, De-register) are protected, their responses
  verified; a verified 4.01 carrying Echo (the gateway lost its replay window, RFC 8613 B.1.2)
  makes the node resend once with that Echo inside. A response that does not verify is ignored
  inside the exchange (anyone who sees a request can forge its token and Message ID): the
  node keeps waiting for the real answer; if none comes it is "no answer" (back off, register
  again), and the log says what was ignored (e.g. the gateway's unprotected 4.01 for a key it
  does not have).
* requests the node RECEIVES must verify under the gateway's kid and pass the replay window,
  else they get an unprotected 4.01/4.00/4.02 and reach no handler: nothing changes. Every
  response and Observe notification is protected.

Decisions:
* Sequence numbers (RFC 8613 B.1.1): the bound is persisted in a durable record named after
  the Sender ID, 256 numbers ahead; a boot starts at the persisted bound. One flash write per
  boot and per 256 messages; a power cut skips at most 255 numbers and never repeats one.
* The replay window is NOT persisted (it changes with every request: a write per request).
  After a boot the first request from the gateway gets a protected 4.01 with a fresh Echo;
  aiocoap resends it with the Echo and that request initialises the window (B.1.2).
* No ``oscore.json`` = unprotected (demo and tests only), said loudly at boot. A key file that
  is present but invalid does NOT fall back to unprotected: the node then refuses every
  request (4.01) and sends nothing, and says why at boot.
* Key rotation (/10250/0/30): the new keys are stored (durable record, atomic) before the 2.04
  that confirms them; the 2.04 itself is protected with the old context, every message after
  it with the new one (a new Sender ID, so a fresh sequence-number record).
"""

try:
    from micropython import const
except ImportError:  # CPython

    def const(x):
        return x


from firmware.durable import Counters, Record
from protocol import coap, oscore

KEY_FILE = "oscore.json"
ROTATED = "oscore.key"  # durable record: the keys last received by /10250/0/30
_SEQ_BLOCK = const(256)
_MAX_OBS = const(8)
# inner options this node understands in a request (others that are critical get 4.02)
_KNOWN = (coap.URI_PATH, coap.CONTENT_FORMAT, coap.URI_QUERY, coap.ACCEPT, coap.OBSERVE, coap.ETAG,
          coap.BLOCK2, coap.SIZE2, coap.SIZE1, coap.URI_HOST, coap.URI_PORT)


def _unhex(s, n, what):
    if not isinstance(s, str) or len(s) != 2 * n:
        raise ValueError("%s must be %d hex bytes" % (what, n))
    return bytes.fromhex(s)


def parse_keys(text):
    """Parse oscore.json text ({"ms", "salt", "sid", "rid"} as hex). Returns
    ``(ms, salt, sid, rid)`` bytes. Raises ValueError with what is wrong (never the keys)."""
    import json

    try:
        d = json.loads(text)
    except ValueError:
        raise ValueError("not JSON") from None
    if not isinstance(d, dict):
        raise ValueError("not a JSON object")
    ms = _unhex(d.get("ms"), 16, "ms")
    salt = _unhex(d.get("salt"), 8, "salt")
    sid = d.get("sid")
    rid = d.get("rid")
    if not isinstance(sid, str) or not isinstance(rid, str) or not 2 <= len(sid) <= 14 or len(rid) > 14:
        raise ValueError("sid must be 1-7 hex bytes, rid 0-7")
    sid = _unhex(sid, len(sid) // 2, "sid")
    rid = _unhex(rid, len(rid) // 2, "rid")
    if sid == rid:
        raise ValueError("sid and rid must differ")
    return ms, salt, sid, rid


def pack_keys(ms, salt, sid, rid):
    """The ``oscore.key`` record: ms 16 | salt 8 | len(sid) | sid | rid."""
    return bytes(ms) + bytes(salt) + bytes((len(sid),)) + bytes(sid) + bytes(rid)


def unpack_keys(data):
    if data is None or len(data) < 26:
        return None
    n = data[24]
    if not 1 <= n <= 7 or len(data) - 25 - n > 7:
        return None
    return data[:16], data[16:24], data[25 : 25 + n], data[25 + n :]


def load(hal, log, rand):
    """The node's OSCORE layer from the rotated keys or oscore.json (node._load_keys calls it
    only when one of them exists, and says so loudly when none does)."""
    keys = unpack_keys(Record(hal.path(ROTATED)).load())
    if keys is None:
        try:
            with open(hal.path(KEY_FILE)) as f:
                text = f.read()
        except OSError:  # node._load_keys checked that a key file exists: it went away, or is unreadable
            log("SECURITY: %s cannot be read: refusing every request and sending nothing" % KEY_FILE)
            return Secure(None, None, log, rand)
        try:
            keys = parse_keys(text)
        except ValueError as e:
            log("SECURITY: %s is invalid (%s): refusing every request and sending nothing until it is "
                "re-provisioned" % (KEY_FILE, e))
            return Secure(None, None, log, rand)
    return Secure(keys, hal, log, rand)


class Secure:
    """OSCORE around one Endpoint for one node (see the module docstring)."""

    def __init__(self, keys, hal, log, rand):
        self.hal = hal
        self.log = log
        self.rand = rand
        self.inner = None
        self.obs = {}  # token -> RequestId of an accepted Observe registration
        self.pending = None  # rotated keys to switch to after the 2.04 that confirms them
        self.stats = {"refused": 0, "echo": 0, "bad_responses": 0}
        self.error = None  # why the last request() got no usable answer, for the caller's log
        self.ctx = None
        self.counters = None
        if keys is not None:
            self._use(keys)

    def _use(self, keys):
        ms, salt, sid, rid = keys
        c = Counters(self.hal.path("oscore-%s.seq" % "".join("%02x" % b for b in sid)), ("bound",))
        c.load()
        self.counters = c

        def persist(bound):
            c.set("bound", bound)
            c.flush(True)

        self.ctx = oscore.Context(ms, salt, sid, rid, seq=c.get("bound"), persist=persist, seq_block=_SEQ_BLOCK,
                                  window_ready=False)
        self.obs = {}

    def sender_id(self):
        return None if self.ctx is None else self.ctx.sender_id

    # -- server side ----------------------------------------------------------------------
    def wrap(self, handler):
        """Return the Endpoint handler that verifies requests before ``handler`` sees them."""
        self.inner = handler
        return self.handle

    def handle(self, req, resp, peer):
        ctx = self.ctx
        if ctx is None:
            self._refuse(resp, coap.UNAUTHORIZED, "no valid OSCORE keys")
            return
        try:
            inner, rid = ctx.unprotect_request(req)
        except oscore.NeedEcho as e:
            if ctx.echo is None:
                ctx.echo = self.rand(8)
            self.stats["echo"] += 1
            try:
                self._copy(ctx.echo_response(req, e.rid), resp)
            except (oscore.OscoreError, OSError) as e2:
                self._refuse(resp, coap.SERVICE_UNAVAILABLE, "cannot protect: %s" % e2)
            return
        except oscore.OscoreError as e:
            self.stats["refused"] += 1
            self._refuse(resp, e.code, str(e))
            return
        ir = coap.response_for(inner, coap.CONTENT)
        bad = None
        for num, _ in inner.options:
            if coap.is_critical(num) and num not in _KNOWN:
                bad = num
                break
        if bad is not None:
            ir.code = coap.BAD_OPTION
            ir.payload = ("unknown critical option %d" % bad).encode()
        else:
            try:
                self.inner(inner, ir, peer)
            except coap.CoAPError:
                ir = coap.error_response(inner, coap.BAD_REQUEST, "bad option value")
            except Exception as e:  # noqa: BLE001 - answer 5.00 (protected), keep serving
                print("secure: handler failed:", repr(e))
                ir = coap.response_for(inner, coap.INTERNAL_SERVER_ERROR)
        obs = inner.observe()
        if ir.get_option(coap.OBSERVE) is not None:
            if len(self.obs) >= _MAX_OBS and req.token not in self.obs:
                self.obs.pop(next(iter(self.obs)))
            self.obs[req.token] = rid
        elif obs == 1:
            self.obs.pop(req.token, None)
        try:
            self._copy(ctx.protect_response(ir, rid), resp)
        except (oscore.OscoreError, OSError) as e:  # no sequence number to answer with
            self._refuse(resp, coap.SERVICE_UNAVAILABLE, "cannot protect: %s" % e)
            return
        if self.pending is not None:  # rotation: this 2.04 went out under the old context
            keys = self.pending
            self.pending = None
            self._use(keys)
            self.log("oscore: new keys in use (key rotation)")

    @staticmethod
    def _copy(out, resp):
        resp.code = out.code
        resp.options = out.options
        resp.payload = out.payload

    @staticmethod
    def _refuse(resp, code, why):
        """An unprotected error answer (RFC 8613 §8.2): Max-Age 0, a short diagnostic."""
        resp.code = code
        resp.options = [(coap.CONTENT_FORMAT, b""), (coap.MAX_AGE, b"")]
        resp.payload = coap.diagnostic(why)

    def protect_notification(self, msg):
        """The protected form of an Observe notification, or None if its observation was not
        registered under OSCORE (it is then not sent)."""
        rid = self.obs.get(msg.token)
        if rid is None or self.ctx is None:
            return None
        try:
            return self.ctx.protect_response(msg, rid, True)
        except (oscore.OscoreError, OSError) as e:
            self.log("oscore: notification not sent: %s" % e)
            return None

    def rotate(self, ms, salt, sid):
        """Store new keys (/10250/0/30) atomically; they take effect after the 2.04."""
        rid = self.ctx.recipient_id
        if sid == rid or not 1 <= len(sid) <= 7 or len(ms) != 16 or len(salt) != 8:
            raise ValueError("bad key material")
        Record(self.hal.path(ROTATED)).save(pack_keys(ms, salt, sid, rid))
        self.pending = (bytes(ms), bytes(salt), bytes(sid), rid)

    # -- client side ----------------------------------------------------------------------
    async def request(self, ep, msg, peer):
        """Send ``msg`` protected and return the verified inner response, or None (no answer
        that verifies). A response that does not verify (forged by someone who saw the request,
        or the gateway's unprotected refusal) is ignored while the exchange waits for a valid
        one; ``self.error`` then says why nothing came. A 4.01 with Echo is answered once (B.1.2)."""
        ctx = self.ctx
        self.error = None
        if ctx is None:
            self.error = "no valid OSCORE keys: nothing is sent"
            return None
        for attempt in range(2):
            try:
                outer, rid = ctx.protect_request(msg)
            except (oscore.OscoreError, OSError) as e:
                # sequence numbers exhausted, or the bound could not be written to flash: a
                # number that is not persisted is never used
                self.error = "cannot protect: %s" % e
                return None
            got = []

            def accept(r, rid=rid, got=got):
                try:
                    got.append(ctx.unprotect_response(r, rid))
                    return True
                except oscore.OscoreError as e:
                    self.stats["bad_responses"] += 1
                    self._refused(r, e)
                    return False

            r = await ep.request(outer, peer, accept=accept)
            if r is None or not got:
                return None
            inner = got[-1]
            if inner.code == coap.UNAUTHORIZED and attempt == 0:
                echo = inner.get_option(oscore.ECHO)
                if echo is not None:
                    msg.remove_option(oscore.ECHO)
                    msg.add_option(oscore.ECHO, echo)
                    continue
            return inner
        return None

    def _refused(self, r, e):
        if r.code == coap.UNAUTHORIZED and r.get_option(coap.OSCORE) is None:
            # said by the caller (node.register logs it: the console's "last error")
            self.error = ("the gateway refused our key (unprotected 4.01): is this node's "
                          "<id>.oscore.json imported there (slgw keys import)?")
        else:
            self.error = "an answer %s that does not verify (%s) was ignored" % (r.code_str(), e)
