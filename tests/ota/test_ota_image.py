"""The whole-image path on the node side (issue 12, docs/ota.md): a manifest naming an
``image`` is streamed into the HAL's idle OTA partition (here the emulated HAL's file; on the
ESP32 ``esp32.Partition``, which cannot run here), checked against its SHA-256, activated by
Update (/5/0/2), booted on trial and, after the health check, marked valid (ESP32:
``mark_app_valid_cancel_rollback``). Driven with a plain aiocoap client against the real slgw
serving the bundle (security "none", so the test can speak to the node directly)."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os

import aiocoap
import cbor2
from ota_support import SlgwProcess, node_argv, ota_state

from tools.procs import free_port, wait_for


def _image_bundle(d, data, size=None):
    d.mkdir()
    (d / "firmware.bin").write_bytes(data)
    meta = {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    img = dict(meta, file="firmware.bin")
    if size is not None:
        img["size"] = size
    (d / "manifest.json").write_text(json.dumps({"format": 1, "version": "0.1.0-image", "image": img,
                                                  "files": {"firmware.bin": meta}}))
    return d


async def _req(ctx, code, uri, payload=b""):
    r = await asyncio.wait_for(ctx.request(aiocoap.Message(code=code, uri=uri, payload=payload)).response, 15)
    return r


async def test_whole_image_is_written_activated_and_marked_valid(tmp_path, procs):
    coap, node_port = free_port(), free_port()
    gw = SlgwProcess(tmp_path, "--firmware-poll-s", "0.5", coap_port=coap).start()
    procs.start("node", node_argv(tmp_path, "lamp-0", coap, trial_s=15, extra=["--port", str(node_port)]))
    flash = tmp_path / "flash-lamp-0"
    ctx = await aiocoap.Context.create_client_context()
    try:
        await asyncio.to_thread(wait_for, lambda: "registered as" in (tmp_path / "node.log").read_text(), 60,
                                what="registration")
        data = os.urandom(150_000)
        info = gw.api("POST", "/api/firmware/bundles", {"path": str(_image_bundle(tmp_path / "img", data))})
        bad = gw.api("POST", "/api/firmware/bundles", {"path": str(_image_bundle(tmp_path / "big", b"x" * 64,
                                                                                   size=0x180000 + 1))})
        node = f"coap://127.0.0.1:{node_port}"
        # an image larger than the OTA slot: refused before anything is written (result 2)
        r = await _req(ctx, aiocoap.PUT, node + "/5/0/1", f"coap://gw/fw/{bad['bundle']}".encode())
        assert r.code == aiocoap.CHANGED
        for _ in range(100):
            res = cbor2.loads((await _req(ctx, aiocoap.GET, node + "/5/0/5")).payload)
            if res:
                break
            await asyncio.sleep(0.1)
        assert res == 2
        r = await _req(ctx, aiocoap.PUT, node + "/5/0/1", f"coap://gw/fw/{info['bundle']}".encode())
        assert r.code == aiocoap.CHANGED
        for _ in range(100):
            if cbor2.loads((await _req(ctx, aiocoap.GET, node + "/5/0/3")).payload) == 2:
                break
            await asyncio.sleep(0.1)
        assert (flash / "ota-image.bin").read_bytes() == data  # the slot holds exactly the image
        assert not (flash / "ota-image.boot").exists()  # not activated before Update
        r = await _req(ctx, aiocoap.POST, node + "/5/0/2")
        assert r.code == aiocoap.CHANGED
        await asyncio.to_thread(wait_for, lambda: ota_state(tmp_path, "lamp-0").get("result") == 1, 60,
                                what="the commit after the trial boot")
        st = ota_state(tmp_path, "lamp-0")
        assert st["active"] == "" and st["trial"] == "" and st["version"] == "0.1.0-image"
        assert (flash / "ota-image.boot").read_text() == str(len(data))
        assert (flash / "ota-image.valid").exists()  # mark_app_valid_cancel_rollback, after the check
    finally:
        await ctx.shutdown()
        gw.stop()
