"""Fixtures of the hardware-in-the-loop suite (shared by every scenario file).

Every fixture that starts a process starts it in the test's ``procs`` ProcessGroup, whose
finalizer stops each one by pid (SIGTERM, then SIGKILL), also when the test fails; the
process logs are printed when a test fails (``pytest_runtest_makereport`` below).

Typical scenario::

    def test_x(hil_clock, relay, gateway, nodes, meters):
        clock = hil_clock("2026-12-15T15:00:00Z", speed=600)   # shared simulated clock
        cab = meters(clock, ["C1"], line_loss=0.03)             # optional, before the gateway
        gw = gateway(clock, extra_toml=cab.toml())               # started, API answering
        rl = relay(gw.coap_port)                                 # optional fault relay
        town = nodes(clock, rl.url, [{"group": "g1", "cabinet": "C1", "lat": 48.1, ...}] * 20,
                     per_process=10)                             # started
        cab.feed(town)
        ...
        gw.cli("nodes")            # parsed JSON of `slgw --url URL --json nodes`
        gw.kill(); gw.restart()    # SIGKILL, then the same store and ports
        town.power_cut(nid); town.restart(nid)   # SIGKILL the node's interpreter, boot again
        town.control(nid, clock_jump=3600)       # emulated HAL fault switches
        rl.set(drop=0.1, dup=0.05, reorder=0.05, partition=False); rl.stats()
        cab.unplug("C1")

Fixtures:

- ``procs``: the ProcessGroup of the test (hil_tests/harness.py).
- ``hil_clock(start, speed, anchor=None)``: a SimClock (hil_tests/sim.py). Pass the same
  object to every factory below.
- ``gateway(clock, extra_toml="", args=(), security="oscore")`` -> hil_tests.gateway.Gateway,
  started. OSCORE, the gateway's secure default, unless ``security="none"`` (s8 keeps that: its
  rogue endpoint and forged reports need an unprotected gateway); keys in ``gw.keys_dir``.
- ``relay(target_port, seed=1)`` -> Relay (``listen``, ``control_port``, ``url``
  = ``coap://127.0.0.1:<listen>``, ``set(**faults)``, ``stats()``).
- ``nodes(clock, gateway_url, configs, per_process=10, prefix="lamp", **town_kw)`` ->
  hil_tests.town.Town, started. ``configs`` is a list of node config dicts (keys of
  firmware/config.py: group, cabinet, lat, lon, tz, rated_w, default_level, report_period,
  jitter, lifetime, ...); ids are assigned ``<prefix>-a-000`` ... (10 per interpreter by
  default). ``town_kw``: ack_timeout_ms (500), truth_period (60 sim s), heap, time_valid,
  keys_dir (default: the last OSCORE gateway's ``gw.keys_dir``; every node gets its own key,
  imported there with ``slgw keys import`` before its first boot; ``None`` for nodes without keys).
- ``meters(clock, cabinets, line_loss=0.03, period="0.5s")`` -> hil_tests.meters.CabinetMeters,
  started (its feeder thread starts with ``cab.feed(town)`` and stops at teardown).
- ``start_relay(target_port, seed=1)`` -> (listen, control) ports (the original, kept).
"""

from __future__ import annotations

import sys

import pytest

from hil_tests.gateway import Gateway
from hil_tests.harness import control, read_json_line
from hil_tests.meters import CabinetMeters
from hil_tests.sim import SimClock
from hil_tests.town import Town


@pytest.fixture
def start_relay(procs):
    """Start a fault-injecting relay in front of `target` port; returns (listen, control)."""

    def start(target_port: int, seed: int = 1) -> tuple[int, int]:
        proc = procs.start(f"relay-{target_port}", [sys.executable, "-m", "hil_tests.relay",
                                                    "--target", f"127.0.0.1:{target_port}", "--seed", str(seed)],
                           stdout_pipe=True)
        ports = read_json_line(proc)
        return ports["listen"], ports["control"]

    return start


class Relay:
    """A started relay (hil_tests/relay.py) and its control port."""

    def __init__(self, listen: int, control_port: int) -> None:
        self.listen = listen
        self.control_port = control_port

    @property
    def url(self) -> str:
        return f"coap://127.0.0.1:{self.listen}"

    def set(self, **faults) -> dict:
        """drop/dup/reorder (0..1), delay_ms ([lo, hi]), partition (bool). Returns the counters."""
        answer = control(self.control_port, faults)
        if "error" in answer:
            raise ValueError(answer["error"])
        return answer

    def stats(self) -> dict:
        return control(self.control_port, {})


@pytest.fixture
def relay(start_relay):
    def make(target_port: int, seed: int = 1) -> Relay:
        return Relay(*start_relay(target_port, seed))

    return make


@pytest.fixture
def hil_clock():
    def make(start: str | float, speed: float = 1.0, anchor: float | None = None) -> SimClock:
        return SimClock(start, speed, anchor)

    return make


@pytest.fixture
def hil_gateways() -> list[Gateway]:
    """The gateways this test's ``gateway`` fixture started (``nodes`` takes the last one's keys)."""
    return []


@pytest.fixture
def gateway(procs, tmp_path, hil_gateways):
    def make(clock: SimClock, extra_toml: str = "", args: tuple[str, ...] = (), **kw) -> Gateway:
        n = sum(1 for p in tmp_path.iterdir() if p.name.startswith("gw")) if tmp_path.exists() else 0
        gw = Gateway(procs, tmp_path / f"gw{n}", clock, extra_toml=extra_toml, args=args, **kw)
        hil_gateways.append(gw)
        return gw.start()

    return make


@pytest.fixture
def nodes(procs, tmp_path, hil_gateways):
    def make(clock: SimClock, gateway_url: str, configs: list[dict], per_process: int = 10,
             prefix: str = "lamp", **town_kw) -> Town:
        if "keys_dir" not in town_kw and hil_gateways and hil_gateways[-1].security == "oscore":
            town_kw["keys_dir"] = hil_gateways[-1].keys_dir  # the secure default: keys for every node
        town = Town(procs, tmp_path / f"town-{prefix}", clock, gateway_url, per_process=per_process, **town_kw)
        town.add_nodes(configs, prefix=prefix)
        return town.start()

    return make


@pytest.fixture
def meters(procs, tmp_path):
    made: list[CabinetMeters] = []

    def make(clock: SimClock, cabinets: list[str], line_loss: float = 0.03, period: str = "0.5s",
             **kw) -> CabinetMeters:
        cab = CabinetMeters(procs, tmp_path / f"meters{len(made)}", clock, cabinets, line_loss=line_loss,
                            period=period, **kw)
        made.append(cab)
        return cab.start()

    try:
        yield make
    finally:
        for cab in made:
            cab.stop()
