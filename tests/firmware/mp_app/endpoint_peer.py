"""MicroPython side of the endpoint tests: an Endpoint with a tiny test handler.

usage: micropython endpoint_peer.py PORT [ACK_TIMEOUT_MS] [SERVER_PORT N_REQUESTS [CON|NON]]
Serves /echo (GET returns the last PUT payload, PUT stores it and counts the calls in /count),
/slow (answers 2.05) and prints one JSON line per client request made to 127.0.0.1:SERVER_PORT
(POST /rd/x). Exits when stdin closes.
"""

import asyncio
import json
import os
import sys

from firmware.endpoint import Endpoint
from protocol import coap


class App:
    def __init__(self):
        self.value = b"init"
        self.puts = 0

    def handle(self, req, resp, peer):
        path = req.path_str()
        if path == "/echo":
            if req.code == coap.GET:
                resp.payload = self.value
            elif req.code == coap.PUT:
                self.value = req.payload
                self.puts += 1
                resp.code = coap.CHANGED
            else:
                resp.code = coap.METHOD_NOT_ALLOWED
        elif path == "/count":
            resp.payload = str(self.puts).encode()
        else:
            resp.code = coap.NOT_FOUND


async def client(ep, port, n, con):
    peer = Endpoint.resolve("127.0.0.1", port)
    # the node's own retransmission schedule: when it sent (its clock) and how long it chose
    # to wait each time (a loaded host delays the sends, never the choice)
    sends, waits = [], []
    send, wait = ep._send, ep._wait

    def timed_send(data, addr):
        sends.append(ep.now_ms())
        return send(data, addr)

    async def timed_wait(ex, timeout_ms, need_response=False):
        waits.append(timeout_ms)
        return await wait(ex, timeout_ms, need_response)

    ep._send, ep._wait = timed_send, timed_wait
    for i in range(n):
        del sends[:], waits[:]
        m = coap.Message(code=coap.POST)
        m.set_path("/rd/x")
        m.add_option(coap.URI_QUERY, "i=" + str(i))
        m.payload = b"hello"
        t0 = ep.now_ms()
        r = await ep.request(m, peer, confirmable=con)
        dt = ep.now_ms() - t0
        out = {"i": i, "ms": dt, "retx": ep.stats["retx"], "sends": sends, "waits": waits}
        if r is not None:
            out["code"] = r.code_str()
            out["payload"] = r.payload.decode()
            out["type"] = r.mtype
        print(json.dumps(out))


async def main():
    port = int(sys.argv[1])
    ack = int(sys.argv[2]) if len(sys.argv) > 2 else 2000
    app = App()
    ep = Endpoint(app.handle, os.urandom, "127.0.0.1", port, ack_timeout_ms=ack)
    ep.start()
    print(json.dumps({"ready": port}))
    if len(sys.argv) > 4:
        con = len(sys.argv) < 6 or sys.argv[5] == "CON"
        await client(ep, int(sys.argv[3]), int(sys.argv[4]), con)
        print(json.dumps({"done": True}))
    yield_q = asyncio.core._io_queue
    while True:  # until stdin closes
        yield yield_q.queue_read(sys.stdin)
        if not sys.stdin.buffer.read(1) if hasattr(sys.stdin, "buffer") else not sys.stdin.read(1):
            break
    ep.close()


asyncio.run(main())
