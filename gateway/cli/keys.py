"""`slgw keys import|list|remove`: the nodes' OSCORE keys on this gateway (docs/cli.md,
docs/security.md). They work on the keys directory directly, with or without a running
service: a running gateway picks up an imported or removed key at the node's next request.
`slgw keys rotate` needs the running service and goes through the HTTP API (gateway/cli/main.py).

Nothing here prints key material: list shows endpoints and Sender IDs (which travel in clear
in every OSCORE message anyway), never the master secret or salt.
"""

from __future__ import annotations

import argparse
import os
import stat
import sys
from typing import Any

from gateway.coap import keystore


def add_parser(sub: Any, common: argparse.ArgumentParser, parser_class: type) -> None:
    """Add `keys` and its subcommands to the `slgw` parser."""
    k = sub.add_parser("keys", help="nodes' OSCORE keys").add_subparsers(
        dest="keys_cmd", required=True, parser_class=parser_class)
    kd = argparse.ArgumentParser(add_help=False)
    kd.add_argument("--keys-dir", help="keys directory (default [coap] keys_dir of the config)")
    i = k.add_parser("import", help="install key files made by `slnode provision`",
                     parents=[common, kd])
    i.add_argument("files", nargs="+", metavar="FILE", help="<ep>.oscore.json")
    i.add_argument("--replace", action="store_true",
                   help="replace a node's different key (after re-provisioning it)")
    k.add_parser("list", help="nodes with a key (no secrets)", parents=[common, kd])
    r = k.add_parser("remove", help="delete a node's key: its requests get 4.01",
                     parents=[common, kd])
    r.add_argument("node")
    rot = k.add_parser("rotate", help="give a node a new key (service must run)", parents=[common])
    rot.add_argument("node")
    rot.add_argument("--wait", type=float, default=30.0, help="seconds to wait for the node")


def keys_dir(args: argparse.Namespace, cfg_loader: Any) -> str:
    """The keys directory: --keys-dir, else the config's [coap] keys_dir."""
    if getattr(args, "keys_dir", None):
        return os.path.abspath(args.keys_dir)
    return cfg_loader().coap.keys_dir


def run(args: argparse.Namespace, cfg_loader: Any) -> tuple[int, str, Any]:
    """Run one local keys subcommand; return (exit status, renderer name, JSON document).

    Exit statuses as docs/cli.md: 2 for a key file that cannot be imported (the others of the
    same call are imported), 4 for `remove` of a node without a key.
    """
    kdir = keys_dir(args, cfg_loader)
    if args.keys_cmd == "list":
        return 0, "keys", {"keys_dir": kdir, "keys": keystore.list_keys(kdir)}
    if args.keys_cmd == "remove":
        if not keystore.remove_key(kdir, args.node):
            return 4, "error", {"error": {"code": "not_found",
                                          "message": f"{args.node} has no key in {kdir}"}}
        return 0, "keys_removed", {"keys_dir": kdir, "removed": args.node}
    imported, errors = [], []
    for path in args.files:
        try:
            key = keystore.load_key_file(path)
            if os.stat(path).st_mode & 0o077:
                print(f"slgw: warning: {path} is readable by group or other "
                      f"(mode {stat.S_IMODE(os.stat(path).st_mode):04o}); delete it once "
                      "imported, or `chmod 600` it", file=sys.stderr)
            result = keystore.import_key(kdir, key, replace=args.replace)
        except keystore.KeyFileError as exc:
            errors.append({"file": path, "message": str(exc)})
            continue
        except OSError as exc:
            errors.append({"file": path, "message": f"cannot write to {kdir}: {exc.strerror}; "
                           "run as the gateway's user or root"})
            continue
        imported.append({"node": key["ep"], "node_sender_id": key["node_sid"].hex(),
                         "result": result})
    return (2 if errors else 0), "keys_imported", {"keys_dir": kdir, "imported": imported,
                                                   "errors": errors}


def human(kind: str, doc: dict[str, Any], out: Any) -> None:
    """Plain-text rendering of the keys documents."""
    if kind == "keys":
        if not doc["keys"]:
            out.write(f"no node keys in {doc['keys_dir']}; import them with "
                      "`slgw keys import <ep>.oscore.json`\n")
            return
        out.write(f"{'NODE':24} {'NODE SENDER ID':16} {'GATEWAY ID':10} ALG\n")
        for k in doc["keys"]:
            out.write(f"{k['node']:24} {k['node_sender_id'] or '?':16} "
                      f"{k['gateway_sender_id'] or '?':10} {k['alg']}\n")
    elif kind == "keys_removed":
        out.write(f"removed the key of {doc['removed']}: its requests are now refused (4.01)\n")
    elif kind == "keys_rotated":
        if doc["state"] == "written":
            out.write(f"{doc['node']} took its new key (node Sender ID {doc['old_node_sender_id']} "
                      f"-> {doc['node_sender_id']}); the old one is dropped at its next request\n")
        else:
            out.write(f"{doc['node']} did not answer: its new key (node Sender ID "
                      f"{doc['node_sender_id']}) and the old one ({doc['old_node_sender_id']}) are "
                      "both accepted until it uses one\n")
    elif kind == "keys_imported":
        for k in doc["imported"]:
            out.write(f"{k['node']}: {k['result']} (node Sender ID {k['node_sender_id']})\n")
        for e in doc["errors"]:
            sys.stderr.write(f"slgw: {e['file']}: {e['message']}\n")
