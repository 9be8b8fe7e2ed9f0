"""ESP32 entry point: build the ESP32 HAL from config.json and run one Node (plus the
diagnostic console on the USB/UART REPL).

On the device ``boot.py`` (or the frozen ``main``) does ``import firmware.main`` and calls
``firmware.main.main()``. Nothing runs at import time but the collector threshold below. The node never returns: a requested
reboot goes through ``hal.reset()`` (``machine.reset()`` inside firmware/hal/esp32.py, the only
module allowed to touch ``machine``); an unexpected exception is printed and the node is
rebuilt after 5 s, with the lamp left at the level it had (the watchdog, started by the node,
resets the board if even that loop hangs).
"""

import gc

# While the modules below load, collect every 4 KB allocated: the loader's garbage is freed
# early, so module objects pack at the bottom of the heap and the top stays in one piece (a
# node with OSCORE's code, in a heap of its code + 64 KB, found no free 1,280-byte block at
# boot without it: docs/performance.md). main() sets the run-time threshold.
if hasattr(gc, "threshold"):  # MicroPython (CPython imports this module in tests)
    gc.threshold(4096)

import asyncio  # noqa: E402
import sys  # noqa: E402

from firmware import config as config_mod  # noqa: E402
from firmware.node import Node  # noqa: E402
from firmware.parts import Parts  # noqa: E402

CONFIG_PATH = "/config.json"
WATCHDOG_MS = 60000


def build_hal(cfg):
    """The ESP32 HAL with the pins/meter/Wi-Fi settings of ``cfg`` (a validated config)."""
    from firmware.hal.esp32 import Esp32Hal

    m = cfg["meter"]
    return Esp32Hal(
        pulses_per_kwh=m["pulses_per_kwh"],
        uart_id=m["uart"],
        wifi_ssid=cfg["wifi_ssid"] or None,
        wifi_key=cfg["wifi_password"] or None,
        flash_root="/",
    )


async def _console(node):
    try:
        from firmware.console import Console
    except ImportError:
        return
    con = Console(node, CONFIG_PATH)

    def write(s):
        sys.stdout.write(s + "\n")

    await con.serve(asyncio.StreamReader(sys.stdin), write)


async def _run(hal):
    node = Node(hal, Parts)
    hal.watchdog_start(WATCHDOG_MS)
    hal.net_connect()
    task = asyncio.create_task(_console(node))
    try:
        await node.run()
    finally:
        task.cancel()


def main():
    cfg, _errors = config_mod.load_file(CONFIG_PATH)  # the node reports errors itself at boot
    hal = build_hal(cfg)

    from firmware.node import has_keys

    if has_keys(hal.path):
        import firmware.secure  # noqa: F401 - OSCORE's code in place before the heap fills (node.has_keys)

    # Collect after every 1/8 of the free heap allocated, not only when an allocation fails:
    # new objects then fill the holes at the bottom of the heap and the top stays in one
    # piece for the 1280-byte receive buffer. Without it, garbage spread over the whole heap
    # and long-lived objects scattered between it left only ~600-byte holes: the 24 h run
    # needed a 148k heap, with it ~120k (bench/node_heap.py, docs/performance.md).
    gc.collect()
    gc.threshold(gc.mem_free() // 8)
    while True:
        try:
            asyncio.run(_run(hal))
        except Exception as e:  # noqa: BLE001 - keep the street lit: rebuild and go on
            sys.print_exception(e)
        import time

        time.sleep(5)
