"""HTML and SVG building blocks of the web view: escaping, the page frame, number and time
formats, and server-side SVG charts (no JavaScript, so a page is complete as it arrives and
works on any phone browser).

Every value that comes from the store or a request goes through ``h()`` before it reaches the
page; builders return ``str`` fragments that are already safe.
"""

from __future__ import annotations

import html
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from zoneinfo import ZoneInfo

NAV = [("/web/", "Tonight"), ("/web/lamps", "Lamps"), ("/web/energy", "Energy"),
       ("/web/map", "Map")]


def h(value: object) -> str:
    """Escape a value for HTML text or a quoted attribute; None becomes an em dash."""
    return "—" if value is None else html.escape(str(value), quote=True)


def attrs(**kw: object) -> str:
    """` name="value"` pairs (escaped); a None value leaves the attribute out, `_` in a name
    becomes `-` (data_wh -> data-wh)."""
    return "".join(f' {k.rstrip("_").replace("_", "-")}="{h(v)}"' for k, v in kw.items()
                   if v is not None)


def page(title: str, body: str, *, active: str, role: str | None, site: str, path: str,
         flash: str = "") -> str:
    """The whole document: header with navigation, the body, and the sign-in state."""
    cur = ' aria-current="page"'
    links = "".join(f'<a href="{href}"{cur if href == active else ""}>{label}</a>'
                    for href, label in NAV)
    if role in ("operator", "read"):
        who = ("operator" if role == "operator" else "read-only")
        account = (f'<form method="post" action="/web/logout" class="inline">'
                   f'<span class="who">Signed in ({who})</span> '
                   f'<button type="submit">Sign out</button></form>')
    elif role == "open":
        account = '<span class="who warn">No operator token set: anyone here can command</span>'
    else:
        account = f'<a href="/web/login?next={h(path)}">Sign in</a>'
    note = f'<p class="flash" role="status">{h(flash)}</p>' if flash else ""
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{h(title)} · {h(site)}</title>
<link rel="stylesheet" href="/web/static/style.css">
</head><body>
<a class="skip" href="#main">Skip to content</a>
<header><div class="brand">{h(site)}</div>
<nav aria-label="Main">{links}</nav><div class="account">{account}</div></header>
<main id="main"><h1>{h(title)}</h1>{note}
{body}
</main>
<footer>Served by this gateway; nothing on this page comes from elsewhere.</footer>
</body></html>"""


# --- formats ------------------------------------------------------------------------------
def parse_iso(text: str | None) -> float | None:
    """Unix seconds of an ISO 8601 time as the API writes them ("...Z"), or None."""
    if not text:
        return None
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def local(t: float | None, tz: str, fmt: str = "%Y-%m-%d %H:%M") -> str:
    """A Unix time in the site's time zone, or an em dash."""
    if t is None:
        return "—"
    return datetime.fromtimestamp(t, ZoneInfo(tz)).strftime(fmt)


def ago(t: float | None, now: float) -> str:
    """How long ago, in words a technician reads at a glance ("3 min ago")."""
    if t is None:
        return "never"
    s = max(0.0, now - t)
    if s < 90:
        return f"{s:.0f} s ago"
    if s < 5400:
        return f"{s / 60:.0f} min ago"
    if s < 172800:
        return f"{s / 3600:.0f} h ago"
    return f"{s / 86400:.0f} days ago"


def kwh(wh: float | None) -> str:
    """Wh shown as kWh with 3 decimals (the unit of the bill)."""
    return "—" if wh is None else f"{wh / 1000:,.3f} kWh"


def num(v: float | None, unit: str = "", digits: int = 1) -> str:
    return "—" if v is None else f"{v:,.{digits}f}{(' ' + unit) if unit else ''}"


def pct(v: float | None) -> str:
    return "—" if v is None else f"{v:.1f} %"


def table(head: Sequence[str], rows: Iterable[Sequence[str]], caption: str = "",
          **kw: object) -> str:
    """A table with already-escaped cells; scrolls sideways on a narrow screen."""
    cap = f"<caption>{h(caption)}</caption>" if caption else ""
    th = "".join(f'<th scope="col">{c}</th>' for c in head)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in r) + "</tr>" for r in rows)
    # focusable and named: a table wider than a phone scrolls, also from the keyboard
    return (f'<div class="scroll" tabindex="0" role="region" aria-label="{h(caption or "table")}">'
            f'<table{attrs(**kw)}>{cap}<thead><tr>{th}</tr></thead>'
            f"<tbody>{body}</tbody></table></div>")


# --- SVG charts ---------------------------------------------------------------------------
def bar_chart(bars: Sequence[tuple[str, float | None, float | None]], label: str,
              unit: str = "kWh", scale: float = 1000.0) -> str:
    """Bars of (label, value, baseline) with the baseline as a hollow bar beside each one.

    Values are in Wh, drawn in `unit` (value / `scale`). Returns an <svg> with a <title> that
    names it for screen readers; the same figures are in the table beside it.
    """
    if not bars:
        return '<p class="empty">No energy recorded in this period.</p>'
    w, hgt, left, bottom = 640, 220, 48, 28
    vmax = max([v or 0 for _, v, _ in bars] + [b or 0 for _, _, b in bars] + [1e-9]) / scale
    n = len(bars)
    slot = (w - left - 8) / n
    parts = []
    for i, (name, v, base) in enumerate(bars):
        x = left + i * slot
        if base is not None:
            bh = (base / scale) / vmax * (hgt - bottom - 10)
            parts.append(f'<rect class="base" x="{x + slot * 0.5:.1f}" y="{hgt - bottom - bh:.1f}" '
                         f'width="{max(slot * 0.42, 0.5):.1f}" height="{bh:.1f}"/>')
        if v is not None:
            vh = (v / scale) / vmax * (hgt - bottom - 10)
            parts.append(f'<rect class="act" x="{x + slot * 0.08:.1f}" y="{hgt - bottom - vh:.1f}" '
                         f'width="{max(slot * 0.42, 0.5):.1f}" height="{vh:.1f}">'
                         f"<title>{h(name)}: {v / scale:.3f} {unit}</title></rect>")
    every = max(1, n // 8)
    ticks = "".join(f'<text x="{left + i * slot + slot / 2:.1f}" y="{hgt - 10}" '
                    f'text-anchor="middle">{h(bars[i][0])}</text>' for i in range(0, n, every))
    axis = (f'<text x="{left - 4}" y="14" text-anchor="end">{vmax:.3g}</text>'
            f'<text x="{left - 4}" y="{hgt - bottom}" text-anchor="end">0</text>'
            f'<line x1="{left}" y1="{hgt - bottom}" x2="{w - 8}" y2="{hgt - bottom}"/>')
    return (f'<figure class="chart"><svg viewBox="0 0 {w} {hgt}" role="img" '
            f'aria-label="{h(label)}"><title>{h(label)}</title>{axis}{"".join(parts)}{ticks}</svg>'
            f'<figcaption><span class="key act"></span> measured ({unit}) '
            f'<span class="key base"></span> baseline</figcaption></figure>')


def line_chart(points: Sequence[tuple[float, float | None]], label: str, unit: str, tz: str,
               ymax: float | None = None, step: bool = True) -> str:
    """A line (a step line for levels) over time; points are (Unix time, value)."""
    pts = [(t, v) for t, v in points if v is not None]
    if len(pts) < 2:
        return f'<p class="empty">Not enough reports yet for a {h(label.lower())} chart.</p>'
    w, hgt, left, bottom = 640, 180, 48, 24
    t0, t1 = pts[0][0], pts[-1][0]
    top = ymax if ymax is not None else max(v for _, v in pts) or 1.0
    span = max(t1 - t0, 1.0)

    def xy(t: float, v: float) -> tuple[float, float]:
        return (left + (t - t0) / span * (w - left - 8),
                hgt - bottom - min(v, top) / top * (hgt - bottom - 10))

    path, prev = [], None
    for t, v in pts:
        x, y = xy(t, v)
        if prev is not None and step:
            path.append(f"L{x:.1f},{prev:.1f}")
        path.append(f"{'M' if not path else 'L'}{x:.1f},{y:.1f}")
        prev = y
    axis = (f'<text x="{left - 4}" y="14" text-anchor="end">{top:.3g} {h(unit)}</text>'
            f'<text x="{left - 4}" y="{hgt - bottom}" text-anchor="end">0</text>'
            f'<line x1="{left}" y1="{hgt - bottom}" x2="{w - 8}" y2="{hgt - bottom}"/>'
            f'<text x="{left}" y="{hgt - 6}">{h(local(t0, tz, "%d %H:%M"))}</text>'
            f'<text x="{w - 8}" y="{hgt - 6}" text-anchor="end">{h(local(t1, tz, "%d %H:%M"))}</text>')
    return (f'<figure class="chart"><svg viewBox="0 0 {w} {hgt}" role="img" aria-label="{h(label)}">'
            f'<title>{h(label)}</title>{axis}<path class="line" d="{" ".join(path)}"/></svg>'
            f"<figcaption>{h(label)}</figcaption></figure>")


def utc_now_iso() -> str:
    return datetime.now(UTC).isoformat()
