"""Benchmark runner: ``python -m bench [--list] [names or glob patterns...]``.

Discovers ``bench/<name>.py`` (names not starting with "_"). With no names, runs them all, in
alphabetical order. A module exposing ``run() -> dict`` is run in this process and its figures
printed as indented JSON; any other module is run as a script in its own process (it prints
its own figures). Exit status 1 if any benchmark failed.
"""

from __future__ import annotations

import argparse
import fnmatch
import importlib
import json
import os
import subprocess
import sys
import time
import traceback

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


def discover() -> list[str]:
    """Return the names of every benchmark module in bench/, sorted."""
    return sorted(
        f[:-3] for f in os.listdir(HERE) if f.endswith(".py") and not f.startswith("_") and f != "__main__.py"
    )


def select(names: list[str], patterns: list[str]) -> list[str]:
    """Names matching any pattern (exact name or glob), in discovery order."""
    if not patterns:
        return names
    chosen = [n for n in names if any(n == p or fnmatch.fnmatch(n, p) for p in patterns)]
    unknown = [p for p in patterns if not any(n == p or fnmatch.fnmatch(n, p) for n in names)]
    if unknown:
        raise SystemExit(f"unknown benchmark(s): {', '.join(unknown)} (have: {', '.join(names)})")
    return chosen


def run_one(name: str) -> bool:
    """Run one benchmark; return True on success."""
    print(f"=== bench/{name}.py", flush=True)
    t0 = time.perf_counter()
    if ROOT not in sys.path:
        sys.path.insert(0, ROOT)
    try:
        mod = importlib.import_module("bench." + name)
    except Exception:  # noqa: BLE001 - report and go on with the next benchmark
        traceback.print_exc()
        return False
    if hasattr(mod, "run"):
        try:
            figures = mod.run()
        except Exception:  # noqa: BLE001
            traceback.print_exc()
            return False
        print(json.dumps(figures, indent=2, sort_keys=False, default=str))
        ok = True
    else:
        env = dict(os.environ)
        env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", "")
        proc = subprocess.Popen([sys.executable, os.path.join(HERE, name + ".py")], cwd=ROOT, env=env)
        try:
            ok = proc.wait() == 0
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    status = "done" if ok else "FAILED"
    print(f"=== bench/{name}.py: {status} in {time.perf_counter() - t0:.1f} s", flush=True)
    return ok


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", help="benchmark names or glob patterns (default: all)")
    parser.add_argument("--list", action="store_true", help="list the benchmarks and exit")
    args = parser.parse_args(argv)
    names = discover()
    if args.list:
        print("\n".join(names))
        return 0
    failed = [n for n in select(names, args.names) if not run_one(n)]
    if failed:
        print("failed: " + ", ".join(failed), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
