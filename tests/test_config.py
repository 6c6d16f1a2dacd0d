"""Config loading: real TOML files in a temporary directory, every problem named by key."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from pydantic import BaseModel

from gated.config import (
    DRIVER_MODELS,
    SECTION_MODELS,
    Config,
    GpioPrompterConfig,
    GpioTurnstileConfig,
    NoneCardConfig,
    QuotaConfig,
    Rdm6300CardConfig,
    SimCardConfig,
    SimQrConfig,
    SimThermometerConfig,
    SimTurnstileConfig,
    WiegandCardConfig,
    config_from_dict,
    load_config,
)
from gated.config.drivers import parse_hhmm
from gated.errors import ConfigError, GatedError

REPO = Path(__file__).resolve().parent.parent
EXAMPLE = REPO / "config" / "gated.example.toml"
DEMO = REPO / "config" / "demo.toml"
ALL_MODELS: tuple[type[BaseModel], ...] = SECTION_MODELS + DRIVER_MODELS

MINIMAL = """
[gate]
id = "g1"
site = "s1"

[turnstile]
driver = "sim"
"""


def write(directory: Path, text: str, name: str = "gated.toml") -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / name
    path.write_text(text, encoding="utf-8")
    return path


def problems_of(path: Path, overrides: dict | None = None) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_config(path, overrides)
    return info.value.problems


def only_problem(path: Path, extra: str) -> str:
    problems = problems_of(write(path, MINIMAL + extra))
    assert len(problems) == 1, problems
    return problems[0]


# ---- the shipped files -----------------------------------------------------------


def test_example_loads():
    config = load_config(EXAMPLE)
    assert config.source == EXAMPLE
    assert config.gate.id == "north-in-1"
    assert isinstance(config.card, Rdm6300CardConfig)
    assert isinstance(config.turnstile, GpioTurnstileConfig)
    assert config.turnstile.relay_pin == 17
    assert isinstance(config.prompter, GpioPrompterConfig)


def test_demo_loads():
    config = load_config(DEMO)
    assert (config.gate.id, config.gate.site, config.gate.direction) == (
        "demo-gate",
        "demo-site",
        "in",
    )
    assert isinstance(config.card, SimCardConfig)
    assert isinstance(config.qr, SimQrConfig)
    assert isinstance(config.thermometer, SimThermometerConfig)
    assert isinstance(config.turnstile, SimTurnstileConfig)
    assert config.prompter.driver == "sim"
    assert config.storage.path == DEMO.parent / "demo.db"
    assert config.mqtt.urls == []
    assert (config.status.listen, config.status.language) == ("127.0.0.1:8080", "en")
    assert config.policy.session_timeout_s == 6
    assert config.policy.guard_timeout_s == 5
    assert config.policy.household_quota is None
    assert config.sim.exit_when_done is False


@pytest.mark.parametrize(
    ("model", "name"),
    [(model, name) for model in ALL_MODELS for name in model.model_fields],
    ids=lambda value: value if isinstance(value, str) else value.__name__,
)
def test_example_documents_every_field(model: type[BaseModel], name: str):
    text = EXAMPLE.read_text(encoding="utf-8")
    as_key = rf"^[ \t]*#?[ \t]*{name}[ \t]*="
    as_table = rf"^[ \t]*#?[ \t]*\[{{1,2}}(\w+\.)*{name}\]{{1,2}}"
    assert re.search(f"{as_key}|{as_table}", text, re.MULTILINE), f"{model.__name__}.{name}"


@pytest.mark.parametrize(
    ("model", "name"),
    [(m, n) for m in ALL_MODELS if m is not Config for n in m.model_fields],
    ids=lambda value: value if isinstance(value, str) else value.__name__,
)
def test_example_repeats_every_description(model: type[BaseModel], name: str):
    comments = [
        line.strip().lstrip("# ")
        for line in EXAMPLE.read_text(encoding="utf-8").splitlines()
        if line.strip().startswith("#")
    ]
    text = " ".join(" ".join(comments).split())
    description = model.model_fields[name].description
    assert description, f"{model.__name__}.{name} has no description"
    assert " ".join(description.split()) in text


def test_every_model_forbids_extra_keys():
    for model in ALL_MODELS:
        assert model.model_config.get("extra") == "forbid", model.__name__


# ---- a minimal file and its defaults ---------------------------------------------


def test_minimal_config_takes_defaults(tmp_path: Path):
    path = write(tmp_path, MINIMAL)
    config = load_config(path)
    assert config.source == path
    assert config.gate.direction == "in"
    assert config.gate.timezone == "UTC"
    assert config.storage.path == Path("/var/lib/gated/gated.db")
    assert config.storage.retention_days == 30
    assert config.storage.undelivered_max_days == 90
    assert config.mqtt.urls == []
    assert config.mqtt.client_id == "gated-s1-g1"
    assert config.mqtt.qos == 1
    assert config.policy.fever_c == 37.3
    assert config.policy.valid_temp_c == (34.0, 42.5)
    assert config.policy.colors["yellow"] == "guard"
    assert config.policy.schedule == []
    assert isinstance(config.card, NoneCardConfig)
    assert config.qr.driver == "none"
    assert config.thermometer.driver == "none"
    assert config.prompter.driver == "none"
    assert config.status.language == "zh-CN"
    assert config.hardware.pin_factory == "default"
    assert config.sim.speed == 1.0


def test_config_from_dict_validates_the_same(tmp_path: Path):
    data = {"gate": {"id": "g1", "site": "s1"}, "turnstile": {"driver": "sim"}}
    config = config_from_dict(data, tmp_path / "virtual.toml")
    assert config.source == tmp_path / "virtual.toml"
    with pytest.raises(ConfigError) as info:
        config_from_dict({**data, "gate": {"id": "g1"}}, Path("x.toml"))
    assert info.value.problems == ["x.toml: gate.site: required key missing"]


def test_config_error_is_a_gated_error_and_a_value_error(tmp_path: Path):
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, "[gate]\n"))
    assert isinstance(info.value, GatedError)
    assert isinstance(info.value, ValueError)


# ---- problems name the file and the key ------------------------------------------


def test_unknown_key_is_named(tmp_path: Path):
    path = write(
        tmp_path, MINIMAL + '[card]\ndriver = "rdm6300"\nport = "/dev/serial0"\nprot = 1\n'
    )
    assert problems_of(path) == [f"{path}: card.prot: unknown key (typo?)"]


def test_unknown_section_is_named(tmp_path: Path):
    path = write(tmp_path, MINIMAL + "[polcy]\nfever_c = 37.5\n")
    assert problems_of(path) == [f"{path}: polcy: unknown key (typo?)"]


def test_source_cannot_be_set_from_the_file(tmp_path: Path):
    path = write(tmp_path, 'source = "elsewhere.toml"\n' + MINIMAL)
    assert problems_of(path) == [f"{path}: source: unknown key (typo?)"]


def test_wrong_type_is_named(tmp_path: Path):
    problem = only_problem(tmp_path, '[policy]\nfever_c = "hot"\n')
    assert problem.startswith(f"{tmp_path / 'gated.toml'}: policy.fever_c: ")
    assert "valid number" in problem


@pytest.mark.parametrize(
    ("extra", "key"),
    [
        ("[policy]\nremeasure = 9\n", "policy.remeasure"),
        ("[policy]\nsession_timeout_s = 0\n", "policy.session_timeout_s"),
        ("[storage]\nretention_days = 0\n", "storage.retention_days"),
        ("[storage]\nundelivered_max_days = 0\n", "storage.undelivered_max_days"),
        ("[mqtt]\nqos = 3\n", "mqtt.qos"),
        ('[thermometer]\ndriver = "mlx90614"\nemissivity = 0.05\n', "thermometer.emissivity"),
        ("[sim]\nspeed = 0\n", "sim.speed"),
        ('[gate]\nid = "g1"\nsite = "s1"\ndirection = "sideways"\n', "gate.direction"),
    ],
)
def test_out_of_range_is_named(tmp_path: Path, extra: str, key: str):
    text = (
        MINIMAL + extra if not extra.startswith("[gate]") else extra + '[turnstile]\ndriver="sim"'
    )
    problems = problems_of(write(tmp_path, text))
    assert len(problems) == 1, problems
    assert problems[0].startswith(f"{tmp_path / 'gated.toml'}: {key}: ")


def test_undelivered_events_are_kept_at_least_as_long_as_delivered_ones(tmp_path: Path):
    problem = only_problem(tmp_path, "[storage]\nretention_days = 120\n")
    assert problem == (
        f"{tmp_path / 'gated.toml'}: storage.undelivered_max_days: 90 is below retention_days"
        " (120): set it to 120 or more (an undelivered event is kept at least as long as a"
        " delivered one)"
    )
    ok = load_config(
        write(tmp_path, MINIMAL + "[storage]\nretention_days = 120\nundelivered_max_days = 120\n")
    )
    assert ok.storage.undelivered_max_days == 120


def test_every_problem_is_reported(tmp_path: Path):
    path = write(
        tmp_path,
        """
[gate]
id = "g1"
site = "s1"
tiemzone = "UTC"

[policy]
fever_c = "hot"
remeasure = 9

[status]
language = "fr"
""",
    )
    keys = [problem.split(": ")[1] for problem in problems_of(path)]
    assert keys == [
        "gate.tiemzone",
        "policy.fever_c",
        "policy.remeasure",
        "status.language",
        "turnstile",
    ]


def test_toml_syntax_error_names_the_line(tmp_path: Path):
    path = write(tmp_path, '[gate]\nid = "g1"\nsite = s1\n')
    problems = problems_of(path)
    assert len(problems) == 1
    assert problems[0].startswith(f"{path}: line 3: ")
    assert "column" in problems[0]


def test_unreadable_file_is_one_line(tmp_path: Path):
    path = tmp_path / "absent.toml"
    assert problems_of(path) == [f"{path}: cannot read: No such file or directory"]


def test_missing_turnstile_refuses(tmp_path: Path):
    path = write(tmp_path, '[gate]\nid = "g1"\nsite = "s1"\n')
    assert problems_of(path) == [f"{path}: turnstile: required key missing"]


def test_missing_required_driver_key(tmp_path: Path):
    path = write(tmp_path, MINIMAL + "[card]\nport = '/dev/serial0'\n")
    assert problems_of(path) == [f"{path}: card.driver: required key missing"]


# ---- discriminated unions --------------------------------------------------------


def test_union_errors_name_the_key_as_written(tmp_path: Path):
    path = write(tmp_path, MINIMAL + '[card]\ndriver = "rdm6300"\nbaud = "fast"\n')
    problems = problems_of(path)
    assert f"{path}: card.port: required key missing" in problems
    assert any(p.startswith(f"{path}: card.baud: ") for p in problems)
    assert not any("rdm6300" in p for p in problems)


def test_unknown_driver_is_named(tmp_path: Path):
    problem = only_problem(tmp_path, '[qr]\ndriver = "webcam"\n')
    assert ": qr.driver: unknown driver 'webcam'" in problem
    assert "'camera'" in problem


def test_key_of_another_driver_is_unknown(tmp_path: Path):
    problem = only_problem(tmp_path, '[card]\ndriver = "sim"\nport = "/dev/serial0"\n')
    assert problem.endswith(": card.port: unknown key (typo?)")


def test_pins_accept_numbers_and_names(tmp_path: Path):
    path = write(
        tmp_path,
        MINIMAL.replace('driver = "sim"', 'driver = "gpio"\nrelay_pin = "17"')
        + '[card]\ndriver = "wiegand"\nd0_pin = "GPIO5"\nd1_pin = 6\n',
    )
    config = load_config(path)
    assert isinstance(config.card, WiegandCardConfig)
    assert (config.card.d0_pin, config.card.d1_pin) == ("GPIO5", 6)
    assert isinstance(config.turnstile, GpioTurnstileConfig)
    assert config.turnstile.relay_pin == 17


def test_a_pin_used_twice_is_named(tmp_path: Path):
    path = write(
        tmp_path,
        MINIMAL.replace('driver = "sim"', 'driver = "gpio"\nrelay_pin = 17\nfire_pin = 17'),
    )
    assert problems_of(path) == [f"{path}: turnstile.fire_pin: pin 17 is also turnstile.relay_pin"]


def test_bad_pin_is_named(tmp_path: Path):
    path = write(tmp_path, MINIMAL.replace('driver = "sim"', 'driver = "gpio"\nrelay_pin = 17.5'))
    [problem] = problems_of(path)
    assert problem.startswith(f"{path}: turnstile.relay_pin: a GPIO pin")


def test_serial_thermometer_regex_needs_one_group(tmp_path: Path):
    problem = only_problem(
        tmp_path, '[thermometer]\ndriver = "serial"\nport = "/dev/ttyUSB1"\nline_regex = "\\\\d+"\n'
    )
    assert ": thermometer.line_regex: needs exactly one capturing group" in problem


def test_gpio_prompter_needs_what_its_audio_needs(tmp_path: Path):
    aplay = only_problem(tmp_path, '[prompter]\ndriver = "gpio"\npir_pin = 4\n')
    assert aplay.endswith(': prompter.sounds_dir: required when audio = "aplay"')
    dfplayer = only_problem(
        tmp_path, '[prompter]\ndriver = "gpio"\npir_pin = 4\naudio = "dfplayer"\n'
    )
    assert dfplayer.endswith(': prompter.port: required when audio = "dfplayer"')
    missing_dir = only_problem(
        tmp_path, '[prompter]\ndriver = "gpio"\npir_pin = 4\nsounds_dir = "sounds"\n'
    )
    assert f": prompter.sounds_dir: no such directory: {tmp_path / 'sounds'}" in missing_dir


@pytest.mark.parametrize(
    ("section", "url"),
    [
        ('[card]\ndriver = "rdm6300"', "loop://"),
        ('[card]\ndriver = "osdp"', "spy:///dev/ttyUSB0?file=/tmp/osdp.txt"),
        ('[qr]\ndriver = "serial"', "rfc2217://192.0.2.7:4000"),
        ('[thermometer]\ndriver = "serial"', "socket://192.0.2.7:7000"),
        ('[prompter]\ndriver = "gpio"\npir_pin = 4\naudio = "dfplayer"', "loop://"),
    ],
)
def test_a_serial_port_may_be_a_pyserial_url(tmp_path: Path, section: str, url: str):
    config = load_config(write(tmp_path, f'{MINIMAL}\n{section}\nport = "{url}"\n'))
    name = section.split("]")[0].lstrip("[")
    assert getattr(config, name).port == url


# ---- secrets and files ------------------------------------------------------------


def test_inline_password_is_rejected(tmp_path: Path):
    problem = only_problem(tmp_path, '[mqtt]\nusername = "gate"\npassword = "hunter2"\n')
    assert problem.endswith(": mqtt.password: secrets come from files: use password_file")
    assert "hunter2" not in problem


def test_bare_guard_pin_is_rejected(tmp_path: Path):
    problem = only_problem(tmp_path, '[status]\nguard_pin_hash = "1234"\n')
    assert ": status.guard_pin_hash: " in problem


def test_missing_password_file_is_named(tmp_path: Path):
    problem = only_problem(tmp_path, '[mqtt]\npassword_file = "mqtt.password"\n')
    assert problem == (
        f"{tmp_path / 'gated.toml'}: mqtt.password_file: no such file: {tmp_path / 'mqtt.password'}"
    )


def test_empty_optional_path_means_none(tmp_path: Path):
    config = load_config(write(tmp_path, MINIMAL + '[mqtt]\nca_file = ""\n'))
    assert config.mqtt.ca_file is None


def test_cert_file_needs_key_file(tmp_path: Path):
    (tmp_path / "gate.crt").write_text("cert")
    problem = only_problem(tmp_path, '[mqtt]\ncert_file = "gate.crt"\n')
    assert problem.endswith(": mqtt.key_file: cert_file and key_file go together")


def test_relative_paths_resolve_against_the_config_dir(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    etc = tmp_path / "etc"
    (etc / "keys").mkdir(parents=True)
    (etc / "keys" / "k1.pem").write_text("-----BEGIN PUBLIC KEY-----\n")
    (etc / "mqtt.password").write_text("secret\n")
    (etc / "scenario.jsonl").write_text('{"t": 0, "motion": true}\n')
    path = write(
        etc,
        MINIMAL
        + '[storage]\npath = "data/gated.db"\n'
        + '[mqtt]\npassword_file = "mqtt.password"\n'
        + '[passes]\npublic_keys = { k1 = "keys/k1.pem" }\n'
        + '[sim]\nscenario = "scenario.jsonl"\n',
    )
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    config = load_config(path)
    assert config.storage.path == etc / "data" / "gated.db"
    assert config.mqtt.password_file == etc / "mqtt.password"
    assert config.passes.public_keys == {"k1": etc / "keys" / "k1.pem"}
    assert config.sim.scenario == etc / "scenario.jsonl"


def test_missing_public_key_file_is_named(tmp_path: Path):
    problem = only_problem(tmp_path, '[passes]\npublic_keys = { k1 = "k1.pem" }\n')
    assert ": passes.public_keys.k1: no such file: " in problem


# ---- overrides ---------------------------------------------------------------------


def test_overrides_deep_merge(tmp_path: Path):
    path = write(
        tmp_path,
        MINIMAL
        + "[policy]\nremeasure = 2\nfever_c = 37.5\n"
        + '[card]\ndriver = "rdm6300"\nport = "/dev/serial0"\n',
    )
    config = load_config(
        path,
        {
            "policy": {"fever_c": 37.8},
            "storage": {"path": str(tmp_path / "run" / "x.db")},
            "card": {"baud": 19200},
        },
    )
    assert config.policy.fever_c == 37.8
    assert config.policy.remeasure == 2
    assert config.storage.path == tmp_path / "run" / "x.db"
    assert isinstance(config.card, Rdm6300CardConfig)
    assert (config.card.port, config.card.baud) == ("/dev/serial0", 19200)


def test_override_to_another_driver_replaces_the_section(tmp_path: Path):
    path = write(tmp_path, MINIMAL + '[card]\ndriver = "rdm6300"\nport = "/dev/serial0"\n')
    config = load_config(path, {"card": {"driver": "sim"}})
    assert isinstance(config.card, SimCardConfig)


def test_overrides_are_validated(tmp_path: Path):
    path = write(tmp_path, MINIMAL)
    assert problems_of(path, {"policy": {"remeasure": -1}})[0].startswith(
        f"{path}: policy.remeasure: "
    )


def test_overrides_can_add_a_section(tmp_path: Path):
    config = load_config(
        write(tmp_path, MINIMAL), {"policy": {"household_quota": {"max": 2, "direction": "in"}}}
    )
    assert config.policy.household_quota == QuotaConfig(max=2, direction="in")


# ---- values checked beyond their type ------------------------------------------------


def test_fever_outside_valid_range_is_rejected(tmp_path: Path):
    problem = only_problem(tmp_path, "[policy]\nfever_c = 43.0\n")
    assert problem.startswith(f"{tmp_path / 'gated.toml'}: policy.fever_c: ")
    assert "valid_temp_c" in problem


def test_valid_range_must_be_ordered(tmp_path: Path):
    problem = only_problem(tmp_path, "[policy]\nvalid_temp_c = [42.5, 34.0]\n")
    assert ": policy.valid_temp_c: " in problem


@pytest.mark.parametrize(
    ("rule", "key"),
    [
        ('start = "25:00"\nend = "06:00"', "policy.schedule[0].start"),
        ('start = "08:00"\nend = "8:30"', "policy.schedule[0].end"),
        ('start = "08:00"\nend = "08:00"', "policy.schedule[0].end"),
        ('start = "08:00"\nend = "18:00"\ndays = ["mon", "funday"]', "policy.schedule[0].days[1]"),
        ('start = "08:00"', "policy.schedule[0].end"),
    ],
)
def test_bad_schedule_rule_is_named(tmp_path: Path, rule: str, key: str):
    problem = only_problem(tmp_path, f'[[policy.schedule]]\ncategory = "visitor"\n{rule}\n')
    assert problem.startswith(f"{tmp_path / 'gated.toml'}: {key}: "), problem


def test_schedule_window_may_cross_midnight(tmp_path: Path):
    config = load_config(
        write(
            tmp_path,
            MINIMAL
            + '[[policy.schedule]]\ncategory = "night-shift"\nstart = "22:00"\nend = "06:00"\n',
        )
    )
    [rule] = config.policy.schedule
    assert rule.days == ["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
    assert (parse_hhmm(rule.start).hour, parse_hhmm(rule.end).hour) == (22, 6)


@pytest.mark.parametrize("gate_id", ["north/in", "gate+1", "#", "", "-lead", "x" * 65])
def test_bad_gate_id_is_rejected(tmp_path: Path, gate_id: str):
    path = write(tmp_path, MINIMAL.replace('id = "g1"', f'id = "{gate_id}"'))
    [problem] = problems_of(path)
    assert problem.startswith(f"{path}: gate.id: ")


def test_unknown_timezone_is_rejected(tmp_path: Path):
    path = write(tmp_path, MINIMAL.replace('site = "s1"', 'site = "s1"\ntimezone = "Mars/Base"'))
    assert problems_of(path)[0].startswith(f"{path}: gate.timezone: unknown time zone")


@pytest.mark.parametrize(
    "url", ["http://broker:1883", "mqtt://", "mqtt://broker:99999", "mqtt://user:pw@broker"]
)
def test_bad_broker_url_is_named(tmp_path: Path, url: str):
    problem = only_problem(tmp_path, f'[mqtt]\nurls = ["mqtt://ok:1883", "{url}"]\n')
    assert ": mqtt.urls[1]: " in problem
    assert "user:pw" not in problem


@pytest.mark.parametrize("prefix", ["/gated", "gated/", "ga+ted", "a//b", ""])
def test_bad_topic_prefix_is_named(tmp_path: Path, prefix: str):
    problem = only_problem(tmp_path, f'[mqtt]\ntopic_prefix = "{prefix}"\n')
    assert ": mqtt.topic_prefix: " in problem


@pytest.mark.parametrize("listen", ["8080", "localhost", "host:http", ":8080", "h:70000"])
def test_bad_listen_is_named(tmp_path: Path, listen: str):
    problem = only_problem(tmp_path, f'[status]\nlisten = "{listen}"\n')
    assert ": status.listen: " in problem


def test_no_screen_is_allowed(tmp_path: Path):
    config = load_config(write(tmp_path, MINIMAL + '[status]\nlisten = ""\n'))
    assert config.status.listen == ""


def test_a_two_way_gate_refuses_checks_that_need_the_way(tmp_path: Path):
    both = MINIMAL.replace('site = "s1"', 'site = "s1"\ndirection = "both"')
    path = write(tmp_path / "apb", both + '[policy]\nantipassback = "hard"\n')
    assert problems_of(path) == [
        f'{path}: policy.antipassback: needs gate.direction "in" or "out":'
        " a two-way gate cannot tell the way"
    ]
    quota = both + "[policy]\nhousehold_quota = {max = 1}\n"
    path = write(tmp_path / "quota", quota)
    assert problems_of(path) == [
        f'{path}: policy.household_quota.direction: must be "both" on a gate whose direction'
        ' is "both"'
    ]
    ok = write(tmp_path / "ok", quota.replace("max = 1", 'max = 1, direction = "both"'))
    assert load_config(ok).policy.household_quota is not None


def test_tls_files_with_only_plain_urls_are_refused(tmp_path: Path):
    ca = tmp_path / "ca.pem"
    ca.write_text("-----BEGIN CERTIFICATE-----\n", encoding="utf-8")
    plain = f'[mqtt]\nurls = ["mqtt://broker:1883"]\nca_file = "{ca}"\n'
    problem = only_problem(tmp_path / "plain", plain)
    assert problem.endswith("mqtt.ca_file: set, but no url is mqtts://: TLS would not be used")
    tls = write(tmp_path / "tls", MINIMAL + plain.replace("mqtt://broker", "mqtts://broker"))
    assert load_config(tls).mqtt.ca_file is not None
