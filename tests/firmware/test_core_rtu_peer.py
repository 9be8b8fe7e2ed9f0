"""The node's Modbus RTU master and SDM120 driver, run under `micropython` with the emulated
HAL's UART on a socat pty, against the pymodbus-based SDM120 emulator (tools/meters) paced at
the line's baud rate. Also: mbpoll, an independent Modbus master, reads the same emulator, so
both sides are checked against third-party code."""

import json
import os
import subprocess

import pytest
from core_support import MICROPYTHON, MP_CORE, ROOT, mp_env

from tools.meters.harness import start_rtu_line
from tools.meters.model import write_control

CLIENT = os.path.join(MP_CORE, "rtu_client.py")


def _poll(tmp_path, bus, baud, polls, unplug_at=-1):
    flash = tmp_path / "flash"
    r = subprocess.run([MICROPYTHON, CLIENT, str(flash), bus, str(baud), str(polls), str(unplug_at)], env=mp_env(),
                       capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    return [json.loads(x) for x in r.stdout.splitlines() if x.startswith("{")]


def test_sdm120_read_through_pty(tmp_path, procs):
    control = tmp_path / "control.json"
    write_control(control, {"load_w": 42.5, "fault": None})
    line = start_rtu_line(procs, tmp_path, baud=9600, model="sdm120", units="1", load_w=42.5,
                          control=control, extra=["--energy-kwh", "1234.5"])
    out = _poll(tmp_path, line.bus, 9600, 3)
    assert len(out) == 3
    for o in out:
        assert o["ok"] and o["errors"] == 0
        assert abs(o["w"] - 42.5) < 0.01 and abs(o["v"] - 230.0) < 0.01
        assert 1234500 <= o["wh"] <= 1234600
    # an independent master agrees on the register the node reports
    r = subprocess.run(["mbpoll", "-m", "rtu", "-b", "9600", "-P", "none", "-a", "1", "-t", "3:float", "-B",
                        "-r", str(0x0156 + 1), "-c", "1", "-1", line.bus], capture_output=True, text=True,
                       timeout=30)
    assert r.returncode == 0, r.stdout + r.stderr
    val = float([x for x in r.stdout.splitlines() if x.startswith("[")][0].split()[1])
    assert abs(val * 1000 - out[-1]["wh"]) < 5


@pytest.mark.parametrize("fault", ["unplugged", "crc", "garbage"])
def test_sdm120_faults_reported_not_fatal(tmp_path, procs, fault):
    control = tmp_path / "control.json"
    write_control(control, {"load_w": 10.0, "fault": fault})
    line = start_rtu_line(procs, tmp_path, baud=19200, model="sdm120", units="1", load_w=10.0,
                          control=control, extra=["--energy-kwh", "5.0"])
    out = _poll(tmp_path, line.bus, 19200, 2)
    assert [o["ok"] for o in out] == [False, False]
    assert out[-1]["errors"] == 2 and out[-1]["wh"] == 0  # nothing invented
    assert out[-1]["last_error"]


def test_sdm120_exception_answer(tmp_path, procs):
    control = tmp_path / "control.json"
    write_control(control, {"load_w": 10.0, "fault": "exception"})
    line = start_rtu_line(procs, tmp_path, baud=19200, model="sdm120", units="1", control=control)
    out = _poll(tmp_path, line.bus, 19200, 1)
    assert not out[0]["ok"] and "exception 4" in out[0]["last_error"]


def test_emulated_hal_unplug_switch_silences_the_line(tmp_path, procs):
    line = start_rtu_line(procs, tmp_path, baud=19200, model="sdm120", units="1", load_w=20.0,
                          extra=["--energy-kwh", "7.0"])
    out = _poll(tmp_path, line.bus, 19200, 3, unplug_at=1)
    assert out[0]["ok"] and 7000 <= out[0]["wh"] <= 7001
    assert not out[1]["ok"] and not out[2]["ok"]
    assert out[2]["wh"] == out[0]["wh"]  # the last good reading is held, nothing invented
