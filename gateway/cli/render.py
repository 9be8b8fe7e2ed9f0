"""Human-readable output of the CLI (the --json output is the API's document, unchanged).

Rules for people (issue 16): numbers rounded to what a person reads (W and Wh to 0.1, %
whole), times as the API gives them (ISO 8601 UTC) or local where the API gives `local`,
never a raw float or Unix time; schedules in the TOML form `slgw schedule push` reads; an
active hold (override or manual level) and when it ends next to the level it holds.
"""

from __future__ import annotations

import csv
from typing import Any, TextIO


def _table(out: TextIO, headers: list[str], rows: list[list[Any]]) -> None:
    cells = [[("" if v is None else str(v)) for v in r] for r in rows]
    widths = [max([len(h)] + [len(r[i]) for r in cells]) for i, h in enumerate(headers)]
    out.write("  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip() + "\n")
    for r in cells:
        out.write("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() + "\n")


def _n(v: Any, digits: int = 1) -> str:
    """A number for a table: None -> "", ints as they are, floats to `digits` decimals."""
    if v is None:
        return ""
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return str(v)


def _level(v: Any) -> str:
    return "" if v is None else f"{round(v)}%"


def _hold(h: dict[str, Any] | None) -> str:
    """`20% until 2026-12-04T15:59:20Z (override)`, or "" without a hold."""
    if not h:
        return ""
    return f"{h['level']}% until {h['until']} ({h['kind']})"


def _nodes(out: TextIO, nodes: list[dict[str, Any]]) -> None:
    _table(out, ["ID", "ONLINE", "ADDRESS", "GROUP", "CABINET", "LEVEL", "HOLD", "POWER_W", "WH",
                 "LAST_REPORT", "FAULTS"],
           [[n["id"], _n(n["online"]), n["address"], n["group"], n["cabinet"], _level(n["level"]),
             _hold(n.get("hold")), _n(n["power_w"]), _n(n["wh"]), n["last_report"],
             ",".join(n["faults"])] for n in nodes])


def _payload(c: dict[str, Any]) -> str:
    p = c["payload"]
    if c["kind"] == "schedule" and isinstance(p.get("steps"), list):
        from gateway.commands.schedule_file import describe_steps
        return describe_steps(p["steps"])
    if c["kind"] == "override":
        return "cancel" if p.get("level") is None else f"{p['level']}% for {_duration(p['seconds'])}"
    if c["kind"] == "level":
        return f"{p.get('level')}%"
    if c["kind"] == "on_off":
        return "on" if p.get("on") else "off"
    return ",".join(f"{k}={v}" for k, v in p.items())


def _duration(s: int) -> str:
    """3600 -> 1h, 5400 -> 1h30m, 90 -> 1m30s (the form `--for` takes)."""
    d, rest = divmod(int(s), 86400)
    h, rest = divmod(rest, 3600)
    m, sec = divmod(rest, 60)
    return "".join(f"{v}{u}" for v, u in ((d, "d"), (h, "h"), (m, "m"), (sec, "s")) if v) or "0s"


def _commands(out: TextIO, cmds: list[dict[str, Any]]) -> None:
    _table(out, ["ID", "BATCH", "NODE", "KIND", "PAYLOAD", "STATE", "ATTEMPTS", "CREATED", "REASON"],
           [[c["id"], c["batch"], c["node"], c["kind"], _payload(c), c["state"], c["attempts"],
             c.get("created_at"), c["reason"]] for c in cmds])


def _node(out: TextIO, doc: dict[str, Any]) -> None:
    n = doc["node"]
    digits = {"lat": 6, "lon": 6}  # coordinates: to 0.1 m
    for k, v in n.items():
        if k == "hold":
            v = _hold(v) or "none (the schedule is in charge)"
        elif k == "level":
            v = _level(v)
        elif k == "faults":
            v = ",".join(v) or "none"
        elif k == "on_time" and v is not None:
            v = f"{v} s ({_duration(v)})"
        elif k in digits and v is not None:
            v = str(round(v, digits[k]))
        else:
            v = _n(v)
        out.write(f"{k:14} {v}\n")
    sched = doc.get("schedule")
    if sched:
        from gateway.commands.schedule_file import describe_steps
        out.write(f"{'schedule':14} {describe_steps(sched['steps'])} (pushed to {sched['target']} "
                  f"at {sched['updated_at']}; `slgw schedule show {sched['target']}` prints it)\n")
    if doc.get("commands"):
        out.write("\nrecent commands:\n")
        _commands(out, doc["commands"])


def _saved(fig: dict[str, Any]) -> str:
    """'12.5 % saved (coverage 98.0 %)', or why there is no percentage (issue 16)."""
    cov = fig.get("coverage")
    cov_s = "n/a" if cov is None else f"{100 * cov:.1f} %"
    if fig.get("saved_pct") is None:
        return f"no percentage: {fig.get('withheld') or 'no baseline'}"
    return f"{fig['saved_pct']} % saved (coverage {cov_s} of the night hours)"


def human(kind: str, doc: Any, out: TextIO) -> None:
    """Print `doc` (an API answer) for a person."""
    if kind == "nodes":
        _nodes(out, doc["nodes"])
    elif kind == "faults":
        if not doc["faults"]:
            out.write("no active faults\n")
        _table(out, ["ID", "GROUP", "CABINET", "FAULTS", "LAST_REPORT"],
               [[n["id"], n["group"], n["cabinet"], ",".join(n["faults"]), n["last_report"]]
                for n in doc["faults"]])
    elif kind == "node":
        _node(out, doc)
    elif kind == "batch":
        s = ", ".join(f"{n} {st}" for st, n in sorted(doc["summary"].items()))
        out.write(f"batch {doc['batch']}: {doc['kind']} for {doc['target']}: {s}\n")
        out.write(f"follow it with: slgw commands --batch {doc['batch']}\n")
    elif kind == "commands":
        _commands(out, doc["commands"])
    elif kind == "schedule":
        from gateway.commands.schedule_file import describe_steps, format_schedule
        out.write(f"# schedule of {doc['target']}, pushed {doc['updated_at']}: "
                  f"{describe_steps(doc['steps'])}\n# save this and push it again with: slgw "
                  f"schedule push {doc['target']} FILE.toml\n{format_schedule(doc['steps'])}")
    elif kind == "energy_csv":
        rows = doc.get("rows", [])
        if rows:
            w = csv.DictWriter(out, fieldnames=list(rows[0].keys()), lineterminator="\n")
            w.writeheader()
            w.writerows(rows)
    elif kind == "energy":
        _table(out, ["PERIOD (LOCAL)", "WH", "QUALITY", "COVERAGE", "CLIPPED"],
               [[r.get("local"), _n(r.get("wh")), r.get("quality"),
                 "" if r.get("coverage") is None else f"{100 * r['coverage']:.0f}%",
                 "yes" if r.get("clipped") else ""] for r in doc.get("rows", [])])
        out.write(f"total {_n(doc['total_wh'])} Wh ({doc.get('quality')}) for {doc.get('selection')}"
                  f", {doc.get('start')} .. {doc.get('end')} by {doc.get('by')}\n")
        if doc.get("circuit"):
            c = doc["circuit"]
            span = c.get("compared")
            over = (f" over {span['start']} .. {span['end']}" if span
                    else " (no span covered by both the meter and its nodes)")
            out.write(f"circuit check {c.get('cabinet')}{over}: meter {_n(c.get('meter_wh'))} Wh, "
                      f"nodes {_n(c.get('nodes_wh'))} Wh, unaccounted "
                      f"{_n(c.get('unaccounted_wh'))} Wh\n")
    elif kind == "savings":
        site = doc.get("site", {})
        out.write(f"baseline {doc.get('baseline')}  {doc.get('start')} .. {doc.get('end')}\n")
        out.write(f"site: baseline {_n(site.get('baseline_wh'))} Wh, actual "
                  f"{_n(site.get('actual_wh'))} Wh, saved {_n(site.get('saved_wh'))} Wh, "
                  f"{_saved(site)}\n")
        for c in doc.get("cabinets", []):
            out.write(f"cabinet {c.get('cabinet')}: saved {_n(c.get('saved_wh'))} Wh, {_saved(c)}\n")
    elif kind == "backup":
        out.write(f"backup written to {doc['path']} ({doc['bytes']} bytes)\n")
    elif kind == "meters":
        if not doc["meters"]:
            out.write("no meters configured\n")
        else:
            _table(out, ["NAME", "CABINET", "IMPORT_WH", "POWER_W", "STATUS", "LAST_POLL"],
                   [[m.get("name"), m.get("cabinet"), _n(m.get("import_wh")), _n(m.get("power_w")),
                     m.get("status"), m.get("last_poll")] for m in doc["meters"]])
            for m in doc["meters"]:  # a profile that does not fit the meter (docs/modbus.md)
                if m.get("missing_registers"):
                    out.write(f"{m['name']} lacks {len(m['missing_registers'])} register(s) of profile "
                              f"{m.get('profile')}, polled without them: "
                              + ", ".join(f"{r['name']} (fc {r['function']} {r['address']:#06x})"
                                          for r in m["missing_registers"]) + "\n")
    elif kind == "northbound":
        ob = doc.get("outbox", {})
        state = ("connected" if doc.get("connected") else "NOT connected") if doc.get("enabled") \
            else "disabled ([mqtt] enabled = false)"
        out.write(f"mqtt {doc.get('broker', '-')}: {state}\n")
        oldest = ob.get("oldest") or {}
        out.write(f"outbox: {ob.get('depth')} waiting, oldest {oldest.get('key', '-')} queued "
                  f"{oldest.get('queued_at', '-')}, {ob.get('dropped')} dropped when full\n")
        if doc.get("last_error"):
            out.write(f"last error: {doc['last_error']} at {doc.get('last_error_at')}\n")
    else:
        import json
        out.write(json.dumps(doc, indent=2) + "\n")
