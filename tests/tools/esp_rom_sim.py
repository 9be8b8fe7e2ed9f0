"""A simulated ESP32 serial bootloader on the far side of a pseudo-terminal (test helper).

There is no board here. This plays the part of the ESP32's ROM loader and esptool's flasher
stub closely enough for the *real* esptool to detect the chip, upload its stub, write
compressed data, check MD5 digests and reset: the SLIP-framed command protocol of
docs.espressif.com/projects/esptool/en/latest/esp32/advanced-topics/serial-protocol.html.
Flash is a 4 MiB bytearray that the test reads afterwards. It is a stand-in for hardware, so
no test built on it claims that a real board was flashed.
"""

import hashlib
import os
import select
import struct
import threading
import zlib

FLASH_SIZE = 4 << 20
MAGIC_REG = 0x40001000
ESP32_MAGIC = 0x00F01D83
SPI_BASE = 0x3FF42000
SPI_W0 = SPI_BASE + 0x80
FLASH_ID = 0x1640EF  # size id 0x16: 4 MB

SYNC, WRITE_REG, READ_REG = 0x08, 0x09, 0x0A
MEM_BEGIN, MEM_END, MEM_DATA = 0x05, 0x06, 0x07
SPI_SET_PARAMS, SPI_ATTACH, CHANGE_BAUD = 0x0B, 0x0D, 0x0F
DEFL_BEGIN, DEFL_DATA, DEFL_END, FLASH_MD5 = 0x10, 0x11, 0x12, 0x13
ERASE_FLASH = 0xD0


def slip(data):
    return b"\xc0" + data.replace(b"\xdb", b"\xdb\xdd").replace(b"\xc0", b"\xdb\xdc") + b"\xc0"


class Esp32Sim:
    """Serve the loader protocol on ``fd`` (a pty master) in a thread until ``stop()``."""

    def __init__(self, fd):
        self.fd = fd
        self.flash = bytearray(b"\xff" * FLASH_SIZE)
        self.stub = False
        self.commands = []
        self.regs = {}
        self._defl = None
        self.corrupt = False  # flip a bit in every block written (a failing flash chip)
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def start(self):
        self.thread.start()
        return self

    def stop(self):
        self._stop.set()
        self.thread.join(timeout=5)

    def _send(self, op, value=0, data=b""):
        status = b"\x00\x00" if self.stub else b"\x00\x00\x00\x00"
        body = data + status
        os.write(self.fd, slip(struct.pack("<BBHI", 1, op, len(body), value) + body))

    def _error(self, op):
        status = b"\x01\x05" if self.stub else b"\x01\x05\x00\x00"
        os.write(self.fd, slip(struct.pack("<BBHI", 1, op, len(status), 0) + status))

    def _run(self):
        frame = None
        while not self._stop.is_set():
            r, _, _ = select.select([self.fd], [], [], 0.05)
            if not r:
                continue
            try:
                chunk = os.read(self.fd, 65536)
            except OSError:
                return
            for byte in chunk:
                if byte == 0xC0:
                    if frame:
                        self._handle(frame.replace(b"\xdb\xdc", b"\xc0").replace(b"\xdb\xdd", b"\xdb"))
                    frame = b""
                elif frame is not None:
                    frame += bytes([byte])

    def _handle(self, pkt):
        if len(pkt) < 8 or pkt[0] != 0:
            return
        _, op, size, _chk = struct.unpack("<BBHI", pkt[:8])
        data = pkt[8 : 8 + size]
        self.commands.append(op)
        if op == SYNC:  # the ROM answers 8 times with a non-zero value (the stub with 0)
            for _ in range(8):
                self._send(SYNC, 0 if self.stub else 0x20120707)
        elif op == READ_REG:
            addr = struct.unpack("<I", data[:4])[0]
            if addr == MAGIC_REG:
                value = ESP32_MAGIC
            elif addr == SPI_W0:
                value = FLASH_ID
            else:
                value = self.regs.get(addr, 0) if addr != SPI_BASE else 0  # SPI_CMD: always done
            self._send(op, value)
        elif op == WRITE_REG:
            addr, value = struct.unpack("<II", data[:8])
            self.regs[addr] = value
            self._send(op)
        elif op in (MEM_BEGIN, MEM_DATA, SPI_SET_PARAMS, SPI_ATTACH, CHANGE_BAUD):
            self._send(op)
        elif op == MEM_END:
            self._send(op)
            self.stub = True
            os.write(self.fd, slip(b"OHAI"))
        elif op == DEFL_BEGIN:
            _size, _blocks, _bsize, offset = struct.unpack("<IIII", data[:16])
            self._defl = [offset, zlib.decompressobj()]
            self._send(op)
        elif op == DEFL_DATA:
            offset, d = self._defl
            raw = d.decompress(data[16:])
            if self.corrupt and raw:
                raw = bytes([raw[0] ^ 1]) + raw[1:]
            self.flash[offset : offset + len(raw)] = raw
            self._defl[0] += len(raw)
            self._send(op)
        elif op == DEFL_END:
            self._send(op)
        elif op == FLASH_MD5:
            addr, size = struct.unpack("<II", data[:8])
            self._send(op, data=hashlib.md5(self.flash[addr : addr + size]).digest())
        elif op == ERASE_FLASH:
            self.flash[:] = b"\xff" * FLASH_SIZE
            self._send(op)
        else:
            self._error(op)
