"""`slnode console`: the technician's diagnostic console over the node's USB serial line.

Line protocol (the firmware side is ``firmware/console.py``): the host writes one command per
line; the node answers with one line ``@slnode {JSON}``. Every other line on the wire (boot
messages, logs, a REPL banner) is ignored, so the console works next to the node's own output.

    status                      -> {"ok", "cmd", "id", "version", "registered", "location",
                                    "gateway", "level", "wh", "w", "error", "faults", "oscore",
                                    ...}; "oscore" is "on <sender id>", "off" or "invalid keys"
    identify                    -> blinks the lamp for a few seconds
    gateway coap://HOST:PORT    -> sets the gateway, persisted in config.json (validated by the
                                   node with the firmware's own config rules)
    reboot                      -> the node answers, then resets

Usage: ``slnode console --port /dev/ttyUSB0`` for an interactive session (status panel, then a
menu), or ``slnode [--json] console --port P status|identify|gateway URI|reboot`` once.
Exit code 3 when the port cannot be opened or the node does not answer.
"""

from __future__ import annotations

import json
import sys
import time

PREFIX = b"@slnode "
COMMANDS = ("status", "identify", "gateway", "reboot")


class ConsoleError(Exception):
    """The port or the node's console failed; the message says what to check."""

    exit_code = 3


class ConsoleClient:
    """Request/response over an open pyserial port (or any object with read/write)."""

    def __init__(self, ser, port: str = "", timeout: float = 5.0):
        self.ser = ser
        self.port = port or getattr(ser, "port", "") or "the port"
        self.timeout = timeout
        self._buf = b""
        self.noise: list[str] = []  # the node's other output, kept for display

    def request(self, line: str) -> dict:
        """Send one command line; return the node's decoded answer to it.

        Raises ConsoleError if no ``@slnode`` answer to this command arrives in time.
        """
        cmd = line.split(" ", 1)[0]
        self.ser.write((line + "\r\n").encode())
        self.ser.flush()
        deadline = time.monotonic() + self.timeout
        while time.monotonic() < deadline:
            chunk = self.ser.read(max(1, getattr(self.ser, "in_waiting", 0) or 1))
            if chunk:
                self._buf += chunk
            while b"\n" in self._buf:
                raw, self._buf = self._buf.split(b"\n", 1)
                raw = raw.strip(b"\r")
                at = raw.find(PREFIX)
                if at < 0:
                    if raw.strip():
                        self.noise.append(raw.decode("utf-8", "replace"))
                    continue
                try:
                    resp = json.loads(raw[at + len(PREFIX) :])
                except ValueError:
                    continue  # a line garbled on the wire: wait for the next
                if resp.get("cmd") == cmd:
                    return resp
        seen = "\n".join(self.noise[-5:] + [self._buf.decode("utf-8", "replace")])
        if ">>>" in seen or "Traceback" in seen:
            raise ConsoleError(
                f"the board on {self.port} is at the MicroPython prompt: the node firmware is not "
                "running (main.py stopped or missing). Last output:\n" + seen.strip()
                + "\nPress RESET; if it comes back, re-flash with slnode flash."
            )
        raise ConsoleError(
            f"no answer from the node console on {self.port} within {self.timeout:g} s. Is the node "
            "firmware running? Press RESET and retry; a board without firmware needs slnode flash."
        )


def open_serial(port: str, baud: int):
    """Open the node's serial port (exclusively), mapping errors to their fix."""
    from tools.slnode.flash import FlashError, open_port

    try:
        return open_port(port, baud, timeout=0.1)
    except FlashError as e:
        raise ConsoleError(str(e)) from e


def format_status(s: dict) -> str:
    """The status panel a technician reads at the foot of the pole."""
    reg = s.get("registered")
    reg_txt = {True: "registered", False: "not registered"}.get(reg, str(reg))
    if s.get("location"):
        reg_txt += f" ({s['location']})"
    wh = s.get("wh")
    w = s.get("w")
    meter = "no reading" if wh is None else f"{wh:.1f} Wh"
    if w is not None:
        meter += f", {w:.1f} W now"
    faults = s.get("faults") or []
    rows = [
        ("node", s.get("id") or "(no id: not provisioned)"),
        ("firmware", s.get("version", "?")),
        ("gateway", f"{s.get('gateway') or '(none)'}: {reg_txt}"),
        ("security", _security_text(s.get("oscore"))),
        ("level", f"{s.get('level', '?')} %" + (" (identify: blinking)" if s.get("identifying") else "")),
        ("meter", meter),
        ("faults", ", ".join(faults) if faults else "none"),
        ("last error", s.get("error") or "none"),
    ]
    return "\n".join(f"{k:<11} {v}" for k, v in rows)


def _security_text(v: str | None) -> str:
    if v is None:
        return "?"
    if v == "off":
        return "NONE: no OSCORE keys on this node (re-provision it with slnode provision)"
    if v == "invalid keys":
        return "BROKEN: oscore.json is invalid, the node refuses everything (re-provision it)"
    return "OSCORE, node Sender ID " + v[3:] if v.startswith("on ") else v


def _gateway_text(resp: dict) -> str:
    txt = f"gateway set to {resp.get('gateway')} (saved in config.json)"
    if resp.get("applied") is False:
        txt += "; it applies after a reboot ([r]eboot, or slnode console ... reboot)"
    elif resp.get("applied"):
        txt += "; the node registers with it now"
    return txt


def _one(client: ConsoleClient, cmd: str, arg: str | None) -> dict:
    line = cmd if not arg else f"{cmd} {arg}"
    resp = client.request(line)
    if not resp.get("ok"):
        raise ConsoleError(f"the node refused `{line}`: {resp.get('error', 'no reason given')}")
    return resp


def interactive(client: ConsoleClient, inp=sys.stdin, out=sys.stdout) -> int:
    """Status panel, then a menu until `q` or end of input."""
    print(format_status(_one(client, "status", None)), file=out)
    menu = "\n[s]tatus  [i]dentify  [g]ateway coap://HOST:PORT  [r]eboot  [q]uit"
    while True:
        print(menu, file=out)
        print("> ", end="", file=out, flush=True)
        line = inp.readline()
        if not line:
            return 0
        word, _, arg = line.strip().partition(" ")
        word = word.lower()
        try:
            if word in ("q", "quit", "exit"):
                return 0
            if word in ("s", "status", ""):
                print(format_status(_one(client, "status", None)), file=out)
            elif word in ("i", "identify"):
                _one(client, "identify", None)
                print("the lamp is blinking: look up", file=out)
            elif word in ("g", "gateway"):
                if not arg:
                    print("give the address: g coap://HOST:PORT", file=out)
                    continue
                r = _one(client, "gateway", arg.strip())
                print(_gateway_text(r), file=out)
            elif word in ("r", "reboot"):
                print("reboot the node? [y/N] ", end="", file=out, flush=True)
                if inp.readline().strip().lower() == "y":
                    _one(client, "reboot", None)
                    print("the node is rebooting", file=out)
            else:
                print(f"unknown command {word!r}", file=out)
        except ConsoleError as e:
            print(f"error: {e}", file=out)


def add_arguments(parser) -> None:
    parser.add_argument("--port", required=True, help="serial port of the node, e.g. /dev/ttyUSB0")
    parser.add_argument("--baud", type=int, default=115200, help="baud rate (MicroPython's REPL: 115200)")
    parser.add_argument("--timeout", type=float, default=5.0, help="seconds to wait for each answer")
    parser.add_argument("action", nargs="?", choices=COMMANDS, help="run one command and exit")
    parser.add_argument("arg", nargs="?", help="argument of the command (gateway: coap://HOST:PORT)")


def run(args):
    ser = open_serial(args.port, args.baud)
    try:
        client = ConsoleClient(ser, args.port, args.timeout)
        if args.action is None:
            if args.json:
                raise ConsoleError("--json needs a command (status, identify, gateway URI, reboot)")
            return interactive(client)
        if args.action == "gateway" and not args.arg:
            raise ConsoleError("gateway needs the address: slnode console --port P gateway coap://HOST:PORT")
        resp = _one(client, args.action, args.arg)
        resp.pop("ok", None)
        if args.action == "status":
            resp["summary"] = format_status(resp)
        else:
            resp["summary"] = {
                "identify": "the lamp is blinking",
                "gateway": _gateway_text(resp),
                "reboot": "the node is rebooting",
            }[args.action]
        return resp
    finally:
        ser.close()
