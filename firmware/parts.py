"""Builds and holds the firmware-core parts one Node uses (lamp, meter, counters, seq, outbox,
schedule, override) and the persistence glue between them.

Owns: which meter a config selects, when the shared counters record is written (the meter's
batch policy carries the on-time along; a clean stop or reboot flushes at once), the schedule's
file in flash, the override (kept in RAM: after a reboot the schedule rules again, which is the
fail-safe choice), and ``make_emulated`` / ``make_esp32`` for the two entry points.
No module-level state.
"""

from firmware.durable import Record, SeqAllocator
from firmware.light import Light
from firmware.meter import PulseMeter, open_counters
from firmware.schedule import Override
from protocol import cbor
from protocol.lwm2m import FAULT_CONFIG_ERROR


class Parts:
    """The parts of one node, built from its validated config."""

    def __init__(self, hal, cfg, log):
        self.hal = hal
        self.log = log
        self.faults = 0
        self.counters = open_counters(hal)
        if self.counters.rec.recovered:
            log("counters: newest copy torn or corrupt, resumed from the last good one")
        self.seq = SeqAllocator(self.counters)
        self.light = Light(hal, min_level=cfg["min_level"])
        self.light.on_base_s = self.counters.get("on_s")
        self.last_on_level = None
        self.meter = self._meter(hal, cfg)
        self._mono_ms = 0
        self._last_ticks = hal.ticks_ms()
        self.override = Override(hal)
        self._sched_rec = Record(hal.path("schedule"))
        self.engine = _schedule_engine(cfg, self._load_schedule(), log)
        self.outbox = _make_outbox(hal, cfg)
        if self.outbox.corrupt:
            log("outbox: %d corrupt slots skipped" % self.outbox.corrupt)
        last = self.outbox.last_seq()
        if self.seq.peek() <= last:  # counters lost but reports survived: never reuse a seq
            self.counters.set("seq_hw", last + 1)
            self.seq = SeqAllocator(self.counters)
        self._settle_from = 0
        self._last_target = None

    def _meter(self, hal, cfg):
        m = cfg["meter"]
        if m["type"] == "modbus":
            from firmware.meter_sdm120 import Sdm120Meter
            from firmware.modbus_rtu import RtuMaster

            try:
                uart = hal.uart(baudrate=m["baudrate"])
                return Sdm120Meter(hal, self.counters, RtuMaster(uart), unit=m["unit"])
            except OSError as e:
                self.log("modbus meter unavailable (%s): counting pulses instead" % (e,))
        if m["type"] == "pulse":
            hal.pulses_per_kwh = m["pulses_per_kwh"]
        return PulseMeter(hal, self.counters)

    # -- time -------------------------------------------------------------------------------
    def mono(self):
        """Monotonic node time in seconds since boot, extended across the ticks wrap."""
        t = self.hal.ticks_ms()
        self._mono_ms += self.hal.ticks_diff(t, self._last_ticks)
        self._last_ticks = t
        return self._mono_ms / 1000

    # -- periodic work ----------------------------------------------------------------------
    async def poll(self, node):
        self.light.update()
        tl = self.light.target_level
        if tl != self._last_target:
            self._last_target = tl
            self._settle_from = self.mono()
            if tl > 0:
                self.last_on_level = tl
        self.counters.set("on_s", self.light.on_time_s())
        if isinstance(self.meter, PulseMeter):  # the Modbus meter has its own task
            await self.meter.poll()  # persists the counters (on-time included) when due

    async def meter_loop(self):
        """Read a Modbus meter every 10 s of node time, in its own task: a read holds the line
        ~0.3 s at 2400 baud, and a dead meter costs 3 timeouts, which must not delay the
        control loop (schedule, reports, watchdog)."""
        m = self.meter
        if isinstance(m, PulseMeter):
            return
        while True:
            await m.poll()
            await self.hal.sleep_ms(10000)

    def settled(self, node):
        """True once the meter can show the power of the current level: 30 s after the fade,
        and (pulse meter) two pulse intervals at the expected power."""
        if self.light.fading():
            return False
        wait = 30.0
        lvl = self.light.target_level
        if isinstance(self.meter, PulseMeter):
            exp = node._part_expected_w(lvl) if lvl > 0 else node._part_standby_w()
            wait = max(wait, 2 * 3600.0 * (1000.0 / self.meter.ppk) / exp)
        return self.mono() - self._settle_from >= wait

    def shutdown(self, node):
        """Persist the counters now (clean stop, reboot)."""
        self.counters.set("on_s", self.light.on_time_s())
        self.meter.flush()
        self.counters.flush()

    def save_config(self, cfg):
        from firmware import config as config_mod

        path = self.hal.path("config.json")
        tmp = path + ".tmp"
        try:
            with open(tmp, "w") as f:
                f.write(config_mod.dumps(cfg))
            import os

            os.rename(tmp, path)
        except OSError as e:
            self.log("config: could not save (%s)" % (e,))

    # -- schedule and override --------------------------------------------------------------
    def _load_schedule(self):
        data = self._sched_rec.load()
        if self._sched_rec.recovered:
            self.faults |= FAULT_CONFIG_ERROR
        if data is None:
            return []
        try:
            steps = cbor.loads(data)
        except ValueError:
            self.faults |= FAULT_CONFIG_ERROR
            return []
        return steps if isinstance(steps, list) else []

    def schedule_get(self):
        return [list(x) for x in self.engine.steps]

    def schedule_set(self, steps):
        """Validate, persist (atomic record) and apply new steps. Returns None or an error."""
        try:
            self.engine.set_steps(steps)
        except ValueError as e:
            return str(e)
        self._sched_rec.save(cbor.dumps(steps))
        return None

    def set_tz(self, tz):
        self.engine.set_tz(_tz(tz, self.log))

    def set_position(self, lat, lon):
        self.engine.set_position(lat, lon)



def _tz(spec, log):
    from firmware.tzrule import TZ

    try:
        return TZ(spec)
    except ValueError as e:
        log("tz %r not usable (%s): using UTC" % (spec, e))
        return None


def _schedule_engine(cfg, steps, log):
    from firmware.schedule import Schedule

    try:
        return Schedule(steps, cfg["lat"], cfg["lon"], _tz(cfg["tz"], log))
    except ValueError as e:
        log("stored schedule invalid (%s): holding the default level" % (e,))
        return Schedule((), cfg["lat"], cfg["lon"], _tz(cfg["tz"], log))


def _make_outbox(hal, cfg):
    from firmware.outbox import Outbox

    root = hal.flash_root
    return Outbox(root[:-1] if root.endswith("/") else root)


def make_emulated(flash, node_id, spec, truth_wh=0.0, uart_path=None):
    """The emulated HAL of one node and the parts factory (emulator entry point)."""
    from firmware import config as config_mod
    from firmware.hal.emulated import EmulatedHal

    # the luminaire's rating is a property of the emulated hardware: take it from the config
    cfg, _ = config_mod.load_file(flash + "/config.json")
    hal = EmulatedHal(
        rated_w=cfg["rated_w"],
        pulses_per_kwh=cfg["meter"]["pulses_per_kwh"],
        node_id=node_id,
        flash_root=flash,
        speed=spec.get("clock_speed", 1.0),
        clock_start=spec.get("clock_start"),
        clock_anchor=spec.get("clock_anchor"),
        truth_wh_start=truth_wh,
        rtc_valid=bool(spec.get("time_valid")),
        uart_path=uart_path,
    )
    return hal, Parts
