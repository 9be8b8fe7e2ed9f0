"""The hardware-abstraction interface every firmware module codes against.

One ``Hal`` object per node; no module-level state anywhere, so many emulated nodes share one
interpreter. Two back-ends implement it: ``firmware.hal.esp32.Esp32Hal`` (the device) and
``firmware.hal.emulated.EmulatedHal`` (the MicroPython Unix port, with a physics model and fault
switches for tests). Everything that can live above the HAL does (gamma, fades, schedules, the
Modbus RTU framing, energy bookkeeping): a back-end only moves bits.

Interface (all back-ends)
-------------------------
Clock (node time):
- ``ticks_ms()`` -> int, monotonic milliseconds, wraps like ``time.ticks_ms`` (period 2**30).
- ``ticks_add(t, delta_ms)``, ``ticks_diff(a, b)`` -> signed ``a - b`` across the wrap.
- ``await sleep_ms(ms)``: sleep ``ms`` of node time (the emulated clock runs ``speed`` times
  faster than real time; a non-zero sleep lasts at least one real millisecond).
- ``rtc_get()`` -> int Unix seconds (UTC) or ``None`` while the RTC is not valid (after a power
  loss, until ``rtc_set``). ``rtc_set(unix_s)`` makes it valid. A soft reset keeps it.
- ``boot_cause()`` -> ``BOOT_POWER`` (power-on / brown-out: RTC and RTC memory lost),
  ``BOOT_RESET`` (soft/hard reset by software), ``BOOT_WATCHDOG`` or ``BOOT_OTHER``.

Lamp output:
- ``set_duty(fraction)``: PWM duty 0.0..1.0 of the driver's dimming input (>= 1 kHz on ESP32).
  Values are clamped. Linear in driver output: gamma is applied above the HAL (light.py).
- ``set_relay(on)``: the mains relay feeding the driver.

Meters:
- ``pulse_count()`` -> int pulses since boot (the ESP32 counts them by IRQ). ``pulses_per_kwh``
  (int attribute) is the meter's constant, e.g. 1000 imp/kWh = 1 pulse per Wh.
- ``uart(baudrate=2400, bits=8, parity=None, stop=1)`` -> a ``Uart`` (below) for a Modbus RTU
  meter, or raises OSError if the back-end has no serial line configured.

Uart object (non-blocking, for polling from asyncio with short sleeps):
- ``write(buf)`` -> int bytes queued; ``readinto(buf)`` -> int bytes read now (0 if none, never
  blocks); ``any()`` -> bool data waiting; ``drain()`` discards pending input; ``close()``;
  ``char_ms`` (float, one character's wire time at the baud rate, for the 3.5-char gap).

Storage:
- ``flash_root``: a directory (ESP32: "/" littlefs; emulated: a host directory that survives the
  interpreter being killed). ``path(name)`` joins a file name onto it.
- ``rtc_memory_read()`` -> bytes, ``rtc_memory_write(buf)`` (<= ``RTC_MEMORY_SIZE`` bytes):
  survives a soft reset, lost on power loss.

System:
- ``watchdog_start(timeout_ms)``, ``watchdog_feed()``; ``reset()`` (never returns on ESP32; the
  emulation raises ``ResetRequested`` for the runner to catch and boot the node again);
  ``unique_id()`` -> bytes.
- Network: ``net_connect()`` starts (or keeps) the station link, call it periodically: it
  reconnects; ``net_ok()`` -> bool. ``udp_socket()`` -> a non-blocking UDP socket bound to an
  ephemeral port; ``resolve(host, port)`` -> the sockaddr ``sendto`` accepts on this port
  (``getaddrinfo(host, port)[0][-1]``; field notes §1).

Emulated-only extras (physics, ground truth and fault switches) are documented in
``emulated.py``; node code must not call them.
"""

try:
    from micropython import const
except ImportError:  # CPython

    def const(x):
        return x


TICKS_PERIOD = const(1 << 30)
TICKS_MAX = const((1 << 30) - 1)
_TICKS_HALF = const(1 << 29)

BOOT_POWER = const(0)
BOOT_RESET = const(1)
BOOT_WATCHDOG = const(2)
BOOT_OTHER = const(3)

RTC_MEMORY_SIZE = const(2048)


class ResetRequested(Exception):
    """Raised by ``reset()`` on back-ends that cannot restart the process (the emulation)."""


class Hal:
    """Base class: the helpers every back-end shares. The interface itself is the module
    docstring: each back-end implements all of it. (There are no abstract stubs raising
    NotImplementedError here: each method object costs ~100 bytes of heap even with the
    bytecode in ROMFS, and both back-ends override every one; docs/performance.md.)
    """

    flash_root = "/"
    pulses_per_kwh = 1000

    def ticks_add(self, t, delta):
        return (t + delta) & TICKS_MAX

    def ticks_diff(self, a, b):
        """Signed ``a - b`` in ms, correct across the 2**30 wrap (like time.ticks_diff)."""
        return ((a - b + _TICKS_HALF) & TICKS_MAX) - _TICKS_HALF

    def path(self, name):
        root = self.flash_root
        if root.endswith("/"):
            return root + name
        return root + "/" + name

    def net_connect(self):
        pass

    def udp_socket(self):
        import socket as _socket

        s = _socket.socket(_socket.AF_INET, _socket.SOCK_DGRAM)
        s.bind(_socket.getaddrinfo("0.0.0.0", 0)[0][-1])
        s.setblocking(False)
        return s

    def resolve(self, host, port):
        import socket as _socket

        return _socket.getaddrinfo(host, port)[0][-1]


def clamp_duty(fraction):
    """Clamp a duty cycle to 0.0..1.0 (NaN counts as 0)."""
    if not (fraction > 0.0):
        return 0.0
    if fraction > 1.0:
        return 1.0
    return fraction
