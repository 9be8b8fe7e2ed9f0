"""A relay that carries RTU bytes at the pace of a real serial line.

A socat pty pair ignores the baud rate: bytes cross it as fast as memory copies them, so
timing, efficiency and timeout behaviour measured through it would be fiction. This relay
sits between the pty end of the pair and the emulator's RTU server, and delivers every
byte no earlier than one character time (start + data + parity + stop bits at the baud
rate) after the previous one in the same direction, as a UART would, and hands a request
to the slave only after 3.5 silent character times, which is how a real slave detects the
end of a frame (so a reply starts no sooner than on a real line). Half duplex is not
enforced: a Modbus master never talks while a slave answers.
"""

from __future__ import annotations

import asyncio
import os
import termios
import time
import tty
from collections.abc import Callable


class PacedPipe:
    """One direction: bytes written arrive at `deliver` one character time apart."""

    def __init__(self, char_time: float, deliver: Callable[[bytes], None], frame_gap: float = 0.0) -> None:
        self.char_time = char_time
        self.frame_gap = frame_gap
        self.deliver = deliver
        self.free_at = 0.0                     # when the line is free for the next byte
        self.queue: list[tuple[float, int]] = []  # (due time, byte)
        self.wake = asyncio.Event()
        self.bytes = 0

    def feed(self, data: bytes) -> None:
        """Queue bytes that just arrived from the sender."""
        now = time.monotonic()
        t = max(now, self.free_at)
        for b in data:
            t += self.char_time
            self.queue.append((t, b))
        self.free_at = t
        self.wake.set()

    async def run(self) -> None:
        """Deliver queued bytes when due; several due bytes go out in one write."""
        while True:
            if not self.queue:
                self.wake.clear()
                await self.wake.wait()
                continue
            now = time.monotonic()
            # with a frame gap, nothing is handed over before the sender has been silent
            # for that long after its last byte: how a slave's UART detects a frame end
            due = self.queue[-1][0] + self.frame_gap if self.frame_gap else self.queue[0][0]
            if due > now:
                await asyncio.sleep(due - now)
                continue
            n = 0
            while n < len(self.queue) and self.queue[n][0] <= now:
                n += 1
            out = bytes(b for _, b in self.queue[:n])
            del self.queue[:n]
            self.bytes += len(out)
            self.deliver(out)


def open_pty(path: str) -> int:
    """Open a pty end in raw, non-blocking mode."""
    fd = os.open(path, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
    tty.setraw(fd, termios.TCSANOW)
    return fd


async def relay(pty_path: str, host: str, port: int, baudrate: int, bits_per_char: int = 10) -> None:
    """Carry bytes between the pty at `pty_path` and an RTU-over-TCP server, paced.

    Runs until cancelled; reconnects to the server if it drops the connection.
    """
    char_time = bits_per_char / baudrate
    loop = asyncio.get_running_loop()
    fd = open_pty(pty_path)

    def write_pty(data: bytes) -> None:
        try:
            os.write(fd, data)
        except BlockingIOError:
            pass  # the master is not reading: a real line would lose these bytes too

    to_master = PacedPipe(char_time, write_pty)
    tasks = [asyncio.create_task(to_master.run())]
    try:
        while True:
            reader, writer = await asyncio.open_connection(host, port)
            to_slave = PacedPipe(char_time, writer.write, frame_gap=3.5 * char_time)
            tasks.append(asyncio.create_task(to_slave.run()))

            def on_pty(pipe: PacedPipe = to_slave) -> None:
                try:
                    data = os.read(fd, 4096)
                except BlockingIOError:
                    return
                except OSError:
                    data = b""
                if data:
                    pipe.feed(data)
                    return
                # EOF/EIO: the master closed its end of the pair. Stop watching for a while
                # instead of spinning on a descriptor that is always "readable".
                loop.remove_reader(fd)
                loop.call_later(0.05, loop.add_reader, fd, on_pty)

            loop.add_reader(fd, on_pty)
            try:
                while data := await reader.read(4096):
                    to_master.feed(data)
            finally:
                loop.remove_reader(fd)
                tasks.pop().cancel()
                writer.close()
            await asyncio.sleep(0.1)
    finally:
        for t in tasks:
            t.cancel()
        os.close(fd)
