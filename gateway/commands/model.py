"""What a command is: its kinds, their validation, and the LwM2M Write each becomes.

Kinds (SPEC §5):
- `level`    {"level": 0..100}            -> Write /3311/0/5851 (the node holds it 24 h, §5.3)
- `on_off`   {"on": bool}                 -> Write /3311/0/5850
- `override` {"level": 0..100 | null, "seconds": 1..604800 (0 with null = cancel)}
                                          -> Write /10250/0/4 [level, seconds left]
- `schedule` {"steps": [[kind, minutes, level], ...]} (at most 16)
                                          -> Write /10250/0/2 (the CBOR array of steps)

Why overrides are sent as "seconds left": a command that waited in the queue for a node that
was offline must end when the operator asked, not later; and a Write that is re-sent after a
gateway crash lands on the same end time, so re-delivery has the same effect (exactly-once in
effect). A queued `level` or `override` whose end has passed is failed ("expired") instead of
being delivered late. Every Write is an absolute value, never an increment.
"""

from __future__ import annotations

import math
from typing import Any

from protocol import lwm2m

KINDS = ("level", "on_off", "override", "schedule")
# Kinds that set the lamp's current level: a newer one supersedes an older pending one.
LEVEL_KINDS = ("level", "on_off", "override")
MAX_OVERRIDE_S = 604800
LEVEL_HOLD_S = 86400  # SPEC §5.3: a Write to 5851 is an override of one day
MAX_STEPS = 16
STEP_NAMES = {"fixed": lwm2m.STEP_FIXED, "sunset": lwm2m.STEP_SUNSET, "sunrise": lwm2m.STEP_SUNRISE}

PATH_LEVEL = lwm2m.format_path(lwm2m.OBJ_LIGHT, 0, lwm2m.RES_DIMMER)
PATH_ON_OFF = lwm2m.format_path(lwm2m.OBJ_LIGHT, 0, lwm2m.RES_ON_OFF)
PATH_OVERRIDE = lwm2m.format_path(lwm2m.OBJ_STREETLIGHT, 0, lwm2m.RES_OVERRIDE)
PATH_SCHEDULE = lwm2m.format_path(lwm2m.OBJ_STREETLIGHT, 0, lwm2m.RES_SCHEDULE)
PATH_TIME = lwm2m.format_path(lwm2m.OBJ_DEVICE, 0, lwm2m.RES_CURRENT_TIME)


class CommandError(ValueError):
    """A command that cannot be accepted (bad kind, value out of range); says which field."""


class UnsupportedObject(CommandError):
    """The target node did not register the object the command writes (LwM2M Core 1.1
    §6.2.1: the Register body lists the objects a client has)."""


# The object each kind writes, so a command to a client without it is refused up front.
KIND_OBJECT = {"level": lwm2m.OBJ_LIGHT, "on_off": lwm2m.OBJ_LIGHT,
               "override": lwm2m.OBJ_STREETLIGHT, "schedule": lwm2m.OBJ_STREETLIGHT}
OBJECT_NAMES = {lwm2m.OBJ_LIGHT: "Light Control", lwm2m.OBJ_STREETLIGHT: "Street Light (vendor)"}


def lacks_object(kind: str, objects: list[int] | None) -> str | None:
    """Why a node with registered `objects` cannot take a `kind` command, or None (it can, or
    its object list is not known)."""
    obj = KIND_OBJECT[kind]
    if objects is None or obj in objects:
        return None
    return (f"did not register object {obj} ({OBJECT_NAMES[obj]}) that a {kind} command writes; "
            f"it registered {', '.join(f'/{o}' for o in objects) or 'no objects'}")


def _int(value: Any, name: str, lo: int, hi: int) -> int:
    if (isinstance(value, bool) or not isinstance(value, int | float)
            or not math.isfinite(value) or int(value) != value):  # inf/NaN: no int() at all
        raise CommandError(f"{name} must be an integer {lo}..{hi}, got {value!r}")
    if not lo <= value <= hi:
        raise CommandError(f"{name} must be {lo}..{hi}, got {value!r}")
    return int(value)


def validate_steps(steps: Any) -> list[list[int]]:
    """Validate SPEC §5.2 steps and return them as [[kind, minutes, level], ...].

    Raises CommandError naming the step and field at fault.
    """
    if not isinstance(steps, list):
        raise CommandError("steps must be a list of [kind, minutes, level]")
    if len(steps) > MAX_STEPS:
        raise CommandError(f"a schedule has at most {MAX_STEPS} steps, got {len(steps)}")
    out = []
    for i, step in enumerate(steps):
        if not isinstance(step, list | tuple) or len(step) != 3:
            raise CommandError(f"step {i + 1}: expected [kind, minutes, level], got {step!r}")
        kind, minutes, level = step
        if isinstance(kind, str):
            if kind not in STEP_NAMES:
                raise CommandError(f"step {i + 1}: kind must be fixed, sunset or sunrise, got {kind!r}")
            kind = STEP_NAMES[kind]
        kind = _int(kind, f"step {i + 1} kind", 0, 2)
        if kind == lwm2m.STEP_FIXED:
            minutes = _int(minutes, f"step {i + 1} minutes", 0, 1439)
        else:
            minutes = _int(minutes, f"step {i + 1} minutes", -720, 720)
        out.append([kind, minutes, _int(level, f"step {i + 1} level", 0, 100)])
    return out


def validate(kind: str, payload: dict[str, Any]) -> dict[str, Any]:
    """Check a command and return its normalised payload. Raises CommandError."""
    if kind not in KINDS:
        raise CommandError(f"unknown command kind {kind!r}; expected one of {', '.join(KINDS)}")
    if not isinstance(payload, dict):
        raise CommandError("payload must be an object")
    if kind == "level":
        return {"level": _int(payload.get("level"), "level", 0, 100)}
    if kind == "on_off":
        on = payload.get("on")
        if not isinstance(on, bool):
            raise CommandError(f"on must be true or false, got {on!r}")
        return {"on": on}
    if kind == "override":
        level = payload.get("level")
        if level is None:
            return {"level": None, "seconds": 0}
        return {"level": _int(level, "level", 0, 100),
                "seconds": _int(payload.get("seconds"), "seconds", 1, MAX_OVERRIDE_S)}
    return {"steps": validate_steps(payload.get("steps"))}


def expires_at(kind: str, payload: dict[str, Any], created_at: float) -> float | None:
    """When a queued command stops making sense to deliver, or None (never)."""
    if kind == "level":
        return created_at + LEVEL_HOLD_S
    if kind == "override" and payload.get("level") is not None:
        return created_at + payload["seconds"]
    return None


def to_write(kind: str, payload: dict[str, Any], created_at: float, now: float) -> tuple[str, Any]:
    """Return (path, value) of the Write that delivers this command at `now`.

    Raises CommandError("expired ...") when the command's end has already passed.
    """
    end = expires_at(kind, payload, created_at)
    if end is not None and now >= end:
        raise CommandError("expired before the node could be reached")
    if kind == "level":
        return PATH_LEVEL, payload["level"]
    if kind == "on_off":
        return PATH_ON_OFF, payload["on"]
    if kind == "override":
        if payload["level"] is None:
            return PATH_OVERRIDE, [None, 0]
        return PATH_OVERRIDE, [payload["level"], max(1, int(end - now))]
    return PATH_SCHEDULE, payload["steps"]
