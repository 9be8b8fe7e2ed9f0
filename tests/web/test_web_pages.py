"""The web view without a browser: what a lamp should be doing against the independent schedule
reference of the HIL suite, the state rules, and the access rules on the real `slgw serve`
(private pages, a disabled view, forged/expired/foreign sessions, a command from another site)."""

from __future__ import annotations

import random
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from types import SimpleNamespace

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests" / "gateway"))
sys.path.insert(0, str(ROOT))
from slgw_harness import SlgwProcess  # noqa: E402

from gateway.web import auth  # noqa: E402
from gateway.web.expect import classify, wanted_level  # noqa: E402
from hil_tests.schedule_ref import level_at, timeline  # noqa: E402

OP, RO = "operator-t0ken-for-the-web-pages-0123", "read-only-t0ken-for-the-web-pages-456"
# tools/demo.py's programme: full at dusk, 40 % at 22:30, off 00:00-05:00, 40 % until dawn
PROGRAMME = [[1, 0, 100], [0, 1350, 40], [0, 0, 0], [0, 300, 40], [2, 0, 0]]


@pytest.mark.parametrize("steps", [PROGRAMME, [[1, -15, 80], [2, 30, 0]], [[0, 1080, 60],
                                                                          [0, 420, 0]]])
def test_wanted_level_equals_the_independent_schedule_reference(steps):
    """Over a year of random instants (DST days included), at a Lyon lamp."""
    rng = random.Random(14)
    lat, lon, tz = 45.76, 4.83, "Europe/Paris"
    t0 = 1767225600  # 2026-01-01
    for _ in range(300):
        t = t0 + rng.random() * 365 * 86400
        tl = timeline(steps, lat, lon, tz, t - 1, t + 1)
        assert wanted_level(steps, lat, lon, tz, t) == level_at(tl, t), t


def test_a_lamp_without_a_schedule_is_wanted_lit_at_night_only():
    lat, lon = 45.76, 4.83
    assert wanted_level(None, lat, lon, "Europe/Paris", 1768500000, 70) == 70  # 18:00Z, Jan
    assert wanted_level(None, lat, lon, "Europe/Paris", 1768478400, 70) == 0   # 12:00Z


@pytest.mark.parametrize("args,state", [
    ((False, 0, 100, False, 100, 100, True), "offline"),
    ((True, 0, None, False, 100, 100, True), "offline"),
    ((True, 4, 100, False, 100, 100, True), "fault"),
    ((True, 0, 0, False, 100, 100, True), "dark"),
    ((True, 0, 0, False, 100, 0, True), "off"),        # switched on since its last report
    ((True, 0, 40, False, 0, 0, False), "dayburn"),
    ((True, 0, 40, True, 0, 0, False), "dimmed"),      # an operator's override by day
    ((True, 0, 40, False, 40, 40, False), "dimmed"),   # the schedule wants it by day
    ((True, 0, 100, False, 0, 0, True), "on"),         # lit at night against the schedule
    ((True, 0, 0, False, 0, 0, True), "off"),
])
def test_state_rules(args, state):
    assert classify(*args) == state


def test_sessions_are_signed_expire_and_die_with_their_token():
    api = SimpleNamespace(token=OP, read_token=RO)
    req = SimpleNamespace(headers={}, cookies={})
    req.cookies[auth.COOKIE] = auth.issue(api, "operator")
    assert auth.role_of(req, api, 12) == "operator"
    role, issued, mac = req.cookies[auth.COOKIE].split(".")
    req.cookies[auth.COOKIE] = f"operator.{issued}.{auth._mac(RO, 'operator.' + issued)}"
    assert auth.role_of(req, api, 12) is None                # signed with the wrong token
    req.cookies[auth.COOKIE] = f"read.{issued}.{mac}"
    assert auth.role_of(req, api, 12) is None                # role changed, MAC kept
    req.cookies[auth.COOKIE] = auth.issue(api, "operator", now=time.time() - 13 * 3600)
    assert auth.role_of(req, api, 12) is None                # expired
    req.cookies[auth.COOKIE] = auth.issue(api, "read")
    assert auth.role_of(req, api, 12) == "read"
    changed = SimpleNamespace(token=OP, read_token=RO + "x")
    assert auth.role_of(req, changed, 12) is None            # the token was changed
    assert auth.role_of(SimpleNamespace(headers={}, cookies={}), api, 12) is None
    assert auth.role_of(req, SimpleNamespace(token="", read_token=""), 12) == "open"


def _get(url: str, headers: dict | None = None) -> tuple[int, str, str]:
    class NoRedirect(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, *a, **kw):
            return None

    opener = urllib.request.build_opener(NoRedirect)
    try:
        with opener.open(urllib.request.Request(url, headers=headers or {}), timeout=10) as r:
            return r.status, r.read().decode(), r.headers.get("Location", "")
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode(), exc.headers.get("Location", "")


def test_private_pages_foreign_posts_and_a_disabled_view(tmp_path):
    gw = SlgwProcess(tmp_path, "--api-token", OP, "--api-read-token", RO, "--web-public", "false")
    try:
        gw.start()
        code, _, loc = _get(gw.url + "/web/lamps")
        assert code == 303 and loc == "/web/login?next=/web/lamps"
        assert _get(gw.url + "/web/login")[0] == 200
        assert _get(gw.url + "/web/lamps", {"Authorization": f"Bearer {RO}"})[0] == 200
        code, body, _ = _get(gw.url + "/web/lamps", {"Authorization": f"Bearer {OP}"})
        assert code == 200 and "0 of 0 lamps" in body
        # sign-in from another site, and an operator's command from another site: refused
        data = urllib.parse.urlencode({"token": OP}).encode()
        req = urllib.request.Request(gw.url + "/web/login", data=data, method="POST",
                                     headers={"Origin": "http://evil.example"})
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(req, timeout=10)
        assert e.value.code == 403
        cookie = auth.issue(SimpleNamespace(token=OP, read_token=RO), "operator")
        req = urllib.request.Request(gw.url + "/web/lamps/x/level", data=b"level=5", method="POST",
                                     headers={"Origin": "http://evil.example",
                                              "Cookie": f"{auth.COOKIE}={cookie}"})
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(req, timeout=10)
        assert e.value.code == 403
        # the API keeps its own rules beside the view
        assert _get(gw.url + "/api/nodes")[0] == 401
    finally:
        gw.stop()
    off = SlgwProcess(tmp_path, "--web-enabled", "false")
    try:
        off.start()
        assert _get(off.url + "/web/")[0] == 404
        assert _get(off.url + "/")[0] == 404
        assert _get(off.url + "/api/nodes")[0] == 200
    finally:
        off.stop()
