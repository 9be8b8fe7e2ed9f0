"""CBOR (RFC 8949) encoder and decoder for the data model the wire contract uses.

Owns: turning ints, floats, text, bytes, lists/tuples, dicts, bools and None into CBOR and
back. Pure and sans-I/O; runs unchanged on MicroPython (ESP32, Unix port) and CPython.

Design decisions (the node is small, the gateway faces the network):

* Encoding is *deterministic* (RFC 8949 §4.2.1): shortest integer heads, and map keys sorted by
  the bytewise order of their encodings. MicroPython dicts do not keep insertion order, so this
  is what makes a node and the gateway produce the same bytes for the same value.
* Floats use preferred serialization (RFC 8949 §4.2.2): the shortest of float16, float32 and
  float64 that holds the value exactly. NaN is always ``f9 7e00`` and the infinities
  ``f9 7c00`` / ``f9 fc00``. float16 is converted by hand (ESP32 ``struct`` may lack ``'e'``).
  On a port whose floats are 32-bit, every float fits float32, so float64 is never emitted
  there, and a decoded float64 is rounded to the port's float.
* Integers: -2**64 .. 2**64-1 (major types 0 and 1); anything larger raises CBORError
  (bignum tags are not supported).
* The decoder rejects, with CBORError:
  - indefinite-length items (additional info 31) and the "break" code: nothing in the
    contract needs them and they complicate bounded decoding;
  - tags (major type 6): no tag is part of the contract;
  - simple values other than false/true/null, including ``undefined``;
  - reserved additional info 28-30;
  - nesting deeper than ``max_depth`` (default 16) arrays/maps, and (optionally) more than
    ``max_items`` elements in all;
  - a declared length larger than the bytes that remain (a byte/text string needs n bytes,
    an array n bytes, a map 2n bytes), so hostile input never makes us allocate more than
    the datagram's size;
  - truncated items and trailing bytes after the top-level item;
  - text that is not valid UTF-8;
  - map keys that are not hashable (arrays, maps) and duplicate map keys.
  Non-shortest integer heads and float widths are accepted (RFC 8949 §5.2: be liberal).
* Arrays decode to lists, maps to dicts, byte strings to bytes.
"""

import math
import struct

_DEFAULT_DEPTH = 16


class CBORError(ValueError):
    """Raised for anything that is not encodable, or not well-formed and supported CBOR."""


# --- encoding -----------------------------------------------------------------------------


def _head(buf, major, n):
    mt = major << 5
    if n < 24:
        buf.append(mt | n)
    elif n < 0x100:
        buf.append(mt | 24)
        buf.append(n)
    elif n < 0x10000:
        buf.append(mt | 25)
        buf.extend(struct.pack(">H", n))
    elif n < 0x100000000:
        buf.append(mt | 26)
        buf.extend(struct.pack(">I", n))
    elif n < 0x10000000000000000:
        buf.append(mt | 27)
        buf.extend(struct.pack(">Q", n))
    else:
        raise CBORError("integer out of 64-bit range")


def _half_bits(x):
    """Return the float16 bit pattern of finite ``x`` if it is exact there, else None."""
    sign = 0x8000 if math.copysign(1.0, x) < 0 else 0
    a = -x if sign else x
    if a == 0:
        return sign
    m, e = math.frexp(a)  # a = m * 2**e, 0.5 <= m < 1
    e -= 1  # exponent of the leading 1 bit
    if e > 15:
        return None
    if e >= -14:
        f = m * 2048.0 - 1024.0  # 10 fraction bits
        fi = int(f)
        if fi != f:
            return None
        return sign | ((e + 15) << 10) | fi
    f = math.ldexp(a, 24)  # subnormal: a = f * 2**-24
    fi = int(f)
    if fi != f or fi >= 1024:
        return None
    return sign | fi


def _half_value(h):
    e = (h >> 10) & 0x1F
    f = h & 0x3FF
    if e == 0:
        v = math.ldexp(f, -24)
    elif e == 31:
        v = float("nan") if f else float("inf")
    else:
        v = math.ldexp(f + 1024, e - 25)
    return -v if h & 0x8000 else v


def _float(buf, x):
    if x != x:
        buf.extend(b"\xf9\x7e\x00")
        return
    if math.isinf(x):
        buf.extend(b"\xf9\xfc\x00" if x < 0 else b"\xf9\x7c\x00")
        return
    h = _half_bits(x)
    if h is not None:
        buf.append(0xF9)
        buf.extend(struct.pack(">H", h))
        return
    try:
        s = struct.pack(">f", x)
    except OverflowError:  # CPython refuses values beyond float32's range
        s = None
    if s is not None and struct.unpack(">f", s)[0] == x:
        buf.append(0xFA)
        buf.extend(s)
        return
    buf.append(0xFB)
    buf.extend(struct.pack(">d", x))


def _enc(buf, obj, depth):
    # bool first: it is an int subclass on CPython (not on MicroPython).
    if obj is False:
        buf.append(0xF4)
    elif obj is True:
        buf.append(0xF5)
    elif obj is None:
        buf.append(0xF6)
    elif isinstance(obj, int):
        if obj >= 0:
            _head(buf, 0, obj)
        else:
            _head(buf, 1, -1 - obj)
    elif isinstance(obj, float):
        _float(buf, obj)
    elif isinstance(obj, str):
        b = obj.encode("utf-8")
        _head(buf, 3, len(b))
        buf.extend(b)
    elif isinstance(obj, (bytes, bytearray, memoryview)):
        _head(buf, 2, len(obj))
        buf.extend(obj)
    else:
        if depth <= 0:
            raise CBORError("nesting too deep to encode")
        if isinstance(obj, (list, tuple)):
            _head(buf, 4, len(obj))
            for item in obj:
                _enc(buf, item, depth - 1)
        elif isinstance(obj, dict):
            _head(buf, 5, len(obj))
            if len(obj) == 1:
                for k, v in obj.items():
                    _enc(buf, k, depth - 1)
                    _enc(buf, v, depth - 1)
                return
            keys = _int_keys_sorted(obj)
            if keys is not None:
                for k in keys:
                    _enc(buf, k, depth - 1)
                    _enc(buf, obj[k], depth - 1)
                return
            items = []
            for k, v in obj.items():
                kb = bytearray()
                _enc(kb, k, depth - 1)
                items.append((bytes(kb), v))
            items.sort(key=_first)
            for kb, v in items:
                buf.extend(kb)
                _enc(buf, v, depth - 1)
        else:
            raise CBORError("cannot encode %s" % type(obj).__name__)


def _first(pair):
    return pair[0]


def _int_keys_sorted(d):
    """Keys of an all-int-keyed map in deterministic order, or None if any key is not an int.

    For ints, bytewise order of the encodings is: non-negative ascending, then negative by
    descending value (major type 1 encodes -1-k). This avoids encoding every key twice (SenML
    records are int-keyed).
    """
    pos = []
    neg = []
    for k in d:
        if not isinstance(k, int) or k is True or k is False:
            return None
        if k >= 0:
            pos.append(k)
        else:
            neg.append(k)
    pos.sort()
    if neg:
        neg.sort(reverse=True)
        pos.extend(neg)
    return pos


def dumps(obj, max_depth=64):
    """Encode ``obj`` as deterministic CBOR (RFC 8949 §4.2).

    Returns bytes. Raises CBORError for an unsupported type, an int outside
    -2**64 .. 2**64-1, or nesting deeper than ``max_depth`` (which also stops cycles).
    """
    buf = bytearray()
    _enc(buf, obj, max_depth)
    return bytes(buf)


# --- decoding -----------------------------------------------------------------------------


def utf8_valid(b):
    """Strict UTF-8 check (RFC 3629): no overlong forms, surrogates or code points > U+10FFFF."""
    i = 0
    n = len(b)
    while i < n:
        c = b[i]
        if c < 0x80:
            i += 1
            continue
        if 0xC2 <= c <= 0xDF:
            k, lo, hi = 1, 0x80, 0xBF
        elif 0xE0 <= c <= 0xEF:
            k = 2
            lo = 0xA0 if c == 0xE0 else 0x80
            hi = 0x9F if c == 0xED else 0xBF
        elif 0xF0 <= c <= 0xF4:
            k = 3
            lo = 0x90 if c == 0xF0 else 0x80
            hi = 0x8F if c == 0xF4 else 0xBF
        else:
            return False
        if i + k >= n:
            return False
        if not lo <= b[i + 1] <= hi:
            return False
        for j in range(i + 2, i + k + 1):
            if not 0x80 <= b[j] <= 0xBF:
                return False
        i += k + 1
    return True


def _lax_utf8():
    # MicroPython's str() accepts surrogates and overlong forms; CPython's does not.
    try:
        str(b"\xed\xa0\x80", "utf-8")
        return True
    except UnicodeError:
        return False


_LAX_UTF8 = _lax_utf8()


# --- decoding: items ---------------------------------------------------------------------


def _arg(data, pos, ai, end):
    """Read the argument of a head whose additional info is ``ai``; return (n, pos)."""
    if ai < 24:
        return ai, pos
    if ai == 24:
        if pos + 1 > end:
            raise CBORError("truncated head at byte %d" % pos)
        return data[pos], pos + 1
    if ai == 25:
        if pos + 2 > end:
            raise CBORError("truncated head at byte %d" % pos)
        return (data[pos] << 8) | data[pos + 1], pos + 2
    if ai == 26:
        if pos + 4 > end:
            raise CBORError("truncated head at byte %d" % pos)
        return struct.unpack_from(">I", data, pos)[0], pos + 4
    if ai == 27:
        if pos + 8 > end:
            raise CBORError("truncated head at byte %d" % pos)
        return struct.unpack_from(">Q", data, pos)[0], pos + 8
    if ai == 31:
        raise CBORError("indefinite-length item at byte %d not supported" % (pos - 1))
    raise CBORError("reserved additional info %d at byte %d" % (ai, pos - 1))


def _dec(data, pos, end, depth, budget):
    if pos >= end:
        raise CBORError("truncated: item expected at byte %d" % pos)
    ib = data[pos]
    major = ib >> 5
    ai = ib & 0x1F
    if major == 7:
        pos += 1
        if ai == 20:
            return False, pos
        if ai == 21:
            return True, pos
        if ai == 22:
            return None, pos
        if ai == 25:
            if pos + 2 > end:
                raise CBORError("truncated float16 at byte %d" % (pos - 1))
            return _half_value((data[pos] << 8) | data[pos + 1]), pos + 2
        if ai == 26:
            if pos + 4 > end:
                raise CBORError("truncated float32 at byte %d" % (pos - 1))
            return struct.unpack_from(">f", data, pos)[0], pos + 4
        if ai == 27:
            if pos + 8 > end:
                raise CBORError("truncated float64 at byte %d" % (pos - 1))
            return struct.unpack_from(">d", data, pos)[0], pos + 8
        if ai == 31:
            raise CBORError("unexpected break at byte %d (indefinite lengths not supported)" % (pos - 1))
        raise CBORError("unsupported simple value (ai %d) at byte %d" % (ai, pos - 1))
    if major == 6:
        raise CBORError("tags not supported (byte %d)" % pos)
    if ai < 24:  # fast path: the argument is in the initial byte
        n = ai
        pos += 1
    else:
        n, pos = _arg(data, pos + 1, ai, end)
    if major == 0:
        return n, pos
    if major == 1:
        return -1 - n, pos
    left = end - pos
    if major == 2 or major == 3:
        if n > left:
            raise CBORError("declared length %d exceeds the %d bytes left" % (n, left))
        b = bytes(data[pos : pos + n])
        if major == 2:
            return b, pos + n
        try:
            text = str(b, "utf-8")
        except UnicodeError:
            text = None
        if text is None or (_LAX_UTF8 and len(text) != n and not utf8_valid(b)):
            raise CBORError("invalid UTF-8 in text string at byte %d" % pos)
        return text, pos + n
    if depth <= 0:
        raise CBORError("nesting deeper than the limit at byte %d" % pos)
    if major == 4:
        if n > left:
            raise CBORError("array of %d items cannot fit the %d bytes left" % (n, left))
        if budget is not None:
            _spend(budget, n)
        if n == 0:
            return [], pos
        out = [None] * n  # one allocation, bounded by the bytes left
        for i in range(n):
            out[i], pos = _dec(data, pos, end, depth - 1, budget)
        return out, pos
    # major 5: map
    if 2 * n > left:
        raise CBORError("map of %d pairs cannot fit the %d bytes left" % (n, left))
    if budget is not None:
        _spend(budget, 2 * n)
    out = {}
    for _ in range(n):
        kpos = pos
        k, pos = _dec(data, pos, end, depth - 1, budget)
        if isinstance(k, (list, dict)):
            raise CBORError("unhashable map key at byte %d" % kpos)
        v, pos = _dec(data, pos, end, depth - 1, budget)
        if k in out:
            raise CBORError("duplicate map key at byte %d" % kpos)
        out[k] = v
    return out, pos


def _spend(budget, n):
    budget[0] -= n
    if budget[0] < 0:
        raise CBORError("more items than the limit")


def loads(data, max_depth=_DEFAULT_DEPTH, max_items=None):
    """Decode exactly one CBOR item from ``data`` (bytes, bytearray or memoryview).

    ``max_items`` (default: no limit beyond the input's length) caps the number of array
    elements plus map keys and values, which bounds the heap a hostile input can cost: each
    input byte can become an object (a 1 KB array of empty maps is ~70 KB of heap on the
    64-bit Unix port). A small node should pass a small limit for small resources.

    Returns the value (see the module docstring for the mapping). Raises CBORError for
    malformed, truncated, trailing, unsupported, too large or too deeply nested input
    (RFC 8949 §3, §5).
    """
    if not isinstance(data, bytes):
        if not isinstance(data, (bytearray, memoryview)):
            raise CBORError("loads needs bytes, not %s" % type(data).__name__)
        data = bytes(data)
    end = len(data)
    obj, pos = _dec(data, 0, end, max_depth, None if max_items is None else [max_items])
    if pos != end:
        raise CBORError("%d trailing bytes after the item" % (end - pos))
    return obj
