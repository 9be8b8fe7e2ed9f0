"""AES-CCM-16-64-128 (COSE algorithm 10; RFC 3610 with a 16-byte key, a 13-byte nonce, 2-byte
length field and an 8-byte tag), built on a block cipher in ECB and CBC mode only.

Owns: CCM itself (CBC-MAC, CTR key stream, tag check). The block cipher comes from what the
platform has: MicroPython's ``cryptolib.aes`` (ECB = mode 1, CBC = mode 2; what a stock ESP32
build ships, with no CTR, CCM or GCM), or on CPython the ``cryptography`` package's AES behind
the same two-method interface. No I/O, no clock, no randomness.

Decisions:
* The CBC-MAC is one CBC cipher with a zero IV fed the formatted input (B0, length-prefixed
  AAD, padded plaintext) in 256-byte chunks; the tag is the last block. The CTR key stream is
  ECB over 16 counter blocks per call. Calls into C, never a Python loop per block, and no
  temporary larger than a chunk: a 1 KB message in a fragmented 64 KB heap still finds room.
* XOR is done on big ints (``int.from_bytes``) per chunk, one C-level operation instead of a
  loop per byte; the output is written into one preallocated bytearray.
* Decryption compares the whole tag before returning anything; a wrong tag raises
  ``CCMError`` and returns no plaintext.
"""

try:
    from cryptolib import aes as _aes

    def _ecb(key):
        return _aes(key, 1)

    def _cbc(key, iv):
        return _aes(key, 2, iv)

except ImportError:  # CPython: the same interface over the `cryptography` package
    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

    class _Cipher:
        def __init__(self, key, mode):
            self._enc = Cipher(algorithms.AES(bytes(key)), mode).encryptor()

        def encrypt(self, data):
            return self._enc.update(bytes(data))

    def _ecb(key):
        return _Cipher(key, modes.ECB())

    def _cbc(key, iv):
        return _Cipher(key, modes.CBC(bytes(iv)))


KEY_LEN = 16
NONCE_LEN = 13
TAG_LEN = 8
MAX_TEXT = 65535  # a 2-byte length field (L = 2)
_CHUNK = 256  # bytes per call into the cipher: bounds every temporary (16 blocks)
_ZERO16 = bytes(16)


class CCMError(ValueError):
    """Bad key/nonce length, a text too long for L = 2, or a tag that does not verify."""


def _check(key, nonce, n):
    if len(key) != KEY_LEN or len(nonce) != NONCE_LEN:
        raise CCMError("AES-CCM-16-64-128 needs a 16-byte key and a 13-byte nonce")
    if n > MAX_TEXT:
        raise CCMError("text longer than 65535 bytes")


def _mac(key, nonce, aad, text):
    """The raw CBC-MAC T (8 bytes) of RFC 3610 §2.2, fed to one CBC cipher in chunks (it keeps
    its chaining state between calls), so no copy of the whole text is made."""
    la = len(aad)
    n = len(text)
    buf = bytearray(16)
    buf[0] = (0x40 if la else 0) | 0x18 | 0x01  # Adata, M' = (8-2)/2 = 3, L' = 2-1 = 1
    buf[1:14] = nonce
    buf[14] = n >> 8
    buf[15] = n & 0xFF
    if la:
        if la >= 0xFF00:
            raise CCMError("associated data too long")
        buf.append(la >> 8)
        buf.append(la & 0xFF)
        buf.extend(aad)
        pad = -len(buf) % 16
        if pad:
            buf.extend(_ZERO16[:pad])
    cbc = _cbc(key, _ZERO16)
    last = cbc.encrypt(buf)
    mv = memoryview(text)
    for i in range(0, n, _CHUNK):
        chunk = mv[i : i + _CHUNK]
        if len(chunk) % 16:
            chunk = bytearray(chunk)
            chunk.extend(_ZERO16[: -len(chunk) % 16])
        last = cbc.encrypt(chunk)
    return last[len(last) - 16 : len(last) - 16 + TAG_LEN]


def _ctr(key, nonce, text, out):
    """XOR ``text`` with the key stream S1, S2... (RFC 3610 §2.3) into ``out``; returns S0."""
    ecb = _ecb(key)
    ctr = bytearray(_CHUNK + 16)
    n = len(text)
    mv = memoryview(text)
    s0 = None
    for i in range(0, n or 1, _CHUNK):
        m = min(_CHUNK, n - i)
        # counter j = 0 gives S0 (it masks the tag) and comes first with the first chunk only;
        # text[i:] is XORed with S(i/16 + 1)...
        first = i // 16 + 1 if i else 0
        blocks = (m + 15) // 16 + (0 if i else 1)
        for b in range(blocks):
            o = 16 * b
            j = first + b
            ctr[o] = 0x01  # L' = 1
            ctr[o + 1 : o + 14] = nonce
            ctr[o + 14] = j >> 8
            ctr[o + 15] = j & 0xFF
        ks = ecb.encrypt(memoryview(ctr)[: 16 * blocks])
        skip = 0 if i else 16
        if i == 0:
            s0 = ks[:16]
        if m > 0:
            x = int.from_bytes(mv[i : i + m], "big") ^ int.from_bytes(ks[skip : skip + m], "big")
            out[i : i + m] = x.to_bytes(m, "big")
    return s0


def _xor8(t, s0):
    return (int.from_bytes(t, "big") ^ int.from_bytes(s0[:TAG_LEN], "big")).to_bytes(TAG_LEN, "big")


def encrypt(key, nonce, aad, plaintext):
    """Encrypt and authenticate. Returns ciphertext || 8-byte tag (a bytearray). Raises CCMError."""
    n = len(plaintext)
    _check(key, nonce, n)
    t = _mac(key, nonce, aad, plaintext)
    out = bytearray(n + TAG_LEN)
    s0 = _ctr(key, nonce, plaintext, out)
    out[n:] = _xor8(t, s0)
    return out


def decrypt(key, nonce, aad, data):
    """Check the tag and decrypt ciphertext || tag. Returns the plaintext (a bytearray).

    Raises CCMError if ``data`` is shorter than the tag or the tag does not verify."""
    n = len(data) - TAG_LEN
    if n < 0:
        raise CCMError("ciphertext shorter than the 8-byte tag")
    _check(key, nonce, n)
    mv = memoryview(data)
    out = bytearray(n)
    s0 = _ctr(key, nonce, mv[:n], out)
    t = _xor8(_mac(key, nonce, aad, out), s0)
    got = mv[n:]
    diff = 0
    for i in range(TAG_LEN):
        diff |= t[i] ^ got[i]
    if diff:
        raise CCMError("authentication tag does not verify")
    return out
