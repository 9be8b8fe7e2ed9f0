"""gateway/config.py: defaults, errors that name key and line, unknown keys, flag overrides."""

import argparse

import pytest

from gateway.config import (
    SCHEMA,
    ConfigError,
    add_config_flags,
    load_config,
    markdown_table,
    overrides_from_args,
)


def write(tmp_path, text):
    p = tmp_path / "gateway.toml"
    p.write_text(text)
    return str(p)


def test_defaults_without_file(tmp_path, monkeypatch):
    monkeypatch.setenv("STATE_DIRECTORY", str(tmp_path))
    cfg = load_config(None, {})
    assert cfg.coap.bind == "127.0.0.1" and cfg.coap.port == 5683
    assert cfg.api.bind == "127.0.0.1" and cfg.api.port == 8080 and cfg.api.token == ""
    assert cfg.site.timezone == "Europe/Paris"
    assert cfg.commands.concurrency == 64
    assert cfg.savings.baseline == "dusk-to-dawn"
    assert cfg.store.path == str(tmp_path / "slgw.db")  # systemd StateDirectory wins
    assert cfg.clock_start_unix() is None


def test_full_file_and_raw_modbus_tables(tmp_path):
    path = write(tmp_path, """
[coap]
bind = "::"
port = 5700
[store]
path = "/data/gw.db"
retention_raw_days = 400
[api]
bind = "0.0.0.0"
token = "Zk9Qa7Wm2Lx4Vb8Nc6Rt1YpE3sG5hJ0uF"
[site]
latitude = 45.5
longitude = 4.8
timezone = "UTC"
[clock]
start = "2026-01-15T17:00:00Z"
speed = 60
[[modbus.meters]]
name = "cabinet-A"
profile = "eastron-sdm630"
[modbus_server]
enabled = true
""")
    cfg = load_config(path, {})
    assert cfg.coap.bind == "::" and cfg.coap.port == 5700
    assert cfg.store.path == "/data/gw.db" and cfg.store_path_explicit
    assert cfg.store.retention_raw_days == 400
    assert cfg.clock.speed == 60.0 and cfg.clock_start_unix() == 1768496400.0
    assert cfg.modbus_raw == {"meters": [{"name": "cabinet-A", "profile": "eastron-sdm630"}]}
    assert cfg.modbus_server_raw == {"enabled": True}


def test_syntax_error_names_the_line(tmp_path):
    path = write(tmp_path, '[coap]\nport = 5683\nbind = 127.0.0.1\n')
    with pytest.raises(ConfigError) as e:
        load_config(path, {})
    assert "line 3" in str(e.value) and path in str(e.value)


def test_bad_value_names_key_and_line(tmp_path):
    path = write(tmp_path, '# comment\n[site]\nname = "x"\n\n[coap]\nbind = "127.0.0.1"\nport = "http"\n')
    with pytest.raises(ConfigError) as e:
        load_config(path, {})
    msg = str(e.value)
    assert "coap.port" in msg and "line 7" in msg and "int" in msg


def test_out_of_range_value(tmp_path):
    path = write(tmp_path, '[site]\nlatitude = 123.0\n')
    with pytest.raises(ConfigError, match=r"line 2.*site\.latitude.*-90"):
        load_config(path, {})
    path = write(tmp_path, '[site]\ntimezone = "Mars/Olympus"\n')
    with pytest.raises(ConfigError, match=r"line 2.*site\.timezone"):
        load_config(path, {})


def test_unknown_key_and_section_are_errors(tmp_path):
    path = write(tmp_path, '[coap]\nprot = 5683\n[stroe]\npath = "x"\n')
    with pytest.raises(ConfigError) as e:
        load_config(path, {})
    msg = str(e.value)
    assert "'coap.prot'" in msg and "line 2" in msg
    assert "[stroe]" in msg and "line 3" in msg


def test_api_token_required_off_loopback(tmp_path):
    path = write(tmp_path, '[api]\nbind = "0.0.0.0"\n')
    with pytest.raises(ConfigError, match=r"line 2.*api\.token"):
        load_config(path, {})
    long_token = "Zk9Qa7Wm2Lx4Vb8Nc6Rt1YpE3sG5hJ0uF"  # off loopback: >= 32 varied characters
    assert load_config(path, {"api.token": long_token}).api.token == long_token
    # loopback in IPv6 is loopback too
    assert load_config(write(tmp_path, '[api]\nbind = "::1"\n'), {}).api.bind == "::1"


def test_unprotected_coap_only_on_loopback(tmp_path):
    """Issue 11: security = "none" is for the demo on loopback only. Off loopback anyone who
    reaches the port could pose as any node, so the gateway refuses to start, naming the line."""
    path = write(tmp_path, '[coap]\nbind = "0.0.0.0"\nsecurity = "none"\n')
    with pytest.raises(ConfigError, match=r"line 3.*coap\.security.*loopback.*'0\.0\.0\.0'.*oscore"):
        load_config(path, {})
    with pytest.raises(ConfigError, match="loopback"):  # a flag is refused the same way
        load_config(None, {"coap.bind": "192.0.2.7", "coap.security": "none"})
    # the default (OSCORE) serves the network; "none" on loopback (IPv4 or IPv6) stays allowed
    assert load_config(write(tmp_path, '[coap]\nbind = "0.0.0.0"\n'), {}).coap.security == "oscore"
    for bind in ("127.0.0.1", "::1", "localhost"):
        assert load_config(None, {"coap.bind": bind, "coap.security": "none"}).coap.bind == bind


def test_reference_baseline_needs_its_period(tmp_path):
    path = write(tmp_path, '[savings]\nbaseline = "reference"\n')
    with pytest.raises(ConfigError, match="reference_from"):
        load_config(path, {})


def test_savings_min_coverage_is_a_fraction(tmp_path):
    assert load_config(None, {}).savings.min_coverage == 0.9
    assert load_config(write(tmp_path, "[savings]\nmin_coverage = 1\n"), {}).savings.min_coverage == 1
    with pytest.raises(ConfigError, match="min_coverage.*fraction 0-1"):
        load_config(write(tmp_path, "[savings]\nmin_coverage = 90\n"), {})
    with pytest.raises(ConfigError, match="reference_from.*15-minute boundary"):
        load_config(write(tmp_path, '[savings]\nreference_from = "2025-01-01T00:07:00"\n'), {})


def test_unreadable_and_non_utf8_files(tmp_path):
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(str(tmp_path / "missing.toml"), {})
    p = tmp_path / "bin.toml"
    p.write_bytes(b'[site]\nname = "\xff\xfe"\n')
    with pytest.raises(ConfigError, match="line 2.*UTF-8"):
        load_config(str(p), {})


def test_flags_cover_every_key_and_override_the_file(tmp_path):
    path = write(tmp_path, '[coap]\nport = 5700\n[store]\npath = "a.db"\n')
    parser = argparse.ArgumentParser()
    add_config_flags(parser)
    ns = parser.parse_args(["--coap-port", "5999", "--store-commit-interval-ms", "2.5",
                            "--clock-speed", "10"])
    ov = overrides_from_args(ns)
    assert ov == {"coap.port": "5999", "store.commit_interval_ms": "2.5", "clock.speed": "10"}
    cfg = load_config(path, ov)
    assert cfg.coap.port == 5999 and cfg.store.commit_interval_ms == 2.5 and cfg.clock.speed == 10.0
    # every schema key has a flag
    flags = {a.dest for a in parser._actions}
    for sec, keys in SCHEMA.items():
        for key in keys:
            assert f"cfg__{sec}__{key}" in flags
    with pytest.raises(ConfigError, match="--coap-port"):
        load_config(None, {"coap.port": "notaport"})
    with pytest.raises(ConfigError, match="unknown override"):
        load_config(None, {"coap.nope": 1})


def test_docs_list_every_key():
    import pathlib
    doc = (pathlib.Path(__file__).parents[2] / "docs" / "configuration.md").read_text()
    table = markdown_table()
    for sec, keys in SCHEMA.items():
        assert f"[{sec}]" in doc
        for key in keys:
            assert f"--{sec}-{key.replace('_', '-')}" in doc, key
    assert table.splitlines()[0] in doc
