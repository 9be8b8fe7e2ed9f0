"""Gateway configuration: the TOML schema, its documented defaults, validation and flag overrides.

Owns: ``load_config(path, overrides) -> Config``, ``ConfigError`` and the argparse helpers
(``add_config_flags`` / ``overrides_from_args``) that turn every key into a ``--section-key``
flag. Every key, its default and meaning is listed in docs/configuration.md (generated from
``SCHEMA`` below, so the two cannot drift: ``python -m gateway.config`` prints the table).

Decisions:
- Unknown sections or keys are errors, never warnings: a typo such as ``prot = 5683`` would
  otherwise silently leave the default in force.
- ``[modbus]`` and ``[modbus_server]`` are kept as raw dicts (``cfg.modbus_raw``,
  ``cfg.modbus_server_raw``); gateway/modbus/config.py validates them.
- ``store.path`` left at its default resolves to ``$STATE_DIRECTORY/slgw.db`` under systemd
  (``StateDirectory=slgw``), else ``/var/lib/slgw/slgw.db`` when that directory is writable,
  else ``./slgw.db`` (a warning is logged). An explicitly set path is used as is.
"""

from __future__ import annotations

import argparse
import ipaddress
import logging
import os
import re
import tomllib
import zoneinfo
from dataclasses import dataclass, field, make_dataclass
from datetime import UTC, datetime
from typing import Any

log = logging.getLogger(__name__)

DEFAULT_STORE_PATH = "/var/lib/slgw/slgw.db"


class ConfigError(Exception):
    """A configuration file or flag that cannot be used; the message names key, line and fix."""


# --- the schema: section -> key -> (type, default, help) -------------------------------------
# Types: str, int, float, bool. Validators below add ranges and formats.
SCHEMA: dict[str, dict[str, tuple[type, Any, str]]] = {
    "coap": {
        "bind": (str, "127.0.0.1", 'address the CoAP server binds to; set "0.0.0.0" or "::" to '
                 "serve the network (always bound explicitly, so hosts without IPv6 work)"),
        "port": (int, 5683, "UDP port of the CoAP server"),
        "dedup_entries": (int, 10000, "recent requests remembered to answer retransmissions "
                          "(duplicate detection, RFC 7252 4.5); bounds memory under a flood"),
        "security": (str, "oscore", '"oscore": every node exchange is OSCORE-protected with '
                     'the node\'s own key and the key is its identity (docs/security.md); '
                     '"none": unprotected, anyone on the network can pose as a node or '
                     "command one (the demo only: refused unless [coap] bind is a loopback "
                     "address; a warning is logged at start-up)"),
        "keys_dir": (str, "", 'directory of the nodes\' OSCORE keys (`slgw keys import`), mode '
                     '0700; "" = `keys` beside the database'),
    },
    "store": {
        "path": (str, DEFAULT_STORE_PATH, "SQLite database file (see the resolution rule)"),
        "commit_interval_ms": (float, 0.0, "under load, how long the writer waits for more writes "
                               "to share one commit (one fsync); 0 = group only what is already "
                               "queued. Never delays a write when the store is idle"),
        "retention_raw_days": (int, 0, "keep raw readings this many days; 0 = forever"),
        "retention_bucket_days": (int, 0, "keep 15-minute buckets this many days; 0 = forever "
                                  "(hour/day roll-ups are always kept)"),
        "backup_dir": (str, "", "the only directory `slgw backup` may write to; \"\" = `backups` "
                       "beside the database (created on first use)"),
        "aggregate_interval_s": (float, 5.0, "how often dirty sources are re-aggregated (put "
                                 "off while Sends keep the writer over half busy, at most 60 s)"),
    },
    "api": {
        "bind": (str, "127.0.0.1", "address of the HTTP/JSON API"),
        "port": (int, 8080, "TCP port of the HTTP/JSON API"),
        "token": (str, "", "operator bearer token: every route (commands, schedules, backup); "
                  "required off loopback, then at least 32 characters (24 random bytes)"),
        "read_token": (str, "", "read-only bearer token: GET routes only (dashboards, "
                       "monitoring); needs `token` set too"),
        "header_timeout_s": (float, 10.0, "a connection that has not sent a request's headers "
                             "within this time is closed, and its body must arrive within it "
                             "too (408); also the idle keep-alive time"),
        "max_connections": (int, 256, "open connections at most; past it the oldest one still "
                            "waiting for a request is closed, so new clients get in"),
    },
    "site": {
        "name": (str, "", "site name shown in reports"),
        "latitude": (float, 48.8566, "site latitude, degrees (dusk/dawn baseline)"),
        "longitude": (float, 2.3522, "site longitude, degrees"),
        "timezone": (str, "Europe/Paris", "IANA time zone for day and month boundaries"),
    },
    "clock": {
        "start": (str, "", 'simulated clock start, ISO 8601 (e.g. "2026-01-15T17:00:00Z"); '
                  '"" = real clock'),
        "speed": (float, 1.0, "simulated clock speed (sim seconds per real second)"),
        "anchor": (float, 0.0, "real Unix time at which the simulated clock reads `start`; "
                   "0 = process start"),
    },
    "nodes": {
        "offline_after_s": (float, 0.0, "a node is offline after this long without any message; "
                            "0 = its registration lifetime"),
        "default_lifetime": (int, 300, "registration lifetime assumed when lt is absent, s"),
        # registration limits (gateway/nodes/registry.py, docs/security.md)
        "max_nodes": (int, 10000, "registered nodes at most; a new endpoint beyond is refused "
                      "5.03 (known nodes always register)"),
        "max_pending": (int, 1000, "new endpoints that have registered but not reported yet, at "
                        "most; more new ones are refused 5.03 until these report or expire"),
        "new_per_s": (float, 20.0, "new endpoints admitted per second (bursts of 10 s worth); "
                      "known nodes are never limited"),
        "pending_expire_s": (float, 3600.0, "a registration without a single report this long "
                             "after its Register expires (its row is deleted if it holds nothing)"),
        # plausibility of reports (gateway/plausibility.py, docs/security.md)
        "max_rated_w": (float, 2000.0, "largest rated power a node's descriptor may declare, W; "
                        "also the power allowed to a node whose rating is not known yet"),
        "energy_margin": (float, 2.0, "a report's energy step may be at most rated power x "
                          "elapsed time x this (plus 5 minutes and 1 Wh); more is refused 4.00"),
        "seq_jump_max": (int, 1000, "a report's seq may run ahead of the last one by this plus "
                         "one per second elapsed; more is refused 4.00"),
        "time_back_s": (float, 900.0, "a report time this far before the node's previous one "
                        "is refused 4.00"),
        "time_future_s": (float, 600.0, "a report time this far ahead of the gateway's clock is "
                          "refused 4.00 (only while the clock is NTP-synchronised or simulated)"),
        "rebaseline_after": (int, 3, "a node whose reports break only the energy rule but "
                             "agree among themselves is taken to have a new meter after this "
                             "many refused reports (energy across estimated); 0 = never"),
        "max_report_age_s": (float, 2678400.0, "a report older than this (default 31 days) is "
                             "refused 4.00 (only while the clock is trusted)"),
    },
    "commands": {
        "concurrency": (int, 64, "requests to nodes in flight at once"),
        "timeout_s": (float, 30.0, "time allowed for one delivery attempt, s"),
        "max_attempts": (int, 10, "delivery attempts before a command is failed"),
    },
    "savings": {
        "baseline": (str, "dusk-to-dawn", '"dusk-to-dawn" (rated power at full level) or '
                     '"reference" (a measured reference period)'),
        "reference_from": (str, "", "start of the reference period, ISO 8601 date or time"),
        "reference_to": (str, "", "end of the reference period (exclusive)"),
        "min_coverage": (float, 0.9, "fraction (0-1) of the baseline's night hours that must have "
                         "data for a saved_pct to be given (docs/energy.md §5)"),
    },
    "log": {
        "level": (str, "INFO", "DEBUG, INFO, WARNING or ERROR"),
    },
    # northbound MQTT (gateway/northbound/, docs/northbound.md)
    "mqtt": {
        "enabled": (bool, False, "publish node state, reports, 15-minute energy, faults and "
                    "health to an MQTT broker through the durable outbox"),
        "host": (str, "127.0.0.1", "broker host name or address"),
        "port": (int, 1883, "broker port (8883 is the usual one with TLS)"),
        "tls": (bool, False, "connect with TLS, checking the broker against the system CAs or "
                "`ca_file` (set implicitly by ca_file or cert_file)"),
        "ca_file": (str, "", "PEM file of the CA that signed the broker's certificate"),
        "cert_file": (str, "", "PEM client certificate, for brokers that authenticate by "
                      "certificate (with key_file)"),
        "key_file": (str, "", "PEM private key of cert_file"),
        "username": (str, "", "broker user name; \"\" = none"),
        "password_file": (str, "", "file whose first line is the broker password (mode 0600); "
                          "never on the command line"),
        "gateway_id": (str, "", "this gateway's id in topics and message ids; \"\" = the host "
                       "name. Keep it stable: consumers key on it"),
        "topic_prefix": (str, "streetlight", "topics are PREFIX/GATEWAY_ID/..."),
        "qos": (int, 1, "QoS of published messages: 1 or 2 (a message leaves the outbox only "
                "when the broker acknowledged it)"),
        "max_outbox": (int, 1000000, "messages the outbox holds at most; past it the oldest are "
                       "dropped, counted and logged (docs/northbound.md)"),
        "inflight": (int, 256, "messages awaiting the broker's acknowledgement at once"),
        "keepalive_s": (int, 30, "MQTT keep-alive: a dead broker is noticed within 1.5 x this"),
        "reconnect_max_s": (float, 30.0, "longest wait between reconnection attempts, s"),
        "health_interval_s": (float, 60.0, "how often gateway health is published, s"),
        "commands": (bool, False, "accept level and override commands on the command topic "
                     "(authorise publishers with the broker's ACL, docs/northbound.md)"),
        "command_topic": (str, "", "topic of commands; \"\" = PREFIX/GATEWAY_ID/command"),
        "ha_discovery": (bool, False, "publish Home Assistant MQTT discovery (a device per node)"),
        "ha_prefix": (str, "homeassistant", "Home Assistant discovery prefix"),
        "thingsboard": (bool, False, "also publish node telemetry on ThingsBoard's gateway "
                        "topic v1/gateway/telemetry"),
    },
    "web": {  # the web view served beside the API (gateway/web, docs/web.md)
        "enabled": (bool, True, "serve the web view at / and /web/ on the API's address and port"),
        "public": (bool, True, "the pages are readable without a token (read-only); false = "
                   "signing in with the read or operator token is needed to see them too"),
        "tariff_eur_per_kwh": (float, 0.20, "electricity price used to show savings in euros"),
        "session_hours": (float, 12.0, "how long a browser stays signed in after entering a token"),
    },
    "firmware": {  # over-the-air updates (gateway/ota, docs/ota.md)
        "dir": (str, "", "where bundles and roll-out state are kept; \"\" = `firmware` beside "
                "the database"),
        "max_downloads": (int, 8, "nodes downloading a bundle at once (the rest of a wave waits)"),
        "max_block_rate": (float, 200.0, "bundle blocks (1 KB) served per second over all nodes; "
                           "0 = no limit. A block asked for early is answered late, never refused"),
        "halt_pct": (float, 20.0, "a roll-out halts when more than this % of the nodes updated so "
                     "far failed (the default of `--halt`)"),
        "poll_s": (float, 2.0, "how often a node's update state (/5/0/3, /5/0/5) is read"),
        "download_timeout_s": (float, 600.0, "a node that has not downloaded the bundle by then "
                               "counts as failed"),
        "trial_timeout_s": (float, 900.0, "a node that has neither committed nor rolled back by "
                            "then after its reboot counts as failed"),
    },
}
RAW_SECTIONS = ("modbus", "modbus_server")


def _section_class(name: str) -> type:
    """A dataclass for one section, with the schema's keys and defaults as fields."""
    fields = [(k, t, field(default=d)) for k, (t, d, _h) in SCHEMA[name].items()]
    return make_dataclass(name.capitalize() + "Config", fields)


CoapConfig = _section_class("coap")
StoreConfig = _section_class("store")
ApiConfig = _section_class("api")
SiteConfig = _section_class("site")
ClockConfig = _section_class("clock")
NodesConfig = _section_class("nodes")
CommandsConfig = _section_class("commands")
SavingsConfig = _section_class("savings")
LogConfig = _section_class("log")
MqttConfig = _section_class("mqtt")
WebConfig = _section_class("web")
FirmwareConfig = _section_class("firmware")
_CLASSES = {"mqtt": MqttConfig, "web": WebConfig, "coap": CoapConfig, "store": StoreConfig, "api": ApiConfig, "site": SiteConfig,
            "clock": ClockConfig, "nodes": NodesConfig, "commands": CommandsConfig,
            "savings": SavingsConfig, "log": LogConfig, "firmware": FirmwareConfig}


@dataclass
class Config:
    """The validated configuration. ``source`` is the file it came from (None = defaults)."""

    coap: Any = field(default_factory=CoapConfig)
    store: Any = field(default_factory=StoreConfig)
    api: Any = field(default_factory=ApiConfig)
    site: Any = field(default_factory=SiteConfig)
    clock: Any = field(default_factory=ClockConfig)
    nodes: Any = field(default_factory=NodesConfig)
    commands: Any = field(default_factory=CommandsConfig)
    savings: Any = field(default_factory=SavingsConfig)
    log: Any = field(default_factory=LogConfig)
    mqtt: Any = field(default_factory=MqttConfig)
    web: Any = field(default_factory=WebConfig)
    firmware: Any = field(default_factory=FirmwareConfig)
    modbus_raw: dict = field(default_factory=dict)
    modbus_server_raw: dict = field(default_factory=dict)
    source: str | None = None
    store_path_explicit: bool = False

    def clock_start_unix(self) -> float | None:
        """The simulated clock's start as Unix seconds, or None for the real clock."""
        return parse_time(self.clock.start) if self.clock.start else None


def parse_time(text: str) -> float:
    """Parse ISO 8601 (a date, or a date-time; no zone = UTC) into Unix seconds.

    Raises ValueError on anything else.
    """
    s = text.strip()
    if s.endswith("Z") or s.endswith("z"):
        s = s[:-1] + "+00:00"
    dt = datetime.fromisoformat(s)
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return dt.timestamp()


# --- validation ---------------------------------------------------------------------------
def _is_loopback(addr: str) -> bool:
    if addr in ("localhost",):
        return True
    try:
        return ipaddress.ip_address(addr).is_loopback
    except ValueError:
        return False


MIN_TOKEN_CHARS = 32  # 24 random bytes in base64 (`openssl rand -base64 24`); hex gives 48
TOKEN_ADVICE = ("make one with `openssl rand -base64 24` (or `python3 -c 'import secrets; "
                "print(secrets.token_urlsafe(24))'`)")


def token_problem(bind: str, token: str, read_token: str = "") -> str | None:
    """Why the API's tokens cannot be used on `bind`, or None (the rules of docs/api.md).

    Off loopback the API needs the operator token, and every token must be at least
    MIN_TOKEN_CHARS characters with some variety (a guessable token there is an open door).
    """
    if read_token and not token:
        return ("'api.read_token' is set but 'api.token' is not: without an operator token "
                f"commands would need no token at all; set api.token too ({TOKEN_ADVICE})")
    if read_token and hmac_equal(read_token, token):
        return "'api.read_token' must differ from 'api.token'"
    if _is_loopback(bind):
        return None
    if not token:
        return (f"'api.bind' = {bind!r} is not a loopback address, so 'api.token' is required; "
                f"{TOKEN_ADVICE}, or bind the API to 127.0.0.1")
    for name, value in (("api.token", token), ("api.read_token", read_token)):
        if value and (len(value) < MIN_TOKEN_CHARS or len(set(value)) < 10):
            return (f"'{name}' is too short or too regular for an API bound to {bind!r} (not "
                    f"loopback): it needs at least {MIN_TOKEN_CHARS} random characters "
                    f"(24 random bytes); {TOKEN_ADVICE}")
    return None


def hmac_equal(a: str, b: str) -> bool:
    """Constant-time string comparison (for tokens)."""
    import hmac
    return hmac.compare_digest(a.encode(), b.encode())


def _check_value(sec: str, key: str, v: Any) -> str | None:
    """Return a problem description for a typed value, or None if it is acceptable."""
    if key == "port" and not 0 <= v <= 65535:
        return "must be a port number 0-65535"
    if key == "bind":
        try:
            ipaddress.ip_address(v)
        except ValueError:
            if v != "localhost":
                return 'must be an IP address such as "127.0.0.1", "0.0.0.0" or "::"'
    if sec == "coap" and key == "security" and v not in ("oscore", "none"):
        return 'must be "oscore" or "none"'
    if sec == "site" and key == "latitude" and not -90 <= v <= 90:
        return "must be between -90 and 90"
    if sec == "site" and key == "longitude" and not -180 <= v <= 180:
        return "must be between -180 and 180"
    if key == "timezone":
        try:
            zoneinfo.ZoneInfo(v)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError):
            return 'must be an IANA time zone name such as "Europe/Paris" or "UTC"'
    if sec == "clock" and key == "start" and v:
        try:
            parse_time(v)
        except ValueError:
            return 'must be ISO 8601, e.g. "2026-01-15T17:00:00Z", or "" for the real clock'
    if sec == "clock" and key == "speed" and not 0 < v <= 100000:
        return "must be > 0 (1.0 = real time)"
    if sec == "savings" and key == "baseline" and v not in ("dusk-to-dawn", "reference"):
        return 'must be "dusk-to-dawn" or "reference"'
    if sec == "savings" and key == "min_coverage" and not 0 <= v <= 1:
        return "must be a fraction 0-1 (0.9 = 90 % of the night hours have data)"
    if sec == "savings" and key in ("reference_from", "reference_to") and v:
        try:
            t = parse_time(v)
        except ValueError:
            return 'must be an ISO 8601 date such as "2025-01-01"'
        if t % 900:  # energy is known per quarter hour (docs/energy.md §4)
            return "must fall on a 15-minute boundary (a date, or a time such as 17:00 or 17:15)"
    if sec == "web" and key in ("tariff_eur_per_kwh", "session_hours") and not 0 <= v <= 1e6:
        return "must be between 0 and 1e6"
    if sec == "log" and key == "level" and v.upper() not in ("DEBUG", "INFO", "WARNING", "ERROR"):
        return "must be DEBUG, INFO, WARNING or ERROR"
    if key in ("commit_interval_ms", "retention_raw_days", "retention_bucket_days",
               "offline_after_s", "anchor") and v < 0:
        return "must be >= 0"
    if sec == "nodes" and key in ("max_rated_w", "time_back_s", "time_future_s",
                                  "max_report_age_s", "new_per_s", "pending_expire_s") and v <= 0:
        return "must be > 0"
    if sec == "nodes" and key == "rebaseline_after" and v < 0:
        return "must be >= 0 (0 = never)"
    if sec == "nodes" and key in ("max_nodes", "max_pending") and v < 1:
        return "must be >= 1"
    if sec == "nodes" and key == "energy_margin" and v < 1:
        return "must be >= 1 (1 = exactly the rated power)"
    if sec == "nodes" and key == "seq_jump_max" and v < 16:
        return "must be >= 16 (a node skips up to 16 seqs after a power cut)"
    if key in ("concurrency", "max_attempts", "default_lifetime", "dedup_entries",
               "max_connections") and v < 1:
        return "must be >= 1"
    if sec == "firmware" and key not in ("dir", "max_block_rate") and v <= 0:
        return "must be > 0"
    if sec == "firmware" and key == "max_block_rate" and v < 0:
        return "must be >= 0 (0 = no limit)"
    if sec == "firmware" and key == "halt_pct" and v > 100:
        return "must be a percentage 0-100"
    if key in ("timeout_s", "aggregate_interval_s", "header_timeout_s") and v <= 0:
        return "must be > 0"
    if sec == "mqtt":
        return _check_mqtt(key, v)
    return None


def _check_mqtt(key: str, v: Any) -> str | None:
    if key == "qos" and v not in (1, 2):
        return "must be 1 or 2 (QoS 0 has no acknowledgement, so the outbox could not know " \
               "what arrived)"
    if key in ("max_outbox", "inflight", "keepalive_s") and v < 1:
        return "must be >= 1"
    if key in ("reconnect_max_s", "health_interval_s") and v <= 0:
        return "must be > 0"
    if key in ("gateway_id", "topic_prefix") and (any(c in v for c in "+#\0") or v.startswith("/")
                                                  or v.endswith("/")):
        return "must not contain + # or NUL, nor start or end with /"
    if key == "gateway_id" and "/" in v:
        return "must not contain / (it is one topic level)"
    if key == "topic_prefix" and not v:
        return "must not be empty"
    if key == "command_topic" and any(c in v for c in "+#\0"):
        return "must be a topic without wildcards"
    return None


def _coerce(typ: type, v: Any) -> Any:
    """Convert a TOML or flag value to the schema type; raise ValueError if impossible."""
    if typ is bool:
        if isinstance(v, bool):
            return v
        if isinstance(v, str) and v.lower() in ("true", "1", "yes", "on", "false", "0", "no", "off"):
            return v.lower() in ("true", "1", "yes", "on")
        raise ValueError
    if typ is int:
        if isinstance(v, bool):
            raise ValueError
        if isinstance(v, int):
            return v
        if isinstance(v, str):
            return int(v, 0)
        raise ValueError
    if typ is float:
        if isinstance(v, bool):
            raise ValueError
        if isinstance(v, int | float):
            return float(v)
        if isinstance(v, str):
            return float(v)
        raise ValueError
    if typ is str:
        if isinstance(v, str):
            return v
        raise ValueError
    raise ValueError


def _key_line(text: str, sec: str, key: str) -> int | None:
    """Find the 1-based line where ``key`` is set inside ``[sec]`` (or dotted ``sec.key``)."""
    current = ""
    key_re = re.compile(r'^\s*("?)' + re.escape(key) + r'\1\s*=')
    dotted = re.compile(r"^\s*" + re.escape(sec) + r"\s*\.\s*" + re.escape(key) + r"\s*=")
    for n, line in enumerate(text.splitlines(), 1):
        m = re.match(r"^\s*\[\s*([^\]\s]+)\s*\]", line)
        if m:
            current = m.group(1)
            continue
        if current == sec and key_re.match(line):
            return n
        if current == "" and dotted.match(line):
            return n
    return None


def _section_line(text: str, sec: str) -> int | None:
    for n, line in enumerate(text.splitlines(), 1):
        if re.match(r"^\s*\[\[?\s*" + re.escape(sec) + r"\s*\]", line):
            return n
    return None


def _where(path: str | None, line: int | None) -> str:
    src = path or "<flags>"
    return f"{src}, line {line}" if line else src


def load_config(path: str | None, overrides: dict[str, Any] | None = None) -> Config:
    """Load, validate and default the gateway configuration.

    ``path`` None means defaults only. ``overrides`` maps ``"section.key"`` to a value (from
    flags; strings are converted to the key's type) and wins over the file.
    Returns a Config. Raises ConfigError naming the file, line and key, and what to do.
    """
    overrides = overrides or {}
    text = ""
    data: dict[str, Any] = {}
    if path is not None:
        try:
            with open(path, "rb") as f:
                raw = f.read()
        except OSError as e:
            raise ConfigError(f"cannot read config file {path}: {e.strerror}; check the path "
                              "given to --config and its permissions") from e
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            line = raw[: e.start].count(b"\n") + 1
            raise ConfigError(f"{path}, line {line}: not valid UTF-8; save the file as UTF-8") from e
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as e:
            raise ConfigError(f"{path}: TOML syntax error: {e}; fix the syntax at that line "
                              "(strings need quotes, tables are [section])") from e

    cfg = Config(source=path)
    unknown = []
    for sec, val in data.items():
        if sec in RAW_SECTIONS:
            if not isinstance(val, dict):
                raise ConfigError(f"{_where(path, _key_line(text, '', sec))}: [{sec}] must be a table")
            setattr(cfg, sec + "_raw", val)
            continue
        if sec not in SCHEMA:
            unknown.append((sec, None))
            continue
        if not isinstance(val, dict):
            raise ConfigError(f"{_where(path, _key_line(text, '', sec))}: '{sec}' must be a table "
                              f"[{sec}], not a value")
        for key in val:
            if key not in SCHEMA[sec]:
                unknown.append((sec, key))
    if unknown:
        parts = []
        for sec, key in unknown:
            if key is None:
                parts.append(f"section [{sec}] ({_where(path, _section_line(text, sec))})")
            else:
                parts.append(f"'{sec}.{key}' ({_where(path, _key_line(text, sec, key))})")
        known = ", ".join(sorted(SCHEMA) + list(RAW_SECTIONS))
        raise ConfigError("unknown config key(s): " + "; ".join(parts)
                          + f"; check the spelling against docs/configuration.md (sections: {known})")

    for sec, keys in SCHEMA.items():
        obj = getattr(cfg, sec)
        for key, (typ, _default, _help) in keys.items():
            if key in data.get(sec, {}):
                src_val, origin = data[sec][key], _where(path, _key_line(text, sec, key))
            else:
                continue
            _apply(obj, sec, key, typ, src_val, origin)
            if sec == "store" and key == "path":
                cfg.store_path_explicit = True
    for dotted, v in overrides.items():
        if v is None:
            continue
        sec, _, key = dotted.partition(".")
        if sec not in SCHEMA or key not in SCHEMA[sec]:
            raise ConfigError(f"unknown override '{dotted}'; see docs/configuration.md")
        _apply(getattr(cfg, sec), sec, key, SCHEMA[sec][key][0], v,
               f"flag --{sec}-{key.replace('_', '-')}")
        if dotted == "store.path":
            cfg.store_path_explicit = True

    problem = token_problem(cfg.api.bind, cfg.api.token, cfg.api.read_token)
    if problem:
        key = "bind" if not cfg.api.token else "token"
        raise ConfigError(f"{_where(path, _key_line(text, 'api', key))}: {problem}")
    if cfg.coap.security == "none" and not _is_loopback(cfg.coap.bind):
        # unprotected, anyone who reaches the port can pose as any node: the demo on loopback only
        raise ConfigError(
            f"{_where(path, _key_line(text, 'coap', 'security'))}: 'coap.security' = \"none\" "
            f"leaves node exchanges unprotected, so it is allowed only with a loopback "
            f"'coap.bind' (the demo), not {cfg.coap.bind!r}; set security = \"oscore\" and "
            "import each node's key (slgw keys import, docs/security.md), or bind 127.0.0.1")
    if cfg.savings.baseline == "reference" and not (cfg.savings.reference_from
                                                     and cfg.savings.reference_to):
        origin = _where(path, _key_line(text, "savings", "baseline"))
        raise ConfigError(f"{origin}: 'savings.baseline' = \"reference\" needs "
                          "'savings.reference_from' and 'savings.reference_to'")
    if not cfg.store_path_explicit:
        cfg.store.path = default_store_path()
    if not cfg.coap.keys_dir:
        cfg.coap.keys_dir = os.path.join(os.path.dirname(os.path.abspath(cfg.store.path)), "keys")
    return cfg


def _apply(obj: Any, sec: str, key: str, typ: type, v: Any, origin: str) -> None:
    try:
        val = _coerce(typ, v)
    except (ValueError, TypeError):
        raise ConfigError(f"{origin}: '{sec}.{key}' = {v!r} must be of type {typ.__name__}; "
                          f"default is {SCHEMA[sec][key][1]!r}") from None
    problem = _check_value(sec, key, val)
    if problem:
        raise ConfigError(f"{origin}: '{sec}.{key}' = {v!r} {problem}")
    setattr(obj, key, val)


def default_store_path() -> str:
    """Resolve the default database path (see the module docstring)."""
    state = os.environ.get("STATE_DIRECTORY")
    if state:
        return os.path.join(state.split(":")[0], "slgw.db")
    d = os.path.dirname(DEFAULT_STORE_PATH)
    if os.path.isdir(d) and os.access(d, os.W_OK):
        return DEFAULT_STORE_PATH
    log.warning("%s is not writable and STATE_DIRECTORY is unset: using ./slgw.db; set "
                "[store] path to choose where the gateway keeps its data", d)
    return os.path.abspath("slgw.db")


# --- flags ------------------------------------------------------------------------------------
def flag_name(sec: str, key: str) -> str:
    """``("coap", "port") -> "--coap-port"``."""
    return f"--{sec}-{key.replace('_', '-')}"


def add_config_flags(parser: argparse.ArgumentParser) -> None:
    """Add one ``--section-key`` flag per schema key (default None = not overridden)."""
    group = parser.add_argument_group("configuration overrides (win over the TOML file)")
    for sec, keys in SCHEMA.items():
        for key, (typ, default, help_) in keys.items():
            group.add_argument(flag_name(sec, key), dest=f"cfg__{sec}__{key}", default=None,
                               metavar=typ.__name__.upper(),
                               help=f"{help_} (default {default!r})")


def overrides_from_args(ns: argparse.Namespace) -> dict[str, Any]:
    """Collect the flags added by add_config_flags into ``{"section.key": value}``."""
    out = {}
    for name, v in vars(ns).items():
        if name.startswith("cfg__") and v is not None:
            _, sec, key = name.split("__", 2)
            out[f"{sec}.{key}"] = v
    return out


def markdown_table() -> str:
    """Every key with type, default and meaning, as the Markdown in docs/configuration.md."""
    lines = []
    for sec, keys in SCHEMA.items():
        lines += [f"### [{sec}]", "", "| key | type | default | flag | meaning |",
                  "|---|---|---|---|---|"]
        for key, (typ, default, help_) in keys.items():
            lines.append(f"| `{key}` | {typ.__name__} | `{default!r}` | `{flag_name(sec, key)}` | "
                         f"{help_} |")
        lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    print(markdown_table())
