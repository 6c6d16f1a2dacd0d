"""Home Assistant MQTT discovery: the gate as a device with a few sensors.

Every entity reads the retained ``T/status`` (so no extra topics exist) and is
available while that status says ``online`` (the will says ``offline``).
"""

from __future__ import annotations

import json
import re
from typing import Any

from gated import __version__

#: (component, object id, name, value template, extra config)
_ENTITIES: tuple[tuple[str, str, str, str, dict[str, Any]], ...] = (
    ("sensor", "mode", "Turnstile mode", "{{ value_json.mode }}", {"icon": "mdi:turnstile"}),
    (
        "sensor",
        "last_temperature",
        "Last temperature",
        "{{ value_json.last_temperature_c }}",
        {"device_class": "temperature", "unit_of_measurement": "°C"},
    ),
    (
        "sensor",
        "granted_today",
        "Granted today",
        "{{ value_json.today.granted | default(0) }}",
        {"state_class": "total_increasing"},
    ),
    (
        "sensor",
        "denied_today",
        "Denied today",
        "{{ value_json.today.denied | default(0) }}",
        {"state_class": "total_increasing"},
    ),
    (
        "sensor",
        "backlog",
        "Events waiting",
        "{{ value_json.backlog }}",
        {"icon": "mdi:tray-full", "entity_category": "diagnostic"},
    ),
)


def _slug(text: str) -> str:
    return re.sub(r"[^a-zA-Z0-9_-]", "_", text)


def discovery_messages(prefix: str, site: str, gate: str) -> list[tuple[str, bytes]]:
    """``(topic, payload)`` pairs to publish retained under ``homeassistant/``."""
    root = f"{prefix}/{site}/{gate}"
    # The node level is the gate id alone, so the broker ACL can grant it by user name.
    node = _slug(f"gated_{site}_{gate}")
    device = {
        "identifiers": [node],
        "name": f"Gate {site}/{gate}",
        "manufacturer": "gated",
        "model": "turnstile gate",
        "sw_version": __version__,
    }
    out = []
    for component, object_id, name, template, extra in _ENTITIES:
        config = {
            "name": name,
            "unique_id": f"{node}_{object_id}",
            "object_id": f"{node}_{object_id}",
            "state_topic": f"{root}/status",
            "value_template": template,
            "availability_topic": f"{root}/status",
            "availability_template": "{{ value_json.state }}",
            "payload_available": "online",
            "payload_not_available": "offline",
            "device": device,
            **extra,
        }
        topic = f"homeassistant/{component}/{gate}/{object_id}/config"
        out.append((topic, json.dumps(config, ensure_ascii=False).encode()))
    return out
