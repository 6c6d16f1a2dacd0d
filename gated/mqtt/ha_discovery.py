"""Home Assistant MQTT discovery: the gate as a device with its turnstile and a few sensors.

Every entity reads the retained ``T/status`` (so no extra topics exist) and is
available while that status says ``online`` (the will says ``offline``). The one
control, the "Open" button, publishes a ``cmd/open`` with a fresh ``req``.

A value the status does not have (no temperature measured yet, a will without
counters) renders as ``None``, which Home Assistant takes as "unknown": a numeric
sensor never gets a text it cannot parse, nor a made-up 0.

Discovery topics are ``homeassistant/{component}/{gate}/{site}_{entity}/config``:
the node level is the gate id alone, so the broker ACL can grant it by user name
(``homeassistant/+/%u/+/config``), and the site in the object id keeps two sites'
gates of the same id apart. Home Assistant accepts only letters, digits, ``_`` and
``-`` at those levels: a gate id with a ``.`` cannot be discovered.

Each entity's id is given twice: ``default_entity_id`` (``sensor.gated_s1_g1_mode``,
Home Assistant 2025.10 and later) and ``object_id`` (``gated_s1_g1_mode``, for older
versions; 2026.4 and later drop it as an unknown key).
"""

from __future__ import annotations

import json
import re
from typing import Any

from gated import __version__


def _number(expr: str) -> str:
    """A value template: ``expr`` when it is a number, else ``None`` (unknown)."""
    return f"{{% set v = {expr} %}}{{{{ v if v is number else 'None' }}}}"


def _today(key: str) -> str:
    return _number(f"(value_json.today or {{}}).{key}")


#: What a press of "Open" publishes on ``T/cmd/open``: a ``req`` unique per press and
#: a ``ts``, so a press queued somewhere for more than five minutes is refused.
OPEN_COMMAND = (
    '{"req": "ha-{{ now().isoformat() }}", "by": "homeassistant", "ts": {{ now().timestamp() }}}'
)

#: (component, entity, name, extra config). State entities read ``T/status``.
_ENTITIES: tuple[tuple[str, str, str, dict[str, Any]], ...] = (
    (
        "binary_sensor",
        "turnstile",
        "Turnstile",
        {
            # device class lock: on = unlocked (open), off = locked
            "device_class": "lock",
            "value_template": (
                "{% set t = value_json.turnstile %}"
                "{{ 'ON' if t == 'open' else 'OFF' if t == 'locked' else 'None' }}"
            ),
            "payload_on": "ON",
            "payload_off": "OFF",
        },
    ),
    (
        "button",
        "open",
        "Open",
        {"command_template": OPEN_COMMAND, "icon": "mdi:turnstile-outline"},
    ),
    (
        "sensor",
        "mode",
        "Turnstile mode",
        {
            "value_template": "{{ value_json.mode | default('unknown') }}",
            "icon": "mdi:turnstile",
        },
    ),
    (
        "sensor",
        "last_temperature",
        "Last temperature",
        {
            "value_template": _number("value_json.last_temperature_c"),
            "device_class": "temperature",
            "unit_of_measurement": "°C",
            "state_class": "measurement",
        },
    ),
    (
        "sensor",
        "granted_today",
        "Granted today",
        {"value_template": _today("granted"), "state_class": "total_increasing"},
    ),
    (
        "sensor",
        "denied_today",
        "Denied today",
        {"value_template": _today("denied"), "state_class": "total_increasing"},
    ),
    (
        "sensor",
        "needs_guard_today",
        "Guard needed today",
        {"value_template": _today("needs_guard"), "state_class": "total_increasing"},
    ),
    (
        "sensor",
        "backlog",
        "Events waiting",
        {
            "value_template": _number("value_json.backlog"),
            "state_class": "measurement",
            "icon": "mdi:tray-full",
            "entity_category": "diagnostic",
        },
    ),
)


def _slug(text: str) -> str:
    return re.sub(r"[^a-zA-Z0-9_-]", "_", text)


def _entity_slug(text: str) -> str:
    """The object id part of an entity id: ``[a-z0-9_]``, no ``__``, no ``_`` at the ends.

    It is what Home Assistant's own slugify makes of ``object_id`` (an ASCII id), so the
    entity id is the same whichever of the two keys a Home Assistant version reads.
    """
    return re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_")


def discovery_messages(
    prefix: str, site: str, gate: str, pii: str = "masked"
) -> list[tuple[str, bytes]]:
    """``(topic, payload)`` pairs to publish retained under ``homeassistant/``.

    With ``pii = "none"`` the status never carries a temperature: the temperature
    entity's config is an empty payload, which removes one published before.
    """
    root = f"{prefix}/{site}/{gate}"
    node = _slug(f"gated_{site}_{gate}")
    device = {
        "identifiers": [node],
        "name": f"Gate {site}/{gate}",
        "manufacturer": "gated",
        "model": "turnstile gate",
        "sw_version": __version__,
    }
    out = []
    for component, entity, name, extra in _ENTITIES:
        topic = f"homeassistant/{component}/{gate}/{_slug(site)}_{entity}/config"
        if entity == "last_temperature" and pii == "none":
            out.append((topic, b""))
            continue
        config: dict[str, Any] = {
            "name": name,
            "unique_id": f"{node}_{entity}",
            # Home Assistant 2025.10+ reads the entity id from default_entity_id (object_id
            # is deprecated there and ignored from 2026.4); older versions read object_id.
            "default_entity_id": f"{component}.{_entity_slug(f'{node}_{entity}')}",
            "object_id": f"{node}_{entity}",
            "availability_topic": f"{root}/status",
            "availability_template": "{{ value_json.state }}",
            "payload_available": "online",
            "payload_not_available": "offline",
            "device": device,
            **extra,
        }
        if component == "button":
            config.update({"command_topic": f"{root}/cmd/open", "qos": 1, "retain": False})
        else:
            config["state_topic"] = f"{root}/status"
        out.append((topic, json.dumps(config, ensure_ascii=False).encode()))
    return out
