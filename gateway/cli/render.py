"""Human-readable output of the CLI (the --json output is the API's document, unchanged)."""

from __future__ import annotations

import csv
from typing import Any, TextIO


def _table(out: TextIO, headers: list[str], rows: list[list[Any]]) -> None:
    cells = [[("" if v is None else str(v)) for v in r] for r in rows]
    widths = [max([len(h)] + [len(r[i]) for r in cells]) for i, h in enumerate(headers)]
    out.write("  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip() + "\n")
    for r in cells:
        out.write("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() + "\n")


def _nodes(out: TextIO, nodes: list[dict[str, Any]]) -> None:
    _table(out, ["ID", "ONLINE", "ADDRESS", "GROUP", "CABINET", "LEVEL", "POWER_W", "WH",
                 "LAST_REPORT", "FAULTS"],
           [[n["id"], "yes" if n["online"] else "no", n["address"], n["group"], n["cabinet"],
             n["level"], n["power_w"], n["wh"], n["last_report"], ",".join(n["faults"])]
            for n in nodes])


def _commands(out: TextIO, cmds: list[dict[str, Any]]) -> None:
    _table(out, ["ID", "BATCH", "NODE", "KIND", "PAYLOAD", "STATE", "ATTEMPTS", "REASON"],
           [[c["id"], c["batch"], c["node"], c["kind"],
             ",".join(f"{k}={v}" for k, v in c["payload"].items()), c["state"], c["attempts"],
             c["reason"]] for c in cmds])


def _utc(t: int) -> str:
    from gateway.energy.periods import iso_utc
    return iso_utc(t)


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
        for k, v in doc["node"].items():
            out.write(f"{k:14} {v}\n")
        if doc.get("schedule"):
            out.write(f"{'schedule':14} {doc['schedule']['steps']} (pushed to "
                      f"{doc['schedule']['target']} at {doc['schedule']['updated_at']})\n")
        if doc.get("commands"):
            out.write("\nrecent commands:\n")
            _commands(out, doc["commands"])
    elif kind == "batch":
        s = ", ".join(f"{n} {st}" for st, n in sorted(doc["summary"].items()))
        out.write(f"batch {doc['batch']}: {doc['kind']} for {doc['target']}: {s}\n")
        out.write(f"follow it with: slgw commands --batch {doc['batch']}\n")
    elif kind == "commands":
        _commands(out, doc["commands"])
    elif kind == "schedule":
        out.write(f"{doc['target']}: {doc['steps']} (pushed {doc['updated_at']})\n")
    elif kind == "energy_csv":
        rows = doc.get("rows", [])
        if rows:
            w = csv.DictWriter(out, fieldnames=list(rows[0].keys()), lineterminator="\n")
            w.writeheader()
            w.writerows(rows)
    elif kind == "energy":
        for r in doc.get("rows", []):
            out.write("  ".join(f"{k}={v}" for k, v in r.items()) + "\n")
        out.write(f"total_wh {doc['total_wh']} ({doc.get('quality')})\n")
        if doc.get("circuit"):
            c = doc["circuit"]
            span = c.get("compared")
            over = (f" over {_utc(span['start'])} .. {_utc(span['end'])}" if span
                    else " (no span covered by both the meter and its nodes)")
            out.write(f"circuit check {c.get('cabinet')}{over}: meter {c.get('meter_wh')} Wh, "
                      f"nodes {c.get('nodes_wh')} Wh, unaccounted {c.get('unaccounted_wh')} Wh\n")
    elif kind == "savings":
        site = doc.get("site", {})
        out.write(f"baseline {doc.get('baseline')}  {doc.get('start')} .. {doc.get('end')}\n")
        out.write(f"site: baseline {site.get('baseline_wh')} Wh, actual {site.get('actual_wh')} Wh, "
                  f"saved {site.get('saved_wh')} Wh, {_saved(site)}\n")
        for c in doc.get("cabinets", []):
            out.write(f"cabinet {c.get('cabinet')}: saved {c.get('saved_wh')} Wh, {_saved(c)}\n")
    elif kind == "backup":
        out.write(f"backup written to {doc['path']} ({doc['bytes']} bytes)\n")
    elif kind == "meters":
        if not doc["meters"]:
            out.write("no meters configured\n")
        else:
            _table(out, ["NAME", "CABINET", "IMPORT_WH", "POWER_W", "STATUS", "LAST_POLL"],
                   [[m.get("name"), m.get("cabinet"), m.get("import_wh"), m.get("power_w"),
                     m.get("status"), m.get("last_poll")] for m in doc["meters"]])
            for m in doc["meters"]:  # a profile that does not fit the meter (docs/modbus.md)
                if m.get("missing_registers"):
                    out.write(f"{m['name']} lacks {len(m['missing_registers'])} register(s) of profile "
                              f"{m.get('profile')}, polled without them: "
                              + ", ".join(f"{r['name']} (fc {r['function']} {r['address']:#06x})"
                                          for r in m["missing_registers"]) + "\n")
    else:
        import json
        out.write(json.dumps(doc, indent=2) + "\n")
