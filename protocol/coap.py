"""CoAP message codec (RFC 7252 §3, with Observe RFC 7641 and Block RFC 7959 option helpers).

Owns: the wire format of one CoAP message, protocol numbers, and the response/RST builders.
Duplicate detection (``Dedup``) and the CON retransmission timing live in
protocol/coap_exchange.py and are re-exported here, so ``coap.Dedup`` etc. work. No sockets,
no clock, no randomness. Runs on MicroPython and CPython.

Decisions:
* ``decode`` validates fully (RFC 7252 §3, §4.1-4.3) and raises ``CoAPError``; when the 4-byte
  header was readable the error carries ``.mid`` and ``.mtype`` so a receiver can answer a bad
  CON with RST (and silently drop a bad NON/ACK/RST, RFC 7252 §4.2-4.3).
* Options are kept as raw bytes, sorted by number with the order of repeated options kept.
  Text options are decoded lazily by the helpers (``path()`` etc.), which raise CoAPError on
  invalid UTF-8.
* Unknown options are kept; ``is_critical(num)`` tells the receiver whether to answer 4.02.
"""

try:
    from micropython import const
except ImportError:  # CPython

    def const(x):
        return x


from protocol.cbor import utf8_valid

# Exchange bookkeeping lives in its own module; re-exported here as part of the coap API.
from protocol.coap_exchange import (  # noqa: F401
    ACK_RANDOM_FACTOR,
    ACK_TIMEOUT_MS,
    EXCHANGE_LIFETIME_S,
    MAX_RETRANSMIT,
    MAX_TRANSMIT_SPAN_S,
    MAX_TRANSMIT_WAIT_S,
    NON_LIFETIME_S,
    PENDING,
    Dedup,
    initial_timeout_ms,
    next_timeout_ms,
)

# --- message types (RFC 7252 §3) -----------------------------------------------------------
CON = const(0)
NON = const(1)
ACK = const(2)
RST = const(3)
TYPE_NAMES = ("CON", "NON", "ACK", "RST")

# --- codes (RFC 7252 §12.1, RFC 8132), as class*32 + detail -----------------------------------
EMPTY = const(0)
GET = const(1)
POST = const(2)
PUT = const(3)
DELETE = const(4)
FETCH = const(5)
PATCH = const(6)
IPATCH = const(7)

CREATED = const(65)  # 2.01
DELETED = const(66)  # 2.02
VALID = const(67)  # 2.03
CHANGED = const(68)  # 2.04
CONTENT = const(69)  # 2.05
CONTINUE = const(95)  # 2.31
BAD_REQUEST = const(128)  # 4.00
UNAUTHORIZED = const(129)  # 4.01
BAD_OPTION = const(130)  # 4.02
FORBIDDEN = const(131)  # 4.03
NOT_FOUND = const(132)  # 4.04
METHOD_NOT_ALLOWED = const(133)  # 4.05
NOT_ACCEPTABLE = const(134)  # 4.06
REQUEST_ENTITY_INCOMPLETE = const(136)  # 4.08
PRECONDITION_FAILED = const(140)  # 4.12
REQUEST_ENTITY_TOO_LARGE = const(141)  # 4.13
UNSUPPORTED_CONTENT_FORMAT = const(143)  # 4.15
INTERNAL_SERVER_ERROR = const(160)  # 5.00
NOT_IMPLEMENTED = const(161)  # 5.01
BAD_GATEWAY = const(162)  # 5.02
SERVICE_UNAVAILABLE = const(163)  # 5.03
GATEWAY_TIMEOUT = const(164)  # 5.04
PROXYING_NOT_SUPPORTED = const(165)  # 5.05

# --- option numbers (RFC 7252 §5.10, RFC 7641, RFC 7959, RFC 8613, RFC 7967) ------------------
IF_MATCH = const(1)
URI_HOST = const(3)
ETAG = const(4)
IF_NONE_MATCH = const(5)
OBSERVE = const(6)
URI_PORT = const(7)
LOCATION_PATH = const(8)
OSCORE = const(9)
URI_PATH = const(11)
CONTENT_FORMAT = const(12)
MAX_AGE = const(14)
URI_QUERY = const(15)
ACCEPT = const(17)
LOCATION_QUERY = const(20)
BLOCK2 = const(23)
BLOCK1 = const(27)
SIZE2 = const(28)
PROXY_URI = const(35)
PROXY_SCHEME = const(39)
SIZE1 = const(60)
NO_RESPONSE = const(258)

_MAX_OPTION = const(65535)


class CoAPError(ValueError):
    """A datagram that is not a valid CoAP message, or a message that cannot be encoded.

    ``mid`` and ``mtype`` are set when the 4-byte header could be read (else None), so the
    receiver can RST a bad CON (RFC 7252 §4.2) and ignore anything else.
    """

    def __init__(self, msg, mid=None, mtype=None):
        super().__init__(msg)
        self.mid = mid
        self.mtype = mtype


def uint_bytes(n):
    """Encode a non-negative int as a minimal big-endian uint option value (0 -> b"")."""
    if n < 0:
        raise CoAPError("uint option value must not be negative")
    if n < 0x100:
        return bytes((n,)) if n else b""
    length = 0
    m = n
    while m:
        length += 1
        m >>= 8
    return n.to_bytes(length, "big")


def bytes_uint(b):
    """Decode a big-endian uint option value (b"" -> 0)."""
    n = 0
    for x in b:
        n = (n << 8) | x
    return n


def code_str(code):
    """Return the dotted form of a code: 69 -> "2.05"."""
    return "%d.%02d" % (code >> 5, code & 31)


def is_critical(num):
    """True if an option is critical (odd number, RFC 7252 §5.4.1): unknown ones get 4.02."""
    return bool(num & 1)


def block_value(num, more, szx):
    """Build a Block1/Block2 option value (RFC 7959 §2.2): block number, more flag, size exp."""
    return (num << 4) | (8 if more else 0) | (szx & 7)


def _text(b, what):
    try:
        text = str(b, "utf-8")
    except UnicodeError:
        text = None
    if text is None or (len(text) != len(b) and not utf8_valid(b)):
        raise CoAPError("invalid UTF-8 in " + what)
    return text


class Message:
    """One CoAP message. ``options`` is a list of (number, bytes), sorted by number (stable)."""

    def __init__(self, mtype=CON, code=0, mid=0, token=b"", options=None, payload=b""):
        self.mtype = mtype
        self.code = code
        self.mid = mid
        self.token = token
        self.options = [] if options is None else options
        self.payload = payload

    def __repr__(self):
        return "<CoAP %s %s mid=%d token=%s options=%r payload=%d bytes>" % (
            TYPE_NAMES[self.mtype & 3],
            code_str(self.code),
            self.mid,
            bytes(self.token).hex() if hasattr(self.token, "hex") else repr(self.token),
            self.options,
            len(self.payload),
        )

    # -- options --
    def add_option(self, num, value):
        """Append an option after any others of the same number. int -> minimal uint bytes,
        str -> UTF-8, bytes as is."""
        if value is True or value is False or value is None:
            raise CoAPError("option %d value must be int, str or bytes" % num)
        if isinstance(value, int):
            value = uint_bytes(value)
        elif isinstance(value, str):
            value = value.encode("utf-8")
        else:
            value = bytes(value)
        opts = self.options
        i = len(opts)
        while i > 0 and opts[i - 1][0] > num:
            i -= 1
        opts.insert(i, (num, value))
        return self

    def remove_option(self, num):
        """Remove every option with this number."""
        self.options = [o for o in self.options if o[0] != num]

    def get_options(self, num):
        """Return the values (bytes) of every option with this number, in order."""
        return [v for n, v in self.options if n == num]

    def get_option(self, num, default=None):
        """Return the first value (bytes) of this option, or ``default``."""
        for n, v in self.options:
            if n == num:
                return v
        return default

    def get_uint(self, num, default=None):
        """Return the first value of this option as a uint, or ``default`` if absent."""
        for n, v in self.options:
            if n == num:
                return bytes_uint(v)
        return default

    def path(self):
        """Uri-Path segments as a list of str. Raises CoAPError on invalid UTF-8."""
        return [_text(v, "Uri-Path") for v in self.get_options(URI_PATH)]

    def set_path(self, path):
        """Replace Uri-Path with the segments of "/rd/abc" (or a list of segments)."""
        self.remove_option(URI_PATH)
        segs = path.split("/") if isinstance(path, str) else path
        for s in segs:
            if s != "":
                self.add_option(URI_PATH, s)
        return self

    def path_str(self):
        """Uri-Path as "/a/b" ("/" when empty)."""
        return "/" + "/".join(self.path())

    def query(self):
        """Uri-Query items as a list of str."""
        return [_text(v, "Uri-Query") for v in self.get_options(URI_QUERY)]

    def query_dict(self):
        """Uri-Query as a dict: "k=v" -> {"k": "v"}, a bare "k" -> {"k": ""}; last one wins."""
        out = {}
        for q in self.query():
            i = q.find("=")
            if i < 0:
                out[q] = ""
            else:
                out[q[:i]] = q[i + 1 :]
        return out

    def location_path(self):
        """Location-Path segments as a list of str."""
        return [_text(v, "Location-Path") for v in self.get_options(LOCATION_PATH)]

    def content_format(self):
        return self.get_uint(CONTENT_FORMAT)

    def accept(self):
        return self.get_uint(ACCEPT)

    def observe(self):
        return self.get_uint(OBSERVE)

    def max_age(self):
        """Max-Age in seconds (default 60, RFC 7252 §5.10.5)."""
        return self.get_uint(MAX_AGE, 60)

    def _block(self, num):
        v = self.get_uint(num)
        if v is None:
            return None
        return (v >> 4, bool(v & 8), v & 7)

    def block1(self):
        """Block1 as (num, more, szx) or None (RFC 7959 §2.2); block size is 2**(szx+4)."""
        return self._block(BLOCK1)

    def block2(self):
        """Block2 as (num, more, szx) or None (RFC 7959 §2.2); block size is 2**(szx+4)."""
        return self._block(BLOCK2)

    # -- classification --
    def is_request(self):
        return 0 < self.code < 32

    def is_response(self):
        return self.code >= 64

    def is_empty(self):
        return self.code == 0

    def code_str(self):
        return code_str(self.code)


def encode(msg):
    """Encode a Message to bytes (RFC 7252 §3).

    Returns bytes. Raises CoAPError for a field out of range (type, code, mid, token > 8
    bytes, option number or value too large) or an empty message with token/options/payload.
    """
    mtype = msg.mtype
    code = msg.code
    mid = msg.mid
    token = msg.token
    tkl = len(token)
    if not 0 <= mtype <= 3 or not 0 <= code <= 255 or not 0 <= mid <= 0xFFFF:
        raise CoAPError("type, code or message id out of range")
    if tkl > 8:
        raise CoAPError("token longer than 8 bytes")
    if code == 0 and (tkl or msg.options or msg.payload):
        raise CoAPError("an empty message has no token, options or payload")
    buf = bytearray(4)
    buf[0] = 0x40 | (mtype << 4) | tkl
    buf[1] = code
    buf[2] = mid >> 8
    buf[3] = mid & 0xFF
    buf.extend(token)
    opts = msg.options
    # Options must be in order; sort (stably) only if the caller built the list by hand.
    for i in range(1, len(opts)):
        if opts[i][0] < opts[i - 1][0]:
            opts = sorted(opts, key=_num)
            break
    last = 0
    for num, value in opts:
        if not 0 <= num <= _MAX_OPTION:
            raise CoAPError("option number %d out of range" % num)
        delta = num - last
        last = num
        length = len(value)
        if length > 65535 + 269:
            raise CoAPError("option %d value too long" % num)
        pos = len(buf)
        buf.append(0)
        hi = _ext(buf, delta)  # the delta's extension bytes come before the length's
        lo = _ext(buf, length)
        buf[pos] = (hi << 4) | lo
        buf.extend(value)
    if msg.payload:
        buf.append(0xFF)
        buf.extend(msg.payload)
    return bytes(buf)


def _num(opt):
    return opt[0]


def _ext(buf, n):
    """Append the extended form of an option delta or length; return its 4-bit nibble."""
    if n < 13:
        return n
    if n < 269:
        buf.append(n - 13)
        return 13
    n -= 269
    buf.append(n >> 8)
    buf.append(n & 0xFF)
    return 14


def decode(data):
    """Decode one datagram (bytes, bytearray or memoryview) into a Message (RFC 7252 §3).

    Returns a Message whose token and payload are bytes. Raises CoAPError (with ``mid``
    and ``mtype`` once the header was readable) for: fewer than 4 bytes, version != 1, token
    length 9-15, truncated token/option, option nibble 15 without the payload marker,
    a payload marker with no payload, option number > 65535, reserved code classes 1, 6, 7,
    an empty message (code 0) with anything after the header, a non-empty RST, or an ACK
    carrying a request.
    """
    if not isinstance(data, bytes):
        if not isinstance(data, (bytearray, memoryview)):
            raise CoAPError("decode needs bytes, not %s" % type(data).__name__)
        data = bytes(data)
    end = len(data)
    if end < 4:
        raise CoAPError("datagram shorter than the 4-byte CoAP header")
    b0 = data[0]
    mtype = (b0 >> 4) & 3
    mid = (data[2] << 8) | data[3]
    if b0 >> 6 != 1:
        # RFC 7252 §3: a message of unknown version MUST be silently ignored, so no MID
        # is handed out for an RST
        raise CoAPError("CoAP version %d is not 1" % (b0 >> 6))
    tkl = b0 & 0x0F
    code = data[1]
    if tkl > 8:
        raise CoAPError("token length %d is reserved" % tkl, mid, mtype)
    cls = code >> 5
    if cls == 1 or cls >= 6:
        raise CoAPError("reserved code class %s" % code_str(code), mid, mtype)
    if code == 0:
        if end != 4:
            raise CoAPError("empty message with token, options or payload", mid, mtype)
        return Message(mtype, 0, mid)
    if mtype == RST:
        raise CoAPError("RST must be empty", mid, mtype)
    if mtype == ACK and cls == 0:
        raise CoAPError("ACK carrying a request", mid, mtype)
    pos = 4 + tkl
    if pos > end:
        raise CoAPError("truncated token", mid, mtype)
    token = data[4:pos]
    options = []
    num = 0
    payload = b""
    while pos < end:
        b = data[pos]
        pos += 1
        if b == 0xFF:
            if pos == end:
                raise CoAPError("payload marker followed by no payload", mid, mtype)
            payload = data[pos:]
            break
        delta = b >> 4
        length = b & 0x0F
        if delta == 15 or length == 15:
            raise CoAPError("reserved option nibble 15", mid, mtype)
        if delta == 13:
            if pos >= end:
                raise CoAPError("truncated option delta", mid, mtype)
            delta = data[pos] + 13
            pos += 1
        elif delta == 14:
            if pos + 2 > end:
                raise CoAPError("truncated option delta", mid, mtype)
            delta = ((data[pos] << 8) | data[pos + 1]) + 269
            pos += 2
        if length == 13:
            if pos >= end:
                raise CoAPError("truncated option length", mid, mtype)
            length = data[pos] + 13
            pos += 1
        elif length == 14:
            if pos + 2 > end:
                raise CoAPError("truncated option length", mid, mtype)
            length = ((data[pos] << 8) | data[pos + 1]) + 269
            pos += 2
        num += delta
        if num > _MAX_OPTION:
            raise CoAPError("option number %d out of range" % num, mid, mtype)
        if pos + length > end:
            raise CoAPError("option %d value truncated" % num, mid, mtype)
        options.append((num, data[pos : pos + length]))
        pos += length
    return Message(mtype, code, mid, token, options, payload)


def response_for(request, code, payload=b"", content_format=None, mid=None):
    """Build the response to ``request`` (RFC 7252 §5.2).

    A CON request gets a piggybacked ACK with its Message ID; a NON request gets a NON
    response, whose Message ID is ``mid`` (the responder's own, fresh one; defaults to the
    request's). The token is echoed. Returns a Message (the caller may add options).
    """
    if request.mtype == CON:
        mtype = ACK
        mid = request.mid
    else:
        mtype = NON
        if mid is None:
            mid = request.mid
    msg = Message(mtype, code, mid, request.token, None, payload)
    if content_format is not None:
        msg.add_option(CONTENT_FORMAT, content_format)
    return msg


def diagnostic(text, limit=64):
    """Encode an error's diagnostic payload: UTF-8, at most ``limit`` bytes (SPEC §8), cut at a
    character boundary. Returns bytes."""
    b = text.encode("utf-8")
    if len(b) <= limit:
        return b
    end = limit
    while end > 0 and (b[end] & 0xC0) == 0x80:  # do not split a multi-byte character
        end -= 1
    return b[:end]


def error_response(request, code, text=None, mid=None):
    """``response_for`` with an optional text/plain diagnostic payload (SPEC §8)."""
    if not text:
        return response_for(request, code, b"", None, mid)
    return response_for(request, code, diagnostic(text), 0, mid)


def rst_for(mid):
    """Return the RST Message that rejects message ``mid`` (RFC 7252 §4.2)."""
    return Message(RST, 0, mid)
