"""The Eastron SDM120 (Modbus RTU) energy meter; the policy is in firmware/meter.py's docstring.

Its own module so that only a node configured with ``meter.type = "modbus"`` imports it
(firmware/parts.py): class and method objects stay in the heap even with the bytecode in ROMFS.
"""

try:
    from micropython import const
except ImportError:  # CPython

    def const(x):
        return x


from firmware.meter import FLUSH_MS, FLUSH_WH, _Batch

# Eastron SDM120 input registers (field notes §6)
_BLOCK_ADDR = const(0x0000)
_BLOCK_REGS = const(0x20)  # voltage .. power factor (0x001E) in one read
_VOLTAGE = const(0x0000)
_CURRENT = const(0x0006)
_POWER = const(0x000C)
_PF = const(0x001E)
_TOTAL_KWH = const(0x0156)


class Sdm120Meter:
    """An Eastron SDM120 (or SDM630, same map) on Modbus RTU through ``RtuMaster``."""

    def __init__(self, hal, counters, master, unit=1, flush_wh=FLUSH_WH, flush_ms=FLUSH_MS):
        self.hal = hal
        self.c = counters
        self.m = master
        self.unit = unit
        self.offset = counters.get("mb_offset")
        self.last_wh = counters.get("mb_last_wh")  # last register reading, Wh
        self.replacements = counters.get("replacements")
        self._wh = self.offset + self.last_wh
        self._w = 0.0
        self.pf = 1.0
        self.voltage = 0.0
        self.current = 0.0
        self._ok = True
        self.errors = 0
        self.last_error = None
        self.batch = _Batch(hal, counters, flush_wh, flush_ms)
        self.batch.saved_wh = self._wh

    def wh(self):
        return self._wh

    def power_w(self):
        return self._w

    def report_wh(self):
        """Persist the counter state if needed, then return the energy for a report."""
        if self.c.dirty():
            self.flush()
        return self._wh

    def ok(self):
        return self._ok

    async def poll(self):
        """Read the meter (two requests). Returns True if it wrote flash."""
        from firmware.modbus_rtu import ModbusError

        try:
            p = await self.m.read(self.unit, _BLOCK_ADDR, _BLOCK_REGS)
            v = p.float32(_VOLTAGE)
            i = p.float32(_CURRENT)
            w = p.float32(_POWER)
            pf = p.float32(_PF)
            p = await self.m.read(self.unit, _TOTAL_KWH, 2)
            kwh = p.float32(0)
        except ModbusError as e:
            self._ok = False
            self.errors += 1
            self.last_error = str(e)
            return False
        if not (kwh >= 0.0 and kwh < 1e9) or not (w > -1e6 and w < 1e6):  # NaN/inf/garbage
            self._ok = False
            self.errors += 1
            self.last_error = "implausible values"
            return False
        self._ok = True
        self.voltage = v
        self.current = i
        self._w = w if w > 0 else 0.0
        self.pf = pf
        return self._account(int(kwh * 1000.0 + 0.5))

    def _account(self, reading):
        """Fold one register reading (Wh) into the monotonic counter; persist when due."""
        c = self.c
        if reading < self.last_wh * 9 // 10:
            # meter replaced or reset: continue from where the old one stopped
            self.offset += self.last_wh
            self.replacements += 1
            self.last_wh = reading
            self._wh = self.offset + reading
            c.set("mb_offset", self.offset)
            c.set("replacements", self.replacements)
            c.set("mb_last_wh", reading)
            return self.flush()
        if reading > self.last_wh:
            self.last_wh = reading
            self._wh = self.offset + reading
            c.set("mb_last_wh", reading)
        if self.batch.due(self._wh):
            return self.flush()
        return False

    def flush(self):
        wrote = self.c.flush()
        self.batch.done(self._wh)
        return wrote
