"""Emulated HAL back-end for the MicroPython Unix port (and CPython): physics, truth, faults.

One ``EmulatedHal`` per node, no module-level state. It implements ``firmware.hal.base.Hal`` and
adds what tests and the emulator launcher need.

Simulated clock (shared rule with the gateway's simulated clock)::

    sim_unix = clock_start + (real_unix_now - clock_anchor) * speed

``clock_start`` defaults to the real time at construction, ``clock_anchor`` to the real time at
construction: a launcher running many nodes passes the same anchor (its process start) to all
of them. ``ticks_ms`` counts simulated milliseconds since the last boot; ``sleep_ms(ms)`` sleeps
``ms / speed`` real milliseconds (at least 1 when ``ms > 0``).

The node's RTC is ``sim_unix + rtc_offset``. It is invalid at construction (a process start is
a power-on) unless ``rtc_valid=True``; ``rtc_set`` makes it valid; ``clock_jump(s)`` adds ``s``
seconds to what the node sees (the truth clock is unaffected).

Physics: the luminaire's power follows the *actual* PWM duty and relay::

    relay off                -> standby_w
    relay on, lamp failed    -> standby_w + idle_w            (no lamp current)
    relay on, duty == 0      -> standby_w + idle_w
    relay on, duty d > 0     -> standby_w + rated_w * (0.06 + 0.94 * max(d, driver_min) ** 1.25)

(``lamp_power_w`` below; non-linear, with the driver's minimum.) The meter integrates that power
over simulated time; power is piecewise constant between output changes, so the lazy integral in
``truth_wh()`` is exact. That integral IS the ground truth. The pulse output derives from it at
``pulses_per_kwh``. After a power cut the node's pulse count restarts at 0; the truth does not.

Truth read-outs (for the launcher's truth file and the tests): ``sim_unix()``, ``truth_wh()``
(alias ``true_wh()``), ``power_w()`` (alias ``true_w()``), ``lamp_level()`` (the light output
really given, 0..100), ``duty()``, ``relay()``, ``powered()``, ``watchdog_overdue()``.

Fault switches: ``fail_lamp(on)``, ``unplug_meter(on)`` (pulses stop reaching the node and the
UART neither sends nor answers; the meter's own register keeps counting), ``power_cut()`` /
``power_restore()`` (in-process supply loss: no consumption while cut; on restore the node boots
with ``BOOT_POWER``, RTC invalid, RTC memory cleared; the runner must build a new node object),
``clock_jump(seconds)``, ``net_down`` (attribute: ``net_ok()`` answers False).

A SIGKILL of the interpreter is the other kind of power cut: the flash directory survives; the
truth restarts from ``truth_wh_start`` (the launcher passes the last truth it recorded).
"""

import time as _time

from firmware.hal.base import (
    BOOT_POWER,
    BOOT_RESET,
    RTC_MEMORY_SIZE,
    TICKS_MAX,
    Hal,
    ResetRequested,
    clamp_duty,
)

try:
    import asyncio
except ImportError:  # pragma: no cover
    import uasyncio as asyncio


def lamp_power_w(duty, relay, rated_w, standby_w=0.7, idle_w=0.3, driver_min=0.1, failed=False):
    """Power drawn at the meter by controller + driver + lamp for a duty/relay state (W)."""
    if not relay:
        return standby_w
    if failed or duty <= 0.0:
        return standby_w + idle_w
    x = duty if duty > driver_min else driver_min
    return standby_w + rated_w * (0.06 + 0.94 * x**1.25)


class EmuUart:
    """Non-blocking serial line on a pseudo-terminal path (a socat pty peer)."""

    def __init__(self, hal, path, baudrate, bits=8, parity=None, stop=1):
        import select

        self._hal = hal
        self._f = open(path, "r+b")
        try:
            import termios

            termios.setraw(self._f.fileno())
        except (ImportError, AttributeError):  # pragma: no cover - CPython without tty
            pass
        self._poll = select.poll()
        self._poll.register(self._f, select.POLLIN)
        nbits = 1 + bits + (0 if parity is None else 1) + stop
        self.char_ms = nbits * 1000.0 / baudrate
        self._one = bytearray(1)

    def any(self):
        return bool(self._poll.poll(0))

    def write(self, buf):
        if self._hal._meter_unplugged:
            return len(buf)
        n = self._f.write(buf)
        return len(buf) if n is None else n

    def readinto(self, buf, nbytes=-1):
        """Read what is waiting now into ``buf``; return the count (0 when nothing)."""
        limit = len(buf) if nbytes < 0 else min(nbytes, len(buf))
        n = 0
        one = self._one
        while n < limit and self._poll.poll(0):
            r = self._f.readinto(one)
            if not r:
                break
            if not self._hal._meter_unplugged:
                buf[n] = one[0]
                n += 1
        return n

    def drain(self):
        one = self._one
        while self._poll.poll(0):
            if not self._f.readinto(one):
                break

    def close(self):
        try:
            self._poll.unregister(self._f)
        except Exception:
            pass
        self._f.close()


class EmulatedHal(Hal):
    """The emulated node hardware. See the module docstring for the model."""

    def __init__(
        self,
        node_id="node",
        flash_root="flash",
        speed=1.0,
        clock_start=None,
        clock_anchor=None,
        rated_w=40.0,
        standby_w=0.7,
        idle_w=0.3,
        driver_min=0.1,
        pulses_per_kwh=1000,
        uart_path=None,
        truth_wh_start=0.0,
        rtc_valid=False,
    ):
        now = _time.time()
        self.node_id = node_id
        self.flash_root = flash_root
        _makedirs(flash_root)
        self.speed = float(speed)
        self.clock_anchor = now if clock_anchor is None else float(clock_anchor)
        self.clock_start = now if clock_start is None else float(clock_start)
        self.rated_w = float(rated_w)
        self.standby_w = float(standby_w)
        self.idle_w = float(idle_w)
        self.driver_min = float(driver_min)
        self.pulses_per_kwh = int(pulses_per_kwh)
        self.uart_path = uart_path
        self.net_down = False
        # physics state
        self._duty = 0.0
        self._relay = False
        self._lamp_failed = False
        self._powered = True
        self._meter_unplugged = False
        self._truth_wh = float(truth_wh_start)
        self._last_sim = self.sim_unix()
        self._pulses_lost = 0
        self._unplug_pulses = 0
        # node-visible state
        self._rtc_valid = bool(rtc_valid)
        self._rtc_offset = 0.0
        self._rtc_mem = b""
        self._boot_cause = BOOT_POWER
        self._wdt_timeout = 0
        self._wdt_last = 0
        self.resets = 0
        self._boot(BOOT_POWER)

    # --- simulated time ------------------------------------------------------------------
    def sim_unix(self):
        """Simulated Unix time (float s): the truth clock, unaffected by clock jumps."""
        return self.clock_start + (_time.time() - self.clock_anchor) * self.speed

    def ticks_ms(self):
        return int((self.sim_unix() - self._boot_sim) * 1000.0) & TICKS_MAX

    async def sleep_ms(self, ms):
        if ms <= 0:
            real = 0
        else:
            real = int(ms / self.speed + 0.5)
            if real < 1:
                real = 1
        if hasattr(asyncio, "sleep_ms"):
            await asyncio.sleep_ms(real)
        else:  # CPython
            await asyncio.sleep(real / 1000)

    def rtc_get(self):
        if not self._rtc_valid:
            return None
        return int(self.sim_unix() + self._rtc_offset)

    def rtc_set(self, unix_s):
        self._rtc_offset = float(unix_s) - self.sim_unix()
        self._rtc_valid = True

    def boot_cause(self):
        return self._boot_cause

    # --- outputs -------------------------------------------------------------------------
    def set_duty(self, fraction):
        self._advance()
        self._duty = clamp_duty(fraction)

    def set_relay(self, on):
        self._advance()
        self._relay = bool(on)

    # --- meters --------------------------------------------------------------------------
    def _pulses_total(self):
        return int(self.truth_wh() * self.pulses_per_kwh / 1000.0)

    def pulse_count(self):
        if self._meter_unplugged or not self._powered:
            seen = self._unplug_pulses
        else:
            seen = self._pulses_total()
        return seen - self._pulses_lost - self._pulse_base

    def uart(self, baudrate=2400, bits=8, parity=None, stop=1):
        if not self.uart_path:
            raise OSError("no UART path configured for this emulated node")
        return EmuUart(self, self.uart_path, baudrate, bits, parity, stop)

    # --- storage -------------------------------------------------------------------------
    def rtc_memory_read(self):
        return self._rtc_mem

    def rtc_memory_write(self, buf):
        if len(buf) > RTC_MEMORY_SIZE:
            raise ValueError("RTC memory holds %d bytes" % RTC_MEMORY_SIZE)
        self._rtc_mem = bytes(buf)

    # --- system --------------------------------------------------------------------------
    def watchdog_start(self, timeout_ms):
        self._wdt_timeout = int(timeout_ms)
        self._wdt_last = self.ticks_ms()

    def watchdog_feed(self):
        self._wdt_last = self.ticks_ms()

    def watchdog_overdue(self):
        """Emulation extra: True if the watchdog was started and not fed within its timeout."""
        if not self._wdt_timeout:
            return False
        return self.ticks_diff(self.ticks_ms(), self._wdt_last) > self._wdt_timeout

    def reset(self):
        self.resets += 1
        raise ResetRequested()

    # -- whole-image updates: an emulated OTA partition (a file), shaped like esp32.Partition --
    def image_begin(self, size):
        """The emulated idle OTA slot (``ota-image.bin``, 1.5 MiB as in MicroPython's
        partitions-4MiB-ota.csv). Raises ValueError when ``size`` does not fit."""
        if size > 0x180000:
            raise ValueError("image of %d bytes does not fit the %d-byte OTA slot" % (size, 0x180000))
        return _EmuImage(self.path("ota-image.bin"), size)

    def image_activate(self, writer):
        with open(self.path("ota-image.boot"), "w") as f:
            f.write("%d" % writer.written)

    def image_mark_valid(self):
        with open(self.path("ota-image.valid"), "w") as f:
            f.write("1")

    def unique_id(self):
        import hashlib

        return hashlib.sha256(self.node_id.encode()).digest()[:6]

    def net_ok(self):
        return not self.net_down

    def udp_socket(self):
        import socket as _socket

        s = _socket.socket(_socket.AF_INET, _socket.SOCK_DGRAM)
        s.bind(_socket.getaddrinfo("127.0.0.1", 0)[0][-1])
        s.setblocking(False)
        return s

    # --- emulation extras: physics and truth ---------------------------------------------
    def _advance(self):
        now = self.sim_unix()
        dt = now - self._last_sim
        if dt > 0:
            self._truth_wh += self.power_w() * dt / 3600.0
        self._last_sim = now

    def power_w(self):
        """True power at the meter now (W)."""
        if not self._powered:
            return 0.0
        return lamp_power_w(
            self._duty,
            self._relay,
            self.rated_w,
            self.standby_w,
            self.idle_w,
            self.driver_min,
            self._lamp_failed,
        )

    def truth_wh(self):
        """Ground-truth cumulative energy (float Wh) registered by the meter."""
        self._advance()
        return self._truth_wh

    def lamp_level(self):
        """The light output the lamp really gives, as a level 0..100 (0 if off or failed).

        The emulated driver is linear in light output above its minimum (light.py gamma 1.0).
        """
        if not (self._powered and self._relay) or self._lamp_failed or self._duty <= 0.0:
            return 0
        x = self._duty if self._duty > self.driver_min else self.driver_min
        return int(x * 100.0 + 0.5)

    # names the emulator launcher uses
    def true_wh(self):
        return self.truth_wh()

    def true_w(self):
        return self.power_w()

    def duty(self):
        return self._duty

    def relay(self):
        return self._relay

    # --- emulation extras: fault switches ------------------------------------------------
    def fail_lamp(self, failed=True):
        self._advance()
        self._lamp_failed = bool(failed)

    def unplug_meter(self, unplugged=True):
        unplugged = bool(unplugged)
        if unplugged == self._meter_unplugged:
            return
        if unplugged:
            self._unplug_pulses = self._pulses_total()
        else:
            self._pulses_lost += self._pulses_total() - self._unplug_pulses
        self._meter_unplugged = unplugged

    def clock_jump(self, seconds):
        self._rtc_offset += seconds

    def power_cut(self):
        """Supply loss in-process: consumption stops; the node must stop running."""
        if not self._powered:
            return
        self._advance()
        if not self._meter_unplugged:
            self._unplug_pulses = self._pulses_total()
        self._powered = False

    def power_restore(self):
        """Power returns: a power-on boot (RTC invalid, RTC memory lost, outputs off)."""
        self._advance()
        if not self._meter_unplugged:
            self._pulses_lost += self._pulses_total() - self._unplug_pulses
        self._powered = True
        self._rtc_valid = False
        self._rtc_mem = b""
        self._boot(BOOT_POWER)

    def powered(self):
        return self._powered

    def reboot(self, cause=BOOT_RESET):
        """Soft reboot after ResetRequested: RTC and RTC memory kept, outputs and counters reset."""
        self._boot(cause)

    def _boot(self, cause):
        self._advance()
        self._boot_cause = cause
        self._boot_sim = self.sim_unix()
        self._duty = 0.0
        self._relay = False
        self._wdt_timeout = 0
        self._pulse_base = 0
        self._pulse_base = self.pulse_count()


class _EmuImage:
    """ImageWriter of the emulated OTA slot (firmware/hal/esp32.py has the real one)."""

    def __init__(self, path, size):
        self.f = open(path, "wb")
        self.size = size
        self.written = 0

    def write(self, chunk):
        self.f.write(chunk)
        self.written += len(chunk)

    def finish(self):
        self.f.close()


def _makedirs(path):
    import os

    parts = path.split("/")
    cur = "/" if path.startswith("/") else ""
    for p in parts:
        if not p:
            continue
        cur = cur + p if cur in ("", "/") else cur + "/" + p
        try:
            os.mkdir(cur)
        except OSError:
            pass
