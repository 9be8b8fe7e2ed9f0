"""`slnode` entry point: a thin argparse dispatcher over the sub-command modules.

Output contract for scripts: human messages go to stderr; with ``--json`` the result of the
command is one JSON object on stdout (``{"ok": true, ...}`` or ``{"ok": false, "error": ...}``).

Exit codes: 0 success; 1 unexpected failure; 2 bad input (usage, invalid config, a file that is
not what it should be); 3 the board or serial port (not found, busy, no permission, no answer,
wrong chip, verification failed).
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys

EXIT_OK, EXIT_FAIL, EXIT_INPUT, EXIT_DEVICE = 0, 1, 2, 3

# Sub-command -> module under tools.slnode. Imported lazily: `slnode --help` and `slnode build`
# work even when a module's optional pieces (e.g. emulate.py, owned by the firmware) are absent.
COMMANDS = {
    "build": ("build", "compile firmware/ and protocol/ to .mpy and write manifest.json"),
    "provision": ("provision", "validate a node config and write a littlefs filesystem image"),
    "flash": ("flash", "write MicroPython and the filesystem image to a board over USB"),
    "console": ("console", "diagnostic console over the serial line"),
    "emulate": ("emulate", "run emulated nodes (the real firmware in the MicroPython Unix port)"),
}


def _load(cmd: str):
    modname = "tools.slnode." + COMMANDS[cmd][0]
    try:
        return importlib.import_module(modname)
    except ModuleNotFoundError as e:
        if e.name == modname:
            return None
        raise


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="slnode",
        description="Build, provision, flash and diagnose street-light nodes (see docs/technician.md).",
    )
    p.add_argument("--json", action="store_true", help="print the result as one JSON object on stdout")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars or chatter")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for cmd, (_mod, help_) in COMMANDS.items():
        sp = sub.add_parser(cmd, help=help_, description=help_)
        mod = _load(cmd)
        if mod is None:
            sp.set_defaults(_missing=True)
        else:
            mod.add_arguments(sp)
    return p


def _error_code(exc: BaseException) -> int:
    return getattr(exc, "exit_code", EXIT_INPUT)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra and not getattr(args, "_missing", False):
        parser.error("unrecognized arguments: " + " ".join(extra))
    if getattr(args, "_missing", False):
        msg = (
            f"slnode {args.command} is not available in this checkout: tools/slnode/{COMMANDS[args.command][0]}.py is missing "
            "(it ships with the firmware emulator)."
        )
        return _finish(args, None, msg, EXIT_FAIL)
    mod = _load(args.command)
    try:
        result = mod.run(args)
    except KeyboardInterrupt:
        return _finish(args, None, "interrupted", EXIT_FAIL)
    except Exception as e:  # noqa: BLE001 - every slnode error class carries its exit code
        if not hasattr(e, "exit_code"):
            raise
        return _finish(args, None, str(e), _error_code(e))
    if isinstance(result, int):  # emulate's run() returns an exit status
        return result
    return _finish(args, result, None, EXIT_OK)


def _finish(args, result, error, code) -> int:
    if args.json:
        out = {"ok": error is None, "command": args.command}
        if error is not None:
            out["error"] = error
            out["exit_code"] = code
        if result:
            result.pop("summary", None)  # the human rendering; the fields carry the same facts
            out.update(result)
        print(json.dumps(out, sort_keys=True))
    elif error is not None:
        print(f"slnode {args.command}: error: {error}", file=sys.stderr)
    elif result and not args.quiet:
        for w in result.pop("warnings", None) or []:
            print(f"slnode {args.command}: warning: {w}", file=sys.stderr)
        summary = result.pop("summary", None)
        if summary:
            print(summary)
        else:
            for k, v in result.items():
                print(f"{k}: {v}")
    return code


if __name__ == "__main__":
    sys.exit(main())
