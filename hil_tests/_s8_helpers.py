"""Helpers of HIL scenario 8 (bad neighbours).

- ``RtuCabinetMeters``: the cabinet meters of hil_tests/meters.py on a real Modbus RTU line
  (socat pty pair + the paced emulator of tools/meters), so a meter can answer with broken
  CRCs (a CRC only exists on RTU); ``set_fault(cabinet, "crc")``.
- ``Garbage``: a raw UDP socket that throws malformed CoAP / CBOR / SenML at the gateway, and a
  rogue endpoint that registers properly and then sends out-of-range reports; it reads every
  answer and counts them by response code.
"""

from __future__ import annotations

import os
import random
import socket
import time

import cbor2

from hil_tests.meters import CabinetMeters
from protocol import coap
from protocol.lwm2m import CF_LINK_FORMAT, CF_SENML_CBOR
from tools.meters.harness import start_rtu_line

BAUD = 38400


class RtuCabinetMeters(CabinetMeters):
    """CabinetMeters on one RS-485 line (units 1..N), fed the same way (``feed(town)``)."""

    def start(self) -> RtuCabinetMeters:
        self._write()
        self.line = start_rtu_line(self.procs, self.workdir, name="rs485", baud=BAUD, model="sdm630",
                                   units=f"1-{len(self.cabinets)}", load_w=0.0, control=self.control_path,
                                   state=self.state_path, speed=self.clock.speed)
        self.proc = self.line.meter
        return self

    def toml(self) -> str:
        out = []
        for c in self.cabinets:
            out.append(f'[[modbus.meters]]\nname = "{self.name(c)}"\nprofile = "eastron-sdm630"\n'
                       f'transport = "rtu"\ndevice = "{self.line.bus}"\nbaudrate = {BAUD}\n'
                       f'unit = {self.unit[c]}\ncabinet = "{c}"\nperiod = "{self.period}"\ntimeout = "0.3s"\n'
                       f'backoff_max = "2s"\n')
        return "\n".join(out)

    def set_fault(self, cabinet: str, fault: str | None) -> None:
        """tools/meters fault of one cabinet's meter: None, "unplugged", "crc", "garbage", "exception"."""
        self.faults[cabinet] = fault
        self._write()


def _req(code: int, path: str, query: tuple[str, ...] = (), payload: bytes = b"", cf: int | None = None,
         mid: int = 0, token: bytes = b"\x01\x02", mtype: int = coap.CON) -> bytes:
    m = coap.Message(mtype, code, mid, token)
    m.set_path(path)
    for q in query:
        m.add_option(coap.URI_QUERY, q.encode())
    if cf is not None:
        m.add_option(coap.CONTENT_FORMAT, coap.uint_bytes(cf))
    m.payload = payload
    return coap.encode(m)


def report_pack(seq: int, t: int, wh, level, w=10.0, faults=0, on_time=0) -> bytes:
    """One SPEC §3.1 report as SenML-CBOR, with whatever values it is given."""
    return cbor2.dumps([{-2: "/10250/0/", -3: t, 0: "0", 2: seq}, {0: "1", 2: faults},
                        {-2: "/3311/0/", 0: "5805", 2: wh}, {0: "5851", 2: level}, {0: "5852", 2: on_time},
                        {-2: "/3305/0/", 0: "5800", 2: w}])


class Garbage:
    """A bad neighbour on the CoAP port. ``answers`` counts the replies by code string
    ("4.00", "RST", ...); ``sent`` counts datagrams."""

    def __init__(self, port: int, seed: int = 8) -> None:
        self.addr = ("127.0.0.1", port)
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.0)
        self.rng = random.Random(seed)
        self.mid = self.rng.randrange(65536)
        self.sent = 0
        self.answers: dict[str, int] = {}
        self.by_mid: dict[int, str] = {}

    def close(self) -> None:
        self.sock.close()

    def next_mid(self) -> int:
        self.mid = (self.mid + 1) & 0xFFFF
        return self.mid

    def send(self, data: bytes) -> None:
        self.sock.sendto(data, self.addr)
        self.sent += 1

    def drain(self, wait: float = 0.0) -> None:
        deadline = time.monotonic() + wait
        while True:
            try:
                data = self.sock.recv(2048)
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    return
                time.sleep(0.01)
                continue
            try:
                m = coap.decode(data)
                kind = "RST" if m.mtype == coap.RST else coap.code_str(m.code)
                self.by_mid[m.mid] = kind
            except coap.CoAPError:
                kind = "undecodable"
            self.answers[kind] = self.answers.get(kind, 0) + 1

    def request(self, code: int, path: str, query=(), payload=b"", cf=None, wait: float = 2.0) -> str | None:
        """One CON request; wait for its answer and return its code (None: no answer)."""
        mid = self.next_mid()
        self.send(_req(code, path, tuple(query), payload, cf, mid=mid))
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            self.drain(0.02)
            if mid in self.by_mid:
                return self.by_mid[mid]
        return None

    def dp(self, ep: str, pack: bytes) -> bytes:
        """A CON Send of ``pack`` in the name of ``ep`` (to send without waiting)."""
        return _req(coap.POST, "/dp", (f"ep={ep}",), pack, CF_SENML_CBOR, mid=self.next_mid())

    def register(self, ep: str) -> str | None:
        return self.request(coap.POST, "/rd", (f"ep={ep}", "lt=3600", "lwm2m=1.1", "b=U"),
                            b"</3/0>,</3311/0>,</10250/0>", CF_LINK_FORMAT)

    def one_of_each(self, victim_ep: str) -> list[bytes]:
        """A round of malformed datagrams (none of them may change any state)."""
        r = self.rng
        mid = self.next_mid
        return [
            os.urandom(r.randrange(1, 300)),  # line noise
            bytes([0x40]),  # a truncated header
            bytes([0x40, 0x02, mid() >> 8, 0x33]),  # CON POST, header only (valid, no path: 4.04)
            bytes([0x80 | 0x00, 0x02, 0x12, 0x34]) + os.urandom(8),  # version 2
            bytes([0x48, 0x02, 0x00, 0x01, 0x01]),  # token length 8, only one byte of it
            bytes([0x42, 0x02]) + mid().to_bytes(2, "big") + b"\xaa\xbb" + b"\xff",  # marker, empty payload
            bytes([0x40, 0x02]) + mid().to_bytes(2, "big") + bytes([0xF0]),  # reserved option delta 15
            # well-formed CoAP, bad content
            _req(coap.POST, "/dp", (f"ep={victim_ep}",), b"\xff\xfe\xfd" + os.urandom(20), CF_SENML_CBOR, mid()),
            _req(coap.POST, "/dp", (f"ep={victim_ep}",), cbor2.dumps({"not": "senml"}), CF_SENML_CBOR, mid()),
            _req(coap.POST, "/dp", (f"ep={victim_ep}",), cbor2.dumps([{0: "/10250/0/0", 2: 5}]), CF_SENML_CBOR,
                 mid()),  # a report without energy
            _req(coap.POST, "/dp", ("ep=nobody-here",), report_pack(1, int(time.time()), 10, 50), CF_SENML_CBOR,
                 mid()),  # unknown endpoint
            _req(coap.POST, "/dp", (f"ep={victim_ep}",), os.urandom(1100), CF_SENML_CBOR, mid()),  # too big
            _req(coap.POST, "/rd", ("ep=bad ep!", "lt=5", "lwm2m=9.9"), b"<<<", CF_LINK_FORMAT, mid()),
            _req(coap.POST, "/rd/ffffffff", ("lt=60",), b"", None, mid()),  # Update, unknown reg
            _req(coap.GET, "/no/such/path", (), b"", None, mid()),
            _req(coap.PUT, "/dp", (), b"x", 0, mid()),
            coap.encode(coap.Message(coap.CON, coap.POST, mid(), b"\x09", [(9, b"\x01"), (2049, b"x")], b"")),
        ]
