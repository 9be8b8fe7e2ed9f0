"""firmware/config.py: the same validation on CPython (slnode provision) and MicroPython (the node)."""

import json
import os
import sys

sys.path.insert(0, os.path.dirname(__file__))
from app_support import run_mp  # noqa: E402

from firmware import config  # noqa: E402  (app_support puts the repo root on sys.path)

GOOD = {
    "id": "lamp-0042",
    "wifi_ssid": "town-iot",
    "wifi_password": "correct horse",
    "gateway": "coap://192.168.1.10:5683",
    "lat": 45.76,
    "lon": 4.84,
    "tz": "CET-1CEST,M3.5.0,M10.5.0/3",
    "group": "rue-centrale",
    "cabinet": "C12",
    "rated_w": 60,
    "default_level": 80,
    "min_level": 10,
    "report_period": 900,
    "lifetime": 300,
    "jitter": 30,
    "meter": {"type": "modbus", "unit": 3, "baudrate": 9600, "uart": 2},
}

# (mutation applied to GOOD, field that must be named in an error, or None for valid)
CASES = [
    ({}, None),
    ({"lat": 90.5}, "lat"),
    ({"lon": -181}, "lon"),
    ({"lat": "45"}, "lat"),
    ({"id": "bad id!"}, "id"),
    ({"id": "x" * 64}, "id"),
    ({"gateway": "http://h:1"}, "gateway"),
    ({"gateway": "coap://h:70000"}, "gateway"),
    ({"gateway": "coap://:5683"}, "gateway"),
    ({"gateway": "coap://[::1]:5683"}, None),
    ({"gateway": "coap://gw.local"}, None),
    ({"tz": ""}, "tz"),
    ({"tz": "+0100"}, "tz"),
    ({"rated_w": 0}, "rated_w"),
    ({"rated_w": True}, "rated_w"),
    ({"default_level": 101}, "default_level"),
    ({"default_level": 5}, "default_level"),  # below min_level
    ({"default_level": 0}, None),  # off is a legal fail-safe level
    ({"min_level": -1}, "min_level"),
    ({"report_period": 5}, "report_period"),
    ({"report_period": 60.5}, "report_period"),
    ({"lifetime": 59}, "lifetime"),
    ({"jitter": 3601}, "jitter"),
    ({"wifi_password": "short"}, "wifi_password"),
    ({"group": "g" * 33}, "group"),
    ({"meter": {"type": "gas"}}, "meter.type"),
    ({"meter": {"type": "pulse", "pulses_per_kwh": 0}}, "meter.pulses_per_kwh"),
    ({"meter": {"type": "modbus", "baudrate": 1234}}, "meter.baudrate"),
    ({"meter": {"type": "modbus", "unit": 248}}, "meter.unit"),
    ({"meter": {"type": "modbus", "parity": "E"}}, "meter.parity"),
    ({"meter": "pulse"}, "meter"),
    ({"defualt_level": 50}, "defualt_level"),  # a typo must not be ignored
]


def _case(mut):
    d = json.loads(json.dumps(GOOD))
    d.update(mut)
    return d


def test_good_config_round_trips():
    cfg, errors = config.validate(GOOD, require_identity=True)
    assert errors == []
    assert cfg["default_level"] == 80 and cfg["meter"]["unit"] == 3 and cfg["rated_w"] == 60.0
    again, errors = config.loads(config.dumps(cfg))
    assert errors == [] and again == cfg


def test_each_bad_field_is_named_and_falls_back_alone():
    for mut, field in CASES:
        cfg, errors = config.validate(_case(mut))
        if field is None:
            assert errors == [], (mut, errors)
            continue
        assert errors, mut
        assert any(e.startswith(field + ":") for e in errors), (mut, errors)
        # the other fields keep their good values
        assert cfg["cabinet"] == "C12" and cfg["group"] == GOOD["group"] or field == "group"
        top = field.split(".")[0]
        if top in config.defaults() and top != "meter" and top != "default_level":
            assert cfg[top] == config.defaults()[top], (mut, cfg[top])


def test_missing_identity_is_an_error_only_for_provisioning():
    cfg, errors = config.validate({"lat": 1.0})
    assert errors == []
    cfg, errors = config.validate({"lat": 1.0}, require_identity=True)
    assert sorted(e.split(":")[0] for e in errors) == ["gateway", "id"]


def test_corrupt_or_missing_file_gives_safe_defaults(tmp_path):
    p = tmp_path / "config.json"
    p.write_bytes(b'{"id": "n1", "lat": 4\x00\xff')
    cfg, errors = config.load_file(str(p))
    assert cfg == config.defaults() and errors[0].startswith("config:")
    cfg, errors = config.load_file(str(tmp_path / "nope.json"))
    assert cfg == config.defaults() and errors[0].startswith("config:")
    cfg, errors = config.loads("[1, 2]")
    assert cfg["default_level"] == 100 and errors[0].startswith("config:")


def test_gateway_parsing():
    assert config.parse_gateway("coap://127.0.0.1:5999") == ("127.0.0.1", 5999)
    assert config.parse_gateway("coap://gw") == ("gw", 5683)
    assert config.parse_gateway("coap://[fe80::1]:7") == ("fe80::1", 7)


def test_micropython_gives_the_same_verdicts(tmp_path):
    """The node (MicroPython) and the provisioning tool (CPython) must agree on every case."""
    cases = [_case(m) for m, _ in CASES] + ["not a dict", {"id": 5}]
    src = tmp_path / "cases.json"
    src.write_text(json.dumps(cases))
    script = (
        "import json\nfrom firmware import config\n"
        "cases = json.loads(open(" + repr(str(src)) + ").read())\n"
        "out = []\n"
        "for c in cases:\n"
        "    cfg, errs = config.validate(c)\n"
        "    out.append([sorted(e.split(':')[0] for e in errs), cfg])\n"
        "print(json.dumps(out))\n"
        "cfg, errs = config.loads('{\"id\": ')\n"
        "print(json.dumps([cfg, len(errs)]))\n"
    )
    r = run_mp(script)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.strip().splitlines()
    mp = json.loads(lines[0])
    for c, (fields, cfg) in zip(cases, mp, strict=True):
        want_cfg, want_errs = config.validate(c)
        assert fields == sorted(e.split(":")[0] for e in want_errs), c
        assert cfg == want_cfg, c
    cfg, n = json.loads(lines[1])
    assert cfg == config.defaults() and n == 1
