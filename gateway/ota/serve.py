"""The CoAP side of updates: ``GET /fw/<bundle>/<file>`` with Block2 (RFC 7959), SPEC §13.

Blocks are cut from the stored file on every request (``num`` and ``szx`` of the request's
Block2 option), with no per-transfer state: a node resumes a file at any block, after a gateway
restart too, and thousands of nodes cost no memory here. aiocoap carries the messages (and the
OSCORE protection around them); the block arithmetic is RFC 7959 §2.2-2.4. A node asking for
blocks larger than 1024 bytes gets 1024 (the node's message limit, SPEC §1).

In ``security = "oscore"`` only a request protected by a known node's context is served
(4.01 otherwise): a bundle is the town's code, not for anyone on the network.

Bandwidth: besides the bound on nodes downloading at once (gateway/ota/rollout.py), blocks are
paced to ``[firmware] max_block_rate`` per second over all nodes (`BlockPacer`): a block asked
for early is answered late (aiocoap sends the empty ACK meanwhile, RFC 7252 §5.2.2), never
refused, so reports keep their share of the CoAP server (bench/gateway_ota_reports.py).
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import aiocoap
from aiocoap.numbers.codes import Code
from aiocoap.optiontypes import BlockOption

from gateway.ota.bundles import BLOCK_SZX_MAX, BundleStore


def _text(code: Code, text: str) -> aiocoap.Message:
    m = aiocoap.Message(code=code, payload=text.encode())
    m.opt.content_format = 0
    return m


class BlockPacer:
    """At most ``rate`` blocks per second over every node (0 = unpaced): each block gets the
    next free slot of 1/rate s and waits for it."""

    def __init__(self, rate: float, clock: Any = time.monotonic):
        self.interval = 1.0 / rate if rate > 0 else 0.0
        self.clock = clock
        self.next = 0.0

    async def take(self) -> None:
        if not self.interval:
            return
        now = self.clock()
        slot = max(now, self.next)
        self.next = slot + self.interval
        if slot > now:
            await asyncio.sleep(slot - now)


async def render_fw(request: aiocoap.Message, store: BundleStore, authenticated: bool,
                    pacer: BlockPacer | None = None) -> aiocoap.Message:
    """Answer one request under /fw. Returns the response (2.05 with Block2 when the file is
    larger than one block; 4.01, 4.04, 4.05 or 4.02 as SPEC §8 otherwise)."""
    if not authenticated:
        return _text(Code.UNAUTHORIZED, "OSCORE required: bundles are served to known nodes only")
    if request.code != Code.GET:
        return _text(Code.METHOD_NOT_ALLOWED, "/fw takes GET")
    path = request.opt.uri_path
    if len(path) < 3:
        return _text(Code.NOT_FOUND, "use /fw/<bundle>/<file>")
    data = store.read(path[1], "/".join(path[2:]))
    if data is None:
        return _text(Code.NOT_FOUND, "no such bundle or file")
    if pacer is not None:
        await pacer.take()
    b2 = request.opt.block2
    num, szx = (0, BLOCK_SZX_MAX) if b2 is None else (b2.block_number, min(b2.size_exponent, BLOCK_SZX_MAX))
    size = 1 << (szx + 4)
    if b2 is None and len(data) <= size:
        return aiocoap.Message(code=Code.CONTENT, payload=data)
    start = num * size
    if start >= len(data) and not (start == 0 and not data):
        return _text(Code.BAD_REQUEST, "block out of range")
    chunk = data[start:start + size]
    more = start + size < len(data)
    resp = aiocoap.Message(code=Code.CONTENT, payload=chunk)
    resp.opt.block2 = BlockOption.BlockwiseTuple(num, more, szx)
    resp.opt.size2 = len(data)
    return resp
