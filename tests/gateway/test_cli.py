"""`slgw` as integrators script it: the real CLI against the real `slgw serve` (subprocesses),
with --json documents, human output and the documented exit codes."""

from __future__ import annotations

import json
import os
import re
import subprocess
import time

import pytest
from slgw_harness import AIOCOAP_CLIENT, SLGW, SlgwProcess

from gateway.timefmt import iso, parse
from protocol import report

TOKEN = "t0ken-for-tests"


@pytest.fixture(scope="module")
def gw(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("cli")
    g = SlgwProcess(tmp, "--commands-timeout-s", "1", "--api-token", TOKEN)
    try:
        g.start()
        base = f"coap://127.0.0.1:{g.coap_port}"
        r = subprocess.run([AIOCOAP_CLIENT, "-m", "POST", f"{base}/rd?ep=c1&lt=300&lwm2m=1.1&b=U",
                            "--content-format", "application/link-format", "--payload", "</3/0>,</3311/0>,</10250/0>"],
                           capture_output=True, text=True, timeout=30)
        assert r.returncode == 0, r.stderr
        now = int(time.time())
        for name, data in (("d", report.encode_descriptor("2.1", 45.0, 4.0, "north", "K1", 60.0, 100,
                                                          "UTC")),
                           ("r", report.encode_reports([(1, now - 7200, 5000, 60, 100, 0, 0),
                                                        (2, now - 3600, 5060, 60, 100, 3600, 0x10)]))):
            f = tmp / f"{name}.cbor"
            f.write_bytes(data)
            r = subprocess.run([AIOCOAP_CLIENT, "-m", "POST", f"{base}/dp?ep=c1", "--content-format",
                                "application/senml+cbor", "--payload", f"@{f}"],
                               capture_output=True, text=True, timeout=30)
            assert r.returncode == 0, r.stderr
        yield g
    finally:
        g.stop()


def token_env(token=TOKEN):
    """The environment with the token in SLGW_TOKEN (never on the command line), or none."""
    env = {k: v for k, v in os.environ.items() if k not in ("SLGW_TOKEN", "SLGW_TOKEN_FILE")}
    return dict(env, SLGW_TOKEN=token) if token else env


def slgw(gw, *args, token=TOKEN):
    return subprocess.run([SLGW, "--url", gw.url, *args], capture_output=True, text=True,
                          timeout=60, cwd=gw.workdir, env=token_env(token))


def js(r):
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def test_nodes_json_shape(gw):
    (n,) = js(slgw(gw, "nodes", "--json"))["nodes"]
    for key in ("id", "address", "online", "last_report", "group", "cabinet", "lat", "lon", "level",
                "power_w", "wh", "faults", "modbus_slot"):
        assert key in n
    assert n["id"] == "c1" and n["online"] and n["group"] == "north" and n["cabinet"] == "K1"
    assert n["wh"] == 5060 and n["faults"] == ["meterFailure"] and n["modbus_slot"] == 0
    assert js(slgw(gw, "--json", "node", "show", "c1"))["node"]["fw"] == "2.1"
    assert [f["id"] for f in js(slgw(gw, "faults", "--json"))["faults"]] == ["c1"]
    human = slgw(gw, "nodes")
    assert human.returncode == 0 and human.stdout.startswith("ID") and "c1" in human.stdout


def test_energy_json_and_csv(gw):
    doc = js(slgw(gw, "energy", "--json"))
    assert doc["total_wh"] == 60
    assert js(slgw(gw, "energy", "--json", "--group", "north", "--by", "hour"))["total_wh"] == 60
    doc = js(slgw(gw, "energy", "--json", "--cabinet", "K1"))
    assert doc["total_wh"] == 60 and doc["circuit"]["nodes_wh"] == 60
    csv = slgw(gw, "energy", "--csv", "--by", "15min")
    assert csv.returncode == 0 and csv.stdout.splitlines()[0].startswith("start,end,local,wh")
    # two reports an hour apart in the default 30-day window: coverage far below 90 %
    sv = js(slgw(gw, "savings", "--json"))
    assert sv["site"]["saved_pct"] is None and sv["site"]["coverage"] < 0.01
    human = slgw(gw, "savings")
    assert human.returncode == 0 and "no percentage: coverage" in human.stdout, human.stdout
    assert "min_coverage 90%" in human.stdout


def test_energy_window_is_answered_exactly(gw):
    last = js(slgw(gw, "energy", "--json", "--node", "c1", "--by", "15min"))["rows"]
    t = next(r["start"] for r in last if r["wh"] == pytest.approx(15))  # a whole quarter hour
    end = iso(parse(t, "start") + 900)
    doc = js(slgw(gw, "energy", "--json", "--node", "c1", "--from", t, "--to", end))
    (row,) = doc["rows"]  # by day, clipped to the quarter hour asked for
    assert row["clipped"] and (row["start"], row["end"]) == (t, end)
    assert doc["total_wh"] == pytest.approx(60 / 4)


def test_commands_queue_and_delivery_state(gw):
    # aiocoap-client exited, so the node's address answers nothing: the command waits
    doc = js(slgw(gw, "--json", "set-level", "group:north", "30", "--wait", "3"))
    (cmd,) = doc["commands"]
    if cmd["state"] == "delivering" or not cmd["attempts"]:
        # a loaded machine can need more than --wait for the attempt (1 s CoAP timeout): wait
        # for its end (an override supersedes only a pending command, not one in flight)
        cmd = wait_command(gw, doc["batch"], lambda c: c["attempts"] and c["state"] != "delivering")
    assert cmd["state"] == "pending" and "unreachable" in cmd["reason"] and cmd["node"] == "c1"
    doc2 = js(slgw(gw, "commands", "--json", "--batch", doc["batch"]))
    assert doc2["commands"][0]["id"] == cmd["id"] and doc2["summary"] == {"pending": 1}
    ov = js(slgw(gw, "--json", "override", "c1", "10", "--for", "1h30m", "--wait", "0"))
    assert ov["commands"][0]["payload"] == {"level": 10, "seconds": 5400}
    old = js(slgw(gw, "commands", "--json", "--batch", doc["batch"]))["commands"][0]
    assert old["state"] == "cancelled"  # superseded by the override
    # the override's attempt ends after --commands-timeout-s (1 s): requests to nodes leave
    # from the server socket, which gets no ICMP error (gateway/coap/transport.py)
    deadline = time.monotonic() + 30
    while True:
        human = slgw(gw, "commands", "--state", "pending")
        if "override" in human.stdout or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert human.returncode == 0 and "override" in human.stdout


def wait_command(gw, batch, pred, timeout=30.0):
    """Poll `slgw commands --batch` until the batch's one command satisfies `pred`; return it."""
    deadline = time.monotonic() + timeout
    while True:
        (cmd,) = js(slgw(gw, "commands", "--json", "--batch", batch))["commands"]
        if pred(cmd) or time.monotonic() > deadline:
            return cmd
        time.sleep(0.2)


def test_schedule_push_and_show(gw):
    f = gw.workdir / "winter.toml"
    f.write_text('[[steps]]\nat = "sunset"\nlevel = 100\n[[steps]]\nat = "22:30"\nlevel = 40\n'
                 '[[steps]]\nat = "sunrise"\nlevel = 0\n')
    doc = js(slgw(gw, "--json", "schedule", "push", "group:north", str(f), "--wait", "0"))
    assert doc["kind"] == "schedule" and doc["commands"][0]["payload"]["steps"][1] == [0, 1350, 40]
    shown = js(slgw(gw, "schedule", "show", "group:north", "--json"))
    assert shown["steps"] == [[1, 0, 100], [0, 1350, 40], [2, 0, 0]]


def test_backup_and_meters(gw, tmp_path):
    backups = gw.workdir / "backups"  # [store] backup_dir's default: beside the database
    doc = js(slgw(gw, "backup", "--json"))  # no path: a new timestamped file there
    assert doc["bytes"] > 0 and doc["path"].startswith(str(backups) + "/slgw-")
    doc = js(slgw(gw, "backup", str(backups / "b.db"), "--json"))
    assert doc["bytes"] > 0 and (backups / "b.db").exists()
    r = slgw(gw, "backup", str(tmp_path / "b.db"))  # outside the backup directory
    assert r.returncode == 2 and "outside the backup directory" in r.stderr
    assert not (tmp_path / "b.db").exists()
    r = slgw(gw, "backup", "b.db")  # relative: refused before asking the service
    assert r.returncode == 2 and "relative" in r.stderr
    assert js(slgw(gw, "meters", "--json")) == {"meters": []}


@pytest.mark.parametrize("args, code", [
    (["set-level", "c1", "101"], 2),
    (["set-level", "c1", "high"], 2),
    (["override", "c1", "50"], 2),
    (["override", "c1", "50", "--for", "soon"], 2),
    (["override", "c1", "50", "--for", "8d"], 2),
    (["energy", "--by", "week"], 2),
    (["energy", "--from", "yesterday"], 2),
    (["frobnicate"], 2),
    (["node", "show", "ghost"], 4),
    (["set-level", "ghost", "10"], 4),
    (["schedule", "show", "group:none"], 4),
    (["commands", "--batch", "nope"], 4),
    (["energy", "--node", "nobody"], 4),
    (["energy", "--group", "nope"], 4),
    (["energy", "--cabinet", "nope"], 4),
    (["savings", "--group", "nope"], 4),
    (["nodes", "--group", "nope"], 4),
    (["energy", "--from", "2026-01-01T17:07:00Z"], 2),
    (["energy", "--by", "15min", "--from", "1990-01-01", "--to", "2027-01-01"], 2),
    (["schedule", "push", "c1", "/nonexistent.toml"], 2),
])
def test_exit_codes(gw, args, code):
    r = slgw(gw, "--json", *args)
    assert r.returncode == code, (r.stdout, r.stderr)
    assert r.stderr.strip()
    if code != 2 or args[0] not in ("frobnicate",) and "--by" not in args:
        assert "error" in json.loads(r.stdout)


def test_token_unreachable_and_config_exit_codes(gw, tmp_path):
    r = slgw(gw, "nodes", "--json", token=None)
    assert r.returncode == 6 and "token" in r.stderr
    r = slgw(gw, "nodes", token="wrong")
    assert r.returncode == 6
    r = subprocess.run([SLGW, "--url", "http://127.0.0.1:9", "nodes", "--json"], capture_output=True,
                       text=True, timeout=30)
    assert r.returncode == 3 and json.loads(r.stdout)["error"]["code"] == "unreachable"
    bad = tmp_path / "bad.toml"
    bad.write_text("[api]\nport = -1\n")
    r = subprocess.run([SLGW, "--config", str(bad), "nodes"], capture_output=True, text=True,
                       timeout=30)
    assert r.returncode == 5 and "api.port" in r.stderr and "line 2" in r.stderr


@pytest.mark.parametrize("args", [["commands"], ["commands", "--json"], ["nodes"],
                                  ["node", "show", "c1"], ["energy", "--csv", "--by", "15min"],
                                  ["--help"]])
def test_a_reader_that_stops_early_ends_the_output_quietly(gw, args):
    """`slgw commands | head -1` ended in a BrokenPipeError traceback: a reader that closes
    the pipe before slgw writes (what `head -1` does to the rest) now gets a quiet exit 0."""
    p = subprocess.Popen([SLGW, "--url", gw.url, *args], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, cwd=gw.workdir, env=token_env())
    try:
        p.stdout.close()  # the reader is gone before the first byte
        err = p.stderr.read().decode()
        assert p.wait(60) == 0, err
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    assert "BrokenPipe" not in err and "Traceback" not in err and err == "", err


@pytest.mark.parametrize("flag, value, words", [
    ("--from", "yesterday", ["--from 'yesterday' is not a date or time", "2026-12-01T17:00:00Z"]),
    ("--to", "2026-13-01", ["--to '2026-13-01'", "ISO 8601"]),
    ("--from", "0001-01-01", ["--from '0001-01-01' is out of range", "1970-01-01"]),
])
def test_bad_time_flags_name_the_flag_and_the_formats(gw, flag, value, words):
    for cmd in ("energy", "savings"):
        r = slgw(gw, cmd, flag, value, "--json")
        assert r.returncode == 2, r.stderr
        assert json.loads(r.stdout)["error"]["code"] == "usage"
        for w in words:
            assert w in r.stderr, r.stderr
        assert "isoformat" not in r.stderr


def test_times_are_iso_8601_utc_everywhere_and_integers_are_integers(gw):
    """Issue 16: energy and savings answered Unix seconds, nodes and commands ISO 8601, meters
    a float; levels came back as 40.0. One representation now (docs/cli.md "Times")."""
    z = r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$"
    (n,) = js(slgw(gw, "nodes", "--json"))["nodes"]
    for k in ("registered_at", "last_seen", "last_report"):
        assert re.match(z, n[k]), (k, n[k])
    assert type(n["level"]) is int and type(n["on_time"]) is int and type(n["wh"]) is int, n
    for c in js(slgw(gw, "commands", "--json"))["commands"]:
        assert re.match(z, c["created_at"]) and re.match(z, c["updated_at"]), c
    e = js(slgw(gw, "energy", "--json", "--cabinet", "K1", "--by", "hour"))
    stamps = [e["start"], e["end"], e["circuit"]["start"], e["circuit"]["end"]]
    stamps += [r[k] for r in e["rows"] for k in ("start", "end")]
    sv = js(slgw(gw, "savings", "--json"))
    stamps += [sv["start"], sv["end"]]
    for t in stamps:
        assert isinstance(t, str) and re.match(z, t), t


def test_schedule_show_prints_what_schedule_push_reads(gw):
    """`schedule show` printed [[1, 0, 100], ...]; now the TOML `schedule push` takes, so a
    shown schedule can be saved and pushed again unchanged."""
    steps = [[1, -30, 100], [0, 1350, 40], [0, 300, 40], [2, 15, 0]]
    f = gw.workdir / "odd.json"
    f.write_text(json.dumps(steps))
    assert slgw(gw, "schedule", "push", "group:north", str(f), "--wait", "0").returncode == 0
    shown = slgw(gw, "schedule", "show", "group:north")
    assert shown.returncode == 0 and '[[steps]]\nat = "sunset"\noffset = -30\nlevel = 100' in shown.stdout
    assert "sunset-30 100%, 22:30 40%, 05:00 40%, sunrise+15 0%" in shown.stdout
    again = gw.workdir / "again.toml"
    again.write_text(shown.stdout)
    assert slgw(gw, "schedule", "push", "cabinet:K1", str(again), "--wait", "0").returncode == 0
    assert js(slgw(gw, "schedule", "show", "cabinet:K1", "--json"))["steps"] == steps


RAW_FLOAT = re.compile(r"\d+\.\d{3,}")  # 779.440701007843
UNIX_TIME = re.compile(r"(?<![\d.])1[6-9]\d{8}(?:\.\d+)?(?![\d])")  # 1796408462.96


@pytest.mark.parametrize("args", [["nodes"], ["node", "show", "c1"], ["commands"], ["faults"],
                                  ["energy", "--by", "hour"], ["energy", "--cabinet", "K1"],
                                  ["savings"]])
def test_human_output_has_no_raw_floats_or_unix_times(gw, args):
    r = slgw(gw, *args)
    assert r.returncode == 0, r.stderr
    assert not RAW_FLOAT.search(r.stdout), r.stdout
    assert not UNIX_TIME.search(r.stdout), r.stdout
