"""Home Assistant discovery: every entity's config, over a real broker, with the status it reads."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from gated.ha_discovery import OPEN_COMMAND, discovery_messages
from tests.mosquitto import Collector
from tests.test_commands import ROOT, Remote

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
            assert config["device"]["identifiers"] == [NODE]
            assert set(config) - set(want) - set(AVAILABILITY) <= {
                "unique_id",
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
