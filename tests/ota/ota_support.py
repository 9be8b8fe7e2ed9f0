"""Helpers of the update tests: bundles built from a patched copy of the tree, and nodes run
the way a flashed device boots (`slnode emulate --slots`: the boot selector as main.py)."""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests" / "gateway"))
sys.path.insert(0, str(ROOT / "tests" / "firmware"))

from slgw_harness import SLGW, SlgwProcess  # noqa: E402,F401

from tools.slnode import build as slbuild  # noqa: E402

NODE_TOML = """id = "x"
gateway = "coap://127.0.0.1:5683"
report_period = 30
lifetime = 120
jitter = 1
default_level = 80
"""


def make_tree(dst: Path, version: str, patches: dict[str, list[tuple[str, str]]] | None = None) -> Path:
    """A copy of firmware/ and protocol/ with FW_VERSION = ``version`` and ``patches``
    ({relpath: [(old, new), ...]}, each old text must occur once)."""
    for pkg in ("firmware", "protocol"):
        shutil.copytree(ROOT / pkg, dst / pkg, ignore=shutil.ignore_patterns("__pycache__", "vectors"))
    shutil.copy(ROOT / "pyproject.toml", dst / "pyproject.toml")
    patches = dict(patches or {})
    patches.setdefault("firmware/node.py", []).append(('FW_VERSION = "0.1.0"', f'FW_VERSION = "{version}"'))
    for rel, subs in patches.items():
        p = dst / rel
        text = p.read_text()
        for old, new in subs:
            assert text.count(old) == 1, (rel, old)
            text = text.replace(old, new)
        p.write_text(text)
    return dst


def build_bundle(work: Path, version: str, patches=None, name: str | None = None) -> Path:
    """``slnode build`` of a patched tree; returns the build directory."""
    name = name or f"bundle-{version}"
    tree = make_tree(work / f"{name}-src", version, patches)
    out = work / name
    slbuild.build(out, root=tree, quiet=True)
    return out


def node_argv(work: Path, nid: str, gateway_port: int, *, keys: Path | None = None, trial_s: float = 20,
              speed: float = 1.0, extra: list[str] | None = None) -> list[str]:
    """The `slnode emulate --slots` command of one node (its flash: work/flash-<nid>)."""
    toml = work / f"{nid}.toml"
    toml.write_text(NODE_TOML)
    argv = [sys.executable, "-m", "tools.slnode.main", "emulate", "--id", nid, "--gateway",
            f"coap://127.0.0.1:{gateway_port}", "--flash", str(work / f"flash-{nid}"), "--config", str(toml),
            "--slots", "--ota-trial", str(trial_s), "--ack-timeout", "500", "--time-valid",
            "--clock-speed", str(speed), "--truth", str(work / f"truth-{nid}.jsonl"), "--truth-period", "5"]
    if keys is not None:
        argv += ["--oscore-keys", str(keys)]
    return argv + list(extra or [])


def ota_state(work: Path, nid: str) -> dict:
    try:
        return json.loads((work / f"flash-{nid}" / "ota.json").read_text())
    except (OSError, ValueError):
        return {}


def truth(work: Path, nid: str) -> list[dict]:
    p = work / f"truth-{nid}.jsonl"
    if not p.exists():
        return []
    out = []
    for line in p.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:
            pass  # torn by a kill
    return out


def env_pythonpath() -> dict[str, str]:
    return {"PYTHONPATH": str(ROOT), **os.environ}


def start_relay(procs, target_port: int) -> tuple[int, int]:
    """The HIL suite's fault-injecting UDP relay (hil_tests/relay.py) in front of the gateway.
    Returns (the port nodes send to, the control port)."""
    from tools.procs import free_port

    ctl = free_port()
    proc = procs.start("relay", [sys.executable, "-m", "hil_tests.relay", "--listen", "127.0.0.1:0", "--target",
                                 f"127.0.0.1:{target_port}", "--control", f"127.0.0.1:{ctl}"], stdout_pipe=True)
    info = json.loads(proc.popen.stdout.readline())
    return info["listen"], info["control"]


def relay_set(control: int, **faults) -> dict:
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(5)
        s.sendto(json.dumps(faults).encode(), ("127.0.0.1", control))
        return json.loads(s.recv(65536))


def start_town(work: Path, procs, n: int, *, trial_s: float = 20, group: str = "ota", extra_gw=(),
               relay: bool = False):
    """``n`` nodes (lamp-0..) with OSCORE keys, each in its own `slnode emulate --slots`, and the
    real slgw with their keys imported. Returns (gateway, {id: Proc}); with ``relay`` the nodes
    talk to the gateway through hil_tests/relay.py and ``gw.relay_control`` is its control port."""
    import subprocess

    from tools.procs import free_port, wait_for

    coap = free_port()
    node_port, control = start_relay(procs, coap) if relay else (coap, None)
    keys = work / "nodekeys"
    nodes = {}
    for i in range(n):
        nid = f"lamp-{i}"
        nodes[nid] = procs.start(nid, node_argv(work, nid, node_port, keys=keys, trial_s=trial_s))
    wait_for(lambda: all((keys / f"{nid}.oscore.json").exists() for nid in nodes), 30, what="the key files")
    kdir = work / "gwkeys"
    r = subprocess.run([SLGW, "keys", "import", "--keys-dir", str(kdir),
                        *[str(keys / f"{nid}.oscore.json") for nid in nodes]], capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0, r.stderr
    gw = SlgwProcess(work, "--coap-keys-dir", str(kdir), "--firmware-poll-s", "0.5", *extra_gw,
                     security="oscore", coap_port=coap).start()
    wait_for(lambda: len([x for x in gw.api("GET", "/api/nodes")["nodes"]
                          if x["registered"] and x.get("wh") is not None]) == n, 90, what="every node registered")
    gw.relay_control = control
    return gw, nodes


def micropython_child(proc) -> int | None:
    """The pid of the micropython process a `slnode emulate` launcher runs (its only child)."""
    try:
        for tid in os.listdir(f"/proc/{proc.pid}/task"):
            kids = open(f"/proc/{proc.pid}/task/{tid}/children").read().split()
            if kids:
                return int(kids[0])
    except OSError:
        return None
    return None
