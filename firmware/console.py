"""Diagnostic console, node side: a line protocol on the serial REPL (UART/USB) or stdin.

The technician's laptop (``slnode console``, tools/slnode/console.py) writes one command per
line; the node answers each with exactly one line ``@slnode {JSON}``. Other output on the same
line (logs) is ignored by the host, so the console can share the REPL's serial port.

    status                    -> ok, id, version, registered, location, gateway, level, wh, w,
                                 faults (names, SPEC §7), error (the node's last log line, or
                                 its config errors, or null), identifying (lamp blinking)
    identify                  -> blinks the lamp (the node's Execute /10250/0/9)
    gateway coap://HOST:PORT  -> checked with firmware.config's rule, saved in config.json
                                 (atomically: temp file + rename); used live if the node has
                                 set_gateway(), else from the next boot ("applied": false)
    reboot                    -> answers first, then the node's Execute /3/0/4

Unknown commands and bad arguments get ``{"ok": false, "error": ...}``: the node's state is not
touched. Lines longer than MAX_LINE are refused whole.

Started by the device's main.py next to the node (the REPL's UART/USB line is stdin/stdout)::

    console = Console(node)  # config.json found through node.hal.path
    asyncio.create_task(console.serve(asyncio.StreamReader(sys.stdin.buffer), sys.stdout.write))

Ctrl-C still interrupts main.py (MicroPython intercepts it below stdin), so mpremote and the
REPL keep working on a node that runs the console.

The node is reached through the same calls resources.py uses (``res_get``/``res_exec`` by
resource name) plus a few attributes of firmware/node.py, read defensively so the console
still answers ``status`` on a node that is half-started. No module-level state: one Console
object per node.
"""

import json

from firmware import config as nodeconfig
from protocol.lwm2m import FAULT_NAMES

PREFIX = "@slnode "
MAX_LINE = 200


def fault_names(bits):
    """Names (SPEC §7) of the bits set in the fault mask ``bits``."""
    out = []
    if not isinstance(bits, int):
        return out
    for bit, name in FAULT_NAMES:
        if bits & bit:
            out.append(name)
    return out


def save_gateway(path, uri):
    """Set ``gateway`` in the config file at ``path``, keeping every other key.

    Returns None, or an error string (unreadable or invalid file, write failure). The file is
    replaced atomically (write ``path + ".tmp"``, then rename), so a power cut leaves either
    the old or the new config, never a torn one.
    """
    import os

    try:
        with open(path) as f:
            cfg = json.loads(f.read())
    except OSError:
        cfg = {}  # no config yet: the new one holds the gateway and the node's defaults
    except ValueError:
        return "config.json is corrupt; re-provision the node"
    if not isinstance(cfg, dict):
        return "config.json is corrupt; re-provision the node"
    cfg["gateway"] = uri
    tmp = path + ".tmp"
    try:
        with open(tmp, "w") as f:
            f.write(json.dumps(cfg))
        os.rename(tmp, path)
    except OSError as e:
        return "cannot write config.json: %s" % (e,)
    return None


def _config_errors(node):
    errs = getattr(node, "cfg_errors", None)
    return "config: " + "; ".join(errs) if errs else None


class Console:
    """The command interpreter for one node. ``handle(line)`` returns the answer line."""

    def __init__(self, node, config_path=None):
        self.node = node
        if config_path is None:
            hal = getattr(node, "hal", None)
            config_path = hal.path("config.json") if hal is not None else "config.json"
        self.config_path = config_path
        self.reboot_pending = False
        self.last_log = None
        # Keep the node's last log line (its log reports failures: register, refused
        # reports, config errors) for `status`, and still pass every line on.
        node_log = getattr(node, "log", None)
        if node_log is not None:

            def log(msg):
                self.last_log = msg
                node_log(msg)

            node.log = log

    def _get(self, name):
        try:
            return self.node.res_get(name)
        except Exception:  # noqa: BLE001 - a half-started node still answers status
            return None

    def status(self):
        n = self.node
        cfg = getattr(n, "cfg", None) or {}
        return {
            "id": cfg.get("id"),
            "version": self._get("fw"),
            "registered": bool(getattr(n, "registered", False)),
            "location": getattr(n, "reg_path", None),
            "gateway": cfg.get("gateway"),
            "level": self._get("level"),
            "wh": self._get("wh"),
            "w": self._get("w"),
            "faults": fault_names(self._get("faults")),
            "error": self.last_log or _config_errors(n),
            "identifying": self._identifying(),
            "oscore": self._oscore(),
        }

    def _oscore(self):
        """"on <sender id>" (the id is public: it is in every request), "off" (no keys: the node
        talks unprotected) or "invalid keys" (it refuses everything). Never a key."""
        sec = getattr(self.node, "sec", None)
        if sec is None:
            return "off"
        sid = sec.sender_id()
        if sid is None:
            return "invalid keys"
        return "on " + "".join("%02x" % b for b in sid)

    def _identifying(self):
        until = getattr(self.node, "identify_until", 0)
        parts = getattr(self.node, "p", None)
        if not until or parts is None:
            return False
        try:
            return parts.mono() < until
        except Exception:  # noqa: BLE001 - parts not built yet (node still booting)
            return False

    def handle(self, line):
        """Answer one command line. Returns the answer line (no newline), or None if blank."""
        if isinstance(line, bytes):
            try:
                line = line.decode()
            except UnicodeError:
                return self._answer("?", False, error="not UTF-8 text")
        line = line.strip()
        if not line:
            return None
        if len(line) > MAX_LINE:
            return self._answer("?", False, error="line too long")
        cmd, _, arg = line.partition(" ")
        arg = arg.strip()
        try:
            if cmd == "status":
                return self._answer(cmd, True, **self.status())
            if cmd == "identify":
                self.node.res_exec("identify")
                return self._answer(cmd, True)
            if cmd == "gateway":
                return self._gateway(arg)
            if cmd == "reboot":
                self.reboot_pending = True
                return self._answer(cmd, True)
            if cmd == "help":
                return self._answer(cmd, True, commands=["status", "identify", "gateway URI", "reboot"])
        except Exception as e:  # noqa: BLE001 - a console command must never kill the node
            return self._answer(cmd, False, error="%s: %s" % (type(e).__name__, e))
        return self._answer(cmd, False, error="unknown command; try help")

    def _gateway(self, uri):
        try:
            nodeconfig.parse_gateway(uri)
        except ValueError as e:
            return self._answer("gateway", False, error="gateway: %s" % (e,))
        err = save_gateway(self.config_path, uri)
        if err:
            return self._answer("gateway", False, error=err)
        # The node resolves the gateway when its network loop starts: a node that can switch
        # live offers set_gateway(); otherwise the saved address applies at the next boot.
        setter = getattr(self.node, "set_gateway", None)
        if setter is not None:
            setter(uri)
            return self._answer("gateway", True, gateway=uri, applied=True)
        cfg = getattr(self.node, "cfg", None)
        if isinstance(cfg, dict):
            cfg["gateway"] = uri
        return self._answer("gateway", True, gateway=uri, applied=False)

    def _answer(self, cmd, ok, **fields):
        fields["cmd"] = cmd
        fields["ok"] = ok
        return PREFIX + json.dumps(fields)

    def after_answer(self):
        """Run what must wait until the answer is on the wire (the reboot)."""
        if self.reboot_pending:
            self.reboot_pending = False
            self.node.res_exec("reboot")

    async def serve(self, stream, write):
        """Read command lines from an asyncio stream; ``write(str)`` sends each answer.

        Reads one byte per wake-up of the asyncio poller, never a blocking ``readline``: a
        technician typing slowly in a terminal must not stall the node's control loop (and its
        watchdog). CR, LF or CRLF end a line; a line longer than MAX_LINE is dropped whole and
        answered with an error, so garbage on the line cannot grow the heap.
        """
        buf = bytearray()
        overflow = False
        bad = False
        while True:
            try:
                b = await stream.read(1)
            except UnicodeError:  # junk bytes on a text stream: refuse this line, keep serving
                bad = True
                continue
            if not b:
                return  # end of input (the host closed the line)
            if isinstance(b, str):  # a text stream (sys.stdin rather than sys.stdin.buffer)
                b = b.encode()
            c = b[0]
            if c != 10 and c != 13:
                if len(buf) < MAX_LINE:
                    buf.append(c)
                else:
                    overflow = True
                continue
            if overflow:
                out = self._answer("?", False, error="line too long")
            elif bad:
                out = self._answer("?", False, error="not UTF-8 text")
            else:
                out = self.handle(bytes(buf))
            buf = bytearray()
            overflow = bad = False
            if out is not None:
                write(out + "\r\n")
                self.after_answer()
