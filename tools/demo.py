"""`make demo`: a small emulated town on the real gateway, watched from a terminal.

Starts, as separate processes:
- the gateway (`slgw serve`) on its embedded SQLite store, with its HTTP API on the default
  127.0.0.1:8080 so `slgw nodes`, `slgw energy`, `slgw set-level group:... 30` typed in
  another terminal work against it;
- one emulated SDM630 cabinet meter per cabinet (Modbus TCP), whose load follows the true
  power of that cabinet's lamps plus a line loss, polled by the gateway;
- the real node firmware in the MicroPython Unix port (`slnode emulate --count`), one
  interpreter per cabinet, on a clock that runs `--speed` times faster than real time;
every node exchange protected by OSCORE, the gateway's secure default (`[coap] security =
"oscore"`): the nodes' keys are made as `slnode emulate --oscore-keys` makes them (on each node's
flash, and `<id>.oscore.json` for the gateway in `node-keys/`), then installed with `slgw keys
import` before the gateway starts; and pushes a French town's winter programme to every group. Then it draws the town once a
second: levels, power, energy, faults, and the cabinet check. Ctrl-C stops everything.

`--duration S` stops by itself after S real seconds (the test suite runs it that way).

Ports: the gateway's CoAP port (default 5683/udp) and API port (default 8080/tcp) are checked
before anything starts; when one is taken the demo stops at once, names it and says how to
choose others: `make demo API_PORT=8081 COAP_PORT=5684` (the Makefile passes them as
`--api-port`/`--coap-port`), or `make demo FREE_PORTS=1` (`--free-ports`); the CLI then needs
`--url http://127.0.0.1:PORT`.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shutil
import signal
import socket
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from zoneinfo import ZoneInfo

from tools.meters.harness import start_tcp_meter
from tools.meters.model import write_control
from tools.procs import BIN, ROOT, ProcessGroup, free_port, wait_for

TZ = "Europe/Paris"
POSIX_TZ = "CET-1CEST,M3.5.0,M10.5.0/3"
# full at dusk, 40 % at 22:30, off 00:00-05:00, 40 % until dawn, off at dawn (SPEC §5.2)
PROGRAMME = [[1, 0, 100], [0, 1350, 40], [0, 0, 0], [0, 300, 40], [2, 0, 0]]
LINE_LOSS = 0.03  # cabinet feeder losses the emulated meter adds to the lamps' power
CABINET_STANDBY_W = 4.0


class Town:
    """The demo's processes and the state it draws."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.dir = Path(args.state_dir).resolve()
        self.procs = ProcessGroup(self.dir)
        self.anchor = time.time()
        self.start = args.start
        self.api = f"http://127.0.0.1:{args.api_port}"
        self.cabinets = [chr(ord("A") + i) for i in range(args.cabinets)]
        self.stop = threading.Event()

    # --- time -------------------------------------------------------------------------
    def sim_now(self) -> float:
        return self.start.timestamp() + (time.time() - self.anchor) * self.args.speed

    def clock_flags(self) -> list[str]:
        return ["--clock-start", self.start.isoformat(), "--clock-speed", str(self.args.speed),
                "--clock-anchor", repr(self.anchor)]

    # --- processes ----------------------------------------------------------------------
    def run_cli(self, *argv: str) -> dict:
        import subprocess

        out = subprocess.run([str(BIN / "slgw"), "--url", self.api, "--json", *argv],
                             capture_output=True, text=True, timeout=60)
        if out.returncode != 0:
            raise RuntimeError(f"slgw {' '.join(argv)} failed ({out.returncode}): {out.stderr.strip()}")
        return json.loads(out.stdout)

    def api_get(self, path: str) -> dict | None:
        try:
            with urllib.request.urlopen(self.api + path, timeout=5) as r:
                return json.loads(r.read())
        except (urllib.error.URLError, OSError, ValueError):
            return None

    def start_meters(self) -> list[str]:
        lines = []
        for cab in self.cabinets:
            control = self.dir / f"meter-{cab}.control.json"
            write_control(control, {"load_w": CABINET_STANDBY_W})
            _, port = start_tcp_meter(self.procs, f"meter-{cab}", model="sdm630", load_w=CABINET_STANDBY_W,
                                      control=control, state=self.dir / f"meter-{cab}.state.json",
                                      speed=self.args.speed)
            lines += ["[[modbus.meters]]", f'name = "cabinet-{cab}"', 'profile = "eastron-sdm630"',
                      'transport = "tcp"', 'host = "127.0.0.1"', f"port = {port}", f'cabinet = "{cab}"',
                      'period = "2s"', ""]
        return lines

    def write_config(self, meter_lines: list[str]) -> Path:
        a = self.args
        toml = [
            "[coap]", 'bind = "127.0.0.1"', f"port = {a.coap_port}",
            'security = "oscore"', f'keys_dir = "{self.dir / "keys"}"', "",
            "[store]", f'path = "{self.dir / "slgw.db"}"', "aggregate_interval_s = 2.0", "",
            "[api]", 'bind = "127.0.0.1"', f"port = {a.api_port}", "",
            "[site]", 'name = "Demo town"', f"latitude = {a.lat}", f"longitude = {a.lon}", f'timezone = "{TZ}"', "",
            *meter_lines,
        ]
        cfg = self.dir / "gateway.toml"
        cfg.write_text("\n".join(toml) + "\n")
        return cfg

    def start_gateway(self, cfg: Path) -> None:
        gw = self.procs.start("gateway", [str(BIN / "slgw"), "serve", "--config", str(cfg),
                                          *self.clock_flags()])

        def up() -> dict | None:
            if not gw.alive():  # say why at once instead of waiting for the API
                raise RuntimeError(f"the gateway exited (rc {gw.popen.poll()}): {gw.tail(5).strip()}")
            return self.api_get("/api/health")

        wait_for(up, 30, what="the gateway's API")

    def node_argvs(self) -> dict[str, list[str]]:
        """The `slnode emulate` arguments of each cabinet's interpreter (its config written)."""
        a = self.args
        per_cab = max(1, a.nodes // len(self.cabinets))
        out = {}
        for i, cab in enumerate(self.cabinets):
            node_toml = self.dir / f"node-{cab}.toml"
            node_toml.write_text("\n".join([
                f'id = "lamp-{cab}"', f'gateway = "coap://127.0.0.1:{a.coap_port}"',
                f"lat = {a.lat + 0.002 * i}", f"lon = {a.lon}", f'tz = "{POSIX_TZ}"',
                f'group = "street-{cab.lower()}"', f'cabinet = "{cab}"',
                f"rated_w = {40.0 + 20 * i}", "default_level = 100", f"report_period = {a.report_period}",
                "jitter = 5", "", "[meter]", 'type = "emulated"', "",
            ]))
            out[cab] = [
                "--id", f"lamp-{cab}", "--count", str(per_cab),
                "--gateway", f"coap://127.0.0.1:{a.coap_port}", "--flash", str(self.dir / f"flash-{cab}"),
                "--config", str(node_toml), "--truth", str(self.dir / f"truth-{cab}.jsonl"),
                "--truth-period", str(a.report_period), "--oscore-keys", str(self.dir / "node-keys"),
                *self.clock_flags(),
            ]
        return out

    def install_keys(self, cfg: Path, argvs: dict[str, list[str]]) -> None:
        """Give every node its keys before anything runs (what `slnode emulate --oscore-keys`
        does at its start, done here first so no node speaks before the gateway knows it: a
        refused Register would back off for 30 s), then `slgw keys import` them."""
        from tools.slnode import emulate

        p = argparse.ArgumentParser()
        emulate.add_arguments(p)
        for argv in argvs.values():
            try:
                emulate.prepare(p.parse_args(argv))
            except emulate.EmulateError as exc:
                raise RuntimeError(f"slnode emulate {' '.join(argv)}: {exc}") from exc
        files = sorted(str(f) for f in (self.dir / "node-keys").glob("*.oscore.json"))
        self.run_cli("keys", "import", "--config", str(cfg), *files)

    def start_nodes(self, argvs: dict[str, list[str]]) -> None:
        for cab, argv in argvs.items():
            self.procs.start(f"nodes-{cab}", [str(BIN / "slnode"), "emulate", *argv])

    def push_programme(self) -> None:
        steps = self.dir / "programme.json"
        steps.write_text(json.dumps(PROGRAMME))
        for cab in self.cabinets:
            self.run_cli("schedule", "push", f"group:street-{cab.lower()}", str(steps), "--wait", "10")

    # --- the cabinet meters follow the lamps ------------------------------------------------
    def feed_meters(self) -> None:
        offsets = {cab: 0 for cab in self.cabinets}
        power: dict[str, dict[str, float]] = {cab: {} for cab in self.cabinets}
        while not self.stop.wait(0.5):
            for cab in self.cabinets:
                path = self.dir / f"truth-{cab}.jsonl"
                try:
                    with open(path, "rb") as f:
                        f.seek(offsets[cab])
                        chunk = f.read()
                except OSError:
                    continue
                end = chunk.rfind(b"\n") + 1
                offsets[cab] += end
                for line in chunk[:end].splitlines():
                    try:
                        rec = json.loads(line)
                        power[cab][rec["id"]] = float(rec.get("w", 0.0))
                    except (ValueError, KeyError, TypeError):
                        continue
                load = sum(power[cab].values()) * (1 + LINE_LOSS) + CABINET_STANDBY_W
                write_control(self.dir / f"meter-{cab}.control.json", {"load_w": load})

    # --- the view ---------------------------------------------------------------------------
    def draw(self) -> str:
        now = dt.datetime.fromtimestamp(self.sim_now(), ZoneInfo(TZ))
        nodes = (self.api_get("/api/nodes") or {}).get("nodes", [])
        meters = (self.api_get("/api/meters") or {}).get("meters", [])
        out = [f"Demo town — simulated {now:%a %d %b %Y %H:%M} ({TZ}), x{self.args.speed:g}   "
               f"web {self.api}/web/   Ctrl-C stops", ""]
        for cab in self.cabinets:
            mine = sorted((n for n in nodes if n.get("cabinet") == cab), key=lambda n: n["id"])
            total_w = sum(n.get("power_w") or 0 for n in mine)
            total_wh = sum(n.get("wh") or 0 for n in mine)
            online = sum(1 for n in mine if n.get("online"))
            out.append(f"Cabinet {cab}: {online}/{len(mine)} online  {total_w:7.1f} W  {total_wh / 1000:8.3f} kWh")
            row = []
            for n in mine:
                lvl = n.get("level")
                flags = ",".join(n.get("faults") or [])
                cell = f"{n['id'][-3:]} {'' if lvl is None else int(lvl):>3}% {n.get('power_w') or 0:5.1f}W"
                row.append(cell + (f" !{flags}" if flags else ""))
            for i in range(0, len(row), 4):
                out.append("   " + "  |  ".join(row[i:i + 4]))
            out.append("")
        if meters:
            out.append("Cabinet meters (Modbus):")
            for m in meters:
                imp = m.get("import_wh")
                out.append(f"   {m.get('name')}: {m.get('status')}  "
                           f"{(imp or 0) / 1000:8.3f} kWh  {m.get('power_w') or 0:7.1f} W")
        return "\n".join(out)

    def run(self) -> int:
        taken = ports_taken(self.args.coap_port, self.args.api_port)
        if taken:
            print(f"cannot start the demo: {' and '.join(taken)} in use on 127.0.0.1 (another "
                  "demo or gateway?). Choose other ports:\n"
                  "  make demo API_PORT=8081 COAP_PORT=5684     (or: make demo FREE_PORTS=1)\n"
                  "  python -m tools.demo --api-port 8081 --coap-port 5684\n"
                  "and give the CLI the API's URL: slgw --url http://127.0.0.1:8081 nodes",
                  file=sys.stderr, flush=True)
            return 2
        if self.dir.exists():
            shutil.rmtree(self.dir)
        self.dir.mkdir(parents=True)
        feeder = threading.Thread(target=self.feed_meters, daemon=True)
        try:
            # first, so it is on screen before anything else (docs/web.md)
            print(f"web view: {self.api}/web/  (open it in a browser; the demo sets no API token, so "
                  "its controls are open to anyone on this machine)", flush=True)
            print(f"starting the town in {self.dir} ...", flush=True)
            cfg = self.write_config(self.start_meters())
            argvs = self.node_argvs()
            self.install_keys(cfg, argvs)
            self.start_gateway(cfg)
            self.start_nodes(argvs)
            feeder.start()
            wait_for(lambda: len((self.api_get("/api/nodes") or {}).get("nodes", [])) >= self.args.nodes,
                     120, what=f"{self.args.nodes} nodes to register")
            self.push_programme()
            print("all nodes registered; programme pushed", flush=True)
            deadline = time.monotonic() + self.args.duration if self.args.duration else None
            tty = sys.stdout.isatty() and not self.args.no_view
            while deadline is None or time.monotonic() < deadline:
                view = self.draw()
                if tty:
                    sys.stdout.write("\x1b[H\x1b[2J" + view + "\n")
                else:
                    print(view, flush=True)
                sys.stdout.flush()
                time.sleep(1.0 if tty else 5.0)
            return 0
        except KeyboardInterrupt:
            return 0
        except (RuntimeError, TimeoutError) as exc:
            print(f"demo failed: {exc}\n{self.procs.dump_logs()}", file=sys.stderr)
            return 1
        finally:
            self.stop.set()
            self.procs.stop_all()
            print("stopped the gateway, the nodes and the meters", flush=True)


def ports_taken(coap_port: int, api_port: int) -> list[str]:
    """Which of the gateway's two ports cannot be bound on 127.0.0.1 now, described."""
    taken = []
    for kind, port, what in ((socket.SOCK_DGRAM, coap_port, f"UDP port {coap_port} (CoAP)"),
                             (socket.SOCK_STREAM, api_port, f"TCP port {api_port} (the gateway API)")):
        with socket.socket(socket.AF_INET, kind) as s:
            if kind == socket.SOCK_STREAM:  # as aiohttp binds: TIME_WAIT does not count
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                taken.append(what)
    return taken


def _default_start() -> dt.datetime:
    """Today, 16:30 in the town: half an hour before a winter dusk."""
    today = dt.datetime.now(ZoneInfo(TZ)).date()
    return dt.datetime.combine(today, dt.time(16, 30), ZoneInfo(TZ)).astimezone(dt.UTC)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Run an emulated town against the real gateway.")
    p.add_argument("--nodes", type=int, default=24, help="luminaires in all (default 24)")
    p.add_argument("--cabinets", type=int, default=2, help="cabinets, one meter each (default 2)")
    p.add_argument("--speed", type=float, default=120.0, help="simulated seconds per real second")
    p.add_argument("--start", type=dt.datetime.fromisoformat, default=None,
                   help="simulated start time, ISO 8601 (default: today 16:30 Europe/Paris)")
    p.add_argument("--report-period", type=int, default=300, help="node report period, simulated s")
    p.add_argument("--lat", type=float, default=45.764)
    p.add_argument("--lon", type=float, default=4.836)
    p.add_argument("--coap-port", type=int, default=5683)
    p.add_argument("--api-port", type=int, default=8080)
    p.add_argument("--state-dir", default=str(ROOT / "var" / "demo"))
    p.add_argument("--duration", type=float, default=0, help="stop after this many real seconds")
    p.add_argument("--no-view", action="store_true", help="print plain snapshots instead of redrawing")
    p.add_argument("--free-ports", action="store_true", help="pick free ports instead of 5683/8080")
    args = p.parse_args(argv)
    if args.start is None:
        args.start = _default_start()
    elif args.start.tzinfo is None:
        args.start = args.start.replace(tzinfo=dt.UTC)
    if args.free_ports:
        args.coap_port, args.api_port = free_port(), free_port(kind=socket.SOCK_STREAM)
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    return Town(args).run()


if __name__ == "__main__":
    sys.exit(main())
