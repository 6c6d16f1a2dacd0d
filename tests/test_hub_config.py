"""The hub's config file: the shipped example, and each problem named by its key."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel

from gated.config.sections import BrokerConfig
from gated.errors import ConfigError
from gated.hub.config import HubConfig, HubSection, ReportSection, WebSection, load_hub_config
from tests.support.gate_config import deep_merge
from tests.support.hub import write_hub_config

REPO = Path(__file__).resolve().parent.parent
EXAMPLE = REPO / "config" / "hub.example.toml"
MODELS: tuple[type[BaseModel], ...] = (HubSection, BrokerConfig, WebSection, ReportSection)

MINIMAL = """
[hub]
id = "h1"
database = "sqlite:///hub.db"

[mqtt]
urls = ["mqtt://127.0.0.1:1883"]
"""


def write(directory: Path, text: str) -> Path:
    path = directory / "hub.toml"
    path.write_text(text, encoding="utf-8")
    return path


def problems(path: Path) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_hub_config(path)
    return info.value.problems


def test_the_example_loads() -> None:
    config = load_hub_config(EXAMPLE)
    assert config.hub.id == "district-1"
    assert config.database_path == Path("/var/lib/gated-hub/hub.db")
    assert config.mqtt.client_id == "gated-hub-district-1"
    # plain by default: mosquitto's acl_file does not check who joins a share group
    assert config.hub.share_group == "" and config.hub.session_expiry_s >= 86400


@pytest.mark.parametrize(
    ("model", "name"),
    [(m, n) for m in MODELS for n in m.model_fields],
    ids=lambda v: v if isinstance(v, str) else v.__name__,
)
def test_the_example_documents_every_key(model: type[BaseModel], name: str) -> None:
    text = EXAMPLE.read_text(encoding="utf-8")
    assert re.search(rf"^[ \t]*#?[ \t]*{name}[ \t]*=", text, re.MULTILINE), name
    comments = " ".join(
        line.strip().lstrip("# ") for line in text.splitlines() if line.strip().startswith("#")
    )
    description = model.model_fields[name].description or ""
    assert " ".join(description.split()) in " ".join(comments.split()), name


def test_a_relative_database_is_beside_the_config(tmp_path: Path) -> None:
    config = load_hub_config(write(tmp_path, MINIMAL))
    assert config.database_path == tmp_path / "hub.db"
    assert isinstance(config, HubConfig)


BASE = {
    "hub": {"id": "h1", "database": "sqlite:///hub.db"},
    "mqtt": {"urls": ["mqtt://127.0.0.1:1883"]},
}


@pytest.mark.parametrize(
    ("over", "key", "reason"),
    [
        ({"web": {"listen": "0.0.0.0:8090"}}, "web.listen", "operators"),
        ({"web": {"operators": {"duty": "1234"}}}, "web.operators.duty", ""),
        ({"report": {"timezone": "Mars/Olympus"}}, "report.timezone", "unknown time zone"),
        ({"hub": {"session_expiry_s": 60}}, "hub.session_expiry_s", "86400"),
        ({"hub": {"black_below": 2}}, "hub.black_below", ""),
        ({"hub": {"database": "postgresql://hub@db/hub"}}, "hub.database", "not supported"),
        ({"hub": {"database": "hub.db"}}, "hub.database", "sqlite:///PATH"),
        ({"hub": {"id": "a/b"}}, "hub.id", "MQTT topics"),
        ({"hub": {"share_group": "hub"}, "mqtt": {"protocol": "3.1.1"}}, "hub.share_group", "5"),
        ({"hub": {"replai": True}}, "hub.replai", "unknown key"),
    ],
)
def test_each_problem_is_named_by_its_key(
    tmp_path: Path, over: dict[str, dict[str, Any]], key: str, reason: str
) -> None:
    path = write_hub_config(tmp_path / "hub.toml", deep_merge(BASE, over))
    found = problems(path)
    assert len(found) == 1, found
    assert found[0].startswith(f"{path}: {key}: "), found
    assert reason in found[0]


def test_check_config_says_ok_or_names_every_problem(tmp_path: Path) -> None:
    cli = [sys.executable, "-m", "gated.cli", "hub", "check-config", "-c"]
    good = subprocess.run([*cli, str(write(tmp_path, MINIMAL))], capture_output=True, text=True)
    assert (good.returncode, good.stdout.strip()) == (0, f"{tmp_path / 'hub.toml'}: ok")
    bad = tmp_path / "bad"
    bad.mkdir()
    path = write(bad, '[hub]\nid = "h1"\nblack_below = 7\n[web]\nlisten = "10.0.0.1:80"\n')
    out = subprocess.run([*cli, str(path)], capture_output=True, text=True)
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert [line.split(": ")[1] for line in lines] == ["hub.black_below", "web.listen"], lines
    assert "Traceback" not in out.stderr
