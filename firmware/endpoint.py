"""The node's CoAP endpoint: client AND server over ONE UDP socket (SPEC §1, RFC 7252).

Owns the socket, Message IDs and tokens, CON retransmission (§4.8: ACK_TIMEOUT 2 s,
ACK_RANDOM_FACTOR 1.5, exponential back-off, MAX_RETRANSMIT 4), matching of responses to
requests (by Message ID for ACK/RST, by token for responses), duplicate detection of incoming
requests by (peer, Message ID) with cached responses, piggybacked responses, NON requests
answered with NON, and RST for a CON that does not parse but whose Message ID was readable.
What a request *means* is not known here: a ``handler(request, response, peer)`` (see
firmware/resources.py) fills in the response.

Decisions:
* The socket is awaited through the asyncio poller, the way ``asyncio.StreamReader`` does
  (``yield asyncio.core._io_queue.queue_read(sock)``): no CPU while idle, no 1 ms polling.
  One receive task per socket; requests wait on an ``asyncio.Event`` per exchange.
* Timers run on the real (monotonic) clock, even when the node's application clock is
  simulated faster: the peer's timers are real too. ``ack_timeout_ms`` is a constructor
  parameter (RFC 7252 §4.8.1 lets transmission parameters be changed) so the emulator can
  shorten outage tests; the default is 2000 ms.
* Responses are matched by token and Message ID, not by source address: the Unix port returns
  raw sockaddr bytes, the ESP32 port tuples; tokens are random per node, so a collision would
  need another peer guessing them.
* A Block1 request (payload sent block-wise, i.e. larger than we take) is answered 4.13 with
  Size1 = 1024 (RFC 7959 §2.9.3); other unknown critical options get 4.02.
* Addresses come from ``socket.getaddrinfo(host, port)[0][-1]`` and addresses from
  ``recvfrom`` are handed back unchanged (field notes §1).
"""

import asyncio
import gc
import socket

try:
    from time import ticks_diff, ticks_ms
except ImportError:  # CPython (not used there, but keeps the module importable)
    from time import monotonic as _mono

    def ticks_ms():
        return int(_mono() * 1000)

    def ticks_diff(a, b):
        return a - b


from protocol import coap
from protocol.lwm2m import MAX_PAYLOAD

_RX_SIZE = 1280  # a 1152-byte message plus room to see that it is too big
# Options this endpoint understands in a request (others that are critical get 4.02).
_KNOWN = (
    coap.URI_HOST,
    coap.ETAG,
    coap.OBSERVE,
    coap.URI_PORT,
    coap.URI_PATH,
    coap.CONTENT_FORMAT,
    coap.URI_QUERY,
    coap.ACCEPT,
    coap.BLOCK2,
    coap.SIZE1,
    coap.SIZE2,
)


class _Exchange:
    """One outgoing CON/NON message waiting for its ACK and/or response."""

    def __init__(self, mid, token):
        self.mid = mid
        self.token = token
        self.event = asyncio.Event()
        self.response = None
        self.acked = False
        self.reset = False
        self.accept = None  # callback(response) -> bool: False = not ours (forged), keep waiting


class Endpoint:
    """CoAP client and server on one UDP socket. See the module docstring."""

    def __init__(self, handler, rand, bind_host="0.0.0.0", port=0, ack_timeout_ms=coap.ACK_TIMEOUT_MS,
                 dedup_size=16):
        """``handler(request, response, peer)`` fills ``response`` (a piggybacked/NON
        Message with code 2.05 preset); ``rand(n)`` returns n random bytes (os.urandom)."""
        self.handler = handler
        self.known = _KNOWN  # + OSCORE when firmware/secure.py verifies requests (node.run)
        self.rand = rand
        self.ack_timeout_ms = ack_timeout_ms
        self.on_reset = None  # callback(peer, mid) for an RST that matches no exchange
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.bind(socket.getaddrinfo(bind_host, port)[0][-1])
        s.setblocking(False)
        self.sock = s
        r = rand(4)
        self._mid = (r[0] << 8) | r[1]
        self._tok = (r[2] << 8) | r[3]
        self._pending = {}  # mid -> _Exchange (awaiting ACK/RST)
        self._by_token = {}  # token -> _Exchange (awaiting a response)
        self.dedup = coap.Dedup(dedup_size)
        self._t_last = ticks_ms()
        self._t_mono = 0
        self._task = None
        self.closed = False
        self.stats = {"rx": 0, "tx": 0, "retx": 0, "bad": 0, "dup": 0, "timeouts": 0, "nomem": 0}

    # -- helpers --------------------------------------------------------------------------
    def now_ms(self):
        """A monotonic millisecond count that does not wrap (extends ticks_ms)."""
        t = ticks_ms()
        self._t_mono += ticks_diff(t, self._t_last)
        self._t_last = t
        return self._t_mono

    def next_mid(self):
        self._mid = (self._mid + 1) & 0xFFFF
        return self._mid

    def next_token(self):
        self._tok = (self._tok + 1) & 0xFFFF
        return bytes((self._tok >> 8, self._tok & 0xFF))

    @staticmethod
    def resolve(host, port):
        """Resolve a peer address the portable way (field notes §1)."""
        return socket.getaddrinfo(host, port)[0][-1]

    def _send(self, data, peer):
        try:
            self.sock.sendto(data, peer)
            self.stats["tx"] += 1
        except OSError:  # no route / buffer full: like a lost datagram; CON retransmits
            pass

    def start(self):
        """Start the receive task (idempotent). Returns the task."""
        if self._task is None:
            self._task = asyncio.create_task(self._rx_loop())
        return self._task

    def close(self):
        self.closed = True
        if self._task is not None:
            self._task.cancel()
            self._task = None
        try:
            self.sock.close()
        except OSError:
            pass
        for ex in self._pending.values():
            ex.event.set()
        for ex in self._by_token.values():
            ex.event.set()

    # -- client side ----------------------------------------------------------------------
    async def request(self, msg, peer, confirmable=True, response_timeout_ms=None, accept=None):
        """Send a request and wait for its response (RFC 7252 §4.2, §5.2).

        ``msg`` is a Message with code, options and payload set; its type, Message ID and
        token are assigned here. ``accept(response)`` (optional) vets each response that matches
        by Message ID/token: one it refuses (an OSCORE answer that does not verify: anyone who
        sees the request can forge its token and Message ID) is ignored and the wait goes on.
        Returns the response Message, or None when the peer did not answer (MAX_RETRANSMIT
        exhausted, or no separate response in time) or reset it.
        """
        msg.mtype = coap.CON if confirmable else coap.NON
        msg.mid = self.next_mid()
        msg.token = self.next_token()
        ex = _Exchange(msg.mid, msg.token)
        ex.accept = accept
        self._pending[msg.mid] = ex
        self._by_token[msg.token] = ex
        try:
            data = coap.encode(msg)
            r = self.rand(1)[0] / 256
            timeout = int(self.ack_timeout_ms * (1 + r * (coap.ACK_RANDOM_FACTOR - 1)))
            tries = coap.MAX_RETRANSMIT + 1 if confirmable else 1
            for attempt in range(tries):
                if attempt:
                    self.stats["retx"] += 1
                self._send(data, peer)
                if await self._wait(ex, timeout):
                    break
                timeout *= 2
            else:
                if not confirmable:  # NON: wait once more for a late answer (NON_LIFETIME bound)
                    await self._wait(ex, timeout)
            if ex.response is None and ex.acked and not ex.reset:
                # Empty ACK: a separate response follows (RFC 7252 §5.2.2).
                limit = response_timeout_ms or coap.MAX_TRANSMIT_WAIT_S * 1000
                await self._wait(ex, limit, need_response=True)
            if ex.response is None:
                self.stats["timeouts"] += 1
            return ex.response
        finally:
            self._pending.pop(ex.mid, None)
            self._by_token.pop(ex.token, None)

    async def _wait(self, ex, timeout_ms, need_response=False):
        """Wait until ``ex`` is settled (ACKed/answered/reset). Returns True if it is."""
        while True:
            if ex.reset or ex.response is not None or (ex.acked and not need_response):
                return True
            if self.closed:
                return False
            ex.event.clear()
            try:
                await asyncio.wait_for_ms(ex.event.wait(), timeout_ms)
            except asyncio.TimeoutError:
                return ex.reset or ex.response is not None or (ex.acked and not need_response)

    async def send_notification(self, msg, peer, confirmable):
        """Send an Observe notification (a response Message with the observer's token).

        A NON notification is fire-and-forget (returns True). A CON one is retransmitted like
        a request; returns False if the observer reset it or never acknowledged it, so the
        caller drops the observation (RFC 7641 §4.5).
        """
        msg.mid = self.next_mid()
        if not confirmable:
            msg.mtype = coap.NON
            self._send(coap.encode(msg), peer)
            return True
        msg.mtype = coap.CON
        ex = _Exchange(msg.mid, None)
        self._pending[msg.mid] = ex
        try:
            data = coap.encode(msg)
            timeout = self.ack_timeout_ms
            for _ in range(coap.MAX_RETRANSMIT + 1):
                self._send(data, peer)
                if await self._wait(ex, timeout):
                    break
                timeout *= 2
            return ex.acked and not ex.reset
        finally:
            self._pending.pop(ex.mid, None)

    # -- receive side ---------------------------------------------------------------------
    async def _rx_loop(self):
        sock = self.sock
        ioq = asyncio.core._io_queue
        while True:
            yield ioq.queue_read(sock)
            while True:
                try:
                    data, peer = sock.recvfrom(_RX_SIZE)
                except OSError:  # EAGAIN: drained
                    break
                except MemoryError:
                    # No free block of _RX_SIZE bytes: the heap is full or fragmented. A
                    # collection may merge holes; else drop this datagram (its sender
                    # retransmits a CON) instead of letting this task die: a node whose
                    # receive task died would never hear the gateway again.
                    gc.collect()
                    try:
                        data, peer = sock.recvfrom(_RX_SIZE)
                    except OSError:
                        break
                    except MemoryError:
                        self.stats["nomem"] += 1
                        print("endpoint: no memory for a datagram: dropped")
                        try:
                            sock.recvfrom(1)  # read and discard it
                        except (OSError, MemoryError):
                            break
                        continue
                try:
                    self.datagram_received(data, peer)
                except Exception as e:  # noqa: BLE001 - a receiver never dies on input
                    self.stats["bad"] += 1
                    print("endpoint: error handling datagram:", repr(e))

    def datagram_received(self, data, peer):
        """Process one datagram (public so tests and benches can feed bytes directly)."""
        self.stats["rx"] += 1
        try:
            msg = coap.decode(data)
        except coap.CoAPError as e:
            self.stats["bad"] += 1
            if e.mid is not None and e.mtype == coap.CON:
                self._send(coap.encode(coap.rst_for(e.mid)), peer)
            return
        code = msg.code
        if code == 0:
            self._on_empty(msg, peer)
        elif code < 32:
            self._on_request(msg, peer, len(data))
        else:
            self._on_response(msg, peer)

    def _on_empty(self, msg, peer):
        mt = msg.mtype
        if mt == coap.CON:  # CoAP ping (RFC 7252 §4.3): answer with RST
            self._send(coap.encode(coap.rst_for(msg.mid)), peer)
            return
        ex = self._pending.get(msg.mid)
        if ex is None:
            if mt == coap.RST and self.on_reset is not None:
                self.on_reset(peer, msg.mid)
            return
        if mt == coap.ACK:
            ex.acked = True
        elif mt == coap.RST:
            ex.reset = True
        ex.event.set()

    def _on_response(self, msg, peer):
        mt = msg.mtype
        if mt == coap.ACK:
            ex = self._pending.get(msg.mid)
            if ex is None or ex.token != msg.token:
                return  # unknown ACK: ignore (SPEC §1)
            if ex.accept is not None and not ex.accept(msg):
                return  # not a valid answer (forged): the real one may still come
            ex.acked = True
            ex.response = msg
            ex.event.set()
            return
        ex = self._by_token.get(msg.token)
        if mt == coap.CON:
            if ex is None:
                self._send(coap.encode(coap.rst_for(msg.mid)), peer)
                return
            self._send(coap.encode(coap.Message(coap.ACK, 0, msg.mid)), peer)
        if ex is not None and ex.response is None and (ex.accept is None or ex.accept(msg)):
            ex.response = msg
            ex.event.set()

    def _on_request(self, req, peer, size):
        now = self.now_ms()
        cached = self.dedup.lookup(peer, req.mid, now)
        if cached is not None:
            self.stats["dup"] += 1
            if cached:
                self._send(cached, peer)
            return
        resp = coap.response_for(req, coap.CONTENT, mid=self.next_mid())
        try:
            if len(req.payload) > MAX_PAYLOAD or size > 1152 or req.get_option(coap.BLOCK1) is not None:
                resp.code = coap.REQUEST_ENTITY_TOO_LARGE
                resp.add_option(coap.SIZE1, MAX_PAYLOAD)
            else:
                bad = self._bad_option(req, self.known)
                if bad is not None:
                    resp.code = coap.BAD_OPTION
                    resp.payload = ("unknown critical option %d" % bad).encode()
                else:
                    self.handler(req, resp, peer)
        except coap.CoAPError:  # e.g. invalid UTF-8 in Uri-Path
            resp.code = coap.BAD_REQUEST
            resp.options = []
            resp.payload = b"bad option value"
        except Exception as e:  # noqa: BLE001 - answer 5.00, keep serving
            print("endpoint: handler failed:", repr(e))
            resp.code = coap.INTERNAL_SERVER_ERROR
            resp.options = []
            resp.payload = b""
        try:
            data = coap.encode(resp)
        except coap.CoAPError:
            resp.options = []
            resp.code = coap.INTERNAL_SERVER_ERROR
            resp.payload = b""
            data = coap.encode(resp)
        self.dedup.remember(peer, req.mid, data, now)
        self._send(data, peer)

    @staticmethod
    def _bad_option(req, known):
        for num, _ in req.options:
            if coap.is_critical(num) and num not in known:
                return num
        return None
