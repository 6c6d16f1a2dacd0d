"""``gated selftest``: a table of what works, non-zero when a configured device does not."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from drivers.common.base import Prompter
from gated.cli.main import main
from gated.cli.selftest import run_selftest
from tests.support.fake_aplay import FAKE_APLAY
from tests.support.rig import make_config

SIM = """
[gate]
id = "g1"
site = "s1"
[storage]
path = "{tmp}/gated.db"
[card]
driver = "sim"
[turnstile]
driver = "sim"
"""


def selftest(config: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gated.cli", "selftest", "-c", str(config), "--wait", "0.5"],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_simulated_devices_are_reported_and_pass(tmp_path: Path) -> None:
    config = tmp_path / "gated.toml"
    config.write_text(SIM.format(tmp=tmp_path))
    result = selftest(config)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["device", "driver", "result", "detail"]
    assert any(line.split()[:3] == ["card", "sim", "ok"] for line in lines)
    assert any(line.split()[:3] == ["turnstile", "sim", "ok"] for line in lines)


def rows(out: str) -> dict[str, tuple[str, str, str]]:
    """The table's rows by device: (driver, result, detail)."""
    table = {}
    for line in out.splitlines()[1:]:
        device, driver, result, detail = line.split(maxsplit=3)
        table[device] = (driver, result, detail)
    return table


def test_a_card_reader_on_a_port_that_does_not_exist_fails(tmp_path: Path) -> None:
    port = tmp_path / "ttyNOWHERE"
    config = tmp_path / "gated.toml"
    config.write_text(
        SIM.format(tmp=tmp_path).replace(
            '[card]\ndriver = "sim"', f'[card]\ndriver = "rdm6300"\nport = "{port}"'
        )
    )
    result = selftest(config)
    assert result.returncode == 1, result.stdout + result.stderr
    table = rows(result.stdout)
    assert table["card"][:2] == ("rdm6300", "FAILED")
    assert str(port) in table["card"][2]
    assert table["turnstile"] == ("sim", "ok", "simulated")


GPIO = """
[gate]
id = "g1"
site = "s1"
[storage]
path = "{tmp}/gated.db"
[hardware]
pin_factory = "mock"
[card]
driver = "sim"
[turnstile]
driver = "gpio"
relay_pin = 17
[prompter]
driver = "gpio"
pir_pin = 4
audio = "none"
"""


def test_a_gpio_turnstile_has_its_relay_pulsed_and_a_prompter_without_audio_says_so(
    tmp_path: Path, factory: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "gated.toml"
    config.write_text(GPIO.format(tmp=tmp_path))
    assert main(["selftest", "-c", str(config), "--wait", "0.2"]) == 0
    table = rows(capsys.readouterr().out)
    assert table["turnstile"] == ("gpio", "ok", "relay pulsed for 1 s, then locked")
    assert table["prompter"] == ("gpio", "ok", "no audio configured (PIR only)")
    states = factory.pin(17).states
    assert [s.state for s in states] == [False, True, False]  # low, energised, low again
    assert states[2].timestamp >= 0.99  # held for the 1 s pulse the installer hears


def test_a_prompt_that_never_ends_fails(
    tmp_path: Path, factory: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    bin_dir, sounds = tmp_path / "bin", tmp_path / "sounds"
    bin_dir.mkdir()
    sounds.mkdir()
    (bin_dir / "aplay").write_text(FAKE_APLAY)
    (bin_dir / "aplay").chmod(0o755)
    for prompt in Prompter.PROMPTS:
        (sounds / f"{prompt}.wav").write_bytes(b"RIFF")
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_APLAY_LOG", str(tmp_path / "aplay.log"))
    monkeypatch.setenv("FAKE_APLAY_S", "60")  # a player that hangs
    config = make_config(
        tmp_path,
        hardware={"pin_factory": "mock"},
        card={"driver": "none"},
        prompter={"driver": "gpio", "pir_pin": 4, "audio": "aplay", "sounds_dir": str(sounds)},
    )
    checks = {
        c.device: c for c in run_selftest(config, wait_s=0.1, pulse_s=0.01, prompt_wait_s=0.3)
    }
    prompter = checks["prompter"]
    assert not prompter.ok
    assert prompter.detail == "'welcome' did not finish within 0.3 s"
    assert "start welcome" in (tmp_path / "aplay.log").read_text()
