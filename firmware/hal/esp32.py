"""ESP32 back-end of the HAL: a thin layer over ``machine``/``network`` (see base.py).

The only firmware module (with ``esp32_*`` siblings) allowed to import ``machine`` and
``network``. Nothing touches hardware at import time: the ``Esp32Hal`` constructor claims the
pins. Default pins suit a generic ESP32-WROOM board and are overridden from the node config.

- Lamp: ``machine.PWM`` at ``pwm_freq`` (>= 1000 Hz, so no visible flicker and quiet drivers),
  duty by ``duty_u16``; the relay is a push-pull ``Pin``.
- Pulse meter (S0 output, open collector): ``Pin.irq`` on the falling edge, with a 20 ms
  debounce (S0 pulses are >= 30 ms wide). The handler only increments an int: no allocation.
- Modbus RTU: ``machine.UART`` (1 or 2) with ``timeout=0`` (never blocks); an optional RS-485
  driver-enable pin is raised while sending and lowered after ``flush()`` (TX complete).
- RTC: ``machine.RTC``; valid once its year is >= 2024 (it restarts at 2000 after a power-on
  and keeps time across soft resets). ``RTC().memory()`` is the RTC slow memory.
- Watchdog ``machine.WDT``; Wi-Fi ``network.WLAN(STA_IF)``, reconnecting at most every 10 s.
- Whole-image updates (docs/ota.md): ``esp32.Partition`` ``get_next_update`` (the idle OTA
  slot), ``writeblocks`` 4 KB at a time while the image streams in, ``set_boot`` on Update,
  ``mark_app_valid_cancel_rollback`` after the health check (else the bootloader, built with
  rollback, boots the previous image again at the next reset). Cannot run off a board: only
  type-checked here against the ESP32 stubs.
"""

import time

import esp32
import machine
import network

from firmware.hal.base import (
    BOOT_OTHER,
    BOOT_POWER,
    BOOT_RESET,
    BOOT_WATCHDOG,
    Hal,
    clamp_duty,
)

try:
    import asyncio
except ImportError:  # pragma: no cover
    import uasyncio as asyncio  # type: ignore

_EPOCH_2000 = 946684800  # seconds from 1970-01-01 to 2000-01-01
_VALID_YEAR = 2024
_RECONNECT_MS = 10000
_DEBOUNCE_MS = 20


class Esp32Uart:
    """Non-blocking UART wrapper with optional RS-485 direction control."""

    def __init__(self, uart, de_pin, baudrate, bits, parity, stop):
        self._u = uart
        self._de = de_pin
        nbits = 1 + bits + (0 if parity is None else 1) + stop
        self.char_ms = nbits * 1000.0 / baudrate

    def any(self):
        return self._u.any() > 0

    def write(self, buf):
        de = self._de
        if de is not None:
            de.value(1)
        n = self._u.write(buf)
        if de is not None:
            self._u.flush()  # waits until the last bit left the shift register
            de.value(0)
        return n or 0

    def readinto(self, buf, nbytes=-1):
        waiting = self._u.any()
        if waiting <= 0:
            return 0
        limit = len(buf) if nbytes < 0 else min(nbytes, len(buf))
        if waiting < limit:
            limit = waiting
        n = self._u.readinto(memoryview(buf)[:limit])
        return n or 0

    def drain(self):
        while self._u.any() > 0:
            self._u.read()

    def close(self):
        self._u.deinit()


class ImageWriter:
    """Streams a firmware image into an OTA partition, one 4 KB flash block at a time (the
    partition erases each block before writing it); firmware/ota.py hashes the stream."""

    def __init__(self, part, size):
        self.part = part
        self.size = size
        self.buf = bytearray(4096)
        self.fill = 0
        self.block = 0
        self.written = 0

    def write(self, chunk):
        mv = memoryview(chunk)
        i = 0
        while i < len(mv):
            n = min(4096 - self.fill, len(mv) - i)
            self.buf[self.fill:self.fill + n] = mv[i:i + n]
            self.fill += n
            i += n
            if self.fill == 4096:
                self._flush()
        self.written += len(chunk)

    def _flush(self):
        self.part.writeblocks(self.block, self.buf)
        self.block += 1
        self.fill = 0

    def finish(self):
        """Write the last, partial block (padded with 0xFF)."""
        if self.fill:
            for j in range(self.fill, 4096):
                self.buf[j] = 0xFF
            self._flush()


class Esp32Hal(Hal):
    """The device back-end. One instance per boot, built by main.py from the node config."""

    def __init__(
        self,
        pwm_pin=25,
        relay_pin=26,
        pulse_pin=27,
        pwm_freq=1000,
        pulses_per_kwh=1000,
        uart_id=2,
        uart_tx=17,
        uart_rx=16,
        uart_de=None,
        wifi_ssid=None,
        wifi_key=None,
        flash_root="/",
    ):
        self.flash_root = flash_root
        self.pulses_per_kwh = pulses_per_kwh
        self._pwm = machine.PWM(machine.Pin(pwm_pin), freq=max(1000, pwm_freq), duty_u16=0)
        self._relay = machine.Pin(relay_pin, machine.Pin.OUT, value=0)
        self._pulses = 0
        self._last_pulse = time.ticks_ms()
        self._pulse_pin = machine.Pin(pulse_pin, machine.Pin.IN, machine.Pin.PULL_UP)
        self._pulse_pin.irq(trigger=machine.Pin.IRQ_FALLING, handler=self._on_pulse)
        self._uart_cfg = (uart_id, uart_tx, uart_rx, uart_de)
        self._rtc = machine.RTC()
        self._wdt = None
        self._ssid = wifi_ssid
        self._key = wifi_key
        self._wlan = None
        self._last_try = time.ticks_add(time.ticks_ms(), -_RECONNECT_MS)
        self._epoch = _EPOCH_2000 if time.gmtime(0)[0] == 2000 else 0

    # --- clock -----------------------------------------------------------------------------
    def ticks_ms(self):
        return time.ticks_ms()

    def ticks_add(self, t, delta):
        return time.ticks_add(t, delta)

    def ticks_diff(self, a, b):
        return time.ticks_diff(a, b)

    async def sleep_ms(self, ms):
        await asyncio.sleep_ms(ms if ms > 0 else 0)

    def rtc_get(self):
        if self._rtc.datetime()[0] < _VALID_YEAR:
            return None
        return int(time.time()) + self._epoch

    def rtc_set(self, unix_s):
        tm = time.gmtime(int(unix_s) - self._epoch)
        self._rtc.datetime((tm[0], tm[1], tm[2], tm[6], tm[3], tm[4], tm[5], 0))

    def boot_cause(self):
        c = machine.reset_cause()
        if c == machine.PWRON_RESET:
            return BOOT_POWER
        if c == machine.WDT_RESET:
            return BOOT_WATCHDOG
        if c == machine.SOFT_RESET or c == machine.HARD_RESET:
            return BOOT_RESET
        return BOOT_OTHER

    # --- outputs ---------------------------------------------------------------------------
    def set_duty(self, fraction):
        self._pwm.duty_u16(int(clamp_duty(fraction) * 65535 + 0.5))

    def set_relay(self, on):
        self._relay.value(1 if on else 0)

    # --- meters ----------------------------------------------------------------------------
    def _on_pulse(self, pin):
        now = time.ticks_ms()
        if time.ticks_diff(now, self._last_pulse) >= _DEBOUNCE_MS:
            self._pulses += 1
        self._last_pulse = now

    def pulse_count(self):
        return self._pulses

    def uart(self, baudrate=2400, bits=8, parity=None, stop=1):
        uid, tx, rx, de = self._uart_cfg
        u = machine.UART(uid, baudrate=baudrate, bits=bits, parity=parity, stop=stop, tx=tx, rx=rx, timeout=0)
        de_pin = None if de is None else machine.Pin(de, machine.Pin.OUT, value=0)
        return Esp32Uart(u, de_pin, baudrate, bits, parity, stop)

    # --- storage ---------------------------------------------------------------------------
    def rtc_memory_read(self):
        return bytes(self._rtc.memory())

    def rtc_memory_write(self, buf):
        self._rtc.memory(buf)

    # --- system ----------------------------------------------------------------------------
    def watchdog_start(self, timeout_ms):
        if self._wdt is None:
            self._wdt = machine.WDT(timeout=timeout_ms)

    def watchdog_feed(self):
        if self._wdt is not None:
            self._wdt.feed()

    def reset(self):
        machine.reset()

    # --- whole-image updates (docs/ota.md, firmware/ota.py) ------------------------------
    def image_begin(self, size):
        """The idle OTA slot, opened for an image of ``size`` bytes. Returns an ImageWriter.
        Raises ValueError when the partition table has no OTA slots or the image is larger
        than the slot (Update Result 2)."""
        try:
            # Partition.RUNNING is an int id (MicroPython docs); the stubs type the id as a label str
            part = esp32.Partition(esp32.Partition.RUNNING).get_next_update()  # type: ignore[arg-type]
        except OSError:
            raise ValueError("no OTA slots in this board's partition table (docs/ota.md)") from None
        room = part.info()[3]
        if size > room:
            raise ValueError("image of %d bytes does not fit the %d-byte OTA slot" % (size, room))
        return ImageWriter(part, size)

    def image_activate(self, writer):
        """Boot the written slot at the next reset (on trial: the bootloader rolls back unless
        ``image_mark_valid`` is called in that boot)."""
        writer.part.set_boot()

    def image_mark_valid(self):
        """The running image passed its health check: cancel the bootloader's rollback."""
        esp32.Partition.mark_app_valid_cancel_rollback()

    def unique_id(self):
        return bytes(machine.unique_id())

    def net_connect(self):
        if self._ssid is None:
            return
        if self._wlan is None:
            self._wlan = network.WLAN(network.STA_IF)
            self._wlan.active(True)
        wlan = self._wlan
        if wlan.isconnected():
            return
        now = time.ticks_ms()
        if time.ticks_diff(now, self._last_try) < _RECONNECT_MS:
            return
        self._last_try = now
        try:
            wlan.disconnect()
        except OSError:
            pass
        wlan.connect(self._ssid, self._key)

    def net_ok(self):
        return self._wlan is not None and self._wlan.isconnected()
