"""The web view in a real browser: Debian's headless `chromium`, driven by Playwright for Python
with `executable_path` (no browser download), against the real `slgw serve` and real firmware
(the MicroPython Unix port, `slnode emulate`) on a simulated clock that crosses dusk.

Checked: the pages render the town's real data; the energy and savings figures equal `slgw
energy` / `slgw savings` JSON for the same window; an operator action reaches a node (the node's
own truth line shows the new level); without a token, and with the read-only token, the
operator controls are absent and both the API and the web refuse the command; no request
leaves 127.0.0.1 (every other request fails the test); keyboard navigation and labels (axe-core,
vendored under tests/web/vendor, WCAG 2 A/AA rules). Screenshots at phone width are kept as
artefacts under the test's tmp dir (and copied to $SLGW_WEB_SCREENSHOTS when set).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "gateway"))
from slgw_harness import BIN, SLGW, SlgwProcess  # noqa: E402

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
AXE = Path(__file__).parent / "vendor" / "axe-core" / "axe.min.js"
OP, RO = "operator-t0ken-for-the-web-test-0123", "read-only-t0ken-for-the-web-test-4567"
START = "2026-01-15T16:05:00Z"  # dusk in Lyon is about 16:18 UTC: the run crosses it
NIGHT_QUARTER_DONE = "2026-01-15T16:47:00Z"  # 16:30-16:45 UTC, wholly after dusk, reported
SPEED = 120.0
PHONE = {"width": 390, "height": 844}
NODES = {"north-000": "K1", "north-001": "K1", "south": "K2"}


def _playwright():
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:  # the dev extra: `make venv`
        pytest.fail("playwright is not installed: pip install -e '.[dev]'")
    if not os.path.exists(CHROMIUM):
        pytest.fail("Debian's chromium is not installed: `make sysdeps` (Makefile SYSPKGS)")
    return sync_playwright


def _start_town(procs, tmp: Path) -> tuple[SlgwProcess, Path, float]:
    anchor = time.time()
    clock = ["--clock-start", START, "--clock-speed", str(SPEED), "--clock-anchor", repr(anchor)]
    cfg = tmp / "gateway.toml"
    cfg.write_text('[site]\nname = "Testville"\nlatitude = 45.76\nlongitude = 4.83\n'
                   'timezone = "Europe/Paris"\n[web]\ntariff_eur_per_kwh = 0.25\n')
    gw = SlgwProcess(tmp, "--config", str(cfg), "--api-token", OP, "--api-read-token", RO,
                     "--commands-timeout-s", "2", *clock)
    gw.start()
    truth = tmp / "truth.jsonl"
    for i, (name, count) in enumerate((("north", 2), ("south", 1))):
        conf = tmp / f"{name}.toml"
        conf.write_text("\n".join([
            f'id = "{name}"', f'gateway = "coap://127.0.0.1:{gw.coap_port}"',
            f"lat = {45.760 + 0.001 * i}", f"lon = {4.830 + 0.0015 * i}", 'tz = "CET-1CEST,M3.5.0,M10.5.0/3"',
            f'group = "{name}"', f'cabinet = "K{i + 1}"', "rated_w = 40.0", "default_level = 100",
            "report_period = 60", "jitter = 0", "", "[meter]", 'type = "emulated"', ""]))
        procs.start(f"nodes-{name}", [
            str(BIN / "slnode"), "emulate", "--id", name, "--count", str(count),
            "--gateway", f"coap://127.0.0.1:{gw.coap_port}", "--flash", str(tmp / f"flash-{name}"),
            "--config", str(conf), "--time-valid", "--truth", str(truth), *clock])
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        nodes = gw.api("GET", "/api/nodes", token=OP)["nodes"]
        if len(nodes) == len(NODES) and all(n["last_report"] and n["fw"] for n in nodes):
            return gw, truth, anchor
        time.sleep(0.3)
    raise AssertionError(f"nodes did not register and report: {nodes}\n{gw.log()[-3000:]}")


def _cli_json(gw: SlgwProcess, *args: str) -> dict:
    out = subprocess.run([SLGW, "--url", gw.url, "--json", *args], capture_output=True, text=True,
                         timeout=60, env=dict(os.environ, SLGW_TOKEN=RO))
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def _post(url: str, data: dict, headers: dict | None = None) -> int:
    req = urllib.request.Request(url, data=urllib.parse.urlencode(data).encode(), method="POST",
                                 headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status
    except urllib.error.HTTPError as exc:
        return exc.code


def _level_in_truth(truth: Path, node: str, level: int, after: float) -> bool:
    for line in truth.read_text().splitlines():
        rec = json.loads(line)
        if rec["id"] == node and rec["t"] >= after and rec["level"] == level:
            return True
    return False


def _axe(page, what: str) -> None:
    page.add_script_tag(path=str(AXE))
    res = page.evaluate("""async () => {
        const r = await axe.run(document, {runOnly: {type: 'tag', values:
            ['wcag2a', 'wcag2aa', 'wcag21a', 'wcag21aa']}, resultTypes: ['violations']});
        return r.violations.map(v => ({id: v.id, impact: v.impact, help: v.help,
            nodes: v.nodes.slice(0, 3).map(n => n.html)}));
    }""")
    assert res == [], f"axe-core found accessibility violations on {what}: {res}"


def test_web_view_in_chromium(procs, tmp_path):
    sync_playwright = _playwright()
    gw, truth, anchor = _start_town(procs, tmp_path)
    shots = tmp_path / "screenshots"
    shots.mkdir()
    base = gw.url
    own = urllib.parse.urlsplit(base).netloc
    outside: list[str] = []
    try:
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM)
            # bypass_csp: the page's Content-Security-Policy would refuse the injected axe-core
            ctx = browser.new_context(viewport=PHONE, bypass_csp=True, service_workers="block")

            def guard(route):  # the route guard: nothing but the gateway itself
                u = urllib.parse.urlsplit(route.request.url)
                if u.scheme in ("http", "https", "ws", "wss") and u.netloc != own:
                    outside.append(route.request.url)
                    return route.abort()
                return route.continue_()

            ctx.route("**/*", guard)
            page = ctx.new_page()
            page.set_default_timeout(15000)

            def shot(name: str) -> None:
                page.screenshot(path=str(shots / f"{name}.png"), full_page=True)

            # --- tonight, anonymous (read-only) -------------------------------------------
            page.goto(base + "/")
            assert page.url == base + "/web/"
            api_nodes = gw.api("GET", "/api/nodes", token=RO)["nodes"]
            lit = sum(1 for n in api_nodes if n["online"] and (n["level"] or 0) > 0)
            assert page.locator(".t-lit").get_attribute("data-count") == str(lit)
            assert "3 lamps" in page.locator(".lead").inner_text()
            shot("tonight")
            _axe(page, "tonight")
            # keyboard: the first Tab reaches the skip link, the next ones the navigation
            page.keyboard.press("Tab")
            assert page.evaluate("document.activeElement.textContent") == "Skip to content"
            for _ in range(2):  # Tonight, then Lamps
                page.keyboard.press("Tab")
            assert page.evaluate("document.activeElement.getAttribute('href')") == "/web/lamps"
            page.keyboard.press("Enter")
            page.wait_for_url(base + "/web/lamps")

            # --- lamps, filtered ------------------------------------------------------------
            for nid in NODES:
                assert page.locator(f'a[href="/web/lamps/{nid}"]').count() == 1
            fws = {n["fw"] for n in api_nodes}
            for fw in fws:
                assert fw in page.locator("main").inner_text()
            shot("lamps")
            _axe(page, "lamps")
            assert not page.locator("#f-cabinet").is_visible()  # folded: lamps first
            page.click("details.filterbox summary")
            page.select_option("#f-cabinet", "K1")
            page.click("form.filters button[type=submit]")
            page.wait_for_url("**/web/lamps?*cabinet=K1*")
            assert page.locator("#count").inner_text().startswith("2 of 3")
            assert page.locator('a[href="/web/lamps/south"]').count() == 0

            # --- a lamp, anonymous: no controls; the web and the API refuse -----------------
            page.goto(base + "/web/lamps/north-000")
            assert page.locator("#controls-absent").count() == 1
            assert page.locator("#controls").count() == 0
            assert page.locator("form[action$='/level']").count() == 0
            assert page.locator("svg[aria-label='Level over 24 hours']").count() == 1
            shot("lamp-anonymous")
            _axe(page, "lamp (anonymous)")
            assert _post(base + "/web/lamps/north-000/level", {"level": 7}) == 401
            api_code = _post(base + "/api/set-level", {})
            assert api_code == 401
            req = urllib.request.Request(base + "/api/set-level", method="POST",
                                         data=b'{"target": "north-000", "level": 7}',
                                         headers={"Authorization": f"Bearer {RO}",
                                                  "Content-Type": "application/json"})
            with pytest.raises(urllib.error.HTTPError) as refused:
                urllib.request.urlopen(req, timeout=10)
            assert refused.value.code == 403

            # --- signed in read-only: still no controls, the web refuses ----------------------
            page.goto(base + "/web/login?next=/web/lamps/north-000")
            page.fill("#token", RO)
            page.click("#sign-in")
            page.wait_for_url(base + "/web/lamps/north-000")
            assert "read-only" in page.locator(".account").inner_text()
            assert page.locator("#controls").count() == 0
            cookie = next(c for c in ctx.cookies() if c["name"] == "slgw_session")
            assert cookie["httpOnly"] and cookie["sameSite"] == "Strict"
            assert RO not in cookie["value"]
            assert _post(base + "/web/lamps/north-000/level", {"level": 7},
                         {"Cookie": f"slgw_session={cookie['value']}"}) == 403
            page.click(".account button")  # sign out
            # a wrong token is refused and says so
            page.goto(base + "/web/login")
            page.fill("#token", "not-the-token")
            page.click("#sign-in")
            assert page.locator("p.error").inner_text() == "Wrong token."

            # --- operator: set a level, it reaches the node ---------------------------------
            page.goto(base + "/web/login?next=/web/lamps/north-000")
            page.fill("#token", OP)
            page.click("#sign-in")
            page.wait_for_url(base + "/web/lamps/north-000")
            assert page.locator("#controls").count() == 1
            t_sent = time.time()
            page.fill("#c-level", "37")
            page.click("#set-level")
            page.wait_for_url("**/web/lamps/north-000?done=*")
            assert "Level 37 %: delivered" in page.locator(".flash").inner_text()
            sim_after = datetime.fromisoformat(START.replace("Z", "+00:00")).timestamp() \
                + (t_sent - anchor) * SPEED
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline and not _level_in_truth(truth, "north-000", 37,
                                                                        sim_after - 1):
                time.sleep(0.3)
            assert _level_in_truth(truth, "north-000", 37, sim_after - 1), \
                "the node's truth line never showed level 37"
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline:
                if gw.api("GET", "/api/nodes/north-000", token=RO)["node"]["level"] == 37:
                    break
                time.sleep(0.3)
            else:
                raise AssertionError("slgw never read level 37 back from north-000")
            page.reload()
            assert page.locator("#level").get_attribute("data-level") == "37"
            # override until a time, and identify
            page.fill("#o-level", "55")
            page.fill("#o-until", "23:30")
            page.click("#override")
            page.wait_for_url("**/web/lamps/north-000?done=*")
            assert "Override 55 % until 23:30: delivered" in page.locator(".flash").inner_text()
            hold = gw.api("GET", "/api/nodes/north-000", token=RO)["node"]["hold"]
            assert hold["kind"] == "override" and hold["level"] == 55
            until = datetime.fromisoformat(hold["until"].replace("Z", "+00:00"))
            want = until.astimezone(ZoneInfo("Europe/Paris")).replace(hour=23, minute=30, second=0,
                                                                      microsecond=0)
            # the hold runs from the command's creation: a moment after the page read the
            # clock, which runs SPEED times faster here
            assert abs((until - want).total_seconds()) <= 3 * SPEED, hold
            page.click("#identify")
            page.wait_for_url("**/web/lamps/north-000?done=*")
            assert "the lamp blinks for 10 s" in page.locator(".flash").inner_text()
            shot("lamp-operator")
            _axe(page, "lamp (operator)")

            # --- energy and savings equal the CLI's -----------------------------------------
            # a whole night quarter hour must be in the data before the nodes stop: wait for the
            # simulated clock to pass NIGHT_QUARTER_DONE (a loaded machine may get here sooner
            # in simulated time than an idle one: seen once as "no period has a baseline")
            t0 = datetime.fromisoformat(START.replace("Z", "+00:00")).timestamp()
            done = datetime.fromisoformat(NIGHT_QUARTER_DONE.replace("Z", "+00:00")).timestamp()
            while t0 + (time.time() - anchor) * SPEED < done:
                time.sleep(0.2)
            # the nodes stop (SIGTERM: a last report, like a lamp switched off at the cabinet) so
            # that no report lands between the page and the CLI reading the same window
            for proc in list(procs.procs):
                if proc.name.startswith("nodes-"):
                    proc.terminate()
            time.sleep(1.5)  # the last reports are stored and aggregated ([store] 0.5 s)
            for sel, args in (("town", []), ("cabinet:K1", ["--cabinet", "K1"]),
                              ("node:south", ["--node", "south"])):
                page.goto(f"{base}/web/energy?sel={sel}&by=15min")
                tab = page.locator("#energy-table")
                f, t = tab.get_attribute("data-from"), tab.get_attribute("data-to")
                cli = _cli_json(gw, "energy", "--from", f, "--to", t, "--by", "15min", *args)
                assert float(tab.get_attribute("data-total-wh")) == cli["total_wh"]
                assert cli["total_wh"] > 0
                page_rows = [float(x) for x in tab.locator("[data-wh]").evaluate_all(
                    "els => els.map(e => e.dataset.wh)")]
                assert page_rows == [r["wh"] for r in cli["rows"]]
                sav = _cli_json(gw, "savings", "--from", f, "--to", t, *args)["site"]
                box = page.locator("#savings")
                for key in ("baseline_wh", "actual_wh", "saved_wh"):
                    assert float(box.get_attribute(f"data-{key.replace('_', '-')}")) == sav[key]
                # the baseline beside each period is `slgw savings` of that period alone
                cells = tab.locator("[data-baseline-wh]").evaluate_all(
                    "els => els.map(e => [e.dataset.start, e.dataset.end, e.dataset.baselineWh])")
                assert len(cells) == len(cli["rows"])
                night = [c for c in cells if float(c[2]) > 0]
                assert night, "the run should have crossed dusk: no period has a baseline"
                for start, end, base_wh in night[-2:]:
                    one = _cli_json(gw, "savings", "--from", start, "--to", end, *args)["site"]
                    assert float(base_wh) == one["baseline_wh"]
                if sel == "cabinet:K1":
                    circuit = _cli_json(gw, "energy", "--from", f, "--to", t, "--cabinet", "K1")
                    assert page.locator("#circuit").count() == 1
                    assert circuit["circuit"]["nodes"] == 2
            page.goto(f"{base}/web/energy?sel=town&by=15min")
            eur = f"{sav_town_eur(gw, page):.2f} €"
            assert eur in page.locator("#savings").inner_text()
            shot("energy")
            _axe(page, "energy")

            # --- the map: one pole per lamp, drawn from its own coordinates ---------------
            page.goto(base + "/web/map")
            assert page.locator("svg circle").count() == len(NODES)
            assert page.locator('svg a[href="/web/lamps/north-000"]').count() == 1
            shot("map")
            _axe(page, "map")
            browser.close()
    finally:
        gw.stop()
        dest = os.environ.get("SLGW_WEB_SCREENSHOTS")
        if dest:
            shutil.copytree(shots, dest, dirs_exist_ok=True)
    assert outside == [], f"requests left the gateway: {outside}"
    assert sorted(p.name for p in shots.iterdir()) == sorted(
        f"{n}.png" for n in ("tonight", "lamps", "lamp-anonymous", "lamp-operator", "energy",
                             "map"))


def sav_town_eur(gw: SlgwProcess, page) -> float:
    """The town's saving in euros at the configured tariff, from the page's own window."""
    tab = page.locator("#energy-table")
    sav = _cli_json(gw, "savings", "--from", tab.get_attribute("data-from"), "--to",
                    tab.get_attribute("data-to"))["site"]
    return sav["saved_wh"] / 1000 * 0.25
