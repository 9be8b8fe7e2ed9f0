"""The pages of the web view (docs/web.md): tonight at a glance, lamps, a lamp, energy and
savings, the map; sign-in and the operator's actions.

Pages read the running gateway through the same facade as the HTTP API (gateway.service.Gateway:
registry, command queue, ``energy()``, ``savings()``), so every figure equals what ``slgw
energy`` / ``slgw savings`` print for the same window. Operator actions go through the same
command queue as ``POST /api/set-level`` and ``/api/override`` and answer with the command's
state. Figures that a test or a script may want to compare exactly are also given, unrounded,
in ``data-*`` attributes.
"""

from __future__ import annotations

import logging
import math
import sqlite3
from collections import Counter
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode
from zoneinfo import ZoneInfo

import aiocoap
from aiohttp import web

from gateway.energy.periods import floor_period, next_period
from gateway.timefmt import iso
from gateway.web import auth
from gateway.web.expect import classify, is_night, wanted_level
from gateway.web.render import (
    ago,
    attrs,
    bar_chart,
    h,
    kwh,
    line_chart,
    local,
    num,
    page,
    parse_iso,
    pct,
    table,
)

log = logging.getLogger("slgw.web")
STATIC = Path(__file__).parent / "static"
ACTION_WAIT = 5.0  # seconds an action waits for the node's answer before showing "pending"
IDENTIFY_OBJECT = 10250
MAX_LOOK = 100
MAX_ROW_BASELINE_LAMPS = 200  # past this, periods over a day get no baseline each (cost)  # rows of "need a look" on the phone; the rest through the lamps' state filter
STATE_LABEL = {"on": "On", "dimmed": "Dimmed", "off": "Off", "dark": "Dark, should be lit",
               "dayburn": "Lit by day", "offline": "Offline", "fault": "Fault"}
BY_WINDOW = {"15min": "last 24 hours by quarter hour", "day": "last 31 days by day",
             "month": "last 12 months by month"}


# --- shared -------------------------------------------------------------------------------
def _gw(request: web.Request) -> Any:
    from gateway.api.app import GW  # the API's key to the running gateway (no import cycle)
    return request.app[GW]


def _role(request: web.Request) -> str | None:
    cfg = _gw(request).config
    return auth.role_of(request, cfg.api, cfg.web.session_hours)


def _render(request: web.Request, title: str, body: str, active: str, status: int = 200
            ) -> web.Response:
    gw = _gw(request)
    role = _role(request)
    text = page(title, body, active=active, role=role, site=gw.config.site.name or "Street lighting",
                path=request.path_qs, flash=request.query.get("done", ""))
    return web.Response(text=text, content_type="text/html", status=status,
                        headers={"Cache-Control": "no-store",
                                 "Content-Security-Policy": "default-src 'self'; "
                                 "style-src 'self'; img-src 'self' data:; form-action 'self'; "
                                 "frame-ancestors 'none'",
                                 "X-Content-Type-Options": "nosniff",
                                 "Referrer-Policy": "same-origin"})


def _readable(request: web.Request) -> None:
    """Raise a redirect to the sign-in page when the pages are not public and nobody signed in."""
    if not _gw(request).config.web.public and _role(request) is None:
        raise web.HTTPSeeOther(f"/web/login?next={quote(request.path_qs)}")


def _tz(gw: Any) -> str:
    return gw.config.site.timezone


def _pos(gw: Any, n: dict[str, Any]) -> tuple[float, float]:
    lat, lon = n.get("lat"), n.get("lon")
    if lat is None or lon is None:
        return gw.config.site.latitude, gw.config.site.longitude
    return lat, lon


async def _schedules(gw: Any, nodes: list[dict[str, Any]]) -> dict[str, list | None]:
    """The steps in force for each node: its own schedule, else its group's."""
    def q(conn: sqlite3.Connection) -> dict[str, str]:
        return dict(conn.execute("SELECT target, steps FROM schedules").fetchall())

    import json
    raw = await gw.store.read(q)
    out: dict[str, list | None] = {}
    for n in nodes:
        s = raw.get(n["id"]) or (raw.get("group:" + n["group"]) if n["group"] else None)
        out[n["id"]] = json.loads(s) if s else None
    return out


async def _classified(gw: Any, ids: list[str] | None = None
                      ) -> tuple[list[dict[str, Any]], float, bool]:
    """Every node (or those of `ids`) with its state ("state"), wanted level and hold; the time
    and whether it is night at the site."""
    now = gw.clock.now()
    nodes = await gw.registry.list_nodes(ids=ids)
    holds = await gw.commands.holds(now)
    steps = await _schedules(gw, nodes)
    tz = _tz(gw)
    for n in nodes:
        n["hold"] = holds.get(n["id"])
        lat, lon = _pos(gw, n)
        default = n["default_level"] if n["default_level"] is not None else 100
        want = n["hold"]["level"] if n["hold"] else wanted_level(steps[n["id"]], lat, lon, tz, now,
                                                                 default)
        n["wanted"] = want
        n["steps"] = steps[n["id"]]
        level = n["level"]
        # reports lag the switch: what was wanted when the last report was made counts too
        t_rep = parse_iso(n["last_report"])
        want_then = want if t_rep is None or n["hold"] else wanted_level(
            steps[n["id"]], lat, lon, tz, t_rep, default)
        state = classify(n["online"], n["fault_flags"], level, bool(n["hold"]), want, want_then,
                         is_night(lat, lon, now))
        n["state"] = state
    site = gw.config.site
    return nodes, now, is_night(site.latitude, site.longitude, now)


def _badge(state: str) -> str:
    return f'<span class="badge s-{state}">{h(STATE_LABEL[state])}</span>'


def _lamp_link(nid: str) -> str:
    return f'<a href="/web/lamps/{quote(nid, safe="")}">{h(nid)}</a>'


# --- tonight ------------------------------------------------------------------------------
async def tonight(request: web.Request) -> web.Response:
    """Tonight at a glance: counts by state, what needs a look, pending commands."""
    _readable(request)
    gw = _gw(request)
    nodes, now, night = await _classified(gw)
    tz = _tz(gw)
    count = Counter(n["state"] for n in nodes)
    pending = await gw.commands.list(state="pending", limit=200)
    pending += await gw.commands.list(state="delivering", limit=200)
    lit = sum(1 for n in nodes if n["online"] and (n["level"] or 0) > 0)
    tiles = [("lit", "Lamps lit", lit, None), ("on", "At full level", count["on"], "on"),
             ("dimmed", "Dimmed", count["dimmed"], "dimmed"), ("off", "Off", count["off"], "off"),
             ("dark", "Dark, should be lit", count["dark"], "dark"),
             ("dayburn", "Lit by day", count["dayburn"], "dayburn"),
             ("offline", "Offline", count["offline"], "offline"),
             ("fault", "Faults", count["fault"], "fault"),
             ("pending", "Pending commands", len(pending), None)]
    tile_html = "".join(
        f'<li class="tile t-{k}"{attrs(data_count=v)}>'
        + (f'<a href="/web/lamps?state={f}">' if f else "<span>")
        + f'<strong>{v}</strong> {h(label)}' + ("</a>" if f else "</span>") + "</li>"
        for k, label, v, f in tiles)
    look = [n for n in nodes if n["state"] in ("dark", "dayburn", "offline", "fault")]
    rows = [(_lamp_link(n["id"]), _badge(n["state"]), h(n["cabinet"]),
             h(", ".join(n["faults"]) or ""), h(ago(parse_iso(n["last_seen"]), now)))
            for n in look[:MAX_LOOK]]
    more = (f'<p>And {len(look) - MAX_LOOK} more: see the lamps by state above.</p>'
            if len(look) > MAX_LOOK else "")
    needs = (table(["Lamp", "State", "Cabinet", "Faults", "Last heard"], rows,
                   caption="Lamps that need a look", id="needs") + more
             if rows else '<p class="ok" id="needs">Every lamp does what it should.</p>')
    prow = [(_lamp_link(c["node"]), h(c["kind"]), h(_payload(c)), h(c["state"]),
             h(c["reason"] or ""), h(local(parse_iso(c["created_at"]), tz, "%H:%M")))
            for c in pending[:50]]
    ptab = table(["Lamp", "Command", "Value", "State", "Why", "Since"], prow,
                 caption="Commands not yet delivered", id="pending") if prow else ""
    body = (f'<p class="lead">{h(local(now, tz, "%A %d %B %Y, %H:%M"))} ({h(tz)}): '
            f'{"night" if night else "day"} at the site; {len(nodes)} lamps.</p>'
            f'<ul class="tiles" id="tiles">{tile_html}</ul>{needs}{ptab}')
    return _render(request, "Tonight", body, "/web/")


def _payload(c: dict[str, Any]) -> str:
    p = c["payload"] or {}
    if c["kind"] in ("level", "override"):
        s = "cancel" if p.get("level") is None else f"{p['level']} %"
        return s + (f" for {p['seconds'] / 60:.0f} min" if p.get("seconds") else "")
    if c["kind"] == "on_off":
        return "on" if p.get("on") else "off"
    return f"{len(p.get('steps') or [])} steps" if c["kind"] == "schedule" else ""


# --- lamps --------------------------------------------------------------------------------
async def lamps(request: web.Request) -> web.Response:
    """Lamps by cabinet and group, filtered by cabinet, group, state, firmware or text."""
    _readable(request)
    gw = _gw(request)
    nodes, now, _night = await _classified(gw)
    q = request.query
    cab, grp, state, fw, text = (q.get(k, "") for k in ("cabinet", "group", "state", "fw", "q"))
    cabinets = sorted({n["cabinet"] or "" for n in nodes})
    groups = sorted({n["group"] or "" for n in nodes})
    fws = sorted({n["fw"] or "" for n in nodes})

    def keep(n: dict[str, Any]) -> bool:
        return ((not cab or (n["cabinet"] or "") == cab) and (not grp or (n["group"] or "") == grp)
                and (not state or n["state"] == state) and (not fw or (n["fw"] or "") == fw)
                and (not text or text.lower() in n["id"].lower()))

    shown = [n for n in nodes if keep(n)]

    def select(name: str, label: str, values: list[str], current: str, names: dict | None = None
               ) -> str:
        opts = "".join(f'<option value="{h(v)}"{" selected" if v == current else ""}>'
                       f'{h((names or {}).get(v, v) or "(none)")}</option>' for v in values)
        return (f'<label for="f-{name}">{h(label)}</label><select id="f-{name}" name="{name}">'
                f'<option value="">all</option>{opts}</select>')

    form = (f'<form method="get" action="/web/lamps" class="filters" role="search">'
            f'<label for="f-q">Lamp id</label><input id="f-q" name="q" value="{h(text)}" '
            f'inputmode="search">'
            + select("cabinet", "Cabinet", cabinets, cab) + select("group", "Group", groups, grp)
            + select("state", "State", list(STATE_LABEL), state, STATE_LABEL)
            + select("fw", "Firmware", fws, fw)
            + '<button type="submit">Filter</button> <a href="/web/lamps">Clear</a></form>')
    active = any((text, cab, grp, state, fw))
    # folded on a phone unless a filter is in force: the lamps come first
    form = (f'<details class="filterbox"{" open" if active else ""}><summary>Filter by id, '
            f'cabinet, group, state, firmware</summary>{form}</details>')
    sections = []
    for c in cabinets:
        in_cab = [n for n in shown if (n["cabinet"] or "") == c]
        if not in_cab:
            continue
        rows = [(_lamp_link(n["id"]), h(n["group"]), _badge(n["state"]),
                 f'<span{attrs(data_level=n["level"])}>{h(n["level"])} %</span>'
                 if n["level"] is not None else "—",
                 num(n["power_w"], "W"), h(ago(parse_iso(n["last_report"]), now)), h(n["fw"]),
                 h(", ".join(n["faults"]) or ""))
                for n in sorted(in_cab, key=lambda n: (n["group"] or "", n["id"]))]
        sections.append(f'<section{attrs(data_cabinet=c)}><h2>Cabinet {h(c or "(none)")} '
                        f'<small>{len(in_cab)} lamp{"s" if len(in_cab) != 1 else ""}</small></h2>'
                        + table(["Lamp", "Group", "State", "Level", "Power", "Last report",
                                 "Firmware", "Faults"], rows) + "</section>")
    body = form + (f'<p class="lead" id="count">{len(shown)} of {len(nodes)} lamps</p>'
                   + ("".join(sections) or '<p class="empty">No lamp matches.</p>'))
    return _render(request, "Lamps", body, "/web/lamps")


# --- one lamp -----------------------------------------------------------------------------
async def _history(gw: Any, nid: str, t0: float, t1: float) -> list[tuple[float, float, float]]:
    """(t, level, W) of a node's reports in [t0, t1), thinned to at most 400 points."""
    rows = await gw.store.read(lambda conn: conn.execute(
        "SELECT t, level, w FROM readings WHERE source = ? AND t >= ? AND t < ? ORDER BY t",
        (nid, t0, t1)).fetchall())
    step = max(1, math.ceil(len(rows) / 400))
    return rows[::step] if step > 1 else rows


def _steps_text(steps: list | None) -> list[str]:
    out = []
    for kind, minutes, level in steps or []:
        if kind == 0:
            when = f"{minutes // 60:02d}:{minutes % 60:02d}"
        else:
            sign = "+" if minutes >= 0 else "−"
            when = f"{'sunset' if kind == 1 else 'sunrise'} {sign} {abs(minutes)} min"
        out.append(f"{when}: {level} %")
    return out


async def lamp(request: web.Request) -> web.Response:
    """One lamp: state, level and power over the last 24 h, schedule, commands, actions."""
    _readable(request)
    gw = _gw(request)
    nid = request.match_info["id"]
    nodes, now, _night = await _classified(gw, ids=[nid])
    node = nodes[0] if nodes else None
    if node is None:
        return _render(request, "No such lamp", f'<p>No lamp <b>{h(nid)}</b>. '
                       '<a href="/web/lamps">All lamps</a></p>', "/web/lamps", status=404)
    tz = _tz(gw)
    hist = await _history(gw, nid, now - 86400, now + 60)
    facts = [("State", _badge(node["state"])),
             ("Level", f'<span id="level"{attrs(data_level=node["level"])}>'
                       f'{h(node["level"])} %</span>' if node["level"] is not None else "—"),
             ("Wanted now", f'{h(node["wanted"])} %'), ("Power", num(node["power_w"], "W")),
             ("Energy meter", kwh(node["wh"])), ("Rated power", num(node["rated_w"], "W", 0)),
             ("Cabinet / group", f'{h(node["cabinet"])} / {h(node["group"])}'),
             ("Last report", f'{h(local(parse_iso(node["last_report"]), tz))} '
                             f'({h(ago(parse_iso(node["last_report"]), now))})'),
             ("Online", "yes" if node["online"] else "no"), ("Firmware", h(node["fw"])),
             ("Faults", h(", ".join(node["faults"]) or "none")),
             ("Position", f'{num(node["lat"], digits=5)}, {num(node["lon"], digits=5)}'),
             ("Hold", (f'{h(node["hold"]["kind"])} {h(node["hold"]["level"])} % until '
                       f'{h(local(parse_iso(node["hold"]["until"]), tz))}')
              if node["hold"] else "none: the schedule is in force")]
    dl = "<dl class='facts'>" + "".join(f"<dt>{k}</dt><dd>{v}</dd>" for k, v in facts) + "</dl>"
    charts = (line_chart([(t, lv) for t, lv, _w in hist], "Level over 24 hours", "%", tz, ymax=100)
              + line_chart([(t, w) for t, _lv, w in hist], "Power over 24 hours", "W", tz,
                           step=False))
    sched = _steps_text(node["steps"])
    sched_html = ("<ol class='steps'>" + "".join(f"<li>{h(s)}</li>" for s in sched) + "</ol>"
                  if sched else "<p>No schedule pushed: the lamp follows its fail-safe "
                  f"(default level {h(node['default_level'])} % from dusk to dawn).</p>")
    cmds = await gw.commands.list(node=nid, limit=10)
    crow = [(h(local(parse_iso(c["created_at"]), tz, "%d %H:%M")), h(c["kind"]), h(_payload(c)),
             h(c["state"]), h(c["reason"] or "")) for c in cmds]
    ctab = table(["When", "Command", "Value", "State", "Why"], crow, caption="Last commands",
                 id="commands") if crow else ""
    body = (dl + f"<h2>History</h2>{charts}<h2>Schedule</h2>{sched_html}"
            + _controls(request, gw, node) + ctab
            + f'<p><a href="/web/energy?sel=node:{quote(nid, safe="")}">Energy and savings of '
              f"this lamp</a></p>")
    return _render(request, f"Lamp {nid}", body, "/web/lamps")


def _controls(request: web.Request, gw: Any, node: dict[str, Any]) -> str:
    """The operator's forms, only for a role that may command (else a sign-in hint)."""
    if not auth.can_command(_role(request)):
        return ('<section id="controls-absent"><h2>Commands</h2><p>Sign in with the operator '
                f'token to change this lamp. <a href="/web/login?next={quote(request.path_qs)}">'
                "Sign in</a></p></section>")
    base = f'/web/lamps/{quote(node["id"], safe="")}'
    tz = _tz(gw)
    until = local(gw.clock.now() + 3600, tz, "%H:%M")
    objs = node.get("objects")
    can_identify = objs is None or IDENTIFY_OBJECT in objs
    ident = (f'<form method="post" action="{base}/identify"><button type="submit" id="identify">'
             "Identify (blink 10 s)</button></form>" if can_identify else
             "<p>This node did not register the identify resource (/10250/0/9): it cannot blink "
             "on request.</p>")
    return f"""<section id="controls"><h2>Commands</h2>
<form method="post" action="{base}/level" class="action">
<label for="c-level">Level (%)</label>
<input id="c-level" name="level" type="number" min="0" max="100" step="1" required
 value="{h(node['level'] if node['level'] is not None else 100)}">
<button type="submit" id="set-level">Set level</button>
<p class="hint">Held until the schedule's next step (SPEC §5.3).</p></form>
<form method="post" action="{base}/override" class="action">
<label for="o-level">Override level (%)</label>
<input id="o-level" name="level" type="number" min="0" max="100" step="1" required value="100">
<label for="o-until">until ({h(tz)})</label>
<input id="o-until" name="until" type="time" required value="{h(until)}">
<button type="submit" id="override">Override</button></form>
{ident}</section>"""


def _level_arg(form: Any, name: str = "level") -> int:
    try:
        v = float(form.get(name, ""))
    except ValueError:
        raise _Refused(f"{name} must be a number 0-100") from None
    if not math.isfinite(v) or not 0 <= v <= 100:
        raise _Refused(f"{name} must be 0-100")
    return int(round(v))


class _Refused(Exception):
    """An action refused before reaching the queue (bad form value)."""


def _until_seconds(text: str, now: float, tz: str) -> int:
    """Seconds from `now` to the next HH:MM in the site's time zone (tomorrow if passed)."""
    try:
        hh, mm = (int(x) for x in text.split(":")[:2])
        if not (0 <= hh < 24 and 0 <= mm < 60):
            raise ValueError
    except ValueError:
        raise _Refused("until must be a time such as 23:30") from None
    zone = ZoneInfo(tz)
    cur = datetime.fromtimestamp(now, zone)
    end = cur.replace(hour=hh, minute=mm, second=0, microsecond=0)
    if end.timestamp() <= now:
        end = (cur + timedelta(days=1)).replace(hour=hh, minute=mm, second=0, microsecond=0)
    return math.ceil(end.timestamp() - now)


async def action(request: web.Request) -> web.Response:
    """POST /web/lamps/{id}/{level|override|identify}: operator only; back to the lamp's page
    with what happened."""
    gw = _gw(request)
    role = _role(request)
    if not auth.can_command(role):
        return _render(request, "Not allowed", "<p>Commands need the operator token. "
                       '<a href="/web/login">Sign in</a></p>', "/web/lamps",
                       status=401 if role is None else 403)
    if not auth.same_origin(request):
        return _render(request, "Not allowed", "<p>This command did not come from the gateway's "
                       "own page, so it was refused.</p>", "/web/lamps", status=403)
    nid, what = request.match_info["id"], request.match_info["what"]
    node = await gw.registry.show(nid)
    if node is None:
        raise web.HTTPNotFound(reason=f"no lamp {nid}")
    form = await request.post()
    try:
        if what == "level":
            lv = _level_arg(form)
            res = await gw.commands.submit(nid, "level", {"level": lv}, wait=ACTION_WAIT)
            done = _outcome(res, f"Level {lv} %")
        elif what == "override":
            lv = _level_arg(form)
            now = gw.clock.now()
            secs = _until_seconds(str(form.get("until", "")), now, _tz(gw))
            end = local(now + secs, _tz(gw), "%H:%M")  # the time asked, not after the wait
            res = await gw.commands.submit(nid, "override", {"level": lv, "seconds": secs},
                                           wait=ACTION_WAIT)
            done = _outcome(res, f"Override {lv} % until {end}")
        else:
            done = await _identify(gw, nid)
    except _Refused as exc:
        done = f"Refused: {exc}"
    log.info("web: %s on %s by %s: %s", what, nid, role, done)
    raise web.HTTPSeeOther(f"/web/lamps/{quote(nid, safe='')}?{urlencode({'done': done})}")


def _outcome(res: dict[str, Any], what: str) -> str:
    c = res["commands"][0] if res["commands"] else None
    if c is None:
        return f"{what}: no command made"
    if c["state"] == "delivered":
        return f"{what}: delivered, the lamp acknowledged it."
    if c["state"] == "failed":
        return f"{what}: failed ({c['reason']})."
    return (f"{what}: {c['state']}; the gateway keeps trying and the lamp gets it when it "
            "answers.")


async def _identify(gw: Any, nid: str) -> str:
    from gateway.coap.client import NodeRefused, NodeUnreachable
    objs = gw.registry.objects(nid)
    if objs is not None and IDENTIFY_OBJECT not in objs:
        return "Identify: this node cannot blink on request (no /10250/0/9)."
    address = gw.registry.address(nid)
    if not address:
        return "Identify: the lamp is not registered now, so it cannot be reached."
    try:
        await gw.client.request(aiocoap.POST, address, "/10250/0/9", timeout=ACTION_WAIT)
    except NodeRefused as exc:
        return f"Identify: the lamp refused ({exc})."
    except (TimeoutError, NodeUnreachable) as exc:
        return f"Identify: no answer from the lamp ({exc})."
    return "Identify: the lamp blinks for 10 s."


# --- energy and savings -------------------------------------------------------------------
def _window(by: str, now: float, tz: str) -> tuple[int, int]:
    """The default window of a view: whole periods up to the current one."""
    if by == "15min":
        end = int(now // 900 * 900) + 900
        return end - 96 * 900, end
    if by == "day":
        end = next_period(floor_period(now, "day", tz), "day", tz)
        return floor_period(now - 30 * 86400, "day", tz), end
    end = next_period(floor_period(now, "month", tz), "month", tz)
    return floor_period(now - 335 * 86400, "month", tz), end


def _selection(sel: str) -> dict[str, str | None]:
    kind, _, name = sel.partition(":")
    out: dict[str, str | None] = {"node": None, "group": None, "cabinet": None}
    if kind in out and name:
        out[kind] = name
    return out


async def energy_page(request: web.Request) -> web.Response:
    """Energy of the town, a cabinet, a group or a lamp by quarter hour, day or month, the
    baseline beside each period, savings (kWh, €, %) and the circuit check per cabinet."""
    _readable(request)
    gw = _gw(request)
    tz = _tz(gw)
    q = request.query
    by = q.get("by", "day") if q.get("by") in BY_WINDOW else "day"
    sel = q.get("sel", "town")
    chosen = _selection(sel)
    now = gw.clock.now()
    start, end = _window(by, now, tz)
    try:
        start = int(parse_iso(q["from"])) if q.get("from") else start
        end = int(parse_iso(q["to"])) if q.get("to") else end
    except ValueError:
        pass
    nodes = await gw.registry.list_nodes()
    cabinets = sorted({n["cabinet"] for n in nodes if n["cabinet"]})
    groups = sorted({n["group"] for n in nodes if n["group"]})
    options = [("town", "The whole town")] + [(f"cabinet:{c}", f"Cabinet {c}") for c in cabinets] \
        + [(f"group:{g}", f"Group {g}") for g in groups] \
        + [(f"node:{n['id']}", f"Lamp {n['id']}") for n in nodes]
    opt = "".join(f'<option value="{h(v)}"{" selected" if v == sel else ""}>{h(lbl)}</option>'
                  for v, lbl in options)
    byopt = "".join(f'<option value="{k}"{" selected" if k == by else ""}>{h(v)}</option>'
                    for k, v in BY_WINDOW.items())
    form = (f'<form method="get" action="/web/energy" class="filters">'
            f'<label for="e-sel">Selection</label><select id="e-sel" name="sel">{opt}</select>'
            f'<label for="e-by">Period</label><select id="e-by" name="by">{byopt}</select>'
            '<button type="submit">Show</button></form>')
    f_iso, t_iso = iso(start), iso(end)
    try:
        res = await gw.energy(start=f_iso, end=t_iso, by=by, **chosen)
        sav = await gw.savings(start=f_iso, end=t_iso, **chosen)
    except (ValueError, LookupError) as exc:
        return _render(request, "Energy", form + f'<p class="error">{h(exc)}</p>', "/web/energy",
                       status=400)
    tariff = gw.config.web.tariff_eur_per_kwh
    # one savings() per period: for a whole town by quarter hour that is 96 passes over every
    # lamp (5 s for 2,134 lamps here, docs/performance.md), so there only the window's baseline
    per_row = len(res["rows"]) <= 31 or len(sav["nodes"]) <= MAX_ROW_BASELINE_LAMPS
    base_rows = (await _baselines(gw, res["rows"], chosen) if per_row
                 else [None] * len(res["rows"]))
    no_rows_note = ("" if per_row else
                    f'<p class="hint">The baseline of each quarter hour is drawn for up to '
                    f"{MAX_ROW_BASELINE_LAMPS} lamps; choose a cabinet or a group to see it. The "
                    "baseline of the whole window is under Savings.</p>")
    fmt = {"15min": "%H:%M", "day": "%d %b", "month": "%b %Y"}[by]
    bars = [(local(r["start"], tz, fmt), r["wh"], b) for r, b in zip(res["rows"], base_rows,
                                                                     strict=True)]
    chart = bar_chart(bars, f"Energy of {res['selection']}, {BY_WINDOW[by]}")
    rows = [(h(local(r["start"], tz, "%Y-%m-%d %H:%M")),
             f'<span{attrs(data_wh=r["wh"])}>{kwh(r["wh"])}</span>',
             f'<span{attrs(data_baseline_wh=b, data_start=iso(r["start"]), data_end=iso(r["end"]))}>'
             f"{kwh(b)}</span>",
             h(r["quality"]), pct(100 * r["coverage"]))
            for r, b in zip(res["rows"], base_rows, strict=True)]
    etab = table(["Period", "Measured", "Baseline", "Quality", "Coverage"], rows,
                 caption=f"Energy by period ({tz})", id="energy-table", data_from=f_iso,
                 data_to=t_iso, data_by=by, data_total_wh=res["total_wh"])
    if len(rows) > 31:  # a phone would scroll past 96 quarter hours to reach the savings
        etab = f"<details><summary>The {len(rows)} periods as a table</summary>{etab}</details>"
    s = sav["site"]
    eur = None if s["saved_wh"] is None else s["saved_wh"] / 1000 * tariff
    savings = (f'<dl class="facts" id="savings"{attrs(data_baseline_wh=s["baseline_wh"], data_actual_wh=s["actual_wh"], data_saved_wh=s["saved_wh"], data_saved_pct=s["saved_pct"])}>'
               f'<dt>Measured</dt><dd>{kwh(s["actual_wh"])}</dd>'
               f'<dt>Baseline ({h(sav["baseline"])})</dt><dd>{kwh(s["baseline_wh"])}</dd>'
               f'<dt>Saved</dt><dd>{kwh(s["saved_wh"])}</dd>'
               f'<dt>Saved (at {tariff:.4g} €/kWh)</dt><dd>{num(eur, "€", 2)}</dd>'
               f'<dt>Saved (%)</dt><dd>{pct(s["saved_pct"])}'
               + (f' <small>({h(s["withheld"])})</small>' if s["withheld"] else "")
               + f'</dd><dt>Night hours covered</dt><dd>{pct(None if s["coverage"] is None else 100 * s["coverage"])}</dd></dl>')
    cab_rows = [(h(c["cabinet"]), kwh(c["actual_wh"]), kwh(c["baseline_wh"]), kwh(c["saved_wh"]),
                 num(None if c["saved_wh"] is None else c["saved_wh"] / 1000 * tariff, "€", 2),
                 pct(c["saved_pct"])) for c in sav["cabinets"]]
    cab_tab = table(["Cabinet", "Measured", "Baseline", "Saved", "Saved €", "Saved %"], cab_rows,
                    caption="Savings by cabinet", id="savings-cabinets") if cab_rows else ""
    circuit = await _circuits(gw, [chosen["cabinet"]] if chosen["cabinet"] else
                              (cabinets if sel == "town" else []), f_iso, t_iso)
    who = "The whole town" if res["selection"] == "site" else res["selection"]
    body = (form + f'<p class="lead">{h(who)}: {kwh(res["total_wh"])} from '
            f'{h(local(start, tz))} to {h(local(end, tz))} ({h(res["quality"])}).</p>'
            + chart + no_rows_note + etab + f"<h2>Savings</h2>{savings}{cab_tab}{circuit}")
    return _render(request, "Energy and savings", body, "/web/energy")


async def _baselines(gw: Any, rows: list[dict[str, Any]], chosen: dict[str, str | None]
                     ) -> list[float | None]:
    """The baseline of each period, from the same savings() as `slgw savings`."""
    out: list[float | None] = []
    for r in rows:
        try:
            s = await gw.savings(start=iso(r["start"]), end=iso(r["end"]), **chosen)
            out.append(s["site"]["baseline_wh"])
        except (ValueError, LookupError):
            out.append(None)
    return out


async def _circuits(gw: Any, cabinets: list[str], f_iso: str, t_iso: str) -> str:
    """The circuit check of each cabinet (`slgw energy --cabinet`): meter against lamps."""
    rows = []
    for cab in cabinets:
        try:
            res = await gw.energy(node=None, group=None, cabinet=cab, start=f_iso, end=t_iso,
                                  by="day")
        except (ValueError, LookupError):
            continue
        c = res.get("circuit")
        if not c:
            continue
        rows.append((h(cab), str(c["nodes"]), kwh(c["nodes_wh"]),
                     f'<span{attrs(data_meter_wh=c["meter_wh"])}>{kwh(c["meter_wh"])}</span>',
                     kwh(c["unaccounted_wh"]), pct(c["unaccounted_pct"]), h(c["quality"])))
    if not rows:
        return ""
    return ("<h2>Circuit check</h2><p>The cabinet meter against the sum of its lamps over the "
            "quarter hours they all reported: the difference is cable losses, metering error or "
            "consumption that is not ours.</p>"
            + table(["Cabinet", "Lamps", "Lamps sum", "Meter", "Unaccounted", "%", "Quality"],
                    rows, id="circuit"))


# --- map ----------------------------------------------------------------------------------
async def map_page(request: web.Request) -> web.Response:
    """The poles drawn from their own coordinates (no tiles), coloured by state."""
    _readable(request)
    gw = _gw(request)
    nodes, _now, _night = await _classified(gw)
    placed = [n for n in nodes if n["lat"] is not None and n["lon"] is not None]
    if not placed:
        return _render(request, "Map", '<p class="empty">No lamp has reported its position.</p>',
                       "/web/map")
    lat0 = sum(n["lat"] for n in placed) / len(placed)
    kx = math.cos(math.radians(lat0))
    xs = [n["lon"] * kx for n in placed]
    ys = [-n["lat"] for n in placed]
    x0, x1, y0, y1 = min(xs), max(xs), min(ys), max(ys)
    span = max(x1 - x0, y1 - y0, 1e-5)
    size, pad = 1000, 80
    r = 26
    # room on the right for the labels, below for poles stacked at one position
    content_w = pad * 2 + (x1 - x0) / span * (size - 2 * pad) + 260
    w = max(content_w, size)  # a line of poles along one meridian is not drawn giant
    shift = (w - content_w) / 2
    hgt = pad * 2 + (y1 - y0) / span * (size - 2 * pad) + 2.6 * r * (len(placed) - len(
        {(round(x, 7), round(y, 7)) for x, y in zip(xs, ys, strict=True)}))
    dots, seen = [], Counter()
    for n, x, y in zip(placed, xs, ys, strict=True):
        cx = shift + pad + (x - x0) / span * (size - 2 * pad)
        cy = pad + (y - y0) / span * (size - 2 * pad)
        k = seen[(round(cx), round(cy))]
        seen[(round(cx), round(cy))] += 1
        if k:  # poles at the same coordinates (a node that reports its cabinet's): stacked
            cy += 2.6 * r * k
        label = f"{n['id']}: {STATE_LABEL[n['state']]}, level {n['level']} %"
        dots.append(f'<a href="/web/lamps/{quote(n["id"], safe="")}" aria-label="{h(label)}">'
                    f'<circle class="s-{n["state"]}" cx="{cx:.1f}" cy="{cy:.1f}" r="{r}">'
                    f'<title>{h(label)}</title></circle>'
                    + (f'<text x="{cx + r + 8:.1f}" y="{cy + 12:.1f}">{h(n["id"])}</text>'
                       if len(placed) <= 60 else "") + "</a>")
    metres = span * 111_320  # a degree of latitude is about 111 km
    legend = "".join(f'<li><span class="dot s-{k}"></span>{h(v)}</li>' for k, v in STATE_LABEL.items())
    body = (f'<figure class="map"><svg viewBox="0 0 {w:.0f} {hgt:.0f}" role="group" '
            f'aria-label="Poles by their coordinates, {len(placed)} lamps">{"".join(dots)}</svg>'
            f'<figcaption>North is up; the drawing is {metres:,.0f} m across at its widest. '
            f'{len(nodes) - len(placed)} lamps without a position are not drawn.</figcaption>'
            f'</figure><ul class="legend">{legend}</ul>')
    return _render(request, "Map", body, "/web/map")


# --- sign-in ------------------------------------------------------------------------------
def _next(value: str | None) -> str:
    """Only a path of this site (no //host, no scheme) may be the target after sign-in."""
    if value and value.startswith("/") and not value.startswith("//") and "\\" not in value:
        return value
    return "/web/"


async def login_form(request: web.Request) -> web.Response:
    nxt = _next(request.query.get("next"))
    error = request.query.get("error")
    gw = _gw(request)
    if not gw.config.api.token:
        return _render(request, "Sign in", "<p>No operator token is set ([api] token), so this "
                       "gateway takes commands from anyone who reaches it: there is nothing to "
                       "sign in to. Set one for a real installation (docs/web.md).</p>",
                       "/web/login")
    body = ((f'<p class="error" role="alert">{h(error)}</p>' if error else "")
            + f"""<form method="post" action="/web/login" class="login">
<input type="hidden" name="next" value="{h(nxt)}">
<label for="token">Token (operator or read-only, from [api] in the gateway's config)</label>
<input id="token" name="token" type="password" autocomplete="current-password" required>
<button type="submit" id="sign-in">Sign in</button></form>
<p>The token is not kept in the browser: a signed session is, for {gw.config.web.session_hours:g} h.</p>""")
    return _render(request, "Sign in", body, "/web/login")


async def login(request: web.Request) -> web.Response:
    gw = _gw(request)
    form = await request.post()
    nxt = _next(str(form.get("next", "")))
    if not auth.same_origin(request):
        raise web.HTTPForbidden(reason="sign-in from another site")
    role = auth.token_role(gw.config.api, str(form.get("token", "")))
    if role is None:
        log.warning("web: a sign-in with a wrong token from %s", request.remote)
        raise web.HTTPSeeOther(f"/web/login?{urlencode({'next': nxt, 'error': 'Wrong token.'})}")
    resp = web.HTTPSeeOther(nxt)
    resp.set_cookie(auth.COOKIE, auth.issue(gw.config.api, role), httponly=True,
                    samesite="Strict", path="/", max_age=int(gw.config.web.session_hours * 3600))
    log.info("web: signed in as %s from %s", role, request.remote)
    raise resp


async def logout(request: web.Request) -> web.Response:
    resp = web.HTTPSeeOther("/web/")
    resp.del_cookie(auth.COOKIE, path="/")
    raise resp


async def root(request: web.Request) -> web.Response:
    raise web.HTTPFound("/web/")


async def static(request: web.Request) -> web.StreamResponse:
    """The view's own files (style sheet, vendored libraries); nothing outside STATIC."""
    name = request.match_info["name"]
    path = (STATIC / name).resolve()
    if not path.is_file() or STATIC.resolve() not in path.parents:
        raise web.HTTPNotFound(reason="no such file")
    return web.FileResponse(path, headers={"Cache-Control": "max-age=3600"})


def routes(app: web.Application) -> None:
    """Add the web view's routes to the API's application."""
    r = app.router
    r.add_get("/", root)
    r.add_get("/web/", tonight)
    r.add_get("/web", root)
    r.add_get("/web/lamps", lamps)
    r.add_get("/web/lamps/{id}", lamp)
    r.add_post("/web/lamps/{id}/{what:level|override|identify}", action)
    r.add_get("/web/energy", energy_page)
    r.add_get("/web/map", map_page)
    r.add_get("/web/login", login_form)
    r.add_post("/web/login", login)
    r.add_post("/web/logout", logout)
    r.add_get("/web/static/{name:[A-Za-z0-9._/-]+}", static)
