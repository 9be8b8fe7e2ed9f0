"""firmware/resources.py under `micropython`: LwM2M Read/Write/Execute/Observe and SPEC §8 codes.

The MicroPython script tests/firmware/mp_app/resources_cases.py drives the resource tree with
a dict-backed application; here every answer is checked, payloads are decoded with cbor2, and
every refused Write is checked to have left the state unchanged.
"""

import json
import os
import sys

import cbor2

sys.path.insert(0, os.path.dirname(__file__))
from app_support import MP_APP, run_mp  # noqa: E402

EXPECT = {
    "read_level": "2.05",
    "read_level_text": "2.05",
    "read_level_senml": "2.05",
    "read_level_bad_accept": "4.06",
    "read_instance": "2.05",
    "read_object": "2.05",
    "read_instance_cbor": "4.06",
    "read_unknown_res": "4.04",
    "read_unknown_obj": "4.04",
    "read_unknown_inst": "4.04",
    "read_not_numeric": "4.04",
    "read_root": "4.04",
    "read_exec_only": "4.05",
    "write_level_cbor": "2.04",
    "write_level_text": "2.04",
    "write_level_nocf": "2.04",
    "write_level_senml": "2.04",
    "write_level_101": "4.00",
    "write_level_neg": "4.00",
    "write_level_float": "4.00",
    "write_level_str": "4.00",
    "write_level_bool": "4.00",
    "write_level_badcbor": "4.00",
    "write_level_junktext": "4.00",
    "write_level_cf_json": "4.15",
    "write_level_big": "4.13",
    "write_readonly": "4.05",
    "write_exec": "4.05",
    "exec_reboot": "2.04",
    "exec_value": "4.05",
    "delete": "4.05",
    "write_time": "2.04",
    "write_time_low": "4.00",
    "write_lat_bad": "4.00",
    "write_lat": "2.04",
    "write_on_false": "2.04",
    "write_group_long": "4.00",
    "write_group_huge": "4.13",
    "write_sched": "2.04",
    "write_sched_wrapped": "2.04",
    "write_sched_bad_kind": "4.00",
    "write_sched_bad_min": "4.00",
    "write_sched_17": "4.00",
    "write_sched_text": "4.15",
    "write_override": "2.04",
    "write_override_bad": "4.00",
    "write_override_cancel": "2.04",
    "write_default_refused": "4.00",
    "write_instance": "2.04",
    "write_instance_one_bad": "4.00",
    "write_instance_readonly": "4.05",
    "write_instance_cbor": "4.15",
    "write_pack_outside": "4.00",
    "observe_level": "2.05",
    "observe_time": "2.05",
    "observe_cancel": "2.05",
    "observe_again": "2.05",
    "observe_power": "2.05",
    # issue 15 (OMA-TS-LightweightM2M-Core 1.1 §5.4.2 Discover, §5.4.3 Partial Update,
    # §5.4.4 Write-Attributes, §5.1.2 attributes)
    "wattr_before": "2.05",
    "wattr_group": "2.04",
    "wattr_level": "2.04",
    "wattr_instance": "2.04",
    "wattr_payload": "4.00",
    "wattr_unknown": "4.00",
    "wattr_pmax_lt_pmin": "4.00",
    "wattr_gt_on_string": "4.00",
    "wattr_not_number": "4.00",
    "wattr_lt_gt": "4.00",
    "wattr_unknown_path": "4.04",
    "discover_object": "2.05",
    "discover_instance": "2.05",
    "discover_resource": "2.05",
    "discover_unknown": "4.04",
    "partial_update": "2.04",
    "partial_update_bad": "4.00",
    "create_object": "4.05",
    "wattr_clear_pmin": "2.04",
    "discover_after_clear": "2.05",
    "observe_fade": "2.05",
    "observe_fade_pmin": "2.05",
    "ucifi_dimming_level": "2.05",
    "ucifi_command": "2.04",
    "ucifi_command_101": "4.00",
    "ucifi_lamp_failure": "2.05",
    "ucifi_day_burner": "2.05",
    "ucifi_hours": "2.05",
    "ucifi_dimming_readonly": "4.05",
    "ucifi_discover": "2.05",
}


def _run():
    r = run_mp(os.path.join(MP_APP, "resources_cases.py"))
    assert r.returncode == 0, r.stderr
    cases, extra = {}, {}
    prev = None
    for line in r.stdout.splitlines():
        j = json.loads(line)
        if len(j) == 7:
            name, code, cf, payload, obs, state, execs = j
            cases[name] = dict(code=code, cf=cf, payload=bytes.fromhex(payload), obs=obs,
                               state=state, before=prev, execs=execs)
            prev = state
        else:
            extra[j[0]] = j[1:]
    return cases, extra


def test_resource_answers_and_state():
    cases, extra = _run()
    assert set(cases) == set(EXPECT)
    for name, want in EXPECT.items():
        c = cases[name]
        assert c["code"] == want, (name, c["code"], c["payload"])
        if want[0] == "4":
            # every refused request leaves the state as it was, and says why in text/plain
            assert c["state"] == c["before"], name
            assert c["cf"] == 0 and 0 < len(c["payload"]) <= 64, name

    assert cbor2.loads(cases["read_level"]["payload"]) == 80 and cases["read_level"]["cf"] == 60
    assert cases["read_level_text"]["payload"] == b"80" and cases["read_level_text"]["cf"] == 0
    assert cbor2.loads(cases["read_level_senml"]["payload"]) == [{0: "/3311/0/5851", 2: 80}]
    inst = cbor2.loads(cases["read_instance"]["payload"])
    assert cases["read_instance"]["cf"] == 112
    byname = {r[0]: r for r in inst}
    assert byname["/3311/0/5805"][2] == 1234 and byname["/3311/0/5850"][4] is True
    assert sorted(byname) == ["/3311/0/5805", "/3311/0/5820", "/3311/0/5850", "/3311/0/5851", "/3311/0/5852"]
    assert {r[0] for r in cbor2.loads(cases["read_object"]["payload"])} == {"/3305/0/5800", "/3305/0/5805"}

    assert cases["write_level_cbor"]["state"]["level"] == 55
    assert cases["write_level_text"]["state"]["level"] == 60
    assert cases["write_level_nocf"]["state"]["level"] == 61
    assert cases["write_level_senml"]["state"]["level"] == 62
    assert cases["write_time"]["state"]["time"] == 1800000000
    assert cases["write_lat"]["state"]["lat"] == -33.5
    assert cases["write_on_false"]["state"]["on"] is False
    assert cases["write_sched"]["state"]["schedule"] == [[1, 0, 100], [0, 1350, 40], [0, 0, 0], [0, 300, 40], [2, 0, 0]]
    assert cases["write_sched_wrapped"]["state"]["schedule"] == [[0, 60, 30]]
    assert cases["write_override"]["state"]["override"] == [30, 3600]
    assert cases["write_override_cancel"]["state"]["override"] == [None, 0]
    st = cases["write_instance"]["state"]
    assert (st["group"], st["cabinet"], st["default"]) == ("grp2", "cab2", 90)
    # a pack with one bad value applies none of its values
    assert cases["write_instance_one_bad"]["state"]["group"] == "grp2"
    assert cases["exec_reboot"]["execs"] == ["reboot"]
    assert cases["write_level_big"]["payload"].startswith(b"payload too large")


def test_observe_registration_and_notifications():
    cases, extra = _run()
    assert cases["observe_level"]["obs"] is not None  # registered: Observe option in the answer
    assert cases["observe_time"]["obs"] is None  # not observable: a plain read
    assert extra["observers"] == [1]
    assert extra["due_nochange"] == [0]
    n, payload, con, obs = extra["due_change"]
    assert n == 1 and cbor2.loads(bytes.fromhex(payload)) == 20 and con is False and obs > cases["observe_level"]["obs"]
    assert extra["due_refresh"] == [1]  # at least every 300 s
    assert extra["observers_after_cancel"] == [0]


def test_every_tenth_notification_is_con_and_rst_cancels():
    cases, extra = _run()
    cons = extra["con_pattern"][0]
    assert len(cons) == 20
    assert [i for i, c in enumerate(cons) if c] == [9, 19]
    assert extra["observers_after_rst"] == [0]
    assert extra["power_thresholds"] == [0, 1]


def test_write_attributes_never_write_a_value():
    """Core 1.1 §5.4.4: Write-Attributes is a PUT with Uri-Query and no payload; it sets pmin,
    pmax, gt, lt, st and never changes a value (issue 15 item 2: it erased the group label)."""
    cases, _ = _run()
    for name in ("wattr_group", "wattr_level", "wattr_instance", "wattr_clear_pmin"):
        assert cases[name]["state"] == cases[name]["before"], name
    assert cases["wattr_group"]["state"]["group"] == "grp2"
    assert cases["wattr_payload"]["payload"] == b"Write-Attributes takes no payload"


def test_discover_lists_links_with_attributes():
    """Core 1.1 §5.4.2: GET with Accept 40 answers link-format (RFC 6690) of the target and
    what is under it, with the attributes set on each; a Resource shows inherited ones."""
    cases, _ = _run()
    obj = cases["discover_object"]
    assert obj["cf"] == 40
    links = obj["payload"].decode().split(",")
    assert links[0] == "</3311>"
    assert "</3311/0>;pmax=120" in links
    assert "</3311/0/5851>;pmin=2;pmax=30;st=10" in links
    assert "</3311/0/5805>" in links and len(links) == 7  # object, instance, 5 resources
    inst = cases["discover_instance"]["payload"].decode().split(",")
    assert inst[0] == "</10250/0>" and "</10250/0/5>;pmin=5;pmax=60" in inst and len(inst) == 13
    assert "</10250/0/30>" in inst  # the write-only OSCORE key resource (SPEC §10.5)
    # the resource link carries its effective attributes: its own over the instance's
    assert cases["discover_resource"]["payload"] == b"</3311/0/5851>;pmin=2;pmax=30;st=10"
    # "?pmin" without a value removes it: the default (Server object /1/0/2) shows again
    assert cases["discover_after_clear"]["payload"] == b"</3311/0/5851>;pmin=1;pmax=30;st=10"


def test_partial_update_writes_only_named_resources():
    """Core 1.1 §5.4.3: POST on an instance updates the resources in the pack, leaves the
    others; POST on an object would be Create, which the node does not support (4.05)."""
    cases, _ = _run()
    st, before = cases["partial_update"]["state"], cases["partial_update"]["before"]
    assert st["cabinet"] == "cab-pu" and st["group"] == before["group"] == "grp2"
    assert {k: v for k, v in st.items() if k != "cabinet"} == {k: v for k, v in before.items() if k != "cabinet"}


def test_observe_honours_pmin_pmax_and_thresholds():
    """Core 1.1 §5.1.2: no notification sooner than pmin, one at pmax without change, st and
    gt/lt filter changes (issue 15 item 9: a fade sent one notification per 1 % step)."""
    _, extra = _run()
    n_default, n_pmin = extra["fade"]
    assert 5 <= n_default <= 11  # default pmin 1 s: about one per second of a 10 s fade
    assert 1 <= n_pmin <= 2  # pmin 5 s
    assert extra["pmax"] == [0, 1]
    assert extra["thresholds"] == [0, 1, 0, 1]


def test_ucifi_outdoor_lamp_controller_3416():
    """uCIFI object 3416 (OMA registry, object version 2.0): resource 1 Command (RW 0..100),
    3 Dimming level (R), 5 Lamp failure, 10 Day burner (R bool), 15 Lamp operating hours (R, h)
    answer from the same state as 3311 and 10250 (SPEC §12)."""
    cases, _ = _run()
    assert cases["ucifi_dimming_level"]["payload"] == str(cases["ucifi_dimming_level"]["state"]["level"]).encode()
    assert cases["ucifi_command"]["state"]["command"] == 55
    assert cases["ucifi_lamp_failure"]["payload"] == b"1" and cases["ucifi_day_burner"]["payload"] == b"0"
    assert cases["ucifi_hours"]["payload"] == b"1.5"
    links = cases["ucifi_discover"]["payload"].decode().split(",")
    assert links[:2] == ["</3416>", "</3416/0>"] and len(links) == 9
