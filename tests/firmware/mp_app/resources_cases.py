"""MicroPython: drive firmware.resources.Resources with a dict-backed application.

Prints one JSON line per case: [name, code "x.yy", content-format, payload hex, state-snapshot].
"""

import json

from firmware.resources import Resources
from protocol import cbor, coap, senml


class App:
    def __init__(self):
        self.s = {
            "srv_id": 1, "lifetime": 300, "binding": "U", "mfr": "streetlight-edge", "model": "emu",
            "serial": "n1", "fw": "0.1", "err": 0, "time": 1700000000, "tz": "UTC0", "lat": 45.0,
            "lon": 4.0, "on": True, "level": 80, "on_time": 3600, "wh": 1234, "pf": 0.95, "w": 40.25,
            "seq": 7, "faults": 0, "schedule": [], "default": 100, "override": [None, 0],
            "group": "g", "cabinet": "c", "rated": 50.0, "time_valid": True, "override_left": 0,
            "command": 80,
        }
        self.execs = []
        self.t = 0

    def res_get(self, name):
        return self.s[name]

    def res_set(self, name, v):
        if name == "default" and v == 42:
            return "refused by app"
        self.s[name] = v

    def res_exec(self, name):
        self.execs.append(name)

    def now(self):
        return self.t


app = App()
res = Resources(app)
mid = [0]


def run(name, code, path, payload=b"", cf=None, accept=None, observe=None, mtype=coap.CON, peer=b"p"):
    mid[0] += 1
    req = coap.Message(mtype, code, mid[0], b"\x01\x02", None, payload)
    req.set_path(path)
    if cf is not None:
        req.add_option(coap.CONTENT_FORMAT, cf)
    if accept is not None:
        req.add_option(coap.ACCEPT, accept)
    if observe is not None:
        req.add_option(coap.OBSERVE, observe)
    resp = coap.response_for(req, coap.CONTENT)
    res.handle(req, resp, peer)
    coap.encode(resp)  # the response must always encode
    print(json.dumps([name, resp.code_str(), resp.content_format(), resp.payload.hex(),
                      resp.observe(), dict(app.s), app.execs]))


T = 0
C = 60
S = 112
run("read_level", coap.GET, "/3311/0/5851")
run("read_level_text", coap.GET, "/3311/0/5851", accept=T)
run("read_level_senml", coap.GET, "/3311/0/5851", accept=S)
run("read_level_bad_accept", coap.GET, "/3311/0/5851", accept=50)
run("read_instance", coap.GET, "/3311/0")
run("read_object", coap.GET, "/3305")
run("read_instance_cbor", coap.GET, "/3311/0", accept=C)
run("read_unknown_res", coap.GET, "/3311/0/9999")
run("read_unknown_obj", coap.GET, "/4242/0/1")
run("read_unknown_inst", coap.GET, "/3311/1/5851")
run("read_not_numeric", coap.GET, "/rd")
run("read_root", coap.GET, "/")
run("read_exec_only", coap.GET, "/3/0/4")
run("write_level_cbor", coap.PUT, "/3311/0/5851", cbor.dumps(55), cf=C)
run("write_level_text", coap.PUT, "/3311/0/5851", b"60", cf=T)
run("write_level_nocf", coap.PUT, "/3311/0/5851", b"61")
run("write_level_senml", coap.PUT, "/3311/0/5851", senml.encode([{0: "/3311/0/5851", 2: 62}]), cf=S)
run("write_level_101", coap.PUT, "/3311/0/5851", cbor.dumps(101), cf=C)
run("write_level_neg", coap.PUT, "/3311/0/5851", b"-1", cf=T)
run("write_level_float", coap.PUT, "/3311/0/5851", cbor.dumps(50.5), cf=C)
run("write_level_str", coap.PUT, "/3311/0/5851", cbor.dumps("50"), cf=C)
run("write_level_bool", coap.PUT, "/3311/0/5851", cbor.dumps(True), cf=C)
run("write_level_badcbor", coap.PUT, "/3311/0/5851", b"\x1c", cf=C)
run("write_level_junktext", coap.PUT, "/3311/0/5851", b"ab", cf=T)
run("write_level_cf_json", coap.PUT, "/3311/0/5851", b"50", cf=50)
run("write_level_big", coap.PUT, "/3311/0/5851", b"1" * 200, cf=T)
run("write_readonly", coap.PUT, "/3311/0/5805", cbor.dumps(0), cf=C)
run("write_exec", coap.PUT, "/3/0/4", b"", cf=C)
run("exec_reboot", coap.POST, "/3/0/4")
run("exec_value", coap.POST, "/3311/0/5851")
run("delete", coap.DELETE, "/3311/0/5851")
run("write_time", coap.PUT, "/3/0/13", cbor.dumps(1800000000), cf=C)
run("write_time_low", coap.PUT, "/3/0/13", cbor.dumps(100), cf=C)
run("write_lat_bad", coap.PUT, "/6/0/0", cbor.dumps(91.0), cf=C)
run("write_lat", coap.PUT, "/6/0/0", cbor.dumps(-33.5), cf=C)
run("write_on_false", coap.PUT, "/3311/0/5850", b"0", cf=T)
run("write_group_long", coap.PUT, "/10250/0/5", cbor.dumps("x" * 33), cf=C)
run("write_group_huge", coap.PUT, "/10250/0/5", cbor.dumps("x" * 400), cf=C)
run("write_sched", coap.PUT, "/10250/0/2", cbor.dumps([[1, 0, 100], [0, 1350, 40], [0, 0, 0], [0, 300, 40], [2, 0, 0]]), cf=C)
run("write_sched_wrapped", coap.PUT, "/10250/0/2", cbor.dumps(cbor.dumps([[0, 60, 30]])), cf=C)
run("write_sched_bad_kind", coap.PUT, "/10250/0/2", cbor.dumps([[3, 0, 100]]), cf=C)
run("write_sched_bad_min", coap.PUT, "/10250/0/2", cbor.dumps([[0, 1440, 100]]), cf=C)
run("write_sched_17", coap.PUT, "/10250/0/2", cbor.dumps([[0, 1, 1]] * 17), cf=C)
run("write_sched_text", coap.PUT, "/10250/0/2", b"[]", cf=T)
run("write_override", coap.PUT, "/10250/0/4", cbor.dumps([30, 3600]), cf=C)
run("write_override_bad", coap.PUT, "/10250/0/4", cbor.dumps([30, 0]), cf=C)
run("write_override_cancel", coap.PUT, "/10250/0/4", cbor.dumps([None, 0]), cf=C)
run("write_default_refused", coap.PUT, "/10250/0/3", cbor.dumps(42), cf=C)
pack = senml.encode([{-2: "/10250/0/", 0: "5", 3: "grp2"}, {0: "6", 3: "cab2"}, {0: "3", 2: 90}])
run("write_instance", coap.PUT, "/10250/0", pack, cf=S)
bad = senml.encode([{-2: "/10250/0/", 0: "5", 3: "grp3"}, {0: "3", 2: 190}])
run("write_instance_one_bad", coap.PUT, "/10250/0", bad, cf=S)
ro = senml.encode([{-2: "/10250/0/", 0: "5", 3: "grp4"}, {0: "0", 2: 1}])
run("write_instance_readonly", coap.PUT, "/10250/0", ro, cf=S)
run("write_instance_cbor", coap.PUT, "/10250/0", cbor.dumps(1), cf=C)
run("write_pack_outside", coap.PUT, "/3311/0/5851", senml.encode([{0: "/3311/0/5852", 2: 1}]), cf=S)
run("observe_level", coap.GET, "/3311/0/5851", observe=0)
run("observe_time", coap.GET, "/3/0/13", observe=0)
print(json.dumps(["observers", len(res.observers)]))
app.t = 10
print(json.dumps(["due_nochange", len(res.due_notifications(10))]))
app.s["level"] = 20
d = res.due_notifications(11)
print(json.dumps(["due_change", len(d), d[0][1].payload.hex(), d[0][2], d[0][1].observe()]))
app.t = 400
print(json.dumps(["due_refresh", len(res.due_notifications(400))]))
run("observe_cancel", coap.GET, "/3311/0/5851", observe=1)
print(json.dumps(["observers_after_cancel", len(res.observers)]))
# every tenth notification is CON (SPEC §5.4); an RST to a NON notification cancels
run("observe_again", coap.GET, "/3311/0/5851", observe=0)
cons = []
for i in range(20):
    app.s["level"] = 30 + i
    for ob, _msg, con in res.due_notifications(500 + i):
        cons.append(con)
        ob[7] = 1000 + i
print(json.dumps(["con_pattern", cons]))
res.on_reset(b"p", 1019)
print(json.dumps(["observers_after_rst", len(res.observers)]))
app.s["w"] = 40.25
app.t = 690
run("observe_power", coap.GET, "/3305/0/5800", observe=0)
app.s["w"] = 40.9  # < 5 % and < 1 W: no notification
small = len(res.due_notifications(700))
app.s["w"] = 44.0  # > 5 %
big = len(res.due_notifications(701))
print(json.dumps(["power_thresholds", small, big]))

# --- issue 15: Write-Attributes, Discover, Partial Update, pmin/pmax/gt/lt/st -------------------
def run_q(name, code, path, query, payload=b"", cf=None, accept=None):
    mid[0] += 1
    req = coap.Message(coap.CON, code, mid[0], b"\x03\x04", None, payload)
    req.set_path(path)
    for q in query:
        req.add_option(coap.URI_QUERY, q)
    if cf is not None:
        req.add_option(coap.CONTENT_FORMAT, cf)
    if accept is not None:
        req.add_option(coap.ACCEPT, accept)
    resp = coap.response_for(req, coap.CONTENT)
    res.handle(req, resp, b"p")
    coap.encode(resp)
    print(json.dumps([name, resp.code_str(), resp.content_format(), resp.payload.hex(),
                      resp.observe(), dict(app.s), app.execs]))


res.observers = []
run_q("wattr_before", coap.GET, "/10250/0/5", [])
run_q("wattr_group", coap.PUT, "/10250/0/5", ["pmin=5", "pmax=60"])
run_q("wattr_level", coap.PUT, "/3311/0/5851", ["pmin=2", "pmax=30", "st=10"])
run_q("wattr_instance", coap.PUT, "/3311/0", ["pmax=120"])
run_q("wattr_payload", coap.PUT, "/3311/0/5851", ["pmin=5"], b"55", cf=T)
run_q("wattr_unknown", coap.PUT, "/3311/0/5851", ["foo=1"])
run_q("wattr_pmax_lt_pmin", coap.PUT, "/3311/0/5851", ["pmin=50", "pmax=10"])
run_q("wattr_gt_on_string", coap.PUT, "/10250/0/5", ["gt=3"])
run_q("wattr_not_number", coap.PUT, "/3311/0/5851", ["pmin=abc"])
run_q("wattr_lt_gt", coap.PUT, "/3311/0/5851", ["lt=50", "gt=40"])
run_q("wattr_unknown_path", coap.PUT, "/3311/0/9999", ["pmin=1"])
run_q("discover_object", coap.GET, "/3311", [], accept=40)
run_q("discover_instance", coap.GET, "/10250/0", [], accept=40)
run_q("discover_resource", coap.GET, "/3311/0/5851", [], accept=40)
run_q("discover_unknown", coap.GET, "/4242", [], accept=40)
pu = senml.encode([{-2: "/10250/0/", 0: "6", 3: "cab-pu"}])
run_q("partial_update", coap.POST, "/10250/0", [], pu, cf=S)
run_q("partial_update_bad", coap.POST, "/10250/0", [], senml.encode([{-2: "/10250/0/", 0: "6", 3: "x" * 40}]), cf=S)
run_q("create_object", coap.POST, "/10250", [], pu, cf=S)
run_q("wattr_clear_pmin", coap.PUT, "/3311/0/5851", ["pmin"])
run_q("discover_after_clear", coap.GET, "/3311/0/5851", [], accept=40)

# Observe under attributes: a fade (one 1 % step every 50 ms for 10 s)
res.attrs = {}
app.t = 1000
app.s["level"] = 0
run("observe_fade", coap.GET, "/3311/0/5851", observe=0, peer=b"f")
n_default = 0
for i in range(200):
    app.s["level"] = i // 2
    n_default += len(res.due_notifications(1000 + i * 0.05))
res.cancel(b"f", b"\x01\x02")
res.attrs[(3311, 0, 5851)] = {"pmin": 5}
app.t = 2000
run("observe_fade_pmin", coap.GET, "/3311/0/5851", observe=0, peer=b"f")
n_pmin = 0
for i in range(200):
    app.s["level"] = 100 - i // 2
    n_pmin += len(res.due_notifications(2000 + i * 0.05))
print(json.dumps(["fade", n_default, n_pmin]))
# pmax: no change, a notification at pmax and not before
res.attrs[(3311, 0, 5851)] = {"pmax": 20}
res.observers[0][5] = 3000
res.observers[0][4] = app.s["level"]  # the last notified value is the current one
print(json.dumps(["pmax", len(res.due_notifications(3019)), len(res.due_notifications(3020))]))
# st: steps smaller than st do not notify; gt: a crossing does
res.attrs[(3311, 0, 5851)] = {"st": 10, "pmax": 0}
base = res.observers[0][4]
app.s["level"] = base + 5
small = len(res.due_notifications(3100))
app.s["level"] = base + 10
big = len(res.due_notifications(3101))
res.attrs[(3311, 0, 5851)] = {"gt": 60, "pmax": 0}
app.s["level"] = 58
below = len(res.due_notifications(3102))
app.s["level"] = 62
cross = len(res.due_notifications(3103))
print(json.dumps(["thresholds", small, big, below, cross]))

# uCIFI Outdoor lamp controller 3416 (SPEC §12)
res.observers = []
app.s["faults"] = 0x01
app.s["on_time"] = 5400
run("ucifi_dimming_level", coap.GET, "/3416/0/3", accept=T)
run("ucifi_command", coap.PUT, "/3416/0/1", b"55", cf=T)
run("ucifi_command_101", coap.PUT, "/3416/0/1", b"101", cf=T)
run("ucifi_lamp_failure", coap.GET, "/3416/0/5", accept=T)
run("ucifi_day_burner", coap.GET, "/3416/0/10", accept=T)
run("ucifi_hours", coap.GET, "/3416/0/15", accept=T)
run("ucifi_dimming_readonly", coap.PUT, "/3416/0/3", b"10", cf=T)
run_q("ucifi_discover", coap.GET, "/3416", [], accept=40)
