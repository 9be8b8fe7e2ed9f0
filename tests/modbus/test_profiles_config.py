"""Profiles and the [[modbus.meters]] / [modbus_server] sections: what is accepted, and that
every rejection names the profile or meter and the key at fault."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from gateway.modbus.config import ModbusConfigError, min_silence, parse_duration, parse_meters, parse_server
from gateway.modbus.profiles import ProfileError, load_profile, parse_profile, shipped_profiles
from gateway.modbus.service import start_modbus


def test_shipped_profiles_load_and_map_energy():
    assert {"eastron-sdm120", "eastron-sdm630", "generic"} <= set(shipped_profiles())
    for name in shipped_profiles():
        p = load_profile(name)
        wh = p.mapped("import_wh")
        assert wh is not None and wh.unit == "Wh"
    p = load_profile("eastron-sdm630")
    reg = p.mapped("import_wh")
    assert (reg.function, reg.address, reg.type, reg.scale) == (4, 0x48, "float32", 1000.0)
    assert p.mapped("power_w").address == 0x34
    assert p.max_registers == 80


BAD_PROFILES = [
    ({"registers": [{"name": "x", "address": 0, "type": "float16"}]}, r"register #1 'x': type = 'float16': unknown type"),
    ({"registers": [{"name": "a", "address": 0x48, "type": "float32"},
                    {"name": "b", "address": 0x49, "type": "u16"}]}, r"registers 'a' .*0x0048\.\.0x0049.* and 'b' .*overlap"),
    ({"registers": [{"name": "a", "address": 0, "type": "u16", "function": 5}]}, r"'a': function = 5"),
    ({"registers": [{"name": "e", "address": 0x48, "type": "float32", "unit": "kWh", "map": "import_wh"}]},
     r"'e': map = 'import_wh' needs unit 'Wh'.*scale = 1000"),
    ({"registers": [{"name": "e", "address": 0, "type": "u16", "map": "volts"}]}, r"map = 'volts': unknown target"),
    ({"registers": [{"name": "a", "address": 70000, "type": "u16"}]}, r"'a': address = 70000"),
    ({"registers": [{"name": "a", "address": 0, "type": "u16", "colour": 1}]}, r"'a': unknown key\(s\) \['colour'\]"),
    ({"registers": [{"name": "a", "address": 0, "type": "u16"}, {"name": "a", "address": 2, "type": "u16"}]},
     r"#2 'a': duplicate register name"),
    ({"device": {"max_registers": 200}, "registers": [{"name": "a", "address": 0, "type": "u16"}]},
     r"max_registers = 200"),
    ({"registers": []}, r"no \[\[registers\]\]"),
]


@pytest.mark.parametrize("doc,message", BAD_PROFILES)
def test_invalid_profiles_are_rejected_with_a_clear_message(doc, message):
    with pytest.raises(ProfileError, match=message) as info:
        parse_profile(doc, name="mine", source="/etc/slgw/mine.toml")
    assert "profile 'mine' (/etc/slgw/mine.toml)" in str(info.value)


def test_profile_file_errors(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("[device\nmodel = 1")
    with pytest.raises(ProfileError, match="not valid TOML"):
        load_profile(str(bad))
    with pytest.raises(ProfileError, match="not a shipped profile.*eastron-sdm630"):
        load_profile("sdm999")
    with pytest.raises(ProfileError, match="does not exist"):
        load_profile("./nope.toml", tmp_path)


def meter(**kw):
    return {"name": "cab-A", "profile": "eastron-sdm630", **kw}


def test_meter_defaults_and_derived_settings():
    (m,) = parse_meters({"meters": [meter(transport="rtu", device="/dev/ttyUSB0", baudrate=9600,
                                          period="15s", cabinet="A")]})
    assert (m.unit, m.parity, m.period, m.timeout, m.retries, m.cabinet) == (1, "N", 15.0, 1.0, 1, "A")
    assert m.silence == pytest.approx(3.5 * 10 / 9600)       # 8N1: 10 bits a character
    assert m.source == "meter:cab-A" and m.bus_key == "rtu:/dev/ttyUSB0"
    assert min_silence(115200, 10) == 0.00175                # fixed above 19200 baud
    assert parse_duration("500ms") == 0.5 and parse_duration("5min") == 300 and parse_duration(2) == 2.0
    assert parse_meters(None) == [] and parse_meters({}) == []


BAD_METERS = [
    ([meter(baudrate="fast")], r"#1 'cab-A': baudrate = 'fast'"),
    ([meter(transport="udp")], r"'cab-A': transport = 'udp'"),
    ([meter(period="soon")], r"'cab-A': period: 'soon' is not a duration"),
    ([meter(unit=0, transport="rtu")], r"'cab-A': unit = 0"),
    ([meter(profile="nope")], r"'cab-A': profile: profile 'nope' is not a shipped profile"),
    ([meter(transport="rtu", silence="1ms")], r"'cab-A': silence = '1ms' is shorter than 3\.5 characters"),
    ([meter(speed=3)], r"'cab-A': unknown key\(s\) \['speed'\]"),
    ([{"profile": "generic"}], r"#1: name = None"),
    ([meter(), meter()], r"'cab-A': name is used by another meter"),
    ([meter(), meter(name="b")], r"'b': unit 1 on tcp:127.0.0.1:502 is already used by meter 'cab-A'"),
    ([meter(transport="rtu"), meter(name="b", transport="rtu", unit=2, baudrate=2400)],
     r"'b': baudrate/parity/stopbits/bytesize .* differ from meter 'cab-A'"),
]


@pytest.mark.parametrize("meters,message", BAD_METERS)
def test_invalid_meters_name_the_meter_and_key(meters, message):
    with pytest.raises(ModbusConfigError, match=message):
        parse_meters({"meters": meters})


def test_server_section():
    s = parse_server({})
    assert (s.enabled, s.bind, s.port, s.writable, s.unit) == (False, "127.0.0.1", 5020, False, 1)
    with pytest.raises(ModbusConfigError, match=r"\[modbus_server\]: writable = 'yes'"):
        parse_server({"writable": "yes"})
    with pytest.raises(ModbusConfigError, match=r"\[modbus_server\]: port = 70000"):
        parse_server({"port": 70000})


async def test_start_up_refuses_an_invalid_profile_file(tmp_path):
    prof = tmp_path / "mine.toml"
    prof.write_text('[[registers]]\nname = "e"\naddress = 0x48\ntype = "float24"\nunit = "Wh"\nmap = "import_wh"\n')
    cfg = SimpleNamespace(source=str(tmp_path / "gateway.toml"),
                          modbus_raw={"meters": [meter(profile="mine.toml")]}, modbus_server_raw={})
    with pytest.raises(ModbusConfigError, match=r"'cab-A': profile: profile 'mine' .*type = 'float24': unknown type"):
        await start_modbus(cfg, store=None, submit_command=None)
