"""The HTTP/JSON API in-process: OpenAPI document valid and complete, token rules, every
endpoint's shape and error codes."""

from __future__ import annotations

import json
import sqlite3
import time

import aiohttp
import pytest
from coap_peers import AiocoapNode, gateway
from openapi_spec_validator import validate

from gateway.api.app import ROUTES, check_bind
from gateway.api.openapi import document
from gateway.config import ConfigError, load_config


def test_openapi_is_valid_and_describes_every_route():
    doc = document()
    validate(doc)  # raises on an invalid OpenAPI 3.0 document
    routed = {(m.lower(), p) for m, p, _h in ROUTES}
    described = {(m, p) for p, ops in doc["paths"].items() for m in ops}
    assert routed == described
    for p, ops in doc["paths"].items():
        for m, op in ops.items():
            assert op["summary"] and "200" in op["responses"], (m, p)


LONG_TOKEN = "Zk9Qa7Wm2Lx4Vb8Nc6Rt1YpE3sG5hJ0uF"


def test_token_required_off_loopback():
    check_bind("127.0.0.1", "")
    check_bind("::1", "")
    for host in ("0.0.0.0", "192.168.1.10", "::"):
        with pytest.raises(ValueError, match="token"):
            check_bind(host, "")
        check_bind(host, LONG_TOKEN)  # off loopback a token must be long (test_api_hardening.py)
    with pytest.raises(ConfigError, match="api.token"):
        load_config(None, {"api.bind": "0.0.0.0"})
    assert load_config(None, {"api.bind": "0.0.0.0", "api.token": LONG_TOKEN}).api.token == LONG_TOKEN


async def call(session, gw, method, path, body=None, token=None, **params):
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with session.request(method, f"http://127.0.0.1:{gw.config.api.port}{path}", json=body,
                               params={k: v for k, v in params.items() if v is not None},
                               headers=headers) as r:
        return r.status, await r.json()


async def test_bearer_token_enforced_when_set(tmp_path):
    async with gateway(tmp_path, api__token="s3cret") as gw, aiohttp.ClientSession() as s:
        status, body = await call(s, gw, "GET", "/api/nodes")
        assert status == 401 and body["error"]["code"] == "unauthorized"
        assert (await call(s, gw, "GET", "/api/nodes", token="wrong"))[0] == 401
        assert (await call(s, gw, "GET", "/api/nodes", token="s3cret"))[0] == 200
        status, doc = await call(s, gw, "GET", "/openapi.json")
        assert status == 200 and doc["openapi"].startswith("3.")


async def test_endpoints(tmp_path):
    async with gateway(tmp_path) as gw, aiohttp.ClientSession() as s:
        node = await AiocoapNode("a1", gw.config.coap.port).start()
        try:
            await node.register()
            assert (await node.describe(group="g1", cabinet="c1")).code.is_successful()
            now = int(time.time())
            # 30 Wh in 45 minutes: a 40 W lamp (15 minutes would be implausible: issue 11)
            r = await node.send([(1, now - 3600, 100, 30.0, 80, 10, 0),
                                 (2, now - 900, 130, 30.0, 80, 910, 0x01)])
            assert r.code.is_successful()

            st, body = await call(s, gw, "GET", "/api/nodes")
            assert st == 200 and [n["id"] for n in body["nodes"]] == ["a1"]
            n = body["nodes"][0]
            assert n["online"] and n["group"] == "g1" and n["faults"] == ["lampFailure"]
            st, body = await call(s, gw, "GET", "/api/nodes", group="other")
            assert st == 404 and "no node matches 'group:other'" in body["error"]["message"]
            st, body = await call(s, gw, "GET", "/api/nodes/a1")
            assert st == 200 and body["node"]["id"] == "a1"
            st, body = await call(s, gw, "GET", "/api/nodes/zz")
            assert st == 404 and body["error"]["code"] == "not_found"

            st, body = await call(s, gw, "GET", "/api/faults")
            assert [f["id"] for f in body["faults"]] == ["a1"]

            st, body = await call(s, gw, "POST", "/api/set-level", {"target": "group:g1", "level": 55})
            assert st == 200 and body["summary"] == {"delivered": 1}
            batch = body["batch"]
            st, body = await call(s, gw, "GET", "/api/commands", batch=batch)
            assert body["commands"][0]["state"] == "delivered" and body["commands"][0]["node"] == "a1"
            st, body = await call(s, gw, "POST", "/api/set-level", {"target": "a1", "level": 101})
            assert st == 400 and "level" in body["error"]["message"]
            st, body = await call(s, gw, "POST", "/api/set-level", {"target": "nobody", "level": 1})
            assert st == 404
            st, body = await call(s, gw, "POST", "/api/override",
                                  {"target": "a1", "level": 0, "seconds": 600})
            assert st == 200 and body["summary"] == {"delivered": 1}
            st, body = await call(s, gw, "POST", "/api/on-off", {"target": "a1", "on": True})
            assert st == 200
            st, body = await call(s, gw, "POST", "/api/set-level", None)
            assert st == 400
            steps = [[1, 0, 100], [0, 1350, 40]]
            st, body = await call(s, gw, "PUT", "/api/schedules/group:g1", {"steps": steps})
            assert st == 200 and body["kind"] == "schedule"
            st, body = await call(s, gw, "GET", "/api/schedules/group:g1")
            assert st == 200 and body["steps"] == steps
            st, body = await call(s, gw, "GET", "/api/schedules/a2")
            assert st == 404
            st, body = await call(s, gw, "GET", "/api/nodes/a1")
            assert body["schedule"]["steps"] == steps and len(body["commands"]) == 4
            writes = [w[0] for w in node.writes if w[0] != "/3/0/13"]
            assert writes == ["/3311/0/5851", "/10250/0/4", "/3311/0/5850", "/10250/0/2"]

            st, body = await call(s, gw, "GET", "/api/energy", node="a1", by="15min")
            assert st == 200 and body["total_wh"] == 30
            st, body = await call(s, gw, "GET", "/api/energy", cabinet="c1")
            assert body["total_wh"] == 30
            st, body = await call(s, gw, "GET", "/api/energy", by="fortnight")
            assert st == 400
            st, body = await call(s, gw, "GET", "/api/energy", node="a1", group="g1")
            assert st == 400
            await _energy_figures(s, gw, now)

            dest = tmp_path / "backups" / "backup.db"  # [store] backup_dir's default
            st, body = await call(s, gw, "POST", "/api/backup", {"path": str(dest)})
            assert st == 200 and body["bytes"] > 0
            con = sqlite3.connect(dest)
            assert con.execute("SELECT COUNT(*) FROM readings").fetchone()[0] == 2
            con.close()
            st, body = await call(s, gw, "POST", "/api/backup", {"path": "/nonexistent/dir/x.db"})
            assert st == 400

            st, body = await call(s, gw, "GET", "/api/meters")
            assert st == 200 and body == {"meters": []}
            st, body = await call(s, gw, "GET", "/api/health")
            assert body["status"] == "ok" and body["coap_stats"]["reports"] == 2
            st, body = await call(s, gw, "GET", "/api/nothing")
            assert st == 404 and json.dumps(body)
        finally:
            await node.stop()


def _conforms(body, name):
    """``body`` matches the schema ``name`` of /openapi.json (raises otherwise)."""
    from openapi_schema_validator import OAS30Validator
    from openapi_schema_validator import validate as validate_schema

    doc = document()
    validate_schema(body, {"$ref": f"#/components/schemas/{name}", "components": doc["components"]},
                    cls=OAS30Validator)


async def _energy_figures(s, gw, now):
    """Issue 16 through the API: unknown selections are 404, windows are answered exactly or
    refused, answers are bounded, savings say their coverage; every answer matches the schema."""
    for sel in ({"node": "zz"}, {"group": "nope"}, {"cabinet": "nope"}, {"cabinet": ""}):
        for path in ("/api/energy", "/api/savings"):
            st, body = await call(s, gw, "GET", path, **sel)
            assert st == 404 and "no node matches" in body["error"]["message"], (path, sel, body)
            _conforms(body, "Error")
    q = now // 900 * 900
    iso = lambda t: time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))  # noqa: E731
    st, body = await call(s, gw, "GET", "/api/energy", node="a1", **{"from": iso(q - 3600),
                                                                     "to": iso(q - 1800)})
    assert st == 200 and (body["start"], body["end"]) == (iso(q - 3600), iso(q - 1800))
    assert body["rows"][0]["clipped"] and body["rows"][0]["end"] == iso(q - 1800)
    _conforms(body, "Energy")
    st, body = await call(s, gw, "GET", "/api/energy", node="a1", **{"from": iso(q - 3600 + 60)})
    assert st == 400 and "15-minute boundary" in body["error"]["message"]
    st, body = await call(s, gw, "GET", "/api/energy", node="a1", by="15min",
                          **{"from": "1990-01-01", "to": "2027-01-01"})
    assert st == 400 and "40,000" in body["error"]["message"] and "--by" in body["error"]["message"]
    st, body = await call(s, gw, "GET", "/api/energy", cabinet="c1")
    assert st == 200 and body["circuit"]["meter_wh"] is None
    _conforms(body, "Energy")
    # 30 minutes of data in the default 30-day window: no percentage
    st, body = await call(s, gw, "GET", "/api/savings")
    assert st == 200 and body["site"]["saved_pct"] is None and body["site"]["coverage"] < 0.01
    assert "min_coverage" in body["site"]["withheld"]
    _conforms(body, "Savings")


async def test_hostile_values_are_refused_with_400_not_500(tmp_path):
    """What an OpenAPI fuzzer found (issue 16): each was a 500 or an answer off the schema."""
    async with gateway(tmp_path) as gw, aiohttp.ClientSession() as s:
        node = await AiocoapNode("h1", gw.config.coap.port).start()
        try:
            await node.register()
            assert (await node.describe(group="g1", cabinet="c1")).code.is_successful()
            big = "-3192273700997010143972087499325440"
            for query in ({"limit": big}, {"limit": str(2 ** 63)}, {"limit": "-1"}):
                st, body = await call(s, gw, "GET", "/api/commands", **query)
                assert st == 400 and "limit" in body["error"]["message"], (query, st, body)
            for raw in ('{"target": "h1", "level": 1e999}', '{"target": "h1", "level": NaN}',
                        '{"target": "h1", "level": 10, "seconds": 1e999}',
                        '{"target": "h1", "level": 10, "seconds": NaN}',
                        '{"target": "h1", "level": 10, "wait": NaN}'):
                for path in ("/api/set-level", "/api/override"):
                    async with s.post(gw.api_url + path, data=raw,
                                      headers={"Content-Type": "application/json"}) as r:
                        body = await r.json()
                        assert r.status == 400, (path, raw, r.status, body)
            steps = '{"steps": [[1, 1e999, 100]]}'
            async with s.put(gw.api_url + "/api/schedules/h1", data=steps,
                             headers={"Content-Type": "application/json"}) as r:
                assert r.status == 400, await r.text()
            st, body = await call(s, gw, "GET", "/api/savings", **{"from": "0001-01-01"})
            assert st == 400 and "from" in body["error"]["message"]
            st, body = await call(s, gw, "POST", "/api/backup", {"path": str(tmp_path / "a\x00b.db")})
            assert st == 400 and "NUL" in body["error"]["message"]
        finally:
            await node.stop()


async def test_nodes_show_the_active_hold_and_when_it_ends(tmp_path):
    """Issue 16: `nodes` and `node show` did not say that a node was held by an override (or a
    manual level, held 24 h) nor until when; the human tables had raw floats."""
    import io

    from gateway.cli import render
    from gateway.timefmt import parse

    async with gateway(tmp_path) as gw, aiohttp.ClientSession() as s:
        node = await AiocoapNode("k1", gw.config.coap.port).start()
        try:
            await node.register()
            st, body = await call(s, gw, "GET", "/api/nodes")
            assert body["nodes"][0]["hold"] is None
            before = time.time()
            st, body = await call(s, gw, "POST", "/api/override",
                                  {"target": "k1", "level": 30, "seconds": 5400})
            assert st == 200 and body["summary"] == {"delivered": 1}
            st, body = await call(s, gw, "GET", "/api/nodes")
            hold = body["nodes"][0]["hold"]
            assert hold["kind"] == "override" and hold["level"] == 30
            assert before + 5400 - 2 <= parse(hold["until"], "until") <= time.time() + 5400
            _conforms(body["nodes"][0], "Node")
            text = io.StringIO()
            render.human("nodes", body, text)
            assert f"30% until {hold['until']} (override)" in text.getvalue()
            st, shown = await call(s, gw, "GET", "/api/nodes/k1")
            assert shown["node"]["hold"] == hold
            text = io.StringIO()
            render.human("node", shown, text)
            assert f"hold           30% until {hold['until']}" in text.getvalue()
            assert "30% for 1h30m" in text.getvalue()  # the command, as `--for` takes it
            # a manual level is held 24 h from its delivery; a cancel ends any hold
            await call(s, gw, "POST", "/api/set-level", {"target": "k1", "level": 55})
            hold = (await call(s, gw, "GET", "/api/nodes/k1"))[1]["node"]["hold"]
            assert hold["kind"] == "level" and hold["level"] == 55
            assert parse(hold["until"], "until") >= before + 86400 - 2
            # SPEC §5.3: a Write to 5851 is an override of 86400 s, so a cancel ends it too
            await call(s, gw, "POST", "/api/override", {"target": "k1", "level": None})
            assert (await call(s, gw, "GET", "/api/nodes/k1"))[1]["node"]["hold"] is None
        finally:
            await node.stop()
