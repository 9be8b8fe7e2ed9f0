"""Commands to nodes: validation (model.py), schedule files (schedule_file.py), the persistent
queue with delivery (queue.py) and time sync (timesync.py).

`submit_command(target, kind, payload)` is the one entry point every producer uses (the HTTP
API, the CLI through it, and the Modbus bridge's holding-register writes), so all commands share
one queue, one state machine and one delivery path.
"""

from gateway.commands.model import KINDS, CommandError
from gateway.commands.queue import CommandQueue, NotFoundError, submit_command

__all__ = ["KINDS", "CommandError", "CommandQueue", "NotFoundError", "submit_command"]
