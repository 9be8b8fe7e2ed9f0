# Runs firmware/console.py under the real micropython with stdin/stdout on a pseudo-terminal.
# argv: MODE PATH
#   "app CONFIG_PATH": a minimal application object answering res_get/res_exec (protocol tests);
#   "app-text CONFIG_PATH": the same, with the console on the text stdin as firmware/main.py does;
#   "node FLASH_DIR": the real firmware node (firmware/node.py) on the emulated HAL;
#   "image IMAGE": the same, run from a provisioned littlefs image mounted with VfsLfs2 (the
#                  compiled .mpy firmware and config.json of `slnode provision`).
import asyncio
import sys


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


async def serve_app(cfg_path, text=False):
    from firmware.console import Console

    node = App()
    console = Console(node, cfg_path)
    sys.stdout.write("boot noise that the host must ignore\r\n")
    node.log("meter: no answer")  # the node's last log line, as status shows it
    if text:  # as firmware/main.py wires it: the text stdin, and a writer adding "\n"
        await console.serve(asyncio.StreamReader(sys.stdin), lambda s: sys.stdout.write(s + "\n"))
    else:
        await console.serve(asyncio.StreamReader(sys.stdin.buffer), sys.stdout.write)


async def serve_node(flash):
    """The real node (firmware/node.py + parts on the emulated HAL), as main.py would run it,
    with the console on this process's stdin/stdout."""
    from firmware.console import Console
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


class FileBdev:
    """A littlefs image file as a writable block device (the node's flash partition)."""

    def __init__(self, path, bs=4096):
        self.f = open(path, "r+b")
        self.bs = bs
        self.f.seek(0, 2)
        self.n = self.f.tell() // bs

    def readblocks(self, n, buf, off=0):
        self.f.seek(n * self.bs + off)
        self.f.readinto(buf)

    def writeblocks(self, n, buf, off=None):
        if off is None:  # erase-and-write of whole blocks
            off = 0
        self.f.seek(n * self.bs + off)
        self.f.write(buf)
        self.f.flush()

    def ioctl(self, op, arg):
        if op == 4:
            return self.n
        if op == 5:
            return self.bs
        if op == 6:  # erase: littlefs rewrites the block next
            return 0
        return 0


def mount_image(path):
    """Mount a provisioned image at /flash and import the firmware from it alone, as the
    ESP32 mounts its vfs partition at / (MICROPYPATH holds no source tree)."""
    import os

    os.mount(os.VfsLfs2(FileBdev(path), readsize=32, progsize=32, lookahead=32), "/flash")
    sys.path.insert(0, "/flash")
    return "/flash"


if sys.argv[1] == "image":
    asyncio.run(serve_node(mount_image(sys.argv[2])))
elif sys.argv[1] == "node":
    asyncio.run(serve_node(sys.argv[2]))
else:
    asyncio.run(serve_app(sys.argv[2], text=sys.argv[1] == "app-text"))
