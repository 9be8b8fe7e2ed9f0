"""Validation of the ``[[modbus.meters]]`` and ``[modbus_server]`` config sections.

gateway/config.py keeps these sections raw (``cfg.modbus_raw``, ``cfg.modbus_server_raw``);
this module turns them into typed settings, loads each meter's profile, and stops
start-up with a message that names the meter and the key at fault. Defaults are listed in
``METER_DEFAULTS`` and ``SERVER_DEFAULTS`` and documented in docs/modbus.md.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from pathlib import Path

from .profiles import Profile, ProfileError, load_profile

METER_DEFAULTS: dict[str, object] = {
    "transport": "tcp",
    "host": "127.0.0.1",
    "port": 502,
    "device": "/dev/ttyUSB0",
    "baudrate": 9600,
    "parity": "N",
    "stopbits": 1,
    "bytesize": 8,
    "unit": 1,
    "cabinet": None,
    "period": "10s",      # time between two polls of the meter
    "timeout": "1s",      # per request, per attempt
    "retries": 1,         # extra attempts after a timeout or a bad frame, while healthy
    "silence": "auto",    # RTU inter-frame silence: "auto" = 3.5 characters at the baud rate
    "backoff_max": "5min",  # longest wait between probes of a quarantined meter
    "enabled": True,
}
SERVER_DEFAULTS: dict[str, object] = {
    "enabled": False,
    "bind": "127.0.0.1",
    "port": 5020,
    "writable": False,
    "unit": 1,
    "refresh": "1s",      # the register image is rebuilt from the store at most this often
    "write_allow": [],    # client addresses/networks that may write; needed off loopback
    "max_writes_per_s": 10.0,  # level writes accepted per second (bursts of 2 s), all clients
    "max_connections": 16,  # open client connections at most; past it a new one is closed
    "idle_timeout": "120s",  # a connection without a request for this long is closed
}
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_DUR_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|min|m|h)?\s*$")
_DUR_UNITS = {"ms": 0.001, "s": 1.0, "min": 60.0, "m": 60.0, "h": 3600.0, None: 1.0}


class ModbusConfigError(ValueError):
    """The Modbus part of the config is invalid; the message names the meter and the key."""


def parse_duration(value: object) -> float:
    """Parse "10s", "500ms", "5min", "1h" or a number of seconds.

    Raises:
        ValueError: not a non-negative duration.
    """
    if isinstance(value, (int, float)) and not isinstance(value, bool) and value >= 0:
        return float(value)
    if isinstance(value, str) and (m := _DUR_RE.match(value)):
        return float(m.group(1)) * _DUR_UNITS[m.group(2)]
    raise ValueError(f"{value!r} is not a duration (examples: 10s, 500ms, 5min, 2.5)")


def char_bits(bytesize: int, parity: str, stopbits: int) -> int:
    """Bits on the wire per RTU character: start + data + parity + stop."""
    return 1 + bytesize + (0 if parity == "N" else 1) + stopbits


def min_silence(baudrate: int, bits: int) -> float:
    """The Modbus RTU inter-frame silence t3.5 in seconds.

    Modbus over serial line v1.02 §2.5.1.1: 3.5 character times, fixed at 1.75 ms above
    19200 baud.
    """
    return 0.00175 if baudrate > 19200 else 3.5 * bits / baudrate


@dataclass
class MeterConfig:
    """One meter, validated, with its profile loaded."""

    name: str
    profile: Profile
    transport: str
    host: str
    port: int
    device: str
    baudrate: int
    parity: str
    stopbits: int
    bytesize: int
    unit: int
    cabinet: str | None
    period: float
    timeout: float
    retries: int
    silence: float
    backoff_max: float
    enabled: bool = True

    @property
    def source(self) -> str:
        """The source id under which the store keeps this meter's readings."""
        return f"meter:{self.name}"

    @property
    def bus_key(self) -> str:
        """Meters with the same key share one connection and one lock."""
        if self.transport == "rtu":
            return f"rtu:{self.device}"
        return f"tcp:{self.host}:{self.port}"


@dataclass
class ServerConfig:
    """The Modbus TCP bridge server for SCADA."""

    enabled: bool = False
    bind: str = "127.0.0.1"
    port: int = 5020
    writable: bool = False
    unit: int = 1
    refresh: float = 1.0
    write_allow: tuple = ()  # ipaddress networks that may write (empty: any client, loopback only)
    max_writes_per_s: float = 10.0
    max_connections: int = 16
    idle_timeout: float = 120.0


def _meters_list(raw: object) -> list:
    if raw is None:
        return []
    if isinstance(raw, dict):
        unknown = set(raw) - {"meters"}
        if unknown:
            raise ModbusConfigError(f"[modbus]: unknown key(s) {sorted(unknown)}; expected [[modbus.meters]]")
        raw = raw.get("meters", [])
    if not isinstance(raw, list):
        raise ModbusConfigError("[[modbus.meters]] must be an array of tables")
    return raw


def _int_in(where: str, key: str, val: object, lo: int, hi: int) -> int:
    if not isinstance(val, int) or isinstance(val, bool) or not lo <= val <= hi:
        raise ModbusConfigError(f"{where}: {key} = {val!r}: must be an integer {lo}..{hi}")
    return val


def _dur(where: str, key: str, val: object, positive: bool = True) -> float:
    try:
        sec = parse_duration(val)
    except ValueError as exc:
        raise ModbusConfigError(f"{where}: {key}: {exc}") from None
    if positive and sec <= 0:
        raise ModbusConfigError(f"{where}: {key} = {val!r}: must be greater than zero")
    return sec


def parse_meter(raw: object, index: int, base_dir: Path | None = None) -> MeterConfig:
    """Validate one ``[[modbus.meters]]`` table.

    Raises:
        ModbusConfigError: naming the meter (by position and name) and the key.
    """
    where = f"[[modbus.meters]] #{index + 1}"
    if not isinstance(raw, dict):
        raise ModbusConfigError(f"{where}: must be a table")
    name = raw.get("name")
    if isinstance(name, str):
        where += f" {name!r}"
    unknown = set(raw) - set(METER_DEFAULTS) - {"name", "profile"}
    if unknown:
        raise ModbusConfigError(f"{where}: unknown key(s) {sorted(unknown)}; known: "
                                f"{sorted(set(METER_DEFAULTS) | {'name', 'profile'})}")
    if not isinstance(name, str) or not _NAME_RE.match(name):
        raise ModbusConfigError(f"{where}: name = {name!r}: required, 1-64 characters of "
                                "letters, digits, '_', '.', '-'")
    v = {**METER_DEFAULTS, **raw}
    if not isinstance(v.get("profile"), str):
        raise ModbusConfigError(f"{where}: profile is required (a shipped name such as "
                                "'eastron-sdm630', or a path to a profile file)")
    try:
        profile = load_profile(v["profile"], base_dir)
    except ProfileError as exc:
        raise ModbusConfigError(f"{where}: profile: {exc}") from None
    if profile.mapped("import_wh") is None:
        raise ModbusConfigError(f"{where}: profile {profile.name!r} maps no register to 'import_wh'; "
                                "a meter needs a cumulative import energy register")
    if v["transport"] not in ("tcp", "rtu"):
        raise ModbusConfigError(f"{where}: transport = {v['transport']!r}: expected 'tcp' or 'rtu'")
    if not isinstance(v["host"], str) or not v["host"]:
        raise ModbusConfigError(f"{where}: host = {v['host']!r}: must be a host name or address")
    if not isinstance(v["device"], str) or not v["device"]:
        raise ModbusConfigError(f"{where}: device = {v['device']!r}: must be a serial device path")
    port = _int_in(where, "port", v["port"], 1, 65535)
    baud = _int_in(where, "baudrate", v["baudrate"], 300, 1_000_000)
    if v["parity"] not in ("N", "E", "O"):
        raise ModbusConfigError(f"{where}: parity = {v['parity']!r}: expected 'N', 'E' or 'O'")
    stopbits = _int_in(where, "stopbits", v["stopbits"], 1, 2)
    bytesize = _int_in(where, "bytesize", v["bytesize"], 7, 8)
    unit = _int_in(where, "unit", v["unit"], 0 if v["transport"] == "tcp" else 1, 247 if v["transport"] == "rtu" else 255)
    cabinet = v["cabinet"]
    if cabinet is not None and (not isinstance(cabinet, str) or not cabinet):
        raise ModbusConfigError(f"{where}: cabinet = {cabinet!r}: must be a non-empty string")
    retries = _int_in(where, "retries", v["retries"], 0, 10)
    floor = min_silence(baud, char_bits(bytesize, v["parity"], stopbits))
    if v["silence"] == "auto":
        silence = floor
    else:
        silence = _dur(where, "silence", v["silence"], positive=False)
        if v["transport"] == "rtu" and silence < floor:
            raise ModbusConfigError(f"{where}: silence = {v['silence']!r} is shorter than 3.5 characters "
                                    f"at {baud} baud ({floor * 1000:.2f} ms); use 'auto' or a longer value")
    if not isinstance(v["enabled"], bool):
        raise ModbusConfigError(f"{where}: enabled = {v['enabled']!r}: must be true or false")
    return MeterConfig(
        name=name, profile=profile, transport=v["transport"], host=v["host"], port=port,
        device=v["device"], baudrate=baud, parity=v["parity"], stopbits=stopbits,
        bytesize=bytesize, unit=unit, cabinet=cabinet, period=_dur(where, "period", v["period"]),
        timeout=_dur(where, "timeout", v["timeout"]), retries=retries,
        silence=silence if v["transport"] == "rtu" else 0.0,
        backoff_max=_dur(where, "backoff_max", v["backoff_max"]), enabled=v["enabled"])


def parse_meters(raw: object, base_dir: Path | None = None) -> list[MeterConfig]:
    """Validate all meters: each one, then the rules that bind them together.

    Meters on one serial device must agree on its line settings; names are unique; a
    (bus, unit) pair is used once.

    Raises:
        ModbusConfigError: naming the meter and the key at fault.
    """
    meters = [parse_meter(m, i, base_dir) for i, m in enumerate(_meters_list(raw))]
    names: set[str] = set()
    units: dict[tuple[str, int], str] = {}
    lines: dict[str, tuple[MeterConfig, tuple]] = {}
    for m in meters:
        where = f"[[modbus.meters]] {m.name!r}"
        if m.name in names:
            raise ModbusConfigError(f"{where}: name is used by another meter")
        names.add(m.name)
        key = (m.bus_key, m.unit)
        if key in units:
            raise ModbusConfigError(f"{where}: unit {m.unit} on {m.bus_key} is already used by meter {units[key]!r}")
        units[key] = m.name
        if m.transport == "rtu":
            line = (m.baudrate, m.parity, m.stopbits, m.bytesize)
            first = lines.setdefault(m.device, (m, line))
            if first[1] != line:
                raise ModbusConfigError(
                    f"{where}: baudrate/parity/stopbits/bytesize {line} differ from meter {first[0].name!r} "
                    f"{first[1]} on the same serial device {m.device!r}")
    return meters


def parse_server(raw: object) -> ServerConfig:
    """Validate ``[modbus_server]``.

    Raises:
        ModbusConfigError: naming the key.
    """
    raw = raw or {}
    if not isinstance(raw, dict):
        raise ModbusConfigError("[modbus_server] must be a table")
    unknown = set(raw) - set(SERVER_DEFAULTS)
    if unknown:
        raise ModbusConfigError(f"[modbus_server]: unknown key(s) {sorted(unknown)}; known: {sorted(SERVER_DEFAULTS)}")
    v = {**SERVER_DEFAULTS, **raw}
    for key in ("enabled", "writable"):
        if not isinstance(v[key], bool):
            raise ModbusConfigError(f"[modbus_server]: {key} = {v[key]!r}: must be true or false")
    bind = v["bind"]
    try:
        bind_ip = ipaddress.ip_address(bind) if isinstance(bind, str) else None
    except ValueError:
        bind_ip = None
    if bind_ip is None:
        raise ModbusConfigError(f"[modbus_server]: bind = {bind!r}: must be an IP address of this host, "
                                'such as "127.0.0.1", its LAN address, or "0.0.0.0"')
    allow = _networks(v["write_allow"])
    if v["writable"] and not bind_ip.is_loopback and not allow:
        raise ModbusConfigError(f"[modbus_server]: writable = true on bind = {bind!r} (not loopback) lets "
                                "anyone on the network switch lamps: list the SCADA's address in "
                                'write_allow (e.g. write_allow = ["192.168.1.20"]) or bind to 127.0.0.1')
    rate = v["max_writes_per_s"]
    if isinstance(rate, bool) or not isinstance(rate, int | float) or not 0 < rate <= 1000:
        raise ModbusConfigError(f"[modbus_server]: max_writes_per_s = {rate!r}: must be a number > 0 and <= 1000")
    return ServerConfig(enabled=v["enabled"], bind=str(bind_ip),
                        port=_int_in("[modbus_server]", "port", v["port"], 0, 65535),
                        writable=v["writable"], unit=_int_in("[modbus_server]", "unit", v["unit"], 0, 255),
                        refresh=_dur("[modbus_server]", "refresh", v["refresh"], positive=False),
                        write_allow=allow, max_writes_per_s=float(rate),
                        max_connections=_int_in("[modbus_server]", "max_connections",
                                                v["max_connections"], 1, 1000),
                        idle_timeout=_dur("[modbus_server]", "idle_timeout", v["idle_timeout"]))


def _networks(raw: object) -> tuple:
    """``write_allow``: a list of addresses or networks ("192.168.1.20", "10.0.0.0/24")."""
    if not isinstance(raw, list) or not all(isinstance(a, str) for a in raw):
        raise ModbusConfigError(f"[modbus_server]: write_allow = {raw!r}: must be a list of addresses, "
                                'e.g. ["192.168.1.20", "10.0.0.0/24"]')
    out = []
    for a in raw:
        try:
            out.append(ipaddress.ip_network(a, strict=False))
        except ValueError:
            raise ModbusConfigError(f"[modbus_server]: write_allow: {a!r} is not an IP address or "
                                    "network") from None
    return tuple(out)
