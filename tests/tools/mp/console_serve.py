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


async def main(mode, cfg_path):
    node = App()
    console = Console(node, cfg_path)
    sys.stdout.write("boot noise that the host must ignore\r\n")
    node.log("meter: no answer")  # the node's last log line, as status shows it
    await console.serve(asyncio.StreamReader(sys.stdin.buffer), sys.stdout.write)


asyncio.run(main(sys.argv[1], sys.argv[2]))
