"""CoAP exchange bookkeeping (RFC 7252 §4): transmission parameters, CON retransmission
timing and duplicate detection, shared by the node and the gateway.

Sans-I/O: the caller passes time (``now_ms``) and random numbers (``rand01``) in. Runs on
MicroPython and CPython. Re-exported by protocol/coap.py (use ``coap.Dedup`` etc.).
"""

try:
    from micropython import const
except ImportError:  # CPython

    def const(x):
        return x


# --- transmission parameters (RFC 7252 §4.8) ---------------------------------------------
ACK_TIMEOUT_MS = const(2000)
ACK_RANDOM_FACTOR = 1.5
MAX_RETRANSMIT = const(4)
EXCHANGE_LIFETIME_S = const(247)
NON_LIFETIME_S = const(145)
MAX_TRANSMIT_SPAN_S = const(45)
MAX_TRANSMIT_WAIT_S = const(93)


def initial_timeout_ms(rand01):
    """First CON retransmission timeout, in ACK_TIMEOUT * [1, ACK_RANDOM_FACTOR) (§4.8.1).

    ``rand01`` is a random number in [0, 1) the caller draws.
    """
    return int(ACK_TIMEOUT_MS * (1 + rand01 * (ACK_RANDOM_FACTOR - 1)))


def next_timeout_ms(prev):
    """Timeout after a retransmission: doubled (RFC 7252 §4.2)."""
    return prev * 2


# Returned by Dedup.lookup for a request that is known but still being processed.
PENDING = b""


class Dedup:
    """Duplicate detection for received CON/NON messages (RFC 7252 §4.5).

    Keyed by (peer, mid); stores the encoded response so a duplicate gets the same answer
    without the request being processed twice. ``capacity`` bounds memory: when full, the
    oldest entry is dropped. Entries expire after ``lifetime_ms`` (EXCHANGE_LIFETIME).
    ``now_ms`` must be a monotonic millisecond count that does not wrap (on MicroPython,
    extend ``time.ticks_ms()`` with ``ticks_diff``); an entry that seems to come from the
    future (a clock that went backwards) counts as expired.

    Receiver pattern::

        cached = dedup.lookup(peer, msg.mid, now_ms)
        if cached is not None:          # a duplicate
            if cached:                  # its answer is known: send it again
                send(cached, peer)
            return                      # PENDING (b""): still being processed, drop it
        dedup.remember(peer, msg.mid, None, now_ms)        # optional: mark in progress
        out = encode(handle(msg))
        dedup.remember(peer, msg.mid, out, now_ms)
        send(out, peer)
    """

    def __init__(self, capacity=32, lifetime_ms=EXCHANGE_LIFETIME_S * 1000):
        if capacity < 1:
            raise ValueError("capacity must be >= 1")
        self.capacity = capacity
        self.lifetime_ms = lifetime_ms
        self._map = {}  # (peer, mid) -> ring slot
        self._keys = [None] * capacity
        self._times = [0] * capacity
        self._resp = [None] * capacity
        self._next = 0

    def __len__(self):
        return len(self._map)

    def lookup(self, peer, mid, now_ms):
        """Return None for a new message, PENDING (b"") for a duplicate still being
        processed (drop it), or the encoded response bytes to send again."""
        key = (peer, mid)
        slot = self._map.get(key)
        if slot is None:
            return None
        age = now_ms - self._times[slot]
        if age < 0 or age >= self.lifetime_ms:
            self._free(slot)
            return None
        resp = self._resp[slot]
        return PENDING if resp is None else resp

    def remember(self, peer, mid, response_bytes, now_ms):
        """Record (peer, mid) with its encoded response (None: still being processed).

        Remembering an entry again (e.g. once its response is ready) updates it in place.
        """
        key = (peer, mid)
        slot = self._map.get(key)
        if slot is None:
            slot = self._next
            self._next = (slot + 1) % self.capacity
            if self._keys[slot] is not None:
                self._free(slot)
            self._map[key] = slot
            self._keys[slot] = key
        self._times[slot] = now_ms
        self._resp[slot] = response_bytes

    def _free(self, slot):
        key = self._keys[slot]
        if key is not None:
            self._map.pop(key, None)
        self._keys[slot] = None
        self._resp[slot] = None
