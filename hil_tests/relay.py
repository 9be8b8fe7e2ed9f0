"""Fault-injecting UDP relay between emulated nodes and the gateway.

Nodes send to the relay's listen address; for each node address the relay opens its own
upstream socket to the gateway, so the gateway sees one distinct peer per node and its
requests to a node (Read, Write, Observe) find their way back. On the way through, each
datagram may be dropped, duplicated, delayed, or held back and released after a later one
(reordering), and the link can be cut entirely (partition) and restored.

Run as a process (the HIL harness does):
    python -m hil_tests.relay --listen 127.0.0.1:0 --target 127.0.0.1:5683 --control 127.0.0.1:0
It prints one JSON line {"listen": port, "control": port} on stdout once ready.

Control: one JSON object per UDP datagram to the control port, answered with the current
settings and counters, e.g. {"drop": 0.1, "dup": 0.05, "reorder": 0.05, "delay_ms": [0, 40],
"partition": false}; {} just reads the counters.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import signal
import sys


class Faults:
    """The relay's current fault settings and counters (one for both directions)."""

    def __init__(self, seed: int | None = None) -> None:
        self.drop = 0.0
        self.dup = 0.0
        self.reorder = 0.0
        self.delay_ms = (0, 0)
        self.partition = False
        self.rng = random.Random(seed)
        self.counters = {"in": 0, "out": 0, "dropped": 0, "duplicated": 0, "reordered": 0, "cut": 0}

    def update(self, cmd: dict) -> None:
        for key in ("drop", "dup", "reorder"):
            if key in cmd:
                value = float(cmd[key])
                if not 0.0 <= value <= 1.0:
                    raise ValueError(f"{key} must be within 0..1")
                setattr(self, key, value)
        if "delay_ms" in cmd:
            lo, hi = cmd["delay_ms"] if isinstance(cmd["delay_ms"], list) else (cmd["delay_ms"],) * 2
            self.delay_ms = (int(lo), int(hi))
        if "partition" in cmd:
            self.partition = bool(cmd["partition"])

    def snapshot(self) -> dict:
        return {
            "drop": self.drop, "dup": self.dup, "reorder": self.reorder,
            "delay_ms": list(self.delay_ms), "partition": self.partition, **self.counters,
        }


class Relay:
    """Forwards datagrams both ways through :class:`Faults`."""

    def __init__(self, target: tuple[str, int], faults: Faults) -> None:
        self.target = target
        self.faults = faults
        self.loop = asyncio.get_running_loop()
        self.front: asyncio.DatagramTransport | None = None
        self.upstream: dict[tuple, Link] = {}
        self.held: dict[str, tuple] = {}

    def deliver(self, direction: str, send, data: bytes) -> None:
        f = self.faults
        f.counters["in"] += 1
        if f.partition:
            f.counters["cut"] += 1
            return
        if f.rng.random() < f.drop:
            f.counters["dropped"] += 1
            return
        copies = 1
        if f.rng.random() < f.dup:
            copies = 2
            f.counters["duplicated"] += 1
        for _ in range(copies):
            held = self.held.pop(direction, None)
            if held is None and f.rng.random() < f.reorder:
                # hold this one back; it goes out right after the next datagram this way
                f.counters["reordered"] += 1
                self.held[direction] = (send, data)
                self.loop.call_later(0.5, self._release, direction)
                continue
            self._send_later(send, data)
            if held is not None:
                self._send_later(*held)

    def _release(self, direction: str) -> None:
        held = self.held.pop(direction, None)
        if held is not None:
            self._send_later(*held)

    def _send_later(self, send, data: bytes) -> None:
        lo, hi = self.faults.delay_ms
        delay = self.faults.rng.uniform(lo, hi) / 1000.0 if hi > 0 else 0.0
        self.faults.counters["out"] += 1
        if delay:
            self.loop.call_later(delay, send, data)
        else:
            send(data)

    async def from_node(self, data: bytes, addr: tuple) -> None:
        link = self.upstream.get(addr)
        if link is None:
            relay = self
            link = Link()

            class Up(asyncio.DatagramProtocol):
                def datagram_received(self, data: bytes, src) -> None:
                    link.note_from_gateway(data, src)
                    if relay.front is not None:
                        relay.deliver("down", lambda d: relay.front.sendto(d, addr), data)

            # unconnected: the gateway may answer or ask from another socket (its client context)
            link.transport, _ = await self.loop.create_datagram_endpoint(Up, local_addr=(self.target[0], 0))
            self.upstream[addr] = link
        dest = link.route_from_node(data, self.target)
        self.deliver("up", lambda d: link.transport.sendto(d, dest), data)


def _coap_head(data: bytes) -> tuple[int, int, int, bytes] | None:
    """(type, code, message id, token) of a CoAP datagram, None if it is not one."""
    if len(data) < 4 or data[0] >> 6 != 1:
        return None
    tkl = data[0] & 0x0F
    if tkl > 8 or len(data) < 4 + tkl:
        return None
    return (data[0] >> 4) & 3, data[1], (data[2] << 8) | data[3], bytes(data[4:4 + tkl])


class Link:
    """One node's upstream socket, and where the node's answers to gateway requests go.

    The gateway may send requests to a node (Write, Read) from a socket other than its
    server port; the node answers the relay, which must send the answer back to that socket:
    an ACK/RST goes to whoever sent that message id, a separate response or notification
    to whoever sent that token; everything else (the node's own requests) to the target.
    """

    def __init__(self) -> None:
        self.transport: asyncio.DatagramTransport | None = None
        self.mids: dict[int, tuple] = {}
        self.tokens: dict[bytes, tuple] = {}

    def note_from_gateway(self, data: bytes, src: tuple) -> None:
        head = _coap_head(data)
        if head is None:
            return
        mtype, code, mid, token = head
        if mtype in (0, 1):  # CON/NON: an ACK or RST from the node answers this mid
            self.mids[mid] = src
        if 1 <= code < 32:  # a request: its response carries this token
            self.tokens[token] = src
        for table in (self.mids, self.tokens):
            while len(table) > 512:
                table.pop(next(iter(table)))

    def route_from_node(self, data: bytes, target: tuple) -> tuple:
        head = _coap_head(data)
        if head is None:
            return target
        mtype, code, mid, token = head
        if mtype in (2, 3) and mid in self.mids:
            return self.mids[mid]
        if code >= 64 and token in self.tokens:
            return self.tokens[token]
        return target


async def serve(listen: tuple[str, int], target: tuple[str, int], control: tuple[str, int],
                seed: int | None) -> None:
    loop = asyncio.get_running_loop()
    faults = Faults(seed)
    relay = Relay(target, faults)

    class Front(asyncio.DatagramProtocol):
        def datagram_received(self, data: bytes, addr) -> None:
            loop.create_task(relay.from_node(data, addr))

    class Control(asyncio.DatagramProtocol):
        def connection_made(self, transport) -> None:
            self.transport = transport

        def datagram_received(self, data: bytes, addr) -> None:
            try:
                faults.update(json.loads(data or b"{}"))
                answer = faults.snapshot()
            except (ValueError, TypeError) as exc:
                answer = {"error": str(exc)}
            self.transport.sendto(json.dumps(answer).encode(), addr)

    front, _ = await loop.create_datagram_endpoint(Front, local_addr=listen)
    relay.front = front
    ctl, _ = await loop.create_datagram_endpoint(Control, local_addr=control)
    print(json.dumps({"listen": front.get_extra_info("sockname")[1],
                      "control": ctl.get_extra_info("sockname")[1]}), flush=True)
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    await stop.wait()
    front.close()
    ctl.close()
    for link in relay.upstream.values():
        if link.transport is not None:
            link.transport.close()


def _addr(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host, int(port)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--listen", type=_addr, default=("127.0.0.1", 0))
    p.add_argument("--target", type=_addr, required=True)
    p.add_argument("--control", type=_addr, default=("127.0.0.1", 0))
    p.add_argument("--seed", type=int, default=None)
    a = p.parse_args(argv)
    asyncio.run(serve(a.listen, a.target, a.control, a.seed))
    return 0


if __name__ == "__main__":
    sys.exit(main())
