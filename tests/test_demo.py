"""`make demo` is the main job: it must bring up the town and stop it cleanly."""

import subprocess
import sys

from tools.procs import ROOT


def test_demo_brings_up_a_town_and_stops_everything(tmp_path):
    state = tmp_path / "demo"
    proc = subprocess.Popen(
        [sys.executable, "-m", "tools.demo", "--free-ports", "--duration", "15", "--nodes", "4",
         "--state-dir", str(state), "--no-view"],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=150)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, out
    assert "all nodes registered; programme pushed" in out
    assert "Cabinet A: 2/2 online" in out and "Cabinet B: 2/2 online" in out
    assert "cabinet-A: ok" in out and "cabinet-B: ok" in out
    assert out.rstrip().endswith("stopped the gateway, the nodes and the meters")
    # nothing the demo started is left running
    left = subprocess.run(["pgrep", "-f", str(state)], capture_output=True, text=True)
    assert left.stdout.strip() == "", left.stdout
