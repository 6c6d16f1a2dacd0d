"""Home Assistant discovery: every entity's config, over a real broker, with the status it reads."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from gated.mqtt.ha_discovery import OPEN_COMMAND, discovery_messages
from tests.support import ha_schema
from tests.support.mosquitto import Collector
from tests.support.remote import ROOT, Remote

NODE = "gated_s1_g1"
AVAILABILITY = {
    "availability_topic": f"{ROOT}/status",
    "availability_template": "{{ value_json.state }}",
    "payload_available": "online",
    "payload_not_available": "offline",
}
NUMBER = "{{ v if v is number else 'None' }}"

#: topic -> what its config must say (besides availability, device and ids)
EXPECTED: dict[str, dict[str, Any]] = {
    "homeassistant/binary_sensor/g1/s1_turnstile/config": {
        "name": "Turnstile",
        "state_topic": f"{ROOT}/status",
        "device_class": "lock",
        "payload_on": "ON",
        "payload_off": "OFF",
        "value_template": "{% set t = value_json.turnstile %}"
        "{{ 'ON' if t == 'open' else 'OFF' if t == 'locked' else 'None' }}",
    },
    "homeassistant/button/g1/s1_open/config": {
        "name": "Open",
        "command_topic": f"{ROOT}/cmd/open",
        "command_template": OPEN_COMMAND,
        "qos": 1,
        "retain": False,
    },
    "homeassistant/sensor/g1/s1_mode/config": {
        "name": "Turnstile mode",
        "state_topic": f"{ROOT}/status",
        "value_template": "{{ value_json.mode | default('unknown') }}",
    },
    "homeassistant/sensor/g1/s1_last_temperature/config": {
        "name": "Last temperature",
        "state_topic": f"{ROOT}/status",
        "device_class": "temperature",
        "unit_of_measurement": "°C",
        "state_class": "measurement",
        "value_template": "{% set v = value_json.last_temperature_c %}" + NUMBER,
    },
    "homeassistant/sensor/g1/s1_granted_today/config": {
        "name": "Granted today",
        "state_topic": f"{ROOT}/status",
        "state_class": "total_increasing",
        "value_template": "{% set v = (value_json.today or {}).granted %}" + NUMBER,
    },
    "homeassistant/sensor/g1/s1_denied_today/config": {
        "name": "Denied today",
        "state_topic": f"{ROOT}/status",
        "state_class": "total_increasing",
        "value_template": "{% set v = (value_json.today or {}).denied %}" + NUMBER,
    },
    "homeassistant/sensor/g1/s1_needs_guard_today/config": {
        "name": "Guard needed today",
        "state_topic": f"{ROOT}/status",
        "state_class": "total_increasing",
        "value_template": "{% set v = (value_json.today or {}).needs_guard %}" + NUMBER,
    },
    "homeassistant/sensor/g1/s1_backlog/config": {
        "name": "Events waiting",
        "state_topic": f"{ROOT}/status",
        "state_class": "measurement",
        "entity_category": "diagnostic",
        "value_template": "{% set v = value_json.backlog %}" + NUMBER,
    },
}


def configs(messages: list[tuple[str, bytes, bool]]) -> dict[str, dict[str, Any]]:
    return {t: json.loads(p) for t, p, r in messages if r and p}


def test_every_entity_config_over_the_broker_and_the_status_it_reads(tmp_path: Path) -> None:
    remote = Remote(tmp_path, ha_discovery=True)
    ha = Collector(remote.broker.port, ["homeassistant/#"], client_id="ha")
    try:
        ha.wait_for(lambda m: len(configs(m)) >= len(EXPECTED))
        got = configs(ha.messages)
        assert set(got) == set(EXPECTED)
        for topic, want in EXPECTED.items():
            config = got[topic]
            entity = topic.split("/")[3].removeprefix("s1_")
            assert {k: config[k] for k in want} == want, topic
            assert {k: config[k] for k in AVAILABILITY} == AVAILABILITY, topic
            assert config["unique_id"] == config["object_id"] == f"{NODE}_{entity}"
            component = topic.split("/")[1]
            assert config["default_entity_id"] == f"{component}.{NODE}_{entity}"
            assert config["device"]["identifiers"] == [NODE]
            assert ha_schema.problems(topic, config) == []
            assert set(config) - set(want) - set(AVAILABILITY) <= {
                "unique_id",
                "default_entity_id",
                "object_id",
                "device",
                "icon",
            }, topic
            numeric = "unit_of_measurement" in config or "state_class" in config
            if numeric:  # never a bare value: None becomes 'None', which HA reads as unknown
                assert config["value_template"].endswith(NUMBER), topic

        # what the entities read: online, turnstile locked, counters of today
        remote.col.wait_for(lambda m: any(s.get("turnstile") for s in remote.statuses()))
        first = next(s for s in remote.statuses() if s.get("turnstile"))
        assert first["state"] == "online" and first["turnstile"] == "locked"
        assert first["today"] == {"granted": 0, "denied": 0, "needs_guard": 0}
        assert first["last_temperature_c"] is None and isinstance(first["backlog"], int)

        # the button's command: a remote open, counted today; the turnstile shows open
        press = {"req": "ha-1", "by": "homeassistant", "ts": remote.now()}
        assert remote.send("open", press)["ok"] is True
        remote.col.wait_for(
            lambda m: any(
                s.get("turnstile") == "open" and s["today"]["granted"] == 1
                for s in remote.statuses()
            ),
            10,
        )
        # a clean stop: the retained status says offline, every entity unavailable
        remote.publisher.stop()
        remote.col.wait_for(lambda m: remote.statuses()[-1]["state"] == "offline")
    finally:
        ha.close()
        remote.close()


def test_the_same_gate_id_at_two_sites_does_not_collide() -> None:
    one = dict(discovery_messages("gated", "s1", "g1"))
    two = dict(discovery_messages("gated", "s2", "g1"))
    assert not set(one) & set(two)
    ids = [json.loads(p)["unique_id"] for p in [*one.values(), *two.values()]]
    assert len(ids) == len(set(ids)) == 2 * len(EXPECTED)
    assert all(t.split("/")[2] == "g1" for t in [*one, *two])  # the ACL's %u level


def test_no_temperature_entity_when_temperatures_are_not_published() -> None:
    messages = dict(discovery_messages("gated", "s1", "g1", pii="none"))
    # an empty retained config removes the entity a "masked" gate had published before
    assert messages["homeassistant/sensor/g1/s1_last_temperature/config"] == b""
    assert all(p for t, p in messages.items() if "last_temperature" not in t)


@pytest.mark.parametrize(
    ("site", "gate", "pii"),
    [("s1", "g1", "masked"), ("North-Gate", "in_2", "full"), ("x.y", "B-3", "none")],
)
def test_every_config_passes_home_assistants_discovery_schema(
    site: str, gate: str, pii: str
) -> None:
    """Every key one Home Assistant knows for its platform (HA drops the others silently),
    the required ones there, values of the right type, an entity id HA 2025.10+ takes."""
    messages = [(t, p) for t, p in discovery_messages("gated", site, gate, pii=pii) if p]
    assert messages
    for topic, payload in messages:
        config = json.loads(payload)
        assert ha_schema.problems(topic, config) == [], topic
        # 2026.4 and later read only default_entity_id: its object id is what older
        # versions make of object_id (lower case, runs of other characters as one "_")
        entity_id = config["default_entity_id"]
        assert ha_schema.ENTITY_ID.match(entity_id), entity_id
        slug = "_".join(filter(None, re.split(r"[^a-z0-9]+", config["object_id"].lower())))
        assert entity_id == f"{topic.split('/')[1]}.{slug}"
    ids = [json.loads(p)["default_entity_id"] for _, p in messages]
    assert len(ids) == len(set(ids))


def test_the_schema_check_finds_what_home_assistant_would_drop_or_refuse() -> None:
    """The check is not a rubber stamp: abbreviations expand, and each kind of mistake shows."""
    topic, payload = discovery_messages("gated", "s1", "g1")[3]  # the temperature sensor
    good = json.loads(payload)
    abbreviated = {"stat_t": good.pop("state_topic"), "dev_cla": good.pop("device_class"), **good}
    assert ha_schema.problems(topic, abbreviated) == []
    good = json.loads(payload)
    del good["state_topic"]
    bad = {
        **good,
        "unit_of_meas": "%",  # not a temperature unit
        "statetopic": "gated/s1/g1/status",  # a typo HA would drop
        "default_entity_id": "binary_sensor.gated_s1_g1_last_temperature",
        "retain": "no",  # not a sensor key
        "device": {"name": "Gate"},  # no identifiers
    }
    found = "\n".join(ha_schema.problems(topic, bad))
    for expected in (
        "state_topic: required",
        "statetopic: not a key of sensor",
        "its domain is not sensor",
        "retain: not a key of sensor",
        "unit '%' is not valid with device_class temperature",
        "device: needs identifiers or connections",
    ):
        assert expected in found, found
