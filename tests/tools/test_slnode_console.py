"""slnode console: the host client (pyserial) against firmware/console.py running in the real
micropython, whose stdin/stdout are the far side of a pseudo-terminal, like a board's USB
serial port. Every process started here is killed by its pid."""

import json
import os
import subprocess
import sys
import time
import tty

import pytest
import serial
from slnode_support import MICROPYTHON, ROOT, slnode, slnode_json

SERVE = os.path.join(ROOT, "tests", "tools", "mp", "console_serve.py")


class PtyNode:
    """A micropython process serving the console on a pty; ``port`` is the host's device path."""

    def __init__(self, mode, tmp_path):
        self.master, self.slave = os.openpty()
        tty.setraw(self.slave)  # no echo back to the node, as on a real USB-serial line
        self.port = os.ttyname(self.slave)
        self.cfg = tmp_path / "config.json"
        env = dict(os.environ, MICROPYPATH=ROOT + ":.frozen")
        self.proc = subprocess.Popen(
            [MICROPYTHON, SERVE, mode, str(self.cfg)],
            stdin=self.master, stdout=self.master, stderr=subprocess.PIPE, env=env, cwd=str(tmp_path),
        )

    def close(self):
        try:
            if self.proc.poll() is None:
                self.proc.kill()
            self.proc.wait(timeout=10)
        finally:
            os.close(self.master)
            os.close(self.slave)


@pytest.fixture(params=["app", "app-text"])
def app_node(tmp_path, request):
    n = PtyNode(request.param, tmp_path)
    try:
        yield n
    finally:
        n.close()


def test_status_over_the_pty(app_node):
    code, res = slnode_json("console", "--port", app_node.port, "status")
    assert code == 0, res
    assert res["id"] == "bench-1" and res["version"] == "test" and res["level"] == 40
    assert res["wh"] == 1234 and res["w"] == 21.5 and res["faults"] == ["meterFailure"]
    assert res["registered"] is False and res["error"] == "meter: no answer"


def test_human_status_panel(app_node):
    r = slnode("console", "--port", app_node.port, "status")
    assert r.returncode == 0, r.stderr
    assert "node        bench-1" in r.stdout and "1234.0 Wh, 21.5 W now" in r.stdout
    assert "faults      meterFailure" in r.stdout and "not registered" in r.stdout


def test_set_gateway_is_validated_and_persisted(app_node):
    app_node.cfg.write_text(json.dumps({"id": "bench-1", "gateway": "coap://127.0.0.1:5683", "lat": 1.5}))
    code, res = slnode_json("console", "--port", app_node.port, "gateway", "http://10.0.0.9")
    assert code == 3 and "gateway: must start with coap://" in res["error"]
    assert json.loads(app_node.cfg.read_text())["gateway"] == "coap://127.0.0.1:5683"  # unchanged
    code, res = slnode_json("console", "--port", app_node.port, "gateway", "coap://10.0.0.9:5684")
    assert code == 0 and res["gateway"] == "coap://10.0.0.9:5684"
    saved = json.loads(app_node.cfg.read_text())
    assert saved == {"id": "bench-1", "gateway": "coap://10.0.0.9:5684", "lat": 1.5}


def test_interactive_session(app_node):
    r = subprocess.run(
        [sys.executable, "-m", "tools.slnode.main", "console", "--port", app_node.port],
        input="i\nbogus\ns\nq\n", capture_output=True, text=True, timeout=60, cwd=ROOT,
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout.count("node        bench-1") == 2
    assert "the lamp is blinking" in r.stdout and "unknown command 'bogus'" in r.stdout


def test_reboot_answers_then_reboots(app_node):
    code, res = slnode_json("console", "--port", app_node.port, "reboot")
    assert code == 0 and res["command"] == "console"
    assert app_node.proc.wait(timeout=20) == 0  # the node ran its reboot after answering


def test_no_answer_is_a_clear_error(tmp_path):
    master, slave = os.openpty()
    try:
        code, res = slnode_json("console", "--port", os.ttyname(slave), "--timeout", "1", "status")
    finally:
        os.close(master)
        os.close(slave)
    assert code == 3 and "no answer from the node console" in res["error"]


def test_missing_port():
    code, res = slnode_json("console", "--port", "/dev/ttyUSB-nonexistent", "status")
    assert code == 3 and res["error"].startswith("no serial port /dev/ttyUSB-nonexistent")


def test_a_board_at_the_repl_is_recognised(tmp_path):
    """A board whose main.py stopped shows the MicroPython prompt, not the node console."""
    master, slave = os.openpty()
    tty.setraw(slave)
    proc = subprocess.Popen([MICROPYTHON], stdin=master, stdout=master, stderr=master, cwd=str(tmp_path))
    try:
        code, res = slnode_json("console", "--port", os.ttyname(slave), "--timeout", "2", "status")
    finally:
        proc.kill()
        proc.wait(timeout=10)
        os.close(master)
        os.close(slave)
    assert code == 3 and "is at the MicroPython prompt" in res["error"] and "NameError" in res["error"]


# --- the real node ---------------------------------------------------------------------------


class _RD:
    """A minimal LwM2M server on aiocoap (a real CoAP peer, not the gateway's code):
    Register -> 2.01 Location /rd/5, Update -> 2.04, Send -> 2.04."""

    def __init__(self):
        self.registrations = []
        self.ctx = None

    async def start(self):
        import aiocoap
        from aiocoap import resource

        rd = self

        class Register(resource.Resource):
            async def render_post(self, request):
                rd.registrations.append(request.opt.uri_query)
                return aiocoap.Message(code=aiocoap.CREATED, location_path=("rd", "5"))

        class Changed(resource.Resource):
            async def render_post(self, request):
                return aiocoap.Message(code=aiocoap.CHANGED)

        site = resource.Site()
        site.add_resource(["rd"], Register())
        site.add_resource(["rd", "5"], Changed())
        site.add_resource(["dp"], Changed())
        sock = __import__("socket").socket(2, 2)
        sock.bind(("127.0.0.1", 0))
        self.port = sock.getsockname()[1]
        sock.close()
        self.ctx = await aiocoap.Context.create_server_context(site, bind=("127.0.0.1", self.port))

    async def stop(self):
        if self.ctx is not None:
            await self.ctx.shutdown()


@pytest.mark.parametrize("source", ["tree", "image"])
async def test_console_against_the_real_node_firmware(tmp_path, source):
    """firmware/node.py on the emulated HAL registers with an aiocoap server; the technician's
    console reads its state over a pty, makes the lamp blink, changes the gateway and reboots it.
    ``image``: the node runs from the image `slnode provision` wrote (compiled .mpy only,
    mounted with MicroPython's VfsLfs2): what a flashed board would run."""
    import asyncio

    rd = _RD()
    await rd.start()
    node_cfg = {
        "id": "lamp-77", "gateway": f"coap://127.0.0.1:{rd.port}", "jitter": 0, "rated_w": 40.0,
        "default_level": 80, "meter": {"type": "emulated"},
    }
    env = dict(os.environ, MICROPYPATH=ROOT + ":.frozen")
    if source == "tree":
        flash_dir = tmp_path / "flash"
        flash_dir.mkdir()
        (flash_dir / "config.json").write_text(json.dumps(node_cfg))
        args = ["node", str(flash_dir)]

        def saved_config():
            return json.loads((flash_dir / "config.json").read_text())
    else:
        toml = tmp_path / "node.toml"
        toml.write_text("".join(f"{k} = {json.dumps(v)}\n" for k, v in node_cfg.items() if k != "meter")
                        + '[meter]\ntype = "emulated"\n')
        image = tmp_path / "fs.bin"
        # --no-oscore: this test is about the console; its aiocoap peer has no OSCORE context
        r = slnode("provision", "--config", str(toml), "--image", str(image), "--no-oscore")
        assert r.returncode == 0, r.stderr
        env["MICROPYPATH"] = ".frozen"  # no source tree: only the image's compiled firmware
        args = ["image", str(image)]

        def saved_config():
            from tools.slnode.provision import read_image

            return json.loads(read_image(image.read_bytes())["config.json"])
    master, slave = os.openpty()
    tty.setraw(slave)
    port = os.ttyname(slave)
    env = dict(os.environ, MICROPYPATH=ROOT + ":.frozen")
    proc = subprocess.Popen([MICROPYTHON, SERVE, *args], stdin=master, stdout=master,
                            stderr=subprocess.PIPE, env=env, cwd=str(tmp_path))

    def console(*args):
        return slnode_json("console", "--port", port, *args)

    try:
        status = None
        for _ in range(50):  # registration takes a moment (real CoAP over UDP)
            code, status = await asyncio.to_thread(console, "status")
            assert code == 0, status
            if status["registered"]:
                break
            await asyncio.sleep(0.2)
        assert status["registered"] is True and status["location"] == "/rd/5", status
        assert status["id"] == "lamp-77" and status["version"] == "0.1.0"
        assert status["gateway"] == f"coap://127.0.0.1:{rd.port}"
        assert "timeInvalid" in status["faults"]
        assert status["oscore"] == "off"  # no keys in this image: the console says so
        for _ in range(50):  # the lamp fades up to the default level (no valid time yet)
            if status["level"] == 80:
                break
            await asyncio.sleep(0.2)
            code, status = await asyncio.to_thread(console, "status")
        assert status["level"] == 80, status
        assert any("ep=lamp-77" in q for q in rd.registrations[0])

        code, res = await asyncio.to_thread(console, "identify")
        assert code == 0, res
        assert status["identifying"] is False
        code, after = await asyncio.to_thread(console, "status")
        assert after["identifying"] is True  # the node is blinking its lamp (10 s)

        rd2 = _RD()  # a second gateway: the node must move to it
        await rd2.start()
        try:
            new_gw = f"coap://127.0.0.1:{rd2.port}"
            code, res = await asyncio.to_thread(console, "gateway", new_gw)
            assert code == 0 and res["gateway"] == new_gw and res["applied"] is True, res
            for _ in range(100):
                if rd2.registrations:
                    break
                await asyncio.sleep(0.1)
            assert rd2.registrations and any("ep=lamp-77" in q for q in rd2.registrations[0])
        finally:
            await rd2.stop()
        code, status = await asyncio.to_thread(console, "status")
        assert status["gateway"] == new_gw
        saved = saved_config()
        assert saved["gateway"] == new_gw and saved["id"] == "lamp-77"

        code, res = await asyncio.to_thread(console, "reboot")
        assert code == 0, res
        assert await asyncio.to_thread(proc.wait, 20) == 0  # the node reset after answering
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=10)
        os.close(master)
        os.close(slave)
        await rd.stop()


def test_hostile_input_on_the_line_never_stops_the_console(app_node):
    from tools.slnode.console import ConsoleClient

    ser = serial.Serial(app_node.port, 115200, timeout=0.1)
    try:
        client = ConsoleClient(ser, app_node.port, timeout=10)
        ser.write(b"\xff\xfe\x00garbage\n")  # binary junk: refused, not fatal
        ser.write(b"A" * 5000 + b"\r\n")  # an endless line is dropped whole
        answers = []
        deadline = time.monotonic() + 10
        while len(answers) < 2 and time.monotonic() < deadline:
            answers += [ln for ln in ser.read(4096).split(b"\n") if ln.startswith(b"@slnode ")]
        errors = [json.loads(a[8:])["error"] for a in answers]
        assert errors == ["not UTF-8 text", "line too long"], answers
        ser.write(b"identify\r")  # CR alone ends a line too (a terminal's Enter)
        resp = client.request("status")  # and the node still answers
        assert resp["ok"] and resp["id"] == "bench-1"
    finally:
        ser.close()
