"""``gated selftest``: a table of what works, non-zero when a configured device does not."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

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
