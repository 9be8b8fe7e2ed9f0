"""CLI: ``python -m tools.meters --model sdm630 --tcp 127.0.0.1:PORT [options]``.

``--rtu PTY --baud 9600`` serves RTU on the pty end of a socat pair
(``socat pty,raw,echo=0,link=BUS pty,raw,echo=0,link=PTY``; the poller opens BUS), paced
at the baud rate. ``--units 1-3,7`` emulates several meters on one line. Prints
``listening tcp HOST:PORT`` or ``listening rtu PTY`` once ready. SIGTERM/SIGINT save the
state file and exit.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys

from gateway.modbus.config import char_bits

from .model import MODELS, Control, Meter, load_state, parse_missing, save_state
from .relay import relay
from .server import start_server


def parse_units(text: str) -> list[int]:
    """Parse "1-3,7" into [1, 2, 3, 7]."""
    out: list[int] = []
    for part in text.split(","):
        lo, _, hi = part.partition("-")
        out.extend(range(int(lo), int(hi or lo) + 1))
    return out


def _missing(text: str) -> dict[int, set[int]]:
    try:
        return parse_missing(text)
    except ValueError as exc:  # argparse prints this message instead of "invalid value"
        raise argparse.ArgumentTypeError(str(exc)) from exc


def build_parser() -> argparse.ArgumentParser:
    """The emulator's command line."""
    p = argparse.ArgumentParser(prog="python -m tools.meters", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", choices=sorted(MODELS), default="sdm630")
    p.add_argument("--units", default="1", help="unit ids on this line, e.g. 1-32 (default 1)")
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--tcp", metavar="HOST:PORT", help="serve Modbus TCP (port 0 = any free port)")
    where.add_argument("--rtu", metavar="PTY", help="serve Modbus RTU on this pty end, paced")
    p.add_argument("--servers", type=int, default=1,
                   help="TCP: run this many servers on consecutive free ports (port must be 0), "
                        "each with its own meters: one process standing in for many meters' IPs")
    p.add_argument("--baud", type=int, default=9600, help="RTU baud rate for pacing (default 9600)")
    p.add_argument("--parity", choices="NEO", default="N")
    p.add_argument("--stopbits", type=int, choices=(1, 2), default=1)
    p.add_argument("--load-w", type=float, default=1000.0, help="constant load in W (default 1000)")
    p.add_argument("--energy-kwh", type=float, default=0.0, help="initial import energy (default 0)")
    p.add_argument("--speed", type=float, default=1.0, help="meter clock speed (accelerated demos)")
    p.add_argument("--missing", type=_missing, default={}, metavar="[FC:]ADDR[-ADDR],...",
                   help="addresses the meter lacks (function 4 unless FC is given, e.g. "
                        "0x46-0x47,3:10): any read touching one gets exception 02")
    p.add_argument("--control", help="JSON control file: load_w and fault, per unit (re-read on change)")
    p.add_argument("--state", "--truth", dest="state",
                   help="JSON file keeping each unit's energy: read at start, written every 0.5 s and at exit")
    return p


async def run(args: argparse.Namespace) -> None:
    """Run the emulator until SIGTERM/SIGINT."""
    saved = load_state(args.state) if args.state else {}
    meters = {u: Meter(args.model, u, import_kwh=saved.get(u, args.energy_kwh), load_w=args.load_w,
                       speed=args.speed, missing=args.missing) for u in parse_units(args.units)}
    control = Control(args.control)
    control.apply(meters)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    rtu = args.rtu is not None
    host, _, port = (args.tcp or "127.0.0.1:0").rpartition(":")
    server, bound, _ = await start_server(meters, host if not rtu else "127.0.0.1",
                                          int(port) if not rtu else 0, rtu=rtu)
    servers, ports = [server], [bound]
    extra_meters = []
    for _ in range(1, args.servers if not rtu else 1):
        more = {u: Meter(args.model, u, import_kwh=args.energy_kwh, load_w=args.load_w, speed=args.speed)
                for u in meters}
        extra_meters.append(more)
        srv, p2, _ = await start_server(more, host, 0)
        servers.append(srv)
        ports.append(p2)
    tasks = []
    if rtu:
        bits = char_bits(8, args.parity, args.stopbits)
        tasks.append(asyncio.create_task(relay(args.rtu, "127.0.0.1", bound, args.baud, bits)))
        print(f"listening rtu {args.rtu}", flush=True)
    else:
        print(f"listening tcp {host}:{','.join(map(str, ports))}", flush=True)

    async def housekeeping() -> None:
        while True:
            await asyncio.sleep(0.05)
            control.apply(meters)
            for group in (meters, *extra_meters):
                for m in group.values():
                    m.advance()

    async def saver() -> None:
        while True:
            await asyncio.sleep(0.5)
            save_state(args.state, meters)

    tasks.append(asyncio.create_task(housekeeping()))
    if args.state:
        tasks.append(asyncio.create_task(saver()))
    stopper = asyncio.create_task(stop.wait())
    try:
        done, _ = await asyncio.wait([stopper, *tasks], return_when=asyncio.FIRST_COMPLETED)
        for t in done:
            if t is not stopper:
                t.result()  # a relay or housekeeping failure ends the emulator loudly
    finally:
        stopper.cancel()
        for t in tasks:
            t.cancel()
        for srv in servers:
            await srv.shutdown()
        if args.state:
            for m in meters.values():
                m.advance()
            save_state(args.state, meters)


def main(argv: list[str] | None = None) -> int:
    """Entry point."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    logging.getLogger("pymodbus").setLevel(logging.CRITICAL)  # fault injection is intended
    asyncio.run(run(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
