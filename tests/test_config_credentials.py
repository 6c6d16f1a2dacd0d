"""Secret files named as systemd credentials resolve in ``$CREDENTIALS_DIRECTORY``.

The service reads ``/run/credentials/gated.service/NAME``; a command run by hand
through ``systemd-run`` gets the same credentials in ``/run/credentials/run-uN.service/``.
Both are told where by ``$CREDENTIALS_DIRECTORY``, which these tests set to a real
directory.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from gated.config import load_config
from gated.config.drivers import credential_path
from gated.errors import ConfigError
from gated.mqtt.link import read_secret

REPO = Path(__file__).resolve().parent.parent
SERVICE_PASSWORD = "/run/credentials/gated.service/gated-mqtt-password"
SERVICE_KEY = "/run/credentials/gated.service/gated-mqtt-key"


def gate_config(tmp_path: Path, mqtt: str) -> Path:
    path = tmp_path / "etc" / "gated.toml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        '[gate]\nid = "g1"\nsite = "s1"\n[turnstile]\ndriver = "sim"\n'
        f'[storage]\npath = "{tmp_path / "gated.db"}"\n[mqtt]\n{mqtt}',
        encoding="utf-8",
    )
    return path


@pytest.fixture
def credentials(tmp_path: Path) -> Path:
    """A credentials directory as systemd makes it for a transient unit."""
    directory = tmp_path / "run" / "credentials" / "run-u42.service"
    directory.mkdir(parents=True)
    (directory / "gated-mqtt-password").write_text("s3cret\n", encoding="utf-8")
    (directory / "gated-mqtt-key").write_text("-----BEGIN PRIVATE KEY-----\n", encoding="utf-8")
    return directory


def test_a_service_credential_path_is_read_from_the_running_units_directory(
    tmp_path: Path, credentials: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc" / "gate.crt").write_text("cert\n", encoding="utf-8")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(credentials))
    config = load_config(
        gate_config(
            tmp_path,
            f'username = "g1"\npassword_file = "{SERVICE_PASSWORD}"\n'
            f'cert_file = "gate.crt"\nkey_file = "{SERVICE_KEY}"\n',
        )
    )
    assert config.mqtt.password_file == credentials / "gated-mqtt-password"
    assert config.mqtt.key_file == credentials / "gated-mqtt-key"
    # An ordinary path is left alone, relative to the config file as always.
    assert config.mqtt.cert_file == tmp_path / "etc" / "gate.crt"
    assert read_secret(config.mqtt.password_file) == "s3cret"


def test_without_credentials_directory_the_path_is_taken_as_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)
    with pytest.raises(ConfigError) as info:
        load_config(gate_config(tmp_path, f'password_file = "{SERVICE_PASSWORD}"\n'))
    (problem,) = info.value.problems
    assert problem.endswith(f"mqtt.password_file: no such file: {SERVICE_PASSWORD}")


def test_a_credential_the_unit_was_not_given_is_named_where_it_was_looked_for(
    tmp_path: Path, credentials: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(credentials))
    missing = "/run/credentials/gated.service/gated-other"
    with pytest.raises(ConfigError) as info:
        load_config(gate_config(tmp_path, f'password_file = "{missing}"\n'))
    (problem,) = info.value.problems
    assert problem.endswith(f"no such file: {credentials / 'gated-other'}")


def test_only_a_unit_and_a_name_under_run_credentials_are_mapped(credentials: Path) -> None:
    env = {"CREDENTIALS_DIRECTORY": str(credentials)}
    mapped = credential_path(Path("/run/credentials/other@x.service/name"), env)
    assert mapped == credentials / "name"
    for kept in (
        "/run/credentials/gated.service",
        "/run/credentials/gated.service/sub/name",
        "/run/credentials/gated.service/..",
        "/run/other/gated.service/name",
        "/etc/gated/mqtt.password",
        "relative/name",
    ):
        assert credential_path(Path(kept), env) == Path(kept), kept
    assert credential_path(Path(SERVICE_PASSWORD), {}) == Path(SERVICE_PASSWORD)


def test_check_config_by_hand_with_the_units_credentials(tmp_path: Path, credentials: Path) -> None:
    # What `gatedctl check-config` does: the gated command in a unit whose
    # credentials directory is not gated.service's.
    config = gate_config(tmp_path, f'username = "g1"\npassword_file = "{SERVICE_PASSWORD}"\n')
    env = {**os.environ, "CREDENTIALS_DIRECTORY": str(credentials), "PYTHONPATH": str(REPO)}

    def check_config() -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "gated.cli", "check-config", "-c", str(config)],
            capture_output=True,
            text=True,
            timeout=60,
            env=env,
            cwd=REPO,
        )

    result = check_config()
    assert result.returncode == 0, result.stderr
    env.pop("CREDENTIALS_DIRECTORY")
    result = check_config()
    assert result.returncode == 2
    assert "mqtt.password_file: no such file" in result.stderr
