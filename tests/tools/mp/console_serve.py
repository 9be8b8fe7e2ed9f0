# Runs firmware/console.py under the real micropython with stdin/stdout on a pseudo-terminal.
# argv: MODE CONFIG_PATH [FLASH_DIR]
#   MODE "app": a minimal application object answering res_get/res_exec (protocol tests);
#   MODE "node": the real firmware node (firmware/node.py) on the emulated HAL.
import asyncio
import sys

from firmware.console import Console


class App:
    def __init__(self):
        self.cfg = {"id": "bench-1", "gateway": "coap://127.0.0.1:5683"}
        self.values = {"fw": "test", "level": 40, "wh": 1234, "w": 21.5, "faults": 0x10}
        self.execs = []
        self.registered = False
        self.reg_path = None

    def log(self, msg):
        sys.stdout.write("app: " + msg + "\r\n")

    def res_get(self, name):
        return self.values[name]

    def res_exec(self, name):
        self.execs.append(name)
        self.values["level"] = 0 if name == "identify" else self.values["level"]
        if name == "reboot":
            sys.stdout.write("rebooting\r\n")
            sys.exit(0)


async def serve_app(cfg_path):
    node = App()
    console = Console(node, cfg_path)
    sys.stdout.write("boot noise that the host must ignore\r\n")
    node.log("meter: no answer")  # the node's last log line, as status shows it
    await console.serve(asyncio.StreamReader(sys.stdin.buffer), sys.stdout.write)


async def serve_node(flash):
    """The real node (firmware/node.py + parts on the emulated HAL), as main.py would run it,
    with the console on this process's stdin/stdout."""
    from firmware.hal.base import ResetRequested
    from firmware.node import Node
    from firmware.parts import make_emulated

    hal, make_parts = make_emulated(flash, "bench-node", {"clock_speed": 1.0})
    node = Node(hal, make_parts, ack_timeout_ms=200)
    console = Console(node)  # config.json found through the node's flash path
    node_task = asyncio.create_task(node.run())
    console_task = asyncio.create_task(
        console.serve(asyncio.StreamReader(sys.stdin.buffer), sys.stdout.write))
    while not node_task.done() and not console_task.done():
        await asyncio.sleep_ms(20)
    if node_task.done():
        try:
            node_task.result() if hasattr(node_task, "result") else await node_task
        except ResetRequested:
            sys.stdout.write("node: reset\r\n")
            sys.exit(0)
    sys.exit(3)


if sys.argv[1] == "node":
    asyncio.run(serve_node(sys.argv[2]))
else:
    asyncio.run(serve_app(sys.argv[2]))
