"""Node configuration: schema, defaults and validation of config.json.

Pure code: runs unchanged on MicroPython (the node reads its config.json at boot) and on
CPython (``slnode provision`` validates a technician's node.toml with :func:`validate` before
it writes config.json to the node). No I/O except :func:`load_file`.

Keys (all optional except ``id`` and ``gateway`` for provisioning; the node falls back to
safe defaults for anything missing or wrong and raises the ``configError`` fault):

  id             endpoint name, 1-63 chars of [A-Za-z0-9._-]
  wifi_ssid      str <= 32;  wifi_password: "" (open) or 8-63 chars (WPA2)
  gateway        "coap://HOST:PORT" (PORT defaults to 5683; IPv6 as [addr])
  lat, lon       degrees, -90..90 / -180..180
  tz             POSIX TZ string <= 64, e.g. "CET-1CEST,M3.5.0,M10.5.0/3"
  group, cabinet labels, str <= 32
  rated_w        luminaire rated power, W, 0 < rated_w <= 2000
  default_level  fail-safe level 0..100 (TALQ defaultLightState; 100 unless configured)
  min_level      driver minimum dimming level 0..100 (levels 1..min_level-1 are raised to it)
  report_period  seconds between reports, 10..86400
  lifetime       registration lifetime, s, 60..86400 (SPEC §2)
  jitter         mass-restore jitter J, s, 0..3600 (SPEC §2)
  meter          {type: "pulse"|"modbus"|"emulated", pulses_per_kwh, unit, baudrate, uart}

Decisions: an unknown key is an error (a technician's typo must not be silently ignored);
each bad field falls back to its default alone, so one typo does not lose the whole config.
"""

try:
    from micropython import const
except ImportError:  # CPython

    def const(x):
        return x


DEFAULT_PORT = const(5683)
_ID_CHARS = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-"
METER_TYPES = ("pulse", "modbus", "emulated")
BAUDRATES = (1200, 2400, 4800, 9600, 19200, 38400, 57600, 115200)


def defaults():
    """Return a fresh dict of the safe defaults (a new object each call: no shared state)."""
    return {
        "id": "",
        "wifi_ssid": "",
        "wifi_password": "",
        "gateway": "",
        "lat": 0.0,
        "lon": 0.0,
        "tz": "UTC0",
        "group": "",
        "cabinet": "",
        "rated_w": 50.0,
        "default_level": 100,
        "min_level": 10,
        "report_period": 900,
        "lifetime": 300,
        "jitter": 30,
        "meter": meter_defaults(),
    }


def meter_defaults():
    """Defaults of the ``meter`` table (an emulated meter unless one is configured)."""
    return {"type": "emulated", "pulses_per_kwh": 1000, "unit": 1, "baudrate": 2400, "uart": 1}


def _is_num(v):
    return (isinstance(v, int) or isinstance(v, float)) and not isinstance(v, bool)


def _is_int(v):
    return isinstance(v, int) and not isinstance(v, bool)


def valid_id(s):
    """True if ``s`` is a legal endpoint name (SPEC §2: 1-63 chars of [A-Za-z0-9._-])."""
    if not isinstance(s, str) or not 1 <= len(s) <= 63:
        return False
    for ch in s:
        if ch not in _ID_CHARS:
            return False
    return True


def parse_gateway(uri):
    """Split "coap://HOST[:PORT]" into ``(host, port)``.

    Returns (host, port). Raises ValueError with a readable reason on anything else
    (another scheme, a path, an empty host, a port outside 1..65535).
    """
    if not isinstance(uri, str):
        raise ValueError("must be a string like coap://HOST:PORT")
    if not uri.startswith("coap://"):
        raise ValueError("must start with coap:// (got %r)" % (uri[:40],))
    rest = uri[7:]
    if rest.endswith("/"):
        rest = rest[:-1]
    if "/" in rest or "?" in rest or "@" in rest:
        raise ValueError("must be coap://HOST:PORT without a path")
    port = DEFAULT_PORT
    if rest.startswith("["):  # IPv6 literal
        end = rest.find("]")
        if end < 0:
            raise ValueError("unclosed [ in IPv6 address")
        host = rest[1:end]
        tail = rest[end + 1 :]
        if tail:
            if not tail.startswith(":"):
                raise ValueError("junk after IPv6 address")
            port = _port(tail[1:])
    else:
        if rest.count(":") > 1:
            raise ValueError("IPv6 addresses must be written in brackets")
        if ":" in rest:
            host, p = rest.split(":")
            port = _port(p)
        else:
            host = rest
    if not host:
        raise ValueError("empty host")
    return host, port


def _port(p):
    if not p.isdigit():
        raise ValueError("port must be a number")
    v = int(p)
    if not 1 <= v <= 65535:
        raise ValueError("port must be 1..65535")
    return v


def _check_tz(tz):
    if not isinstance(tz, str) or not 3 <= len(tz) <= 64:
        return "must be a POSIX TZ string of 3..64 characters"
    if tz[0] in "0123456789+-,":
        return "must start with a zone name, e.g. CET-1CEST,M3.5.0,M10.5.0/3"
    try:
        from firmware import tzrule
    except ImportError:
        tzrule = None
    parse = getattr(tzrule, "TZ", None) if tzrule else None
    if parse is not None:
        try:
            parse(tz)
        except Exception as e:  # noqa: BLE001 - any parser complaint is a config error
            return "not a valid POSIX TZ string (%s)" % (e,)
    return None


def _range(errors, out, src, key, lo, hi, want_int):
    if key not in src:
        return
    v = src[key]
    ok = _is_int(v) if want_int else _is_num(v)
    if not ok:
        errors.append("%s: must be %s" % (key, "an integer" if want_int else "a number"))
        return
    if not lo <= v <= hi:
        errors.append("%s: %s is out of range %s..%s" % (key, v, lo, hi))
        return
    out[key] = v if want_int else float(v)


def _string(errors, out, src, key, maxlen):
    if key not in src:
        return
    v = src[key]
    if not isinstance(v, str):
        errors.append("%s: must be a string" % key)
    elif len(v) > maxlen:
        errors.append("%s: longer than %d characters" % (key, maxlen))
    else:
        out[key] = v


def _meter(errors, src):
    out = meter_defaults()
    if not isinstance(src, dict):
        errors.append("meter: must be a table {type=..., ...}")
        return out
    for k in src:
        if k not in out:
            errors.append("meter.%s: unknown key" % (k,))
    t = src.get("type", out["type"])
    if t not in METER_TYPES:
        errors.append("meter.type: must be one of %s" % (", ".join(METER_TYPES),))
    else:
        out["type"] = t
    sub = []
    _range(sub, out, src, "pulses_per_kwh", 1, 100000, True)
    _range(sub, out, src, "unit", 1, 247, True)
    _range(sub, out, src, "uart", 0, 2, True)
    if "baudrate" in src:
        if src["baudrate"] not in BAUDRATES or not _is_int(src["baudrate"]):
            sub.append("baudrate: must be one of %s" % (", ".join(str(b) for b in BAUDRATES),))
        else:
            out["baudrate"] = src["baudrate"]
    for e in sub:
        errors.append("meter." + e)
    return out


def validate(src, require_identity=False):
    """Check a config mapping against the schema above.

    Returns ``(config, errors)``: ``config`` is a complete dict in which every missing or
    bad field holds its safe default; ``errors`` is a list of strings, each starting with
    the field's name (``"lat: 95 is out of range -90..90"``). ``require_identity`` (used by
    ``slnode provision``) makes a missing ``id`` or ``gateway`` an error too.
    Never raises on bad input.
    """
    cfg = defaults()
    errors = []
    if not isinstance(src, dict):
        errors.append("config: must be a JSON object / TOML table")
        return cfg, errors
    for k in src:
        if k not in cfg:
            errors.append("%s: unknown key" % (k,))
    if "id" in src:
        if valid_id(src["id"]):
            cfg["id"] = src["id"]
        else:
            errors.append("id: must be 1-63 characters of A-Z a-z 0-9 . _ -")
    elif require_identity:
        errors.append("id: missing")
    if "gateway" in src:
        try:
            parse_gateway(src["gateway"])
            cfg["gateway"] = src["gateway"]
        except ValueError as e:
            errors.append("gateway: %s" % (e,))
    elif require_identity:
        errors.append("gateway: missing")
    _string(errors, cfg, src, "wifi_ssid", 32)
    if "wifi_password" in src:
        pw = src["wifi_password"]
        if not isinstance(pw, str) or not (pw == "" or 8 <= len(pw) <= 63):
            errors.append("wifi_password: must be empty (open network) or 8-63 characters")
        else:
            cfg["wifi_password"] = pw
    _range(errors, cfg, src, "lat", -90, 90, False)
    _range(errors, cfg, src, "lon", -180, 180, False)
    if "tz" in src:
        why = _check_tz(src["tz"])
        if why:
            errors.append("tz: " + why)
        else:
            cfg["tz"] = src["tz"]
    _string(errors, cfg, src, "group", 32)
    _string(errors, cfg, src, "cabinet", 32)
    if "rated_w" in src:
        v = src["rated_w"]
        if not _is_num(v) or not 0 < v <= 2000:
            errors.append("rated_w: must be a number of watts in (0, 2000]")
        else:
            cfg["rated_w"] = float(v)
    _range(errors, cfg, src, "default_level", 0, 100, True)
    _range(errors, cfg, src, "min_level", 0, 100, True)
    if 0 < cfg["default_level"] < cfg["min_level"]:
        errors.append(
            "default_level: %d is below min_level %d (the driver cannot dim that low)"
            % (cfg["default_level"], cfg["min_level"])
        )
        cfg["default_level"] = 100
    _range(errors, cfg, src, "report_period", 10, 86400, True)
    _range(errors, cfg, src, "lifetime", 60, 86400, True)
    _range(errors, cfg, src, "jitter", 0, 3600, True)
    if "meter" in src:
        cfg["meter"] = _meter(errors, src["meter"])
    return cfg, errors


def loads(text):
    """Parse and validate config.json text. Returns ``(config, errors)``; never raises.

    Corrupt JSON gives the defaults and one ``config:`` error.
    """
    import json

    try:
        src = json.loads(text)
    except (ValueError, TypeError) as e:
        return defaults(), ["config: not valid JSON (%s)" % (e,)]
    return validate(src)


def load_file(path):
    """Read and validate ``path``. A missing or unreadable file gives the defaults and an error."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        return defaults(), ["config: cannot read %s (%s)" % (path, e)]
    try:
        text = data.decode()
    except ValueError:  # UnicodeError: a torn or garbled file
        return defaults(), ["config: %s is not UTF-8 text (corrupt?)" % (path,)]
    return loads(text)


def dumps(cfg):
    """Serialise a validated config to the JSON written to the node's flash."""
    import json

    return json.dumps(cfg)
