"""Read a schedule file for `slgw schedule push` (SPEC §5.2 steps).

Accepted forms (decided here; documented in docs/cli.md):

JSON: a list of steps `[[1, 0, 100], [0, 1350, 40]]` or `{"steps": [...]}`.
TOML:
    [[steps]]
    at = "sunset"      # or "sunrise", or a local time "22:30"
    offset = 0         # minutes from sunset/sunrise (-720..720); not used with a time
    level = 100
or `steps = [[1, 0, 100], ...]`. Steps are validated by commands.model.validate_steps.

`format_schedule(steps)` writes the TOML form back (what `slgw schedule show` prints), so a
shown schedule can be saved and pushed again unchanged; `describe_steps` is its one-line form.
"""

from __future__ import annotations

import json
import tomllib
from pathlib import Path
from typing import Any

from gateway.commands.model import STEP_NAMES, CommandError, validate_steps
from protocol import lwm2m


def _step_from_table(i: int, t: dict[str, Any]) -> list[Any]:
    if "kind" in t:  # the raw form in a table: kind/minutes/level
        return [t["kind"], t.get("minutes", 0), t.get("level")]
    at = t.get("at")
    if not isinstance(at, str):
        raise CommandError(f"step {i + 1}: 'at' must be \"sunset\", \"sunrise\" or \"HH:MM\"")
    if at in STEP_NAMES and at != "fixed":
        return [STEP_NAMES[at], t.get("offset", 0), t.get("level")]
    try:
        hh, mm = at.split(":")
        minutes = int(hh) * 60 + int(mm)
    except ValueError as exc:
        raise CommandError(f"step {i + 1}: at = {at!r} is neither sunset/sunrise nor HH:MM") from exc
    if not (0 <= int(hh) < 24 and 0 <= int(mm) < 60):
        raise CommandError(f"step {i + 1}: at = {at!r} is not a time of day")
    return [lwm2m.STEP_FIXED, minutes, t.get("level")]


def parse_schedule(text: str, name: str = "schedule") -> list[list[int]]:
    """Parse a schedule from JSON or TOML text. Raises CommandError naming what is wrong."""
    try:
        doc: Any = json.loads(text)
    except json.JSONDecodeError as jexc:
        try:
            doc = tomllib.loads(text)
        except tomllib.TOMLDecodeError as texc:
            raise CommandError(f"{name}: neither JSON (line {jexc.lineno}: {jexc.msg}) nor TOML "
                               f"({texc})") from None
    steps = doc.get("steps") if isinstance(doc, dict) else doc
    if steps is None:
        raise CommandError(f"{name}: no 'steps' found")
    if isinstance(steps, list) and steps and isinstance(steps[0], dict):
        steps = [_step_from_table(i, t) for i, t in enumerate(steps)]
    return validate_steps(steps)


def load_schedule(path: str | Path) -> list[list[int]]:
    """Read and parse a schedule file. Raises CommandError (also for an unreadable file)."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise CommandError(f"cannot read schedule file {path}: {exc}") from exc
    return parse_schedule(text, str(path))


def _at(kind: int, minutes: int) -> tuple[str, int | None]:
    """("sunset", offset) / ("sunrise", offset) / ("HH:MM", None) of one step."""
    if kind == lwm2m.STEP_SUNSET:
        return "sunset", minutes
    if kind == lwm2m.STEP_SUNRISE:
        return "sunrise", minutes
    return f"{minutes // 60:02d}:{minutes % 60:02d}", None


def format_schedule(steps: list[list[int]]) -> str:
    """The TOML that `parse_schedule` reads back to exactly `steps`."""
    out = []
    for kind, minutes, level in steps:
        at, offset = _at(kind, minutes)
        out += ["[[steps]]", f'at = "{at}"']
        if offset:
            out.append(f"offset = {offset}")
        out += [f"level = {level}", ""]
    return "\n".join(out)


def describe_steps(steps: list[list[int]]) -> str:
    """One line for people: `sunset 100%, 22:30 40%, sunrise+15 0%`."""
    parts = []
    for kind, minutes, level in steps:
        at, offset = _at(kind, minutes)
        parts.append(f"{at}{offset:+d}" if offset else at)
        parts[-1] += f" {level}%"
    return ", ".join(parts)
