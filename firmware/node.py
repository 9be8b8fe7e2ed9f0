"""The Node: one luminaire controller, wiring config, lamp, meter, schedule, flash and CoAP.

Owns the application behaviour of SPEC §2-§7 on the node side:
* boot: load config.json (bad -> safe defaults + configError), the durable counters, the
  outbox and the schedule; apply the level the schedule wants *now* (no valid time ->
  the default level + timeInvalid);
* registration with a random start delay in [0, jitter), Update at 2/3 of the lifetime,
  Register again on 4.04 or after the gateway was unreachable (it may have restarted and lost
  us); the descriptor Send after every Register (SPEC §4);
* a report every ``report_period`` into the outbox; the outbox is sent oldest first, packed
  up to 1024 payload bytes (protocol.report.pack_reports), one pack in flight at a time, after
  a random delay in [0, jitter) when a backlog built up; a report leaves the outbox only on
  2.04; 5.03 waits Max-Age; 4.04 registers again;
* the schedule tick, override expiry, fault flags (SPEC §7), time from Write /3/0/13 (§6),
  Observe notifications (§5.4), the watchdog.

The parts come from the firmware core (firmware/hal, light, meter, schedule, durable, outbox):
``self.hal`` and ``self.p`` (firmware/parts.Parts), called directly. (They used to be reached
through ~40 one-line ``_part_*`` forwarding methods; each method costs about 100 bytes of heap
even with the bytecode in ROMFS, so they went: docs/performance.md.) No module-level state:
many Nodes run in one interpreter.

Decisions:
* Application time (report period, schedule, override) is the HAL clock, which the emulator
  runs faster than real time; CoAP timers are real time (firmware/endpoint.py). The back-off
  after a failed exchange scales with ACK_TIMEOUT (15x, doubling up to 150x, +-50 % jitter),
  so a node does not hammer an absent gateway.
* A report taken without valid time stores ``t`` as minus the monotonic time it was taken
  (this boot); at send time it becomes relative (``t - now``, SPEC §3.1), or absolute if time
  became valid since. A report from an earlier boot taken without time is sent with an age
  estimated from its seq distance times the report period.
* A 4.00 on a pack of several reports makes the node resend them one per pack; a single
  report the gateway refuses with 4.00 is dropped (and counted), so one bad record never
  blocks the queue forever.
"""

import asyncio
import os

from firmware import config as config_mod
from firmware import faults as faults_mod
from firmware.endpoint import Endpoint
from firmware.ota import Ota
from firmware.resources import Resources
from protocol import coap, report
from protocol.lwm2m import (
    CF_LINK_FORMAT,
    CF_SENML_CBOR,
    FAULT_CONFIG_ERROR,
    FAULT_METER_FAILURE,
    FAULT_SUPPLY_LOSS,
    FAULT_TIME_INVALID,
    LWM2M_VERSION,
    MAX_PAYLOAD,
)

FW_VERSION = "0.1.0"
KEY_FILES = ("oscore.json", "oscore.key", "oscore.key.tmp", "oscore.key.bak")


def has_keys(path):
    """True if the flash (``path(name)`` -> file path) holds OSCORE keys (firmware/secure.py).
    The entry points import firmware.secure before the heap fills when it does: imported late,
    at boot, its code found no room in a fragmented 64 KB budget."""
    for name in KEY_FILES:
        try:
            os.stat(path(name))
            return True
        except OSError:
            pass
    return False
# `</>;rt="oma.lwm2m";ct=112` tells a standard server to use SenML-CBOR (Core 1.1 §6.2.1,
# Register "Objects and Object Instances"); without it Wakaama asks for TLV, which we lack.
OBJECT_LINKS = '</>;rt="oma.lwm2m";ct=112,</1/0>,</3/0>,</5/0>,</6/0>,</3305/0>,</3311/0>,</3416/0>,</10250/0>,</10251/0>'


class Node:
    """One emulated or real luminaire controller. ``parts`` is built by main.py/emulator.py."""

    def __init__(self, hal, make_parts, ack_timeout_ms=coap.ACK_TIMEOUT_MS, port=0, log=None, overrides=None):
        """``make_parts(hal, cfg, log)`` builds the firmware-core parts once the config is
        known (firmware/parts.py); ``port`` 0 binds an ephemeral UDP port; ``overrides``
        (the emulator's id and gateway) win over config.json, even a corrupt one."""
        self.overrides = overrides
        self.hal = hal
        self.make_parts = make_parts
        self.p = None
        self.ack_timeout_ms = ack_timeout_ms
        self.port = port
        self.log = log or _print
        self.cfg = None
        self.cfg_errors = []
        self.faults = 0
        self.seq = 0
        self.first_seq = 1
        self.ep = None
        self.sec = None  # firmware/secure.Secure, or None: no oscore.json, unprotected
        self.res = Resources(self)
        self.ota = None  # firmware/ota.Ota (object 5), made at boot
        self.peer = None
        self.reg_path = None
        self.registered = False
        self.reboot_at = None
        self.identify_until = 0
        self.wake = asyncio.Event()
        self.retry_at = 0  # node time (s) before which no Send (5.03 Max-Age)
        self.single = False
        self.stats = {"sent_packs": 0, "acked_reports": 0, "dropped": 0, "registers": 0, "updates": 0}
        self.stopping = False
        self.last_report_mono = None
        self.truth = None  # callback(node) the emulator sets
        self.last_taken = None  # the last report taken (the emulator's truth line shows its time)

    # -- boot -----------------------------------------------------------------------------
    def boot(self):
        """Load config and durable state, and light the lamp as the schedule wants now."""
        cfg, errs = config_mod.load_file(self.hal.path("config.json"))
        self.cfg = cfg
        self.cfg_errors = errs
        if errs:
            self.log("config: " + "; ".join(errs) + " -- using safe defaults for those fields")
            self.faults |= FAULT_CONFIG_ERROR
        if self.overrides:
            cfg.update(self.overrides)
        if not cfg["id"]:
            cfg["id"] = "node-" + "".join("%02x" % b for b in self.hal.unique_id())
        self.p = self.make_parts(self.hal, self.cfg, self.log)
        self.sec = self._load_keys()
        self.ota = Ota(self)
        if self.ota.safe:
            self.log("safe mode after %d failed boots: lamp at the fail-safe level" % (self.ota.st["boots"] - 1))
        self.faults |= self.p.faults  # e.g. a schedule or outbox record found corrupt
        self.faults |= FAULT_SUPPLY_LOSS  # reported once (first report after boot)
        self.first_seq = self.p.seq.peek()
        self.apply_level(instant=True)  # power-on: straight to the level wanted now, no fade

    def _load_keys(self):
        """firmware/secure.Secure when the flash holds OSCORE keys, else None (and a loud line).

        secure.py and protocol/oscore.py are imported only then: a key-less (demo) node keeps
        the heap footprint it had before OSCORE (fragmentation in a 64 KB budget, see
        docs/performance.md)."""
        if has_keys(self.hal.path):
            from firmware import secure

            return secure.load(self.hal, self.log, os.urandom)
        self.log("SECURITY WARNING: no oscore.json on flash: this node talks to its gateway UNPROTECTED and "
                 "obeys anyone on the network. Provision keys with `slnode provision` (demo/tests only).")
        return None

    # -- levels ---------------------------------------------------------------------------
    def wanted_level(self):
        """The level in force now: override, else schedule, else default (SPEC §5.2, §6)."""
        now = self.hal.rtc_get()
        if self.ota.safe:  # docs/ota.md: safe mode keeps the fail-safe level, whatever else
            return self.cfg["default_level"]
        lvl = self.p.override.active_level()
        if lvl is not None:
            return lvl
        if now is None:
            return self.cfg["default_level"]
        lvl = self.p.engine.level_at(now)
        return self.cfg["default_level"] if lvl is None else lvl

    def apply_level(self, instant=False):
        lvl = self.wanted_level()
        if self.identify_until and self.p.mono() < self.identify_until:
            return
        if instant:
            self.p.light.apply_now(lvl)
        elif lvl != self.p.light.target_level:
            self.p.light.set_level(lvl)

    def check_faults(self):
        """Recompute fault flags from the meter and the level (SPEC §7)."""
        f = self.faults & (FAULT_CONFIG_ERROR | FAULT_SUPPLY_LOSS)
        if self.hal.rtc_get() is None:
            f |= FAULT_TIME_INVALID
        if not self.p.meter.ok():
            f |= FAULT_METER_FAILURE
        elif self.p.settled(self):
            level = self.p.light.actual_level
            f |= faults_mod.power_flags(level, self.p.meter.power_w(), self._part_expected_w(level),
                                        0.7)
        self.faults = f

    # -- reports --------------------------------------------------------------------------
    def take_report(self):
        """Take one report (SPEC §3.1) into the outbox. Returns the report tuple."""
        self.check_faults()
        # The energy a report carries is persisted first: after a power cut the counter
        # resumes at or above every value already reported, so the reported energy never
        # decreases (at most one counters write per report period on top of the meter's own).
        self.p.counters.set("on_s", self.p.light.on_time_s())
        self.p.meter.flush()
        seq = self.p.seq.next()
        now = self.hal.rtc_get()
        t = int(now) if now is not None else -max(1, int(self.p.mono()))
        r = (seq, t, self.p.meter.wh(), self.p.meter.power_w(), self.p.light.actual_level, self.p.light.on_time_s(),
             self.faults)
        self.p.outbox.put(r)
        self.seq = seq
        self.faults &= ~FAULT_SUPPLY_LOSS
        self.last_report_mono = self.p.mono()
        self.wake.set()
        return r

    def wire_report(self, r):
        """The report as sent: time made relative or absolute (see the module docstring)."""
        t = r[1]
        if t >= 0:
            return r
        mono = self.p.mono()
        if r[0] >= self.first_seq:
            age = mono - (-t)
        else:
            age = mono + (self.first_seq - r[0]) * self.cfg["report_period"]
        now = self.hal.rtc_get()
        t = int(now - age) if now is not None else -max(1, int(age))
        return (r[0], t) + tuple(r[2:])

    # -- resources (called by firmware/resources.py) --------------------------------------
    def now(self):
        return self.p.mono()

    def res_get(self, name):
        c = self.cfg
        if name == "level":
            return self.p.light.actual_level
        if name == "w":
            return report.round_power(self.p.meter.power_w())
        if name == "wh":
            return self.p.meter.wh()
        if name == "on":
            return self.p.light.target_level > 0
        if name == "on_time":
            return self.p.light.on_time_s()
        if name == "time":
            t = self.hal.rtc_get()
            return int(t) if t is not None else 0
        if name == "time_valid":
            return self.hal.rtc_get() is not None
        if name == "faults" or name == "err":
            self.check_faults()
            return self.faults
        if name == "seq":
            return self.seq
        if name == "schedule":
            return self.p.schedule_get()
        if name == "override":
            return self.p.override.state()
        if name == "override_left":
            return self.p.override.state()[1]
        if name == "default":
            return c["default_level"]
        if name == "rated":
            return c["rated_w"]
        if name == "pf":
            return 0.95 if self.p.light.actual_level > 0 else 0.0
        if name == "lifetime":
            return c["lifetime"]
        if name == "command":  # uCIFI 3416 command: the level in force
            return self.wanted_level()
        if name.startswith("fw_"):
            return self.ota.get(name)
        return {
            "srv_id": 1, "binding": "U", "mfr": "streetlight-edge", "model": "emulated" if c["meter"]["type"] == "emulated" else "esp32",
            "serial": c["id"], "fw": FW_VERSION, "tz": c["tz"], "lat": c["lat"], "lon": c["lon"],
            "group": c["group"], "cabinet": c["cabinet"],
        }[name]

    def res_set(self, name, v):
        """Apply a checked value. Returns None, or a reason to answer 4.00 (state unchanged)."""
        c = self.cfg
        if name == "level" or name == "command":
            self.p.override.set(v, 86400)  # SPEC §5.3: a manual level is a day's override
        elif name == "on":
            if not v:
                self.p.override.set(0, 86400)
            else:
                last = self.p.last_on_level or c["default_level"] or 100
                self.p.override.set(last, 86400)
        elif name == "override":
            if v[0] is None:
                self.p.override.cancel()
            else:
                self.p.override.set(v[0], v[1])
        elif name == "time":
            self.hal.rtc_set(v)
            self.log("time set to %d" % v)
        elif name == "schedule":
            err = self.p.schedule_set(v)
            if err:
                return err
        elif name == "tz":
            why = config_mod._check_tz(v)
            if why:
                return why
            c["tz"] = v
            self.p.set_tz(v)
            self.p.save_config(c)
        elif name == "default":
            if 0 < v < c["min_level"]:
                return "below the driver's minimum level %d" % c["min_level"]
            c["default_level"] = v
            self.p.save_config(c)
        elif name == "oscore_keys":
            # key rotation (SPEC §10.5): only inside the current OSCORE context; stored before
            # the 2.04, used for every message after it (firmware/secure.py)
            if self.sec is None or self.sec.ctx is None:
                return "no OSCORE context to rotate: provision keys with slnode provision"
            try:
                self.sec.rotate(v[0], v[1], v[2])
            except ValueError as e:
                return str(e)
            self.log("oscore: new keys stored; in use after this answer")
            return None
        elif name == "fw_uri":
            return self.ota.set_uri(v)
        elif name in ("lat", "lon", "group", "cabinet"):
            c[name] = v
            if name in ("lat", "lon"):
                self.p.set_position(c["lat"], c["lon"])
            self.p.save_config(c)
        else:
            return "not writable"
        self.apply_level()
        self.wake.set()
        return None

    def res_exec(self, name):
        """Run an Execute. Returns None, or why it is refused (answered 4.05)."""
        if name == "fw_update":
            return self.ota.execute_update()
        if name == "reboot":
            self.reboot_at = self.p.mono()
            self.wake.set()
        elif name == "identify":
            self.identify_until = self.p.mono() + 10  # node seconds, as light.identify(10000 ms)
            self.p.light.identify(10000)

    # -- network --------------------------------------------------------------------------
    async def request(self, method, path, query=(), payload=b"", cf=None):
        m = coap.Message(code=method)
        m.set_path(path)
        for q in query:
            m.add_option(coap.URI_QUERY, q)
        if cf is not None:
            m.add_option(coap.CONTENT_FORMAT, cf)
        m.payload = payload
        return await self.send(m)

    async def send(self, m):
        """Send request ``m`` to the gateway (protected when we have keys). Returns the
        (inner) response or None."""
        if self.peer is None:
            return None
        if self.sec is not None:
            return await self.sec.request(self.ep, m, self.peer)
        return await self.ep.request(m, self.peer)

    async def register(self):
        """Register (SPEC §2). Returns True on 2.01 (and sends the descriptor)."""
        c = self.cfg
        q = ("ep=" + c["id"], "lt=%d" % c["lifetime"], "lwm2m=" + LWM2M_VERSION, "b=U")
        self.stats["registers"] += 1
        r = await self.request(coap.POST, "/rd", q, OBJECT_LINKS.encode(), CF_LINK_FORMAT)
        if r is None or r.code != coap.CREATED:
            why = "no answer" if r is None else r.code_str()
            if r is None and self.sec is not None and self.sec.error:
                why = self.sec.error
            self.log("register: " + why)
            return False if r is None else None
        loc = r.location_path()
        self.reg_path = "/" + "/".join(loc) if loc else None
        self.registered = True
        self.update_due = self.p.mono() + c["lifetime"] * 2 // 3
        self.log("registered as %s" % self.reg_path)
        d = report.encode_descriptor(FW_VERSION, c["lat"], c["lon"], c["group"], c["cabinet"], c["rated_w"],
                                     c["default_level"], c["tz"])
        r = await self.request(coap.POST, "/dp", (), d, CF_SENML_CBOR)
        return r is not None

    async def update(self):
        """Update (SPEC §2). Returns True on 2.04; a 4.04 or no answer drops the registration."""
        self.stats["updates"] += 1
        r = await self.request(coap.POST, self.reg_path or "/rd", ("lt=%d" % self.cfg["lifetime"],))
        if r is not None and r.code == coap.CHANGED:
            self.update_due = self.p.mono() + self.cfg["lifetime"] * 2 // 3
            return True
        self.registered = False
        if r is None:
            return False
        # 4.04: the gateway lost or expired our registration (SPEC §2): Register at once
        return True if r.code == coap.NOT_FOUND else None

    async def send_pack(self):
        """Send the oldest pack of the outbox. Returns True (sent or nothing to send),
        False (no answer: the gateway is unreachable) or None (answered, but not 2.04)."""
        pending = self.p.outbox.peek(12)
        if not pending:
            return True
        packs = report.pack_reports([self.wire_report(r) for r in pending], MAX_PAYLOAD)
        pack = packs[0][:1] if self.single else packs[0]
        # No ep query (SPEC §3): the gateway knows us by the address we registered from, and
        # every request leaves from that one socket; a 4.04 makes us Register again.
        r = await self.request(coap.POST, "/dp", (), report.encode_reports(pack),
                               CF_SENML_CBOR)
        if r is None:
            return False
        self.stats["sent_packs"] += 1
        if r.code == coap.CHANGED:
            self.p.outbox.remove(len(pack))
            self.stats["acked_reports"] += len(pack)
            self.single = False
            return True
        if r.code == coap.NOT_FOUND:  # the gateway does not know us (any more): Register now
            self.registered = False
        elif r.code == coap.SERVICE_UNAVAILABLE:
            self.retry_at = self.p.mono() + r.max_age()
        elif r.code == coap.BAD_REQUEST:
            if len(pack) > 1:
                self.single = True
            else:
                self.log("gateway refused report seq %d (4.00): dropped" % pack[0][0])
                self.p.outbox.remove(1)
                self.stats["dropped"] += 1
        else:
            self.log("send: gateway answered %s" % r.code_str())
            return None
        return True

    async def net_loop(self):
        c = self.cfg
        if not c["gateway"]:
            self.log("no gateway configured: running the schedule alone")
            return
        await self.hal.sleep_ms(int(self._rand01() * c["jitter"] * 1000))
        backoff = 15 * self.ack_timeout_ms / 1000
        while not self.stopping:
            if not self.hal.net_ok():  # no link (Wi-Fi down): keep the reports, retry later
                self.hal.net_connect()
                self.peer = None
                await asyncio.sleep(backoff)
                continue
            if self.peer is None:
                try:
                    host, port = config_mod.parse_gateway(c["gateway"])
                    self.peer = Endpoint.resolve(host, port)
                except (OSError, ValueError):
                    await asyncio.sleep(backoff)
                    continue
            ok = True
            if not self.registered:
                ok = await self.register()
                if ok and len(self.p.outbox) > 1:
                    await self.hal.sleep_ms(int(self._rand01() * c["jitter"] * 1000))  # mass restore: spread the flush
            elif self.p.mono() >= self.update_due:
                ok = await self.update()
            elif len(self.p.outbox) and self.p.mono() >= self.retry_at:
                ok = await self.send_pack()
                if ok and len(self.p.outbox):
                    await asyncio.sleep_ms(10)  # pacing between backlog packs
                    continue
            else:
                await self._wait_wake(min(self.update_due, self.retry_at if self.retry_at > self.p.mono()
                                      else self.update_due) - self.p.mono())
                continue
            if ok is False:  # no answer: back off, then start again with a Register
                self.registered = False
                self.peer = None
                await asyncio.sleep(backoff * (0.5 + self._rand01()))
                backoff = min(backoff * 2, 150 * self.ack_timeout_ms / 1000)
            elif ok is None:  # answered with an error: back off, keep the peer
                await asyncio.sleep(backoff * (0.5 + self._rand01()))
                backoff = min(backoff * 2, 150 * self.ack_timeout_ms / 1000)
            else:
                backoff = 15 * self.ack_timeout_ms / 1000

    async def _wait_wake(self, sim_seconds):
        """Wait for ``wake`` (a new report, a Write) or ``sim_seconds`` of application time."""
        self.wake.clear()
        if sim_seconds <= 0:
            return
        try:
            await asyncio.wait_for(self.wake.wait(), sim_seconds / getattr(self.hal, "speed", 1.0))
        except asyncio.TimeoutError:
            pass

    # -- control --------------------------------------------------------------------------
    async def control_loop(self):
        period = self.cfg["report_period"]
        next_report = self._next_boundary(period)
        while not self.stopping:
            self.hal.watchdog_feed()
            await self.p.poll(self)
            self.ota.tick(self.ep.now_ms())
            self.apply_level()
            mono = self.p.mono()
            if mono >= next_report:
                self.last_taken = self.take_report()
                next_report = self._next_boundary(period)
                if self.truth:
                    self.truth(self)
            for ob, msg, con in self.res.due_notifications(mono):
                if self.sec is not None:
                    msg = self.sec.protect_notification(msg)
                    if msg is None:
                        continue
                if con:  # may take up to 93 s of retransmissions: never block the control loop
                    asyncio.create_task(self._notify_con(ob, msg))
                else:
                    await self.ep.send_notification(msg, ob[0], False)
                    ob[7] = msg.mid
            if self.reboot_at is not None:
                self.log("reboot requested")
                await asyncio.sleep_ms(200)  # let the 2.04 go out first
                self.p.shutdown(self)
                self.hal.reset()
                return
            await self._part_tick_sleep(next_report - self.p.mono())

    async def _notify_con(self, ob, msg):
        """A CON notification; an observer that resets or never acknowledges it is dropped
        (RFC 7641 §4.5)."""
        if not await self.ep.send_notification(msg, ob[0], True):
            if self.res.cancel(ob[0], ob[1]):
                self.log("observe: an observer did not acknowledge a notification: dropped")

    def _next_boundary(self, period):
        """Next report time (monotonic): aligned to wall-clock multiples of the period when
        time is valid (15-min reports at :00, :15...), else one period from now."""
        mono = self.p.mono()
        now = self.hal.rtc_get()
        if now is None:
            return mono + period
        return mono + (period - now % period)

    async def run(self):
        """Boot and run until ``stop()``; the caller builds the parts."""
        self.boot()
        handler = self.res.handle if self.sec is None else self.sec.wrap(self.res.handle)
        self.ep = Endpoint(handler, os.urandom, port=self.port, ack_timeout_ms=self.ack_timeout_ms)
        if self.sec is not None:
            self.ep.known = self.ep.known + (coap.OSCORE,)
        self.ep.on_reset = self.res.on_reset
        self.ep.start()
        net = asyncio.create_task(self.net_loop())
        meter = asyncio.create_task(self.p.meter_loop())
        try:
            await self.control_loop()
        finally:
            net.cancel()
            meter.cancel()
            self.ep.close()

    def set_gateway(self, uri):
        """Switch to another gateway now (console ``gateway`` command); registers again."""
        self.cfg["gateway"] = uri
        self.registered = False
        self.peer = None
        self.gateway_changed = True
        self.wake.set()

    def stop(self):
        """Persist what must survive and stop the loops (a clean shutdown)."""
        self.stopping = True
        self.p.shutdown(self)
        self.wake.set()

    def _rand01(self):
        b = os.urandom(2)
        return ((b[0] << 8) | b[1]) / 65536

    # -- the parts (firmware core) ----------------------------------------------------------
    async def _part_tick_sleep(self, until_report_s):
        """Sleep until the next control tick: 1 s of node time (50 ms while a fade runs), but
        never less than 20 real ms, and not past the next report."""
        step = 0.05 if self.p.light.fading() else 1.0
        floor = 0.02 * getattr(self.hal, "speed", 1.0)
        if step < floor:
            step = floor
        if 0 < until_report_s < step:
            step = until_report_s
        await self.hal.sleep_ms(int(step * 1000) or 1)

    def _part_standby_w(self):
        return 0.7

    def _part_expected_w(self, level):
        return faults_mod.expected_w(level, self.cfg["rated_w"], 0.7, self.cfg["min_level"])


def _print(msg):
    print(msg)
