"""Application updates on the node: LwM2M Firmware Update object 5 (SPEC §13, docs/ota.md).

Owns the node side of an update of the application bundle (what ``slnode build`` writes):
* Write ``/5/0/1`` (Package URI ``coap://<gateway>/fw/<sha256 of manifest.json>``) starts a
  download from the gateway the node is registered with, over the node's own CoAP endpoint and
  OSCORE context (no other host is ever contacted: the host part of the URI is not used);
* the manifest comes first, block-wise (RFC 7959 Block2, 1024-byte blocks), and must hash to
  the SHA-256 in the URI (the URI was written inside OSCORE, so the manifest is bound to the
  update command); then every file under ``firmware/`` and ``protocol/`` is pulled into the
  idle slot (firmware/boot_select.py) and checked against the manifest's size and SHA-256 while
  it streams; the manifest is written into the slot last (it makes the slot bootable);
* Execute ``/5/0/2`` (in state Downloaded) records the slot as on trial and reboots;
* on the trial boot the health check runs: registered, one report acknowledged by the gateway,
  the lamp at the level its schedule (or override) wants now; all three within ``ota_trial_s``
  (config, default 300 s of real time) commits the slot (Update Result 1); otherwise the node
  records why, and resets into the previous slot (Update Result 8).

State /5/0/3: 0 Idle, 1 Downloading, 2 Downloaded, 3 Updating (a trial boot before its commit).
Update Result /5/0/5: 0 none, 1 success, 2 not enough flash, 4 connection lost during download,
5 integrity check failure, 7 invalid URI, 8 update failed (the reason is /10251/0/1).

No module-level state: one ``Ota`` per Node.
"""

import asyncio
import hashlib
import json
import os

from firmware import boot_select
from protocol import coap

IDLE, DOWNLOADING, DOWNLOADED, UPDATING = 0, 1, 2, 3
R_NONE, R_OK, R_FLASH, R_LOST, R_INTEGRITY, R_UNSUPPORTED, R_URI, R_FAILED = 0, 1, 2, 4, 5, 6, 7, 8
IMAGE = "image"  # the "slot" of a whole-image update: the HAL's idle OTA partition
_SZX = 6  # 1024-byte blocks: one block + OSCORE fits the 1152-byte message (SPEC §1)
_TRIES = 4  # attempts per block before the download counts as lost
_PACKAGES = ("firmware/", "protocol/")


def _hex(b):
    return "".join("%02x" % x for x in b)


def _mkdirs(path):
    cur = ""
    for part in path.split("/"):
        if not part:
            cur = "/" if not cur else cur
            continue
        cur = part if not cur else (cur.rstrip("/") + "/" + part)
        try:
            os.mkdir(cur)
        except OSError:
            pass


def _rmtree(path):
    try:
        entries = list(os.ilistdir(path))
    except (OSError, AttributeError):
        try:
            entries = [(n, 0x8000 if "." in n else 0x4000) for n in os.listdir(path)]
        except OSError:
            return
    for e in entries:
        p = path + "/" + e[0]
        if e[1] == 0x4000:
            _rmtree(p)
        else:
            try:
                os.remove(p)
            except OSError:
                _rmtree(p)
    try:
        os.rmdir(path)
    except OSError:
        pass


def parse_uri(uri):
    """The manifest hash (64 hex) of a Package URI ``coap[s]://host[:port]/fw/<sha256>``.
    Returns it lower-case, or None when the URI is not of that form."""
    if not isinstance(uri, str):
        return None
    i = uri.find("://")
    if i < 0 or uri[:i] not in ("coap", "coaps"):
        return None
    rest = uri[i + 3:]
    j = rest.find("/")
    if j < 0:
        return None
    parts = rest[j + 1:].split("/")
    if len(parts) != 2 or parts[0] != "fw" or len(parts[1]) != 64:
        return None
    h = parts[1].lower()
    for ch in h:
        if ch not in "0123456789abcdef":
            return None
    return h


class Ota:
    """Object 5 of one node. ``node`` is a firmware.node.Node (its hal, cfg, request path)."""

    def __init__(self, node):
        self.node = node
        self.root = node.hal.path("")[:-1] if node.hal.path("").endswith("/") else node.hal.path("")
        if not self.root:
            self.root = "/"
        self.st = boot_select.read_state(self.root)
        self.state = UPDATING if self.st["mode"] == "trial" else IDLE
        self.result = self.st["result"]
        self.why = self.st["why"]
        self.uri = ""
        self.pkg_version = self.st["trial_version"] if self.state == UPDATING else ""
        self.task = None
        self.trial_deadline = None  # real ms (endpoint clock) by which the trial must be healthy
        self.report_seq = None  # the report taken for the health check
        self.stats = {"blocks": 0, "bytes": 0}
        self.image = None  # the HAL's ImageWriter of a downloaded whole image

    @property
    def safe(self):
        """True in safe mode: the lamp at its fail-safe level (node.wanted_level)."""
        return self.st["mode"] == "safe"

    def slot(self):
        return self.st["running"] or "factory"

    # -- resources (firmware/resources.py names) ---------------------------------------------
    def get(self, name):
        if name == "fw_uri":
            return self.uri
        if name == "fw_state":
            return self.state
        if name == "fw_result":
            return self.result
        if name == "fw_name":
            return "streetlight-node"
        if name == "fw_version":
            return self.pkg_version
        if name == "fw_delivery":
            return 0  # pull only
        if name == "fw_slot":
            return self.slot() + ("/" + self.st["mode"] if self.st["mode"] != "normal" else "")
        if name == "fw_why":
            return self.why
        raise KeyError(name)

    def set_uri(self, uri):
        """Write /5/0/1. Returns None or the reason of a 4.00."""
        if self.state in (DOWNLOADING, UPDATING):
            return "an update is in progress (state %d)" % self.state
        if uri == "":  # LwM2M: an empty URI cancels and returns to Idle
            self.uri = ""
            self.state = IDLE
            return None
        sha = parse_uri(uri)
        if sha is None:
            self.result = R_URI
            return "Package URI must be coap://<gateway>/fw/<sha256 of the manifest>"
        self.uri = uri
        self.state = DOWNLOADING
        self.result = R_NONE
        self.why = ""
        self.task = asyncio.create_task(self._download(sha))
        return None

    def execute_update(self):
        """Execute /5/0/2. Returns None or the reason of a 4.05/4.00."""
        if self.state != DOWNLOADED:
            return "nothing downloaded (state %d)" % self.state
        st = boot_select.read_state(self.root)
        if self.image is not None:
            self.node.hal.image_activate(self.image)  # the bootloader boots it next, on trial
            st["trial"] = IMAGE
        else:
            st["trial"] = self.idle_slot()
        st["tries"] = 0
        st["trial_version"] = self.pkg_version
        st["result"] = R_NONE
        st["why"] = ""
        boot_select.write_state(self.root, st)
        self.state = UPDATING
        self.node.log("ota: rebooting into slot %s (version %s) on trial" % (st["trial"], self.pkg_version))
        self.node.res_exec("reboot")
        return None

    def idle_slot(self):
        return "b" if self.st["running"] == "a" else "a"

    # -- download ------------------------------------------------------------------------------
    async def fetch(self, path, sink):
        """GET ``path`` from the gateway block by block (RFC 7959 §2.4), each block to
        ``sink(bytes)``. Returns None, or (result code, reason) on failure."""
        num = 0
        szx = _SZX
        while True:
            r = None
            for _ in range(_TRIES):
                m = coap.Message(code=coap.GET)
                m.set_path(path)
                m.add_option(coap.BLOCK2, coap.uint_bytes(coap.block_value(num, False, szx)))
                r = await self.node.send(m)
                if r is not None:
                    break
                await asyncio.sleep_ms(500)
            if r is None:
                return R_LOST, "no answer for %s block %d" % (path, num)
            if r.code != coap.CONTENT:
                return R_LOST, "gateway answered %s for %s" % (r.code_str(), path)
            b = r.block2()
            if b is not None and b[0] != num:
                return R_LOST, "gateway sent block %d of %s, asked for %d" % (b[0], path, num)
            sink(r.payload)
            self.stats["blocks"] += 1
            self.stats["bytes"] += len(r.payload)
            if b is None or not b[1]:
                return None
            num += 1
            szx = b[2]

    async def _download(self, sha):
        t0 = self.node.ep.now_ms()
        self.stats["blocks"] = self.stats["bytes"] = 0
        try:
            res = await self._download_into(sha)
        except Exception as e:  # noqa: BLE001 - report, keep the node running
            res = (R_FAILED, "download failed: %r" % (e,))
        if res is None:
            self.state = DOWNLOADED
            self.node.log("ota: version %s downloaded and verified in slot %s: %d bytes in %d blocks, %d ms" % (
                self.pkg_version, self.idle_slot(), self.stats["bytes"], self.stats["blocks"],
                self.node.ep.now_ms() - t0))
        else:
            self.state = IDLE
            self.result, self.why = res[0], res[1]
            self.node.log("ota: download failed (result %d): %s" % res)
        self.task = None

    async def _download_into(self, sha):
        base = "/fw/" + sha
        parts = []
        err = await self.fetch(base + "/manifest.json", parts.append)
        if err:
            return err
        raw = b"".join(parts)
        parts = None
        if _hex(hashlib.sha256(raw).digest()) != sha:
            return R_INTEGRITY, "manifest does not match the SHA-256 of the Package URI"
        try:
            man = json.loads(raw)
            files = man["files"]
            version = str(man["version"])
        except (ValueError, KeyError, TypeError):
            return R_INTEGRITY, "manifest is not a slnode build manifest"
        if man.get("image"):
            return await self._download_image(base, man["image"], version)
        todo = [k for k in files if k.startswith(_PACKAGES)]
        if "firmware/main.mpy" not in todo and "firmware/main.py" not in todo:
            return R_INTEGRITY, "bundle has no firmware/main: it would not boot"
        need = 0
        for k in todo:
            need += files[k]["size"]
        try:
            sv = os.statvfs(self.root)
            free = sv[0] * sv[3]
        except (OSError, AttributeError):
            free = need
        slot = self.idle_slot()
        sdir = boot_select.slot_dir(self.root, slot)
        _rmtree(sdir)  # whatever an earlier, interrupted download left there
        if free < need + 4096:
            return R_FLASH, "bundle needs %d bytes, %d free" % (need, free)
        _mkdirs(sdir)
        for k in todo:
            meta = files[k]
            d = k.rsplit("/", 1)[0]
            _mkdirs(sdir + "/" + d)
            h = hashlib.sha256()
            n = [0]
            with open(sdir + "/" + k, "wb") as f:
                def sink(chunk, f=f, h=h, n=n):
                    f.write(chunk)
                    h.update(chunk)
                    n[0] += len(chunk)

                err = await self.fetch(base + "/" + k, sink)
            if err:
                return err
            if n[0] != meta["size"] or _hex(h.digest()) != meta["sha256"]:
                return R_INTEGRITY, "%s does not match the manifest" % k
        with open(sdir + "/manifest.json", "wb") as f:  # last: the slot is complete
            f.write(raw)
        try:
            os.sync()
        except (AttributeError, OSError):
            pass
        self.pkg_version = version
        return None

    async def _download_image(self, base, img, version):
        """A whole firmware image (MicroPython with the application frozen in) into the
        HAL's idle OTA partition (firmware/hal/esp32.py); same checks as the bundle path."""
        begin = getattr(self.node.hal, "image_begin", None)
        if begin is None:
            return R_UNSUPPORTED, "this node cannot take whole images (no OTA partitions in its HAL)"
        try:
            w = begin(int(img["size"]))
        except ValueError as e:
            return R_FLASH, str(e)
        except (KeyError, TypeError):
            return R_INTEGRITY, "manifest image entry is not {file, size, sha256}"
        h = hashlib.sha256()

        def sink(chunk):
            w.write(chunk)
            h.update(chunk)

        err = await self.fetch(base + "/" + img["file"], sink)
        if err:
            return err
        w.finish()
        if w.written != img["size"] or _hex(h.digest()) != img["sha256"]:
            return R_INTEGRITY, "image does not match the manifest"
        self.image = w
        self.pkg_version = version
        return None

    # -- health check, commit, rollback, boot counter --------------------------------------------
    def tick(self, now_ms):
        """Called from the node's control loop (real ms). Drives the trial's health check and
        clears the boot counter of a healthy or stable boot."""
        node = self.node
        if self.state == UPDATING and self.st["mode"] == "trial":
            if self.trial_deadline is None:
                self.trial_deadline = now_ms + int(node.cfg.get("ota_trial_s", 300)) * 1000
            why = self.unhealthy()
            if why is None:
                self.commit()
            elif now_ms >= self.trial_deadline:
                self.rollback("health check failed within %ss: %s" % (node.cfg.get("ota_trial_s", 300), why))
            elif node.registered and self.report_seq is None:
                self.report_seq = node.take_report()[0]  # a report now, not at the next period
            return
        if self.st["boots"] and (node.registered and node.stats["acked_reports"] or
                                 now_ms >= boot_select.STABLE_S * 1000):
            st = boot_select.read_state(self.root)
            st["boots"] = 0
            boot_select.write_state(self.root, st)
            self.st["boots"] = 0

    def unhealthy(self):
        """None when healthy, else what is missing (the Update Result reason)."""
        node = self.node
        if not node.registered:
            return "not registered"
        if self.report_seq is None or node.stats["acked_reports"] == 0 or len(node.p.outbox) and \
                node.p.outbox.peek(1)[0][0] <= self.report_seq:
            return "no report acknowledged"
        from firmware.light import clamp_level

        want = clamp_level(node.wanted_level(), node.cfg["min_level"])
        if node.p.light.fading() or node.p.light.target_level != want:
            return "lamp at %d, schedule wants %d" % (node.p.light.target_level, want)
        return None

    def commit(self):
        st = boot_select.read_state(self.root)
        # a whole image carries its application frozen in: no slot of the filesystem in front
        st["active"] = "" if st["trial"] == IMAGE else st["trial"]
        st["version"] = st["trial_version"]
        st["trial"] = ""
        st["tries"] = 0
        st["boots"] = 0
        st["result"] = R_OK
        st["why"] = ""
        st["mode"] = "normal"
        boot_select.write_state(self.root, st)
        self.st = st
        self.state = IDLE
        self.result = R_OK
        self.why = ""
        mark = getattr(self.node.hal, "image_mark_valid", None)
        if mark is not None:  # the whole-image path (ESP32 HAL): cancel the bootloader's rollback
            mark()
        self.node.log("ota: health check passed: slot %s (version %s) committed" % (st["active"], st["version"]))

    def rollback(self, why):
        st = boot_select.read_state(self.root)
        st["trial"] = ""
        st["tries"] = 0
        st["result"] = R_FAILED
        st["why"] = why[:120]
        boot_select.write_state(self.root, st)
        self.st = st
        self.node.log("ota: " + why + ": back to the previous slot")
        self.node.res_exec("reboot")
