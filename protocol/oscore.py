"""OSCORE (RFC 8613) over protocol/coap.py messages: sans-I/O, MicroPython and CPython.

Owns: HKDF-SHA256 (HMAC on ``hashlib.sha256``: MicroPython has no ``hmac`` module), the
security context (Sender/Recipient Key, Common IV, §3.2), nonces (§5.2), the COSE Encrypt0 AAD
(§5.4), the OSCORE option (§6.1), protecting and verifying requests and responses with inner
and outer options (§4, §8), the Sender Sequence Number and the replay window (§7.4), and the
Echo-based replay-window recovery of Appendix B.1.2. AES-CCM-16-64-128 is protocol/aes_ccm.py.
No sockets, clock or randomness: the caller passes the Echo value it drew and persists the
sequence-number bound through a callback.

Decisions (SPEC "OSCORE"):
* Only AES-CCM-16-64-128 (COSE 10) with HKDF-SHA256, as LwM2M 1.1 uses it; IDs up to 7 bytes.
* Outer (class U) options: Uri-Host, Uri-Port, Proxy-Uri, Proxy-Scheme, and Observe (which in
  a request is also inner, §4.1.3.5); every other option is inner (class E) and encrypted. A
  response carries Observe outer only.
* Outer codes (§4.2): POST for a request (FETCH when it has Observe), 2.04 for its response
  (2.05 for a FETCH one).
* A response reuses the request's nonce (no Partial IV) unless ``new_piv``: an Observe
  notification after the first and a 4.01 Echo answer carry their own Partial IV.
* ``OscoreError.code`` is the CoAP code to answer a request that fails verification (§8.2):
  4.02 for an undecodable OSCORE option, 4.01 for an unknown kid, a replay or a missing
  Partial IV... 4.00 for a failed decryption. Such answers go out unprotected.
* The replay window is 32 numbers wide (§3.2.2). A window that is not initialised (after a
  reboot, when it is not persisted) accepts a request only once it carries the Echo value the
  caller handed out with a 4.01 (Appendix B.1.2): ``NeedEcho`` says so.
"""

import hashlib

try:
    from micropython import const
except ImportError:  # CPython

    def const(x):
        return x


from protocol import aes_ccm, coap

ALG_AES_CCM_16_64_128 = const(10)
ECHO = const(252)  # RFC 9175
REQUEST_TAG = const(292)
MAX_SEQ = const(0xFFFFFFFFFF)  # 2**40 - 1 (§7.2.1)
MAX_ID = const(7)  # nonce length 13 - 6
WINDOW = const(32)
_FLAG_K = const(0x08)
_FLAG_H = const(0x10)
_NONCE_LEN = const(13)

# Options left outside in a request (class U) besides OSCORE itself; Observe is also inside.
_OUTER_REQ = (coap.URI_HOST, coap.OBSERVE, coap.URI_PORT, coap.PROXY_URI, coap.PROXY_SCHEME)


class OscoreError(ValueError):
    """A message that fails OSCORE processing. ``code`` is the CoAP code to answer a request
    with (RFC 8613 §8.2): 4.02 undecodable option, 4.01 unknown kid/replay, 4.00 decryption."""

    def __init__(self, msg, code=coap.BAD_REQUEST):
        super().__init__(msg)
        self.code = code


class NeedEcho(OscoreError):
    """A request that verified but cannot be checked for replay yet (the replay window is not
    initialised): answer ``ctx.echo_response(rid)`` (a protected 4.01 with Echo, B.1.2)."""

    def __init__(self, rid):
        super().__init__("replay window not initialised: answer 4.01 with Echo", coap.UNAUTHORIZED)
        self.rid = rid


# --- HMAC / HKDF (RFC 2104, RFC 5869) --------------------------------------------------------
def hmac_sha256(key, msg):
    """HMAC-SHA256 of ``msg`` under ``key``. Returns 32 bytes."""
    if len(key) > 64:
        key = hashlib.sha256(key).digest()
    k = bytearray(64)
    k[: len(key)] = key
    ipad = bytearray(64)
    opad = bytearray(64)
    for i in range(64):
        ipad[i] = k[i] ^ 0x36
        opad[i] = k[i] ^ 0x5C
    inner = hashlib.sha256(ipad)
    inner.update(msg)
    outer = hashlib.sha256(opad)
    outer.update(inner.digest())
    return outer.digest()


def hkdf_sha256(salt, ikm, info, length):
    """HKDF-SHA256 extract and expand (RFC 5869). An empty salt is 32 zero bytes. Returns bytes."""
    if length > 255 * 32:
        raise ValueError("HKDF output too long")
    prk = hmac_sha256(salt or bytes(32), ikm)
    out = b""
    t = b""
    i = 1
    while len(out) < length:
        t = hmac_sha256(prk, t + info + bytes((i,)))
        out += t
        i += 1
    return out[:length]


# --- the few CBOR items OSCORE needs (RFC 8949), encoded by hand -------------------------------
def _bstr(b):
    n = len(b)
    if n < 24:
        return bytes((0x40 | n,)) + b
    if n < 256:
        return bytes((0x58, n)) + b
    return bytes((0x59, n >> 8, n & 0xFF)) + b


def _info(ident, id_context, kind, length):
    """The HKDF info of §3.2.1: [id, id_context / nil, alg_aead, type, L]."""
    ctx = b"\xf6" if id_context is None else _bstr(id_context)
    tstr = bytes((0x60 | len(kind),)) + kind
    return b"\x85" + _bstr(ident) + ctx + b"\x0a" + tstr + bytes((length,))


def aad(request_kid, request_piv):
    """The serialized COSE Enc_structure of §5.4 (AES-CCM-16-64-128, no class I options)."""
    ext = b"\x85\x01\x81\x0a" + _bstr(request_kid) + _bstr(request_piv) + b"\x40"
    return b"\x83\x68Encrypt0\x40" + _bstr(ext)


# --- the OSCORE option (§6.1) ----------------------------------------------------------------
def encode_option(piv=None, kid=None, kid_context=None):
    """The OSCORE option value. ``None`` leaves a field out; all out gives b"" (§6.1)."""
    flags = 0
    out = bytearray(1)
    if piv is not None:
        if not 1 <= len(piv) <= 5:
            raise OscoreError("Partial IV must be 1-5 bytes")
        flags = len(piv)
        out.extend(piv)
    if kid_context is not None:
        if len(kid_context) > 255:
            raise OscoreError("kid context longer than 255 bytes")
        flags |= _FLAG_H
        out.append(len(kid_context))
        out.extend(kid_context)
    if kid is not None:
        flags |= _FLAG_K
        out.extend(kid)
    if not flags:
        return b""
    out[0] = flags
    return bytes(out)


def decode_option(value):
    """Parse an OSCORE option value. Returns ``(piv, kid, kid_context)``, each bytes or None.

    Raises OscoreError (code 4.02) for reserved flag bits, a Partial IV length of 6 or 7, a
    field longer than the option, trailing bytes, or a non-empty value with no flag set."""
    n = len(value)
    if n == 0:
        return None, None, None
    f = value[0]
    if f & 0xE0:
        raise OscoreError("OSCORE option uses reserved flag bits", coap.BAD_OPTION)
    if f == 0:
        raise OscoreError("OSCORE option with no flags must be empty", coap.BAD_OPTION)
    plen = f & 7
    if plen > 5:
        raise OscoreError("reserved Partial IV length %d" % plen, coap.BAD_OPTION)
    pos = 1 + plen
    if pos > n:
        raise OscoreError("Partial IV longer than the OSCORE option", coap.BAD_OPTION)
    piv = bytes(value[1:pos]) if plen else None
    ctx = None
    if f & _FLAG_H:
        if pos >= n:
            raise OscoreError("kid context length missing", coap.BAD_OPTION)
        s = value[pos]
        pos += 1
        if pos + s > n:
            raise OscoreError("kid context longer than the OSCORE option", coap.BAD_OPTION)
        ctx = bytes(value[pos : pos + s])
        pos += s
    kid = None
    if f & _FLAG_K:
        kid = bytes(value[pos:])
    elif pos != n:
        raise OscoreError("trailing bytes in the OSCORE option", coap.BAD_OPTION)
    return piv, kid, ctx


def piv_bytes(seq):
    """A sequence number as the shortest Partial IV (0 -> b"\\x00", §6.1)."""
    if seq < 256:
        return bytes((seq,))
    n = 0
    m = seq
    while m:
        n += 1
        m >>= 8
    return seq.to_bytes(n, "big")


class RequestId:
    """What binds a response to its request (§5.4, §8.1): the requester's kid and Partial IV,
    and whether the request was an Observe (FETCH) one. ``fresh``: the first response may reuse
    the request's nonce; after that a response needs its own Partial IV."""

    def __init__(self, kid, piv, observe):
        self.kid = kid
        self.piv = piv
        self.observe = observe
        self.fresh = True


class Context:
    """One OSCORE security context (§3): common, sender and recipient parts.

    ``seq`` is the next Sender Sequence Number. ``persist(bound)`` (optional) is called before a
    number at or beyond ``seq_bound`` is used, with the new bound (``seq + seq_block``): the
    caller writes it to flash, so after a power cut it restarts at the bound (Appendix B.1.1)
    and never reuses a number, with one write per ``seq_block`` messages.
    """

    def __init__(self, master_secret, master_salt, sender_id, recipient_id, id_context=None,
                 seq=0, persist=None, seq_block=256, window_ready=True):
        if len(sender_id) > MAX_ID or len(recipient_id) > MAX_ID:
            raise OscoreError("sender/recipient ID longer than 7 bytes")
        if sender_id == recipient_id:
            raise OscoreError("sender and recipient ID must differ")
        self.sender_id = bytes(sender_id)
        self.recipient_id = bytes(recipient_id)
        self.id_context = id_context
        salt = bytes(master_salt)
        self.sender_key = hkdf_sha256(salt, master_secret, _info(self.sender_id, id_context, b"Key", 16), 16)
        self.recipient_key = hkdf_sha256(salt, master_secret, _info(self.recipient_id, id_context, b"Key", 16), 16)
        self.common_iv = hkdf_sha256(salt, master_secret, _info(b"", id_context, b"IV", _NONCE_LEN), _NONCE_LEN)
        self.seq = seq
        self.seq_bound = seq if persist is not None else MAX_SEQ + 1
        self.seq_block = seq_block
        self.persist = persist
        # replay window (§7.4): ``top`` is the highest number accepted, bit i of ``bits`` is top - i
        self.top = -1
        self.bits = 0
        self.window_ready = window_ready
        self.echo = None  # the Echo value handed out while the window is not ready (B.1.2)

    # -- nonce and sequence numbers --
    def nonce(self, id_piv, piv):
        """The AEAD nonce of §5.2 for a Partial IV generated by the endpoint ``id_piv``."""
        buf = bytearray(_NONCE_LEN)
        buf[0] = len(id_piv)
        buf[_NONCE_LEN - 5 - len(id_piv) : _NONCE_LEN - 5] = id_piv
        buf[_NONCE_LEN - len(piv) :] = piv
        iv = self.common_iv
        for i in range(_NONCE_LEN):
            buf[i] ^= iv[i]
        return bytes(buf)

    def next_seq(self):
        """Take the next Sender Sequence Number (persisting a new bound first when needed)."""
        s = self.seq
        if s > MAX_SEQ:
            raise OscoreError("sender sequence numbers exhausted: new keys needed", coap.SERVICE_UNAVAILABLE)
        if s >= self.seq_bound:
            bound = s + self.seq_block
            self.persist(bound)
            self.seq_bound = bound
        self.seq = s + 1
        return s

    # -- replay window (§7.4) --
    def replay_ok(self, seq):
        """True if ``seq`` was not seen and is not too old for the window."""
        if seq > self.top:
            return True
        d = self.top - seq
        return d < WINDOW and not (self.bits >> d) & 1

    def replay_mark(self, seq):
        if seq > self.top:
            shift = seq - self.top
            self.bits = ((self.bits << shift) | 1) & 0xFFFFFFFF if shift < WINDOW else 1
            self.top = seq
        else:
            self.bits |= 1 << (self.top - seq)

    def window_from(self, seq):
        """Initialise the window at ``seq``: it and everything before it count as seen (B.1.2)."""
        self.top = seq
        self.bits = 0xFFFFFFFF
        self.window_ready = True
        self.echo = None

    # -- protect --
    def _seal(self, msg, code, outer_opts, inner_skip, kid, piv, nonce_id, nonce_piv, option_value):
        inner = coap.Message(coap.CON, msg.code, 0, b"", [o for o in msg.options if o[0] not in inner_skip],
                             msg.payload)
        enc = coap.encode(inner)
        plaintext = enc[1:2] + enc[4:]
        nonce = self.nonce(nonce_id, nonce_piv)
        ct = aes_ccm.encrypt(self.sender_key, nonce, aad(kid, piv), plaintext)
        outer = coap.Message(msg.mtype, code, msg.mid, msg.token, outer_opts, ct)
        outer.add_option(coap.OSCORE, option_value)
        return outer

    def protect_request(self, msg):
        """Protect a request (§8.1). Returns ``(outer Message, RequestId)``: keep the RequestId to
        verify the response. Raises OscoreError (the message already has OSCORE, or the
        sequence numbers are exhausted) or CoAPError (an option that cannot be encoded)."""
        if msg.get_option(coap.OSCORE) is not None:
            raise OscoreError("message is already OSCORE-protected")
        seq = self.next_seq()
        piv = piv_bytes(seq)
        obs = msg.get_option(coap.OBSERVE)
        outer_opts = [o for o in msg.options if o[0] in _OUTER_REQ]
        skip = (coap.URI_HOST, coap.URI_PORT, coap.PROXY_URI, coap.PROXY_SCHEME)
        kid = self.sender_id
        ov = encode_option(piv, kid, self.id_context)
        code = coap.FETCH if obs is not None else coap.POST
        outer = self._seal(msg, code, outer_opts, skip, kid, piv, kid, piv, ov)
        return outer, RequestId(kid, piv, obs is not None)

    def protect_response(self, msg, rid, new_piv=False):
        """Protect a response to the request ``rid`` came from (§8.3). The first response may
        reuse the request's nonce; ``new_piv`` (or any later one) takes a Sender Sequence
        Number. Observe goes outer only. Returns the outer Message."""
        if new_piv or not rid.fresh:
            seq = self.next_seq()
            piv = piv_bytes(seq)
            nonce_id = self.sender_id
            nonce_piv = piv
            ov = encode_option(piv)
        else:
            nonce_id = rid.kid
            nonce_piv = rid.piv
            ov = b""
        rid.fresh = False
        obs = msg.get_option(coap.OBSERVE)
        outer_opts = [(coap.OBSERVE, obs)] if obs is not None else []
        code = coap.CONTENT if rid.observe else coap.CHANGED
        return self._seal(msg, code, outer_opts, (coap.OBSERVE,), rid.kid, rid.piv, nonce_id, nonce_piv, ov)

    def echo_response(self, request, rid):
        """The protected 4.01 Unauthorized with our Echo value that answers a request the
        replay window could not check yet (Appendix B.1.2). ``self.echo`` must be set."""
        inner = coap.response_for(request, coap.UNAUTHORIZED)
        inner.add_option(ECHO, self.echo)
        inner.add_option(coap.MAX_AGE, 0)
        return self.protect_response(inner, rid, True)

    # -- verify --
    def _open(self, outer, kid_req, piv_req, nonce_id, nonce_piv, code_if_bad):
        ct = outer.payload
        if len(ct) < aes_ccm.TAG_LEN + 1:
            raise OscoreError("OSCORE ciphertext too short", code_if_bad)
        try:
            pt = aes_ccm.decrypt(self.recipient_key, self.nonce(nonce_id, nonce_piv), aad(kid_req, piv_req), ct)
        except aes_ccm.CCMError:
            raise OscoreError("decryption failed", code_if_bad) from None
        try:
            inner = coap.decode(b"\x40" + pt[:1] + b"\x00\x00" + pt[1:])
        except coap.CoAPError:
            raise OscoreError("decrypted message does not parse", code_if_bad) from None
        if inner.get_option(coap.OSCORE) is not None:
            raise OscoreError("nested OSCORE option", code_if_bad)
        inner.mtype = outer.mtype
        inner.mid = outer.mid
        inner.token = outer.token
        return inner

    def unprotect_request(self, outer):
        """Verify and decrypt a request (§8.2). Returns ``(inner Message, RequestId)``; the
        inner message has the outer's type, Message ID, token and class U options.

        Raises OscoreError (``code`` says how to answer: see the module docstring) when the
        OSCORE option is absent or bad, the kid is not our recipient's, the request is a
        replay, or decryption fails; NeedEcho when the window is not initialised. Nothing in
        the context changes unless the request verifies."""
        ov = outer.get_option(coap.OSCORE)
        if ov is None:
            raise OscoreError("request is not OSCORE-protected", coap.UNAUTHORIZED)
        piv, kid, ctx = decode_option(ov)
        if kid is None or piv is None:
            raise OscoreError("OSCORE request without kid or Partial IV", coap.BAD_REQUEST)
        if kid != self.recipient_id or ctx != self.id_context:
            raise OscoreError("unknown kid: security context not found", coap.UNAUTHORIZED)
        seq = 0
        for b in piv:
            seq = (seq << 8) | b
        if self.window_ready and not self.replay_ok(seq):
            raise OscoreError("replay detected", coap.UNAUTHORIZED)
        inner = self._open(outer, kid, piv, kid, piv, coap.BAD_REQUEST)
        if not inner.is_request():
            raise OscoreError("protected request carries a response code", coap.BAD_REQUEST)
        obs = outer.get_option(coap.OBSERVE)
        rid = RequestId(kid, piv, obs is not None)
        if not self.window_ready:
            echo = inner.get_option(ECHO)
            if self.echo is None or echo != self.echo:
                rid.fresh = False  # the 4.01 that answers it takes a Partial IV of its own
                raise NeedEcho(rid)
            self.window_from(seq)
        else:
            self.replay_mark(seq)
        self._merge_outer(inner, outer, (coap.URI_HOST, coap.URI_PORT, coap.PROXY_URI, coap.PROXY_SCHEME))
        if obs is None:
            inner.remove_option(coap.OBSERVE)
        return inner, rid

    def unprotect_response(self, outer, rid):
        """Verify and decrypt the response to the request ``rid`` came from (§8.4). Returns the
        inner Message (outer Observe, if any, copied in). Raises OscoreError when the option is
        absent or bad, names another kid, or decryption fails."""
        ov = outer.get_option(coap.OSCORE)
        if ov is None:
            raise OscoreError("response is not OSCORE-protected")
        piv, kid, ctx = decode_option(ov)
        if kid is not None and kid != self.recipient_id:
            raise OscoreError("response from another kid")
        if piv is None:
            nonce_id = rid.kid
            nonce_piv = rid.piv
        else:
            nonce_id = self.recipient_id
            nonce_piv = piv
        inner = self._open(outer, rid.kid, rid.piv, nonce_id, nonce_piv, coap.BAD_REQUEST)
        if not inner.is_response():
            raise OscoreError("protected response carries a request code")
        self._merge_outer(inner, outer, (coap.OBSERVE,))
        return inner

    @staticmethod
    def _merge_outer(inner, outer, nums):
        for num, value in outer.options:
            if num in nums and inner.get_option(num) is None:
                inner.add_option(num, value)


def context_from_hex(ms, salt, sid, rid, **kw):
    """A Context from the hex strings of a key file (SPEC "OSCORE": oscore.json)."""
    return Context(bytes.fromhex(ms), bytes.fromhex(salt), bytes.fromhex(sid), bytes.fromhex(rid), **kw)
