"""Emulated SDM630 cabinet meters whose energy follows their cabinet's lamps.

    cab = CabinetMeters(procs, workdir, clock, ["C1", "C2"], line_loss=0.03).start()
    gw = Gateway(..., extra_toml=cab.toml())      # one [[modbus.meters]] per cabinet
    town = Town(...).start()
    cab.feed(town)                 # feeder thread: load of cabinet X = (1 + loss) * sum(lamp W)
    cab.unplug("C1")               # the meter stops answering (tools.meters fault "unplugged")
    cab.energy_wh()                # {cabinet: the emulated meter's own import register, Wh}

One ``python -m tools.meters --model sdm630 --units 1-N`` process on one TCP port; cabinet k
(in the given order) is unit k, named ``<cabinet>-main`` in the gateway. The meter integrates
its load at the clock's speed (simulated seconds per real second), so it shares the HIL clock.

Feeder: a thread in the test process reads the nodes' truth files every ``interval`` real
seconds and writes each unit's ``load_w`` to the meters' control file: ``(1 + line_loss)``
times the sum of the latest true power of the cabinet's lamps (0 W for a node whose
interpreter is cut). Its error against the exact sum is bounded by how late it sees a power
change: a truth line comes every ``truth_period`` simulated seconds, so each change costs at
most ``|dP| * (1 + loss) * (truth_period + interval * speed) / 3600`` Wh
(``feeder_error_wh``). The scenarios keep power changes few and state that bound.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

from hil_tests.harness import Proc, ProcessGroup
from hil_tests.sim import SimClock
from tools.meters.harness import start_tcp_meter
from tools.meters.model import load_state, write_control


class CabinetMeters:
    """One emulated SDM630 per cabinet, fed from the lamps' truth."""

    def __init__(self, procs: ProcessGroup, workdir: Path, clock: SimClock, cabinets: list[str], *,
                 line_loss: float = 0.03, period: str = "0.5s", interval: float = 0.1) -> None:
        self.procs = procs
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.clock = clock
        self.cabinets = list(cabinets)
        self.unit = {c: i + 1 for i, c in enumerate(self.cabinets)}
        self.line_loss = line_loss
        self.period = period
        self.interval = interval
        self.control_path = self.workdir / "meters-control.json"
        self.state_path = self.workdir / "meters-state.json"
        self.proc: Proc | None = None
        self.port = 0
        self.faults: dict[str, str | None] = {c: None for c in self.cabinets}
        self.loads: dict[str, float] = {c: 0.0 for c in self.cabinets}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.feeder_errors: list[BaseException] = []

    def name(self, cabinet: str) -> str:
        """The meter's name in the gateway (``slgw meters``; source ``meter:<name>``)."""
        return f"{cabinet}-main"

    def start(self) -> CabinetMeters:
        self._write()
        self.proc, self.port = start_tcp_meter(
            self.procs, "meters", model="sdm630", units=f"1-{len(self.cabinets)}", load_w=0.0,
            control=self.control_path, state=self.state_path, speed=self.clock.speed)
        return self

    def toml(self) -> str:
        """The gateway's ``[[modbus.meters]]`` entries for these meters."""
        out = []
        for c in self.cabinets:
            out.append(f'[[modbus.meters]]\nname = "{self.name(c)}"\nprofile = "eastron-sdm630"\n'
                       f'transport = "tcp"\nhost = "127.0.0.1"\nport = {self.port}\nunit = {self.unit[c]}\n'
                       f'cabinet = "{c}"\nperiod = "{self.period}"\ntimeout = "0.5s"\nbackoff_max = "2s"\n')
        return "\n".join(out)

    def _write(self) -> None:
        units = {}
        for c in self.cabinets:
            u: dict = {"load_w": round(self.loads[c], 4)}
            u["fault"] = self.faults[c]
            units[str(self.unit[c])] = u
        write_control(self.control_path, {"units": units})

    def feed(self, town) -> None:
        """Start the feeder thread (stopped by ``stop()``, which the fixture calls)."""
        cab_of = {nid: cfg.get("cabinet", "") for nid, cfg in town.configs.items()}

        def run() -> None:
            while not self._stop.is_set():
                try:
                    power = town.latest_power()
                    loads = {c: 0.0 for c in self.cabinets}
                    for nid, w in power.items():
                        if cab_of.get(nid) in loads:
                            loads[cab_of[nid]] += w
                    loads = {c: w * (1.0 + self.line_loss) for c, w in loads.items()}
                    if loads != self.loads:
                        self.loads = loads
                        self._write()
                except Exception as exc:  # noqa: BLE001 - reported by the test via feeder_errors
                    self.feeder_errors.append(exc)
                self._stop.wait(self.interval)

        self._thread = threading.Thread(target=run, name="meter-feeder", daemon=True)
        self._thread.start()

    def unplug(self, cabinet: str, unplugged: bool = True) -> None:
        """The cabinet meter stops answering on the bus (and keeps counting)."""
        self.faults[cabinet] = "unplugged" if unplugged else None
        self._write()

    def energy_wh(self) -> dict[str, float]:
        """Each cabinet meter's own import register (the emulator's state file), in Wh."""
        state = load_state(self.state_path)
        return {c: state.get(self.unit[c], 0.0) * 1000.0 for c in self.cabinets}

    def feeder_error_wh(self, delta_w: float, truth_period: float) -> float:
        """Bound on the meter's error for one power change of ``delta_w`` (module docstring)."""
        return abs(delta_w) * (1.0 + self.line_loss) * (truth_period + self.interval * self.clock.speed + 1) / 3600

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)


def wait_until(pred, timeout: float, interval: float = 0.25):
    """Tiny poll helper (returns the truthy value)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = pred()
        if v:
            return v
        time.sleep(interval)
    return None
