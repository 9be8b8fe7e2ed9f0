"""AES-CCM-16-64-128 (COSE algorithm 10; RFC 3610 with a 16-byte key, a 13-byte nonce, 2-byte
length field and an 8-byte tag), built on a block cipher in ECB and CBC mode only.

Owns: CCM itself (CBC-MAC, CTR key stream, tag check). The block cipher comes from what the
platform has: MicroPython's ``cryptolib.aes`` (ECB = mode 1, CBC = mode 2; what a stock ESP32
build ships, with no CTR, CCM or GCM), or on CPython the ``cryptography`` package's AES behind
the same two-method interface. No I/O, no clock, no randomness.

Decisions:
* The CBC-MAC runs as ONE CBC encryption of the formatted input (B0, length-prefixed AAD,
  padded plaintext) with a zero IV; the tag is the last block. The CTR key stream is ONE ECB
  encryption of all counter blocks. Both are single calls into C, not a Python loop per block.
* XOR is done on big ints (``int.from_bytes``), one C-level operation instead of a loop per byte.
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
_ZERO16 = bytes(16)


class CCMError(ValueError):
    """Bad key/nonce length, a text too long for L = 2, or a tag that does not verify."""


def _xor(a, b):
    n = len(a)
    if n == 0:
        return b""
    return (int.from_bytes(a, "big") ^ int.from_bytes(b[:n], "big")).to_bytes(n, "big")


def _check(key, nonce, n):
    if len(key) != KEY_LEN or len(nonce) != NONCE_LEN:
        raise CCMError("AES-CCM-16-64-128 needs a 16-byte key and a 13-byte nonce")
    if n > MAX_TEXT:
        raise CCMError("text longer than 65535 bytes")


def _mac(key, nonce, aad, text):
    """The raw CBC-MAC T (8 bytes) of RFC 3610 §2.2."""
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
    if n:
        buf.extend(text)
        pad = -n % 16
        if pad:
            buf.extend(_ZERO16[:pad])
    out = _cbc(key, _ZERO16).encrypt(buf)
    return out[len(out) - 16 : len(out) - 16 + TAG_LEN]


def _stream(key, nonce, n):
    """S0 (16 bytes) followed by the key stream S1, S2... for ``n`` bytes (RFC 3610 §2.3)."""
    blocks = (n + 15) // 16 + 1
    ctr = bytearray(16 * blocks)
    for i in range(blocks):
        o = 16 * i
        ctr[o] = 0x01  # L' = 1
        ctr[o + 1 : o + 14] = nonce
        ctr[o + 14] = i >> 8
        ctr[o + 15] = i & 0xFF
    return _ecb(key).encrypt(ctr)


def encrypt(key, nonce, aad, plaintext):
    """Encrypt and authenticate. Returns ciphertext || 8-byte tag (bytes). Raises CCMError."""
    n = len(plaintext)
    _check(key, nonce, n)
    t = _mac(key, nonce, aad, plaintext)
    s = _stream(key, nonce, n)
    return _xor(plaintext, s[16:]) + _xor(t, s)


def decrypt(key, nonce, aad, data):
    """Check the tag and decrypt ciphertext || tag. Returns the plaintext (bytes).

    Raises CCMError if ``data`` is shorter than the tag or the tag does not verify."""
    n = len(data) - TAG_LEN
    if n < 0:
        raise CCMError("ciphertext shorter than the 8-byte tag")
    _check(key, nonce, n)
    s = _stream(key, nonce, n)
    mv = memoryview(data)
    plaintext = _xor(mv[:n], s[16:])
    t = _xor(_mac(key, nonce, aad, plaintext), s)
    got = bytes(mv[n:])
    diff = 0
    for i in range(TAG_LEN):
        diff |= t[i] ^ got[i]
    if diff:
        raise CCMError("authentication tag does not verify")
    return plaintext
