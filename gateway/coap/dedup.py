"""A bounded memory of recently received CoAP requests, for duplicate detection (RFC 7252 §4.5).

aiocoap's message manager remembers every request it received, by (source, Message ID), for
EXCHANGE_LIFETIME (247 s), with the response to resend if a retransmission arrives, and one
event-loop timer per entry. Under a flood of new requests (any source port, any MID) that
memory has no bound: 1,500 requests/s grew `slgw serve` by about 2.8 KB per request (45 MB to
468 MB in two minutes, past the unit's MemoryMax=256M; bench/gateway_coap_flood.py).

`install(ctx, max_entries)` replaces that bookkeeping on each of the context's message
managers with a `DedupCache`: the same lifetime, no timer per entry, and at most
`max_entries` entries, the oldest forgotten first. What is lost when a flood pushes an entry
out early: a node's retransmission of a request the gateway already answered is handled
again instead of being answered from the cache. Every request of this server is safe to
repeat (a Send is idempotent on its sequence numbers, a Register replaces itself, an Update
refreshes), so the bound costs correctness nothing, only a little work.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

log = logging.getLogger("slgw.coap")

EXCHANGE_LIFETIME = 247.0  # s, RFC 7252 §4.8.2 with the default transmission parameters
# 10,000 entries cover a whole EXCHANGE_LIFETIME at 40 requests/s (a 2,000-node town reporting
# every minute needs 33/s) and cost a few MB at most.
DEFAULT_MAX_ENTRIES = 10000


class DedupCache:
    """Recently received messages by key, with the response to resend; bounded in count and age.

    Insertion order is arrival order, so expiry and eviction both take from the front (O(1)
    amortised per message, no timers).
    """

    def __init__(self, max_entries: int = DEFAULT_MAX_ENTRIES,
                 lifetime: float = EXCHANGE_LIFETIME,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if max_entries < 1:
            raise ValueError("max_entries must be >= 1")
        self.max_entries = max_entries
        self.lifetime = lifetime
        self.clock = clock
        self.evicted = 0  # entries forgotten before their lifetime (a flood)
        self._entries: OrderedDict[Any, list] = OrderedDict()  # key -> [arrival, response]

    def __len__(self) -> int:
        return len(self._entries)

    def seen(self, key: Any) -> tuple[bool, Any]:
        """Record an arrival; return (True, stored response or None) if `key` was seen within
        the lifetime, else (False, None) and remember it."""
        now = self.clock()
        entries = self._entries
        while entries:
            first = next(iter(entries.values()))
            if now - first[0] < self.lifetime:
                break
            entries.popitem(last=False)
        entry = entries.get(key)
        if entry is not None:
            return True, entry[1]
        entries[key] = [now, None]
        if len(entries) > self.max_entries:
            entries.popitem(last=False)
            self.evicted += 1
        return False, None

    def store_response(self, key: Any, response: Any) -> None:
        """Keep the response to a remembered message, to answer its retransmissions."""
        entry = self._entries.get(key)
        if entry is not None:
            entry[1] = response


def install(ctx: Any, max_entries: int = DEFAULT_MAX_ENTRIES) -> list[DedupCache]:
    """Give every message manager of an aiocoap context a bounded DedupCache.

    Returns the caches installed (one per UDP transport). Relies on two methods of aiocoap's
    MessageManager (`_deduplicate_message`, `_store_response_for_duplicates`, aiocoap 0.4.x);
    if a later aiocoap lacks them, nothing is replaced and a warning says so (the test
    tests/gateway/test_coap_dedup.py fails first).
    """
    caches = []
    for ri in getattr(ctx, "request_interfaces", []):
        mm = getattr(ri, "token_interface", None)
        if mm is None or not hasattr(mm, "_recent_messages"):
            continue  # not a message-managed (UDP) transport
        if not (hasattr(mm, "_deduplicate_message") and hasattr(mm, "_store_response_for_duplicates")
                and hasattr(mm, "_send_initially")):
            log.warning("aiocoap's message manager changed: duplicate detection is not bounded, "
                        "so a request flood can grow memory; please report this")
            continue
        cache = DedupCache(max_entries)
        _bind(mm, cache)
        caches.append(cache)
    return caches


def _slim(message: Any) -> Any:
    """A copy of a response with only what resending it needs: the original keeps its request
    and that request's remote, options and payload alive (about 2.5 KB per entry, measured)."""
    from aiocoap import Message

    slim = Message(code=message.code, payload=message.payload)
    slim.mtype, slim.mid, slim.token = message.mtype, message.mid, message.token
    slim.opt = message.opt
    slim.remote = message.remote
    return slim


def _bind(mm: Any, cache: DedupCache) -> None:
    from aiocoap.numbers.types import CON

    def deduplicate(message: Any) -> bool:
        dup, response = cache.seen((message.remote, message.mid))
        if dup and message.mtype is CON and response is not None:
            mm._send_initially(response)  # as aiocoap does: the stored response, same MID
        return dup

    def store(message: Any) -> None:
        cache.store_response((message.remote, message.mid), _slim(message))

    mm._deduplicate_message = deduplicate
    mm._store_response_for_duplicates = store
    mm._recent_messages = {}  # unused from now on
    mm.slgw_dedup = cache
