"""slnode CLI: dispatcher, JSON contract, exit codes, lazy sub-commands, esptool progress hook."""

import json

from slnode_support import slnode

from tools.slnode import main as cli


def test_help_lists_every_command():
    r = slnode("--help")
    assert r.returncode == 0
    for cmd in ("build", "provision", "flash", "console", "emulate"):
        assert cmd in r.stdout


def test_usage_error_is_exit_2():
    r = slnode("flash")  # --port missing
    assert r.returncode == 2 and "--port" in r.stderr


def test_json_error_object_and_exit_code(tmp_path):
    r = slnode("--json", "provision", "--config", str(tmp_path / "nope.toml"), "--image", str(tmp_path / "x.bin"))
    out = json.loads(r.stdout)
    assert r.returncode == 2 and out == {
        "ok": False,
        "command": "provision",
        "error": f"config file {tmp_path / 'nope.toml'} not found",
        "exit_code": 2,
    }


def test_a_missing_subcommand_module_fails_cleanly(monkeypatch, capsys):
    monkeypatch.setitem(cli.COMMANDS, "ghost", ("ghost_module_not_written_yet", "a future command"))
    code = cli.main(["ghost", "--anything"])
    assert code == 1
    assert "tools/slnode/ghost_module_not_written_yet.py is missing" in capsys.readouterr().err


def test_esptool_progress_goes_through_our_logger_and_is_restored():
    from esp_pylib.logger import EspLog
    from esptool.logger import log

    from tools.slnode import flash

    before = EspLog.instance
    restore = flash._install_logger(quiet=True)
    try:
        assert EspLog.instance is not before
        with log.progress(total=1000, unit="B") as task:
            for _ in range(10):
                task.update(100)
    finally:
        restore()
    assert EspLog.instance is before


def test_emulate_is_dispatched_to_the_firmware_launcher():
    r = slnode("emulate", "--help")
    assert r.returncode == 0 and "--gateway" in r.stdout and "--count" in r.stdout
