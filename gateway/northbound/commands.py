"""Commands from MQTT: a level or an override for a node, a group, a cabinet or all, taken
only from the configured command topic (``[mqtt] commands = true``; off by default).

They go through the same validation and persistent queue as the CLI and the HTTP API
(``CommandQueue.submit``): a bad level, an unknown target or a node without the object is
refused exactly as there. A message that is not a JSON object, names another kind, or is too
big is refused before that. Every refusal is logged (what and why) and answered on
``COMMAND_TOPIC/result``; nothing reaches a lamp.

Authorisation is the broker's: the gateway takes whatever arrives on its command topic, so the
broker's ACL must let only the operators' accounts publish there (docs/northbound.md has a
Mosquitto ACL). Results are not queued in the outbox: they answer a live request.
"""

from __future__ import annotations

import json
import logging
from typing import Any

import aiomqtt

from gateway.commands.model import CommandError
from gateway.commands.queue import NotFoundError

log = logging.getLogger("slgw.northbound")

MAX_COMMAND_BYTES = 4096
KINDS = ("level", "override")


def command_topic(cfg: Any, base: str) -> str:
    """``[mqtt] command_topic``, or ``BASE/command``."""
    return cfg.command_topic or f"{base}/command"


def parse(payload: bytes) -> tuple[str | None, str, str, dict[str, Any]]:
    """(id, target, kind, payload for CommandQueue.submit) of one command message.

    Raises CommandError saying what is wrong (the id, when readable, is kept on the error)."""
    if len(payload) > MAX_COMMAND_BYTES:
        raise CommandError(f"command of {len(payload)} bytes; at most {MAX_COMMAND_BYTES}")
    try:
        doc = json.loads(payload)
    except (ValueError, UnicodeDecodeError) as e:
        raise CommandError(f"not JSON: {e}") from None
    if not isinstance(doc, dict):
        raise CommandError("a command is a JSON object {id, target, kind, level[, seconds]}")
    cid = doc.get("id")
    if cid is not None and not isinstance(cid, str | int):
        raise CommandError("'id' must be a string or an integer")
    cid = None if cid is None else str(cid)
    target, kind = doc.get("target"), doc.get("kind")
    if not isinstance(target, str) or not target:
        raise _with_id(CommandError("'target' must be a node id, group:NAME, cabinet:NAME or all"), cid)
    if kind not in KINDS:
        raise _with_id(CommandError(f"'kind' must be one of {', '.join(KINDS)} over MQTT"), cid)
    if kind == "level":
        return cid, target, kind, {"level": doc.get("level")}
    return cid, target, kind, {"level": doc.get("level"), "seconds": doc.get("seconds")}


def _with_id(e: CommandError, cid: str | None) -> CommandError:
    e.command_id = cid  # type: ignore[attr-defined]
    return e


class CommandListener:
    """Subscribes to the command topic on every connection and hands commands to the queue."""

    def __init__(self, publisher: Any, gw: Any):
        self.pub, self.gw = publisher, gw
        self.topic = command_topic(publisher.cfg, publisher.base)
        self.accepted = 0
        self.refused = 0

    async def on_connect(self, client: aiomqtt.Client) -> None:
        """Subscribe to the command topic (every connection: the session is clean)."""
        await client.subscribe(self.topic, qos=1)
        log.info("northbound: taking commands on %s (authorised by the broker's ACL)", self.topic)

    async def on_message(self, client: aiomqtt.Client, msg: aiomqtt.Message) -> None:
        """Handle one message of the command topic and publish its result."""
        if not msg.topic.matches(self.topic):
            return
        result = await self.handle(bytes(msg.payload))
        await client.publish(f"{self.topic}/result", json.dumps(result).encode(), qos=1)

    async def handle(self, payload: bytes) -> dict[str, Any]:
        """Validate and queue one command; returns the result message (never raises)."""
        cid = None
        try:
            cid, target, kind, body = parse(payload)
            res = await self.gw.commands.submit(target, kind, body)
        except (CommandError, NotFoundError) as e:
            cid = cid or getattr(e, "command_id", None)
            self.refused += 1
            code = "not_found" if isinstance(e, NotFoundError) else "bad_request"
            log.warning("northbound: command %s from %s refused (%s): %s; nothing was sent to "
                        "any lamp", cid or "(no id)", self.topic, code, e)
            return {"id": cid, "ok": False, "error": {"code": code, "message": str(e).strip("'\"")}}
        self.accepted += 1
        log.info("northbound: command %s from MQTT: %s %s %s -> batch %s", cid, kind, target,
                 body, res["batch"])
        return {"id": cid, "ok": True, "batch": res["batch"], "target": target, "kind": kind,
                "commands": len(res.get("commands", []))}
