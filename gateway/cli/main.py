"""`slgw` entry point: argument parsing, exit codes, output (human or --json).

Exit codes (stable, documented in docs/cli.md):
  0 ok
  1 the service reported an error (HTTP 5xx), or `serve` failed at run time
  2 usage error: bad arguments, or the service refused the input (HTTP 400)
  3 cannot reach the service (not running, wrong --config/--url)
  4 not found (unknown node, target, batch, schedule)
  5 configuration error (the file or a flag is invalid; the message names key and line)
  6 unauthorized (missing or wrong API token, or the read-only token for a command)
  7 `serve`: a port it must listen on is in use (gateway.service.PortInUse)
With --json every command prints exactly one JSON document on stdout; errors go to stderr
(with --json also as {"error": {code, message}} on stdout, so scripts always get JSON).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import re
import sys
from typing import Any

from gateway.cli import firmware as firmware_cli
from gateway.cli import keys as keys_cli
from gateway.cli import render
from gateway.cli.client import ApiClient, ApiFailure, Unreachable
from gateway.config import ConfigError, add_config_flags, load_config, overrides_from_args

EXIT_OK, EXIT_SERVICE, EXIT_USAGE, EXIT_UNREACHABLE, EXIT_NOT_FOUND, EXIT_CONFIG, EXIT_AUTH = range(7)
DEFAULT_CONFIG = "/etc/slgw/gateway.toml"
DURATION_RE = re.compile(r"^(?:(\d+)d)?(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s?)?$")


class UsageError(Exception):
    pass


def parse_duration(text: str) -> int:
    """"90" / "90s" / "15m" / "2h" / "1h30m" / "7d" -> seconds. Raises UsageError."""
    m = DURATION_RE.match(text.strip())
    if not text.strip() or not m or not any(m.groups()):
        raise UsageError(f"bad duration {text!r}; use e.g. 90s, 15m, 2h, 1h30m, 7d")
    d, h, mi, s = (int(g or 0) for g in m.groups())
    return d * 86400 + h * 3600 + mi * 60 + s


class _Parser(argparse.ArgumentParser):
    def __init__(self, *args: Any, **kw: Any) -> None:
        # Flags are spelled in full: an abbreviation such as `--to` (energy's own flag) must
        # never be taken for `--token-file` or `--token`.
        kw.setdefault("allow_abbrev", False)
        super().__init__(*args, **kw)

    def error(self, message: str) -> None:  # argparse exits 2 already; keep the text short
        self.print_usage(sys.stderr)
        print(f"slgw: error: {message}", file=sys.stderr)
        sys.exit(EXIT_USAGE)


def _global_flags(p: argparse.ArgumentParser, default: Any) -> None:
    # The global flags are accepted before or after the command (`slgw nodes --json`); in the
    # subcommands their default is SUPPRESS so they do not overwrite a flag given before.
    p.add_argument("--config", default=default, help="gateway TOML (default $SLGW_CONFIG, else "
                   f"{DEFAULT_CONFIG} if it exists, else built-in defaults)")
    p.add_argument("--json", action="store_true", default=default if default is not None else False,
                   help="print one JSON document")
    p.add_argument("--url", default=default,
                   help="API base URL (default from [api] bind/port in the config)")
    p.add_argument("--token-file", default=default, metavar="FILE",
                   help="read the API token from FILE (default $SLGW_TOKEN_FILE, else $SLGW_TOKEN, "
                        "else [api] token in the config)")
    # Removed: a token on the command line is readable by every local user (ps, /proc, shell
    # history). Kept as a flag only to say what to use instead (docs/cli.md).
    p.add_argument("--token", default=default, nargs="?", const="", help=argparse.SUPPRESS)


def build_parser() -> argparse.ArgumentParser:
    common = _Parser(add_help=False)
    _global_flags(common, argparse.SUPPRESS)
    p = _Parser(prog="slgw", description="Street-lighting gateway: service and client.",
                epilog="exit codes: 0 ok, 1 service error, 2 usage, 3 service unreachable, "
                       "4 not found, 5 configuration error, 6 unauthorized, 7 port in use (serve)")
    _global_flags(p, None)
    sub = p.add_subparsers(dest="cmd", required=True, metavar="COMMAND", parser_class=_Parser)
    orig_add = sub.add_parser

    def add_parser(name: str, **kw: Any) -> argparse.ArgumentParser:
        return orig_add(name, parents=[common], **kw)

    sub.add_parser = add_parser  # type: ignore[method-assign]

    s = sub.add_parser("serve", help="run the gateway service (foreground; for systemd)")
    add_config_flags(s)
    sub.add_parser("nodes", help="list nodes").add_argument("--group")
    n = sub.add_parser("node", help="one node").add_subparsers(dest="node_cmd", required=True,
                                                                 parser_class=_Parser)
    n.add_parser("show", help="show a node", parents=[common]).add_argument("id")
    for name, hlp in (("set-level", "set the dimming level (held 24 h)"),
                      ("override", "hold a level for a duration")):
        c = sub.add_parser(name, help=hlp)
        c.add_argument("target", help="node id, group:NAME, cabinet:NAME or all")
        c.add_argument("level", help="0-100 (override: or 'cancel')")
        if name == "override":
            c.add_argument("--for", dest="duration", help="e.g. 2h, 90m (1 s to 7 d)")
        c.add_argument("--wait", type=float, default=5.0, help="seconds to wait for delivery")
    c = sub.add_parser("on", help="switch on")
    c.add_argument("target")
    c = sub.add_parser("off", help="switch off")
    c.add_argument("target")
    sch = sub.add_parser("schedule", help="schedules").add_subparsers(dest="sched_cmd", required=True,
                                                                     parser_class=_Parser)
    sp = sch.add_parser("push", help="push a schedule file (TOML or JSON)", parents=[common])
    sp.add_argument("target")
    sp.add_argument("file")
    sp.add_argument("--wait", type=float, default=5.0)
    sch.add_parser("show", help="show the last pushed schedule",
                   parents=[common]).add_argument("target")
    e = sub.add_parser("energy", help="energy of a node, group, cabinet or the site")
    sel = e.add_mutually_exclusive_group()
    sel.add_argument("--node")
    sel.add_argument("--group")
    sel.add_argument("--cabinet")
    e.add_argument("--from", dest="start", help="ISO 8601 date or time (UTC if no zone)")
    e.add_argument("--to", dest="end")
    e.add_argument("--by", choices=["15min", "hour", "day", "month"], default="day")
    e.add_argument("--csv", action="store_true", help="rows as CSV")
    sv = sub.add_parser("savings", help="savings against the baseline")
    sv.add_argument("--from", dest="start")
    sv.add_argument("--to", dest="end")
    svsel = sv.add_mutually_exclusive_group()
    svsel.add_argument("--node")
    svsel.add_argument("--group")
    svsel.add_argument("--cabinet")
    sub.add_parser("faults", help="nodes with active faults")
    sub.add_parser("backup", help="online backup of the store, into [store] backup_dir on the "
                   "gateway").add_argument("path", nargs="?", help="absolute path inside the "
                                           "backup directory (default: a new timestamped file)")
    cm = sub.add_parser("commands", help="commands and their delivery state")
    cm.add_argument("--batch")
    cm.add_argument("--node")
    cm.add_argument("--state", choices=["pending", "delivering", "delivered", "failed", "cancelled"])
    sub.add_parser("meters", help="Modbus energy meters")
    nb = sub.add_parser("northbound", help="the MQTT publisher").add_subparsers(
        dest="nb_cmd", required=True, parser_class=_Parser)
    nb.add_parser("status", help="connected, outbox depth, oldest entry, last error",
                  parents=[common])
    keys_cli.add_parser(sub, common, _Parser)
    firmware_cli.add_parser(sub, common, _Parser)
    return p


def config_path(args: argparse.Namespace) -> str | None:
    if args.config:
        return args.config
    if os.environ.get("SLGW_CONFIG"):
        return os.environ["SLGW_CONFIG"]
    return DEFAULT_CONFIG if os.path.exists(DEFAULT_CONFIG) else None


def read_token_file(path: str | None) -> str:
    """The token in a file (first line, stripped), or "" without a path. Raises ConfigError."""
    if not path:
        return ""
    try:
        with open(path, encoding="utf-8") as f:
            token = f.readline().strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read the token file {path}: "
                          f"{getattr(exc, 'strerror', None) or exc}") from None
    if not token:
        raise ConfigError(f"the token file {path} is empty; put the API token on its first line")
    return token


def api_client(args: argparse.Namespace) -> ApiClient:
    logging.getLogger("gateway.config").setLevel(logging.ERROR)  # store-path advice is for serve
    if getattr(args, "token", None) is not None:
        raise UsageError("--token is no longer accepted: a token on the command line is visible to "
                         "every local user (ps, shell history). Put it in a file readable only by "
                         "you and pass --token-file FILE (or set SLGW_TOKEN_FILE), or set "
                         "SLGW_TOKEN in the environment")
    token = read_token_file(getattr(args, "token_file", None) or os.environ.get("SLGW_TOKEN_FILE"))
    token = token or os.environ.get("SLGW_TOKEN", "")
    if args.url and token:  # nothing needed from the config, which may be root-only
        return ApiClient(args.url, token)
    cfg = load_config(config_path(args))
    token = token or cfg.api.token
    if args.url:
        return ApiClient(args.url, token)
    host = cfg.api.bind
    if host in ("0.0.0.0", ""):
        host = "127.0.0.1"
    elif host == "::":
        host = "::1"
    if ":" in host:
        host = f"[{host}]"
    return ApiClient(f"http://{host}:{cfg.api.port}", token)


def _level(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise UsageError(f"level must be an integer 0-100, got {text!r}") from None
    if not 0 <= v <= 100:
        raise UsageError(f"level must be 0-100, got {v}")
    return v


def _time_flag(flag: str, text: str | None) -> str | None:
    """Check a --from/--to value here, so the message names the flag (exit 2)."""
    if text is not None:
        from gateway.timefmt import parse
        try:
            parse(text, flag)
        except ValueError as exc:
            raise UsageError(str(exc)) from None
    return text


def run_client(args: argparse.Namespace) -> tuple[str, Any]:
    """Run one client command; return (renderer name, JSON document)."""
    cmd = args.cmd
    if cmd in ("energy", "savings"):
        _time_flag("--from", args.start)
        _time_flag("--to", args.end)
    api = api_client(args)
    if cmd == "nodes":
        return "nodes", api.call("GET", "/api/nodes", {"group": args.group})
    if cmd == "node":
        return "node", api.call("GET", f"/api/nodes/{args.id}")
    if cmd == "set-level":
        return "batch", api.call("POST", "/api/set-level", body={
            "target": args.target, "level": _level(args.level), "wait": args.wait})
    if cmd == "override":
        if args.level == "cancel":
            body = {"target": args.target, "level": None, "wait": args.wait}
        else:
            if not args.duration:
                raise UsageError("override needs --for DURATION (e.g. --for 2h), or level 'cancel'")
            secs = parse_duration(args.duration)
            if not 1 <= secs <= 604800:
                raise UsageError("--for must be between 1 s and 7 d")
            body = {"target": args.target, "level": _level(args.level), "seconds": secs,
                    "wait": args.wait}
        return "batch", api.call("POST", "/api/override", body=body)
    if cmd in ("on", "off"):
        return "batch", api.call("POST", "/api/on-off", body={"target": args.target,
                                                                "on": cmd == "on"})
    if cmd == "schedule" and args.sched_cmd == "push":
        from gateway.commands.model import CommandError
        from gateway.commands.schedule_file import load_schedule
        try:
            steps = load_schedule(args.file)
        except CommandError as exc:
            raise UsageError(str(exc)) from None
        return "batch", api.call("PUT", f"/api/schedules/{args.target}",
                                 body={"steps": steps, "wait": args.wait})
    if cmd == "schedule":
        return "schedule", api.call("GET", f"/api/schedules/{args.target}")
    if cmd == "energy":
        doc = api.call("GET", "/api/energy", {"node": args.node, "group": args.group,
                                              "cabinet": args.cabinet, "from": args.start,
                                              "to": args.end, "by": args.by})
        return ("energy_csv" if args.csv else "energy"), doc
    if cmd == "savings":
        return "savings", api.call("GET", "/api/savings", {
            "from": args.start, "to": args.end, "node": args.node, "group": args.group,
            "cabinet": args.cabinet})
    if cmd == "faults":
        return "faults", api.call("GET", "/api/faults")
    if cmd == "backup":
        if args.path and not os.path.isabs(args.path):  # the service's cwd is not ours
            raise UsageError(f"backup path {args.path!r} is relative: give an absolute path inside "
                             "the gateway's [store] backup_dir, or no path for a new file there")
        return "backup", api.call("POST", "/api/backup", body={"path": args.path or None})
    if cmd == "commands":
        return "commands", api.call("GET", "/api/commands", {"batch": args.batch, "node": args.node,
                                                              "state": args.state})
    if cmd == "keys":  # only rotate gets here: it needs the running service
        return "keys_rotated", api.call("POST", "/api/keys/rotate",
                                        body={"node": args.node, "wait": args.wait})
    if cmd == "meters":
        return "meters", api.call("GET", "/api/meters")
    if cmd == "northbound":
        return "northbound", api.call("GET", "/api/northbound")
    if cmd == "firmware":
        return firmware_cli.run(args, api, UsageError)
    raise UsageError(f"unknown command {cmd}")


class _LogHandler(logging.StreamHandler):
    """The log on stdout; when its reader goes away (`slgw serve | head`) the log goes on on
    stderr (then nowhere) instead of a "Logging error" traceback per line."""

    def handleError(self, record: logging.LogRecord) -> None:
        if isinstance(sys.exc_info()[1], BrokenPipeError):
            self.setStream(sys.stderr if self.stream is not sys.stderr
                           else open(os.devnull, "w"))  # noqa: SIM115 (lives as long as the log)
            self.emit(record)
            return
        super().handleError(record)


def setup_logging(level: str) -> None:
    # journald adds its own timestamps; elsewhere (a terminal, a test) we add them.
    fmt = "%(levelname)s %(name)s: %(message)s"
    if not os.environ.get("JOURNAL_STREAM"):
        fmt = "%(asctime)s " + fmt
    logging.basicConfig(handlers=[_LogHandler(sys.stdout)], level=level.upper(), format=fmt,
                        force=True)
    logging.getLogger("coap-server").setLevel(logging.WARNING)
    logging.getLogger("coap").setLevel(logging.WARNING)


def run_serve(args: argparse.Namespace) -> int:
    try:
        cfg = load_config(config_path(args), overrides_from_args(args))
    except ConfigError as exc:
        print(f"slgw: configuration error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    setup_logging(cfg.log.level)
    for key in ("api.token", "api.read_token"):
        if overrides_from_args(args).get(key):  # accepted (tests, demos), but say what it costs
            logging.getLogger("slgw").warning(
                "%s was given on the command line (--%s): every local user can read it (ps, "
                "/proc); put it in the config file instead (root-only, handed over by systemd's "
                "LoadCredential=, docs/configuration.md)", key, key.replace(".", "-").replace("_", "-"))
    from gateway.service import serve
    return asyncio.run(serve(cfg))


def run_keys(args: argparse.Namespace) -> int:
    """`slgw keys import|list|remove`: local, no service needed (gateway/cli/keys.py)."""
    logging.getLogger("gateway.config").setLevel(logging.ERROR)
    try:
        code, kind, doc = keys_cli.run(args, lambda: load_config(config_path(args)))
    except ConfigError as exc:
        return _fail(args, EXIT_CONFIG, "config", f"configuration error: {exc}")
    if kind == "error":
        return _fail(args, code, doc["error"]["code"], doc["error"]["message"])
    if args.json:
        print(json.dumps(doc, indent=2))
    else:
        keys_cli.human(kind, doc, sys.stdout)
    return code


def _fail(args: argparse.Namespace, code: int, kind: str, message: str) -> int:
    print(f"slgw: {message}", file=sys.stderr)
    if getattr(args, "json", False):
        print(json.dumps({"error": {"code": kind, "message": message}}))
    return code


def main(argv: list[str] | None = None) -> int:
    """Run slgw; returns (and, as a console script, exits with) the exit status.

    A reader that closes stdout early (`slgw commands | head -1`) ends the output quietly
    with exit 0: the command did its work, the reader wanted no more.
    """
    try:
        code = _main(argv)
        sys.stdout.flush()  # inside the try: a closed pipe shows up here for short output
        return code
    except BrokenPipeError:
        # stdout is gone: point it at /dev/null so the interpreter's final flush is quiet too
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OK


def _main(argv: list[str] | None) -> int:
    args = build_parser().parse_args(argv)
    if args.cmd == "serve":
        return run_serve(args)
    if args.cmd == "keys" and args.keys_cmd != "rotate":
        return run_keys(args)
    try:
        kind, doc = run_client(args)
    except UsageError as exc:
        return _fail(args, EXIT_USAGE, "usage", str(exc))
    except ConfigError as exc:
        return _fail(args, EXIT_CONFIG, "config", f"configuration error: {exc}")
    except Unreachable as exc:
        return _fail(args, EXIT_UNREACHABLE, "unreachable",
                     f"{exc}; is `slgw serve` running (systemctl status slgw)?")
    except ApiFailure as exc:
        code = {400: EXIT_USAGE, 401: EXIT_AUTH, 403: EXIT_AUTH, 404: EXIT_NOT_FOUND}.get(exc.status, EXIT_SERVICE)
        return _fail(args, code, exc.code or "service", exc.message)
    if args.json:
        print(json.dumps(doc, indent=2))
    elif kind == "keys_rotated":
        keys_cli.human(kind, doc, sys.stdout)
    elif kind.startswith("fw_"):
        firmware_cli.human(kind, doc, sys.stdout)
    else:
        render.human(kind, doc, sys.stdout)
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
