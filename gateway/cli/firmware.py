"""`slgw firmware add|rollout|status` (docs/cli.md "firmware"): over-the-air updates through the
running service's HTTP API (gateway/ota/api.py)."""

from __future__ import annotations

import argparse
import os
from typing import Any, TextIO


def add_parser(sub: Any, common: argparse.ArgumentParser, parser_class: type) -> None:
    """Add `firmware` and its subcommands to the `slgw` parser."""
    f = sub.add_parser("firmware", help="over-the-air updates of the nodes' application").add_subparsers(
        dest="fw_cmd", required=True, parser_class=parser_class)
    a = f.add_parser("add", help="add a `slnode build` output directory as a bundle", parents=[common])
    a.add_argument("bundle", metavar="BUNDLE", help="build directory (holds manifest.json)")
    r = f.add_parser("rollout", help="update TARGET in waves (canary first); halts on failures",
                     parents=[common])
    r.add_argument("target", help="node id, group:NAME, cabinet:NAME or all")
    r.add_argument("--bundle", required=True, help="bundle version or hash (see `slgw firmware status`)")
    r.add_argument("--canary", default="10%", help="first wave, percent of the nodes (default 10%%)")
    r.add_argument("--halt", help="halt above this failure percentage (default [firmware] halt_pct)")
    r.add_argument("--wait", type=float, default=0.0, help="seconds to wait for the roll-out to end (0-600)")
    s = f.add_parser("status", help="bundles, the last roll-out, and each node's update state",
                     parents=[common])
    s.add_argument("--refresh", action="store_true", help="read every online node's object 5 first")


def _pct(flag: str, text: str, usage_error: type) -> float:
    try:
        v = float(text.rstrip("%"))
    except ValueError:
        raise usage_error(f"{flag} must be a percentage such as 10%") from None
    if not 0 < v <= 100:
        raise usage_error(f"{flag} must be in (0, 100]")
    return v


def run(args: argparse.Namespace, api: Any, usage_error: type) -> tuple[str, Any]:
    """Run one `firmware` command against ``api`` (gateway.cli.client.ApiClient)."""
    if args.fw_cmd == "add":
        path = os.path.abspath(args.bundle)  # the service's cwd is not ours
        if not os.path.isfile(os.path.join(path, "manifest.json")):
            raise usage_error(f"{args.bundle} has no manifest.json: give a `slnode build --out` directory")
        return "fw_bundle", api.call("POST", "/api/firmware/bundles", body={"path": path})
    if args.fw_cmd == "rollout":
        if not 0 <= args.wait <= 600:
            raise usage_error("--wait must be 0-600 seconds")
        body = {"target": args.target, "bundle": args.bundle, "canary_pct": _pct("--canary", args.canary, usage_error),
                "wait": args.wait}
        if args.halt is not None:
            body["halt_pct"] = _pct("--halt", args.halt, usage_error)
        api.timeout = max(api.timeout, args.wait + 30)  # the service answers after up to --wait s
        return "fw_rollout", api.call("POST", "/api/firmware/rollout", body=body)
    return "fw_status", api.call("GET", "/api/firmware", {"refresh": "1" if args.refresh else None})


def _rollout(ro: Any, out: TextIO) -> None:
    if not ro:
        out.write("no roll-out yet\n")
        return
    out.write(f"roll-out of {ro['version']} to {ro['target']}: {ro['state']}; {ro['succeeded']} updated, "
              f"{ro['failed']} failed, {ro['skipped']} already on it, {len(ro['waves'])} wave(s)\n")
    if ro.get("reason"):
        out.write(f"  {ro['reason']}\n")


def human(kind: str, doc: Any, out: TextIO) -> None:
    """Plain-text output of the `firmware` commands."""
    if kind == "fw_bundle":
        out.write(f"bundle {doc['bundle']} version {doc['version']}: {doc['files']} files, {doc['bytes']} bytes\n")
    elif kind == "fw_rollout":
        _rollout(doc, out)
    else:
        for b in doc["bundles"]:
            out.write(f"bundle {b['bundle'][:12]}  version {b['version']}  {b['bytes']} bytes\n")
        _rollout(doc["rollout"], out)
        out.write(f"{'NODE':<16} {'VERSION':<10} {'SLOT':<10} {'STATE':<12} {'RESULT':<24} PHASE / WHY\n")
        for n in doc["nodes"]:
            res = n.get("result_text") or ("" if n.get("result") is None else str(n["result"]))
            why = n.get("phase", "") + (f": {n['why']}" if n.get("why") else "")
            out.write(f"{n['id']:<16} {n.get('version') or '-':<10} {n.get('slot') or '-':<10} "
                      f"{n.get('state') or '-':<12} {res:<24} {why}\n")
