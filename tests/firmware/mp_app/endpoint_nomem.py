"""MicroPython side of the no-memory receive test: an Endpoint in a heap with no free block big
enough for its receive buffer.

usage: micropython -X heapsize=64k endpoint_nomem.py PORT
Fills the free heap with small linked cells, then unlinks every other one: plenty of free
memory, but only in holes of about 100 bytes, so ``recvfrom(1280)`` raises MemoryError even
after a collection. Once the endpoint has dropped a datagram for lack of memory, the cells are
released (the heap is whole again), and the retransmitted request must be answered: the receive
task survived. Prints JSON lines: ready, fragmented (with the largest allocation that still
worked), released (with the endpoint's stats). Exits when stdin closes.
"""

import asyncio
import gc
import json
import os
import sys

from firmware.endpoint import Endpoint


def handle(req, resp, peer):
    resp.payload = b"pong"


def fragment():
    head = None
    try:
        while True:
            head = [head, bytearray(64)]
    except MemoryError:
        pass
    cell = head
    while cell is not None and cell[0] is not None:  # unlink every other cell
        cell[0] = cell[0][0]
        cell = cell[0]
    gc.collect()
    return head


def largest_block():
    n = 2048
    while n > 16:
        try:
            bytearray(n)
            return n
        except MemoryError:
            n -= 64
    return 0


async def main():
    ep = Endpoint(handle, os.urandom, "127.0.0.1", int(sys.argv[1]))
    ep.start()
    print(json.dumps({"ready": True}))
    hold = fragment()
    print(json.dumps({"fragmented": True, "largest": largest_block()}))
    while not ep.stats["nomem"]:
        await asyncio.sleep_ms(10)
    hold = None  # noqa: F841 - the cells become garbage: the heap is whole again
    gc.collect()
    print(json.dumps({"released": True, "stats": ep.stats}))
    ioq = asyncio.core._io_queue
    while True:  # until stdin closes
        yield ioq.queue_read(sys.stdin)
        if not sys.stdin.buffer.read(1):
            break
    ep.close()


asyncio.run(main())
