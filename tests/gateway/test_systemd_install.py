"""The documented systemd install works (issue 11): a `0640 root:root` /etc/slgw/gateway.toml
made the service (a DynamicUser) exit 5 and stay down. The unit now has systemd read the file
and hand the service a private copy (LoadCredential=). Checked here: the unit passes
`systemd-analyze verify`, and in the documented layout the config can be read by an
unprivileged user only through the credential, by slgw's own config loader in a process that
dropped to uid/gid 65534 as the service's dynamic user would be. Runs as root (as CI does)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from slgw_harness import SLGW

ROOT = Path(__file__).resolve().parents[2]
UNIT = ROOT / "gateway/systemd/slgw.service"
NOBODY = 65534

# slgw's config loader, run after dropping to an unprivileged uid/gid with no groups
CHECK = """
import os, sys
from gateway.config import ConfigError, load_config
os.setgroups([]); os.setresgid({uid}, {uid}, {uid}); os.setresuid({uid}, {uid}, {uid})
try:
    cfg = load_config(sys.argv[1])
except ConfigError as exc:
    print(exc, file=sys.stderr)
    sys.exit(5)
print("config ok:", cfg.api.bind, cfg.api.port)
"""


def parse_unit(text: str) -> dict[str, list[str]]:
    """Key -> every value it is given (systemd keys may repeat), comments skipped."""
    unit: dict[str, list[str]] = {}
    for line in text.splitlines():
        if "=" in line and not line.lstrip().startswith(("#", ";")):
            k, v = line.split("=", 1)
            unit.setdefault(k.strip(), []).append(v.strip())
    return unit


def check_as_service_user(path: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", CHECK.format(uid=NOBODY), str(path)],
                          capture_output=True, text=True, timeout=60, cwd="/")


def test_unit_passes_systemd_analyze_verify(tmp_path):
    unit = tmp_path / "slgw.service"
    unit.write_text(UNIT.read_text().replace("/opt/slgw/venv/bin/slgw", SLGW))
    r = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0 and not r.stderr.strip(), r.stderr


def test_documented_layout_is_readable_by_the_service_user(tmp_path):
    assert os.geteuid() == 0, "this test builds root-owned files, as the install does"
    text = UNIT.read_text()
    unit = parse_unit(text)
    one = {k: v[-1] for k, v in unit.items()}
    assert one["DynamicUser"] == "yes"
    assert int(one["LimitNOFILE"]) >= 4096
    # the install line documented at the top of the unit: mode and owner of the config
    m = re.search(r"install -D -m (0[0-7]{3}) -o (\w+) -g (\w+) \S+ (/etc/slgw/gateway.toml)", text)
    assert m, "the unit must document how the config is installed"
    mode, owner, group, etc_path = int(m.group(1), 8), m.group(2), m.group(3), m.group(4)
    assert mode & 0o007 == 0 and owner == group == "root"  # the tokens stay root-only
    name, _, src = one["LoadCredential"].partition(":")
    assert src == etc_path
    exec_config = one["ExecStart"].split("--config", 1)[1].split()[0]
    assert exec_config == f"%d/{name}"  # %d: the service's credentials directory

    # a tree the unprivileged user may traverse, as / is (pytest's tmp_path is root-only)
    base = Path(tempfile.mkdtemp(prefix="slgw-install-"))
    try:
        os.chmod(base, 0o755)
        _layout(base, mode, name, exec_config)
    finally:
        shutil.rmtree(base)


def _layout(base: Path, mode: int, name: str, exec_config: str) -> None:
    etc = base / "etc"
    etc.mkdir(mode=0o755)
    cfg = etc / "gateway.toml"
    shutil.copy(ROOT / "gateway/examples/gateway.toml", cfg)
    os.chown(cfg, 0, 0)
    os.chmod(cfg, mode)
    # what the old unit did (the service reads /etc/slgw/gateway.toml itself): refused
    r = check_as_service_user(cfg)
    assert r.returncode == 5 and "cannot read config file" in r.stderr, (r.stdout, r.stderr)
    # what LoadCredential does: a read-only copy owned by the service's user, in a directory
    # only that user may enter
    creds = base / "credentials"
    creds.mkdir()
    copy = creds / name
    shutil.copy(cfg, copy)
    for p, m_ in ((copy, 0o400), (creds, 0o500)):
        os.chown(p, NOBODY, NOBODY)
        os.chmod(p, m_)
    r = check_as_service_user(Path(exec_config.replace("%d", str(creds))))
    assert r.returncode == 0 and "config ok: 127.0.0.1 8080" in r.stdout, (r.stdout, r.stderr)
