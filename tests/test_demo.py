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
    first = out.splitlines()[0]  # issue 14: the page's address before anything else
    assert first.startswith("web view: http://127.0.0.1:") and "/web/" in first, out[:300]
    assert "Cabinet A: 2/2 online" in out and "Cabinet B: 2/2 online" in out
    assert "cabinet-A: ok" in out and "cabinet-B: ok" in out
    assert out.rstrip().endswith("stopped the gateway, the nodes and the meters")
    # nothing the demo started is left running
    left = subprocess.run(["pgrep", "-f", str(state)], capture_output=True, text=True)
    assert left.stdout.strip() == "", left.stdout


def test_demo_names_a_taken_port_at_once_and_how_to_choose_others(tmp_path):
    """It used to wait 30 s and say `(last: None)`; now it checks both ports before starting
    anything and exits 2 naming the taken one and the make variables that choose others."""
    import socket

    from tools.procs import free_port

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        api_port = busy.getsockname()[1]
        state = tmp_path / "demo"
        r = subprocess.run(
            [sys.executable, "-m", "tools.demo", "--api-port", str(api_port), "--coap-port",
             str(free_port()), "--duration", "5", "--nodes", "2", "--state-dir", str(state),
             "--no-view"], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert r.returncode == 2, r.stdout + r.stderr
    assert f"TCP port {api_port} (the gateway API)" in r.stderr
    assert "make demo API_PORT=" in r.stderr and "--url http://127.0.0.1:" in r.stderr
    assert "last: None" not in r.stderr and not state.exists()  # nothing was started


def test_make_demo_passes_the_port_variables_on():
    """README: `make demo API_PORT=8081 COAP_PORT=5684` (or FREE_PORTS=1) chooses other ports."""
    r = subprocess.run(["make", "-n", "demo", "API_PORT=8081", "COAP_PORT=5684", "FREE_PORTS=1"],
                       cwd=ROOT, capture_output=True, text=True, timeout=30)
    line = " ".join(r.stdout.replace("\\\n", " ").split())
    assert r.returncode == 0, r.stderr
    assert "-m tools.demo --api-port 8081 --coap-port 5684 --free-ports" in line, r.stdout
