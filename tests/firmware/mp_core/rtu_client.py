"""Poll an SDM120 through the emulated HAL's UART (a pty) with the node's RTU master.

argv: flash_dir pty_path baud polls [unplug_at]: from poll number ``unplug_at`` on, the emulated
HAL's meter-unplugged switch is on (the UART neither sends nor answers). Prints one JSON line per poll:
{"ok", "wh", "w", "v", "pf", "errors", "last_error"}.
"""

import asyncio
import json
import sys

from firmware.hal.emulated import EmulatedHal
from firmware.meter import open_counters
from firmware.meter_sdm120 import Sdm120Meter
from firmware.modbus_rtu import RtuMaster


async def main():
    flash, pty, baud, polls = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    hal = EmulatedHal("rtu", flash, uart_path=pty)
    master = RtuMaster(hal.uart(baud), timeout_ms=300, retries=2)
    m = Sdm120Meter(hal, open_counters(hal), master, unit=1)
    unplug_at = int(sys.argv[5]) if len(sys.argv) > 5 else -1
    for k in range(polls):
        if k == unplug_at:
            hal.unplug_meter(True)
        await m.poll()
        print(json.dumps({"ok": m.ok(), "wh": m.wh(), "w": m.power_w(), "v": m.voltage, "pf": m.pf,
                          "errors": m.errors, "last_error": m.last_error}))
        await asyncio.sleep_ms(50)
    m.flush()


asyncio.run(main())
