"""A node whose meter is a Modbus RTU SDM120: the emulated node's UART is a socat pty and the
far end is the pymodbus-based SDM120 emulator (tools/meters) paced at 9600 baud. The node must
report the meter's own cumulative register, and raise meterFailure (keeping the last energy)
when the meter stops answering."""

import asyncio
import os
import sys

sys.path.insert(0, os.path.dirname(__file__))
from app_support import emulator_spec, free_udp_port, start_emulator, stop_emulator, write_toml  # noqa: E402
from lwm2m_peer import Peer  # noqa: E402

from tools.meters.harness import start_rtu_line  # noqa: E402
from tools.meters.model import write_control  # noqa: E402

FAULT_METER_FAILURE = 0x10


async def test_node_reports_the_sdm120_register_and_meter_failure(tmp_path, procs):
    control = tmp_path / "control.json"
    write_control(control, {"load_w": 55.0, "fault": None})
    line = start_rtu_line(procs, tmp_path, baud=9600, model="sdm120", units="3", load_w=55.0, control=control,
                          extra=["--energy-kwh", "1234.5"])
    port = free_udp_port()
    peer = await Peer.start(port)
    toml = write_toml(tmp_path / "node.toml", report_period=60, jitter=1, lifetime=3600, rated_w=60,
                      meter={"type": "modbus", "unit": 3, "baudrate": 9600})
    spec = emulator_spec(tmp_path / "flash", "lamp-mb", port, config=toml, speed=20, ack_timeout=200)
    spec["nodes"][0]["uart"] = line.bus
    proc = start_emulator(spec, tmp_path / "node.log")
    try:
        await peer.wait_for(lambda: len(peer.reports) >= 3, 30)
        reps = [peer.reports[s] for s in sorted(peer.reports)]
        assert all(1234500 <= r["wh"] <= 1234600 for r in reps), reps
        assert all(not r["faults"] & FAULT_METER_FAILURE for r in reps)
        assert any(abs(r["w"] - 55.0) < 0.3 for r in reps)
        code, w = await peer.read("/3305/0/5800")
        assert abs(w - 55.0) < 0.3
        # the meter stops answering: meterFailure, energy held (nothing invented)
        write_control(control, {"load_w": 55.0, "fault": "unplugged"})
        n = max(peer.reports)
        await peer.wait_for(lambda: any(r["faults"] & FAULT_METER_FAILURE for s, r in peer.reports.items()
                                        if s > n), 40)
        failed = [r for s, r in peer.reports.items() if s > n and r["faults"] & FAULT_METER_FAILURE]
        assert all(r["wh"] >= reps[-1]["wh"] and r["wh"] <= 1234600 for r in failed)
        assert proc.p.poll() is None
        assert stop_emulator(proc) == 0
    finally:
        proc.kill()
        await peer.stop()
    assert asyncio  # keep import used
