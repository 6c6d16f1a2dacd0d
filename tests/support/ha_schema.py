"""Home Assistant's MQTT discovery schema for the platforms gated publishes, as data.

Copied by hand (Home Assistant is far too heavy to install for the suite) from Home
Assistant Core 2026.11.0, the PyPI wheel ``homeassistant-2026.11.0-py3-none-any.whl``:
``homeassistant/components/mqtt/config.py`` (SCHEMA_BASE, MQTT_RO_SCHEMA),
``mqtt/schemas.py`` (availability, device, origin, MQTT_ENTITY_COMMON_SCHEMA),
``mqtt/binary_sensor.py``, ``mqtt/button.py``, ``mqtt/sensor.py`` (PLATFORM_SCHEMA_MODERN
and the sensor's unit checks), ``mqtt/abbreviations.py`` (the abbreviations of those
keys only), ``mqtt/discovery.py`` (TOPIC_MATCHER, the ``~`` base), ``mqtt/entity.py``
(default_entity_id: ``domain.object_id``, domain = the platform),
``components/{sensor,binary_sensor,button}/const.py`` (device and state classes) and
``homeassistant/core.py`` (VALID_ENTITY_ID). ``object_id`` comes from 2025.10.0's
``mqtt/schemas.py``: deprecated there in favour of ``default_entity_id``, gone from
2026.4 (discovery drops unknown keys silently, which is why this check exists: a key
Home Assistant does not know is a setting that silently does nothing).

:func:`problems` returns what Home Assistant would reject or drop, as text, one per item.
"""

from __future__ import annotations

import re
from typing import Any

SOURCE = "Home Assistant Core 2026.11.0 (object_id: 2025.10.0)"

#: Value kinds; :func:`_kind_problem` checks each the way the named HA validator does.
STRING, TEMPLATE, SUB_TOPIC, PUB_TOPIC = "string", "template", "subscribe topic", "publish topic"
BOOL, POSITIVE_INT, QOS, ICON, URL = "boolean", "positive int", "qos", "icon", "url"

_AVAILABILITY_MODES = ("all", "any", "latest")
_ENTITY_CATEGORIES = ("config", "diagnostic")

SENSOR_DEVICE_CLASSES = [
    "date",
    "enum",
    "timestamp",
    "uptime",
    "absolute_humidity",
    "apparent_power",
    "aqi",
    "area",
    "atmospheric_pressure",
    "battery",
    "blood_glucose_concentration",
    "carbon_monoxide",
    "carbon_dioxide",
    "conductivity",
    "current",
    "data_rate",
    "data_size",
    "distance",
    "duration",
    "energy",
    "energy_distance",
    "energy_storage",
    "frequency",
    "gas",
    "humidity",
    "illuminance",
    "irradiance",
    "moisture",
    "monetary",
    "nitrogen_dioxide",
    "nitrogen_monoxide",
    "nitrous_oxide",
    "ozone",
    "ph",
    "pm1",
    "pm10",
    "pm25",
    "pm4",
    "power_factor",
    "power",
    "precipitation",
    "precipitation_intensity",
    "pressure",
    "radon",
    "reactive_energy",
    "reactive_power",
    "signal_strength",
    "sound_pressure",
    "speed",
    "sulphur_dioxide",
    "temperature",
    "temperature_delta",
    "volatile_organic_compounds",
    "volatile_organic_compounds_parts",
    "voltage",
    "volume",
    "volume_storage",
    "volume_flow_rate",
    "water",
    "weight",
    "wind_direction",
    "wind_speed",
]
BINARY_SENSOR_DEVICE_CLASSES = [
    "battery",
    "battery_charging",
    "carbon_monoxide",
    "cold",
    "connectivity",
    "door",
    "garage_door",
    "gas",
    "glass_break",
    "heat",
    "light",
    "lock",
    "moisture",
    "motion",
    "moving",
    "occupancy",
    "opening",
    "plug",
    "power",
    "presence",
    "problem",
    "running",
    "safety",
    "smoke",
    "sound",
    "tamper",
    "update",
    "vibration",
    "window",
]
BUTTON_DEVICE_CLASSES = ["identify", "restart", "update"]
STATE_CLASSES = ["measurement", "measurement_angle", "total", "total_increasing"]

#: sensor/const.py DEVICE_CLASS_UNITS, for the device classes gated uses only: a sensor
#: with another device class and a unit fails :func:`problems` until its units are here.
DEVICE_CLASS_UNITS: dict[str, set[str]] = {"temperature": {"°C", "°F", "K"}}
#: sensor/const.py STATE_CLASS_UNITS.
STATE_CLASS_UNITS: dict[str, set[str]] = {"measurement_angle": {"°"}}

#: A kind, or a tuple of allowed values (None among them where HA takes ``None``).
Spec = str | tuple[Any, ...]

_AVAILABILITY: dict[str, Spec] = {
    "availability_topic": SUB_TOPIC,
    "availability_template": TEMPLATE,
    "payload_available": STRING,
    "payload_not_available": STRING,
    "availability_mode": _AVAILABILITY_MODES,
    "availability": "availability list",
}
_COMMON: dict[str, Spec] = {
    **_AVAILABILITY,
    "device": "device",
    "entity_picture": URL,
    "origin": "origin",
    "enabled_by_default": BOOL,
    "entity_category": _ENTITY_CATEGORIES,
    "icon": ICON,
    "json_attributes_topic": SUB_TOPIC,
    "json_attributes_template": TEMPLATE,
    "default_entity_id": "entity id",
    "message_expiry_interval": POSITIVE_INT,
    "unique_id": STRING,
    "visible_by_default": BOOL,
}
_BASE: dict[str, Spec] = {"qos": QOS, "encoding": STRING, "group": "string list"}
_READ_ONLY: dict[str, Spec] = {**_BASE, "state_topic": SUB_TOPIC, "value_template": TEMPLATE}
_NO_CONFIG = ("diagnostic",)  # sensors and binary sensors cannot be config entities

#: platform -> key -> spec: every key Home Assistant's discovery keeps for that platform.
PLATFORMS: dict[str, dict[str, Spec]] = {
    "binary_sensor": {
        **_READ_ONLY,
        **_COMMON,
        "device_class": (*BINARY_SENSOR_DEVICE_CLASSES, None),
        "expire_after": POSITIVE_INT,
        "force_update": BOOL,
        "name": "string or None",
        "off_delay": POSITIVE_INT,
        "payload_off": STRING,
        "payload_on": STRING,
        "entity_category": _NO_CONFIG,
    },
    "button": {
        **_BASE,
        **_COMMON,
        "command_template": TEMPLATE,
        "command_topic": PUB_TOPIC,
        "device_class": (*BUTTON_DEVICE_CLASSES, None),
        "name": "string or None",
        "payload_press": STRING,
        "retain": BOOL,
    },
    "sensor": {
        **_READ_ONLY,
        **_COMMON,
        "device_class": (*SENSOR_DEVICE_CLASSES, None),
        "expire_after": POSITIVE_INT,
        "force_update": BOOL,
        "last_reset_value_template": TEMPLATE,
        "name": "string or None",
        "options": "list",
        "suggested_display_precision": POSITIVE_INT,
        "state_class": (*STATE_CLASSES, None),
        "unit_of_measurement": "string or None",
        "entity_category": _NO_CONFIG,
    },
}
REQUIRED: dict[str, set[str]] = {
    "binary_sensor": {"state_topic"},
    "button": {"command_topic"},
    "sensor": {"state_topic"},
}
#: Keys an older Home Assistant reads and a newer one drops: key -> (deprecated, gone).
LEGACY: dict[str, tuple[str, str]] = {"object_id": ("2025.10", "2026.4")}

DEVICE: dict[str, Spec] = {
    "identifiers": "string list",
    "connections": "connection list",
    "manufacturer": STRING,
    "model": STRING,
    "model_id": STRING,
    "name": STRING,
    "hw_version": STRING,
    "serial_number": STRING,
    "sw_version": STRING,
    "via_device": STRING,
    "suggested_area": STRING,
    "configuration_url": URL,
    "child_device": "child device",
}
ORIGIN: dict[str, Spec] = {"name": STRING, "sw_version": STRING, "support_url": URL}

#: mqtt/abbreviations.py, the entries for the keys above.
ABBREVIATIONS = {
    "avty": "availability",
    "avty_mode": "availability_mode",
    "avty_t": "availability_topic",
    "avty_tpl": "availability_template",
    "cmd_t": "command_topic",
    "cmd_tpl": "command_template",
    "def_ent_id": "default_entity_id",
    "dev": "device",
    "dev_cla": "device_class",
    "e": "encoding",
    "en": "enabled_by_default",
    "ent_cat": "entity_category",
    "ent_pic": "entity_picture",
    "exp_aft": "expire_after",
    "frc_upd": "force_update",
    "grp": "group",
    "ic": "icon",
    "json_attr_t": "json_attributes_topic",
    "json_attr_tpl": "json_attributes_template",
    "lrst_val_tpl": "last_reset_value_template",
    "msg_exp_int": "message_expiry_interval",
    "o": "origin",
    "off_dly": "off_delay",
    "ops": "options",
    "pl_avail": "payload_available",
    "pl_not_avail": "payload_not_available",
    "pl_off": "payload_off",
    "pl_on": "payload_on",
    "pl_prs": "payload_press",
    "ret": "retain",
    "stat_cla": "state_class",
    "stat_t": "state_topic",
    "sug_dsp_prc": "suggested_display_precision",
    "t": "topic",
    "uniq_id": "unique_id",
    "unit_of_meas": "unit_of_measurement",
    "val_tpl": "value_template",
    "vis": "visible_by_default",
}
DEVICE_ABBREVIATIONS = {
    "cns": "connections",
    "cu": "configuration_url",
    "ids": "identifiers",
    "mf": "manufacturer",
    "mdl": "model",
    "mdl_id": "model_id",
    "hw": "hw_version",
    "sw": "sw_version",
    "sa": "suggested_area",
    "sn": "serial_number",
    "cdev": "child_device",
}
ORIGIN_ABBREVIATIONS = {"sw": "sw_version", "url": "support_url"}

#: mqtt/discovery.py TOPIC_MATCHER, under the discovery prefix.
TOPIC = re.compile(
    r"homeassistant/(?P<component>\w+)/(?:(?P<node_id>[a-zA-Z0-9_-]+)/)"
    r"?(?P<object_id>[a-zA-Z0-9_-]+)/config"
)
#: homeassistant/core.py VALID_ENTITY_ID.
_OBJECT_ID = r"(?!_)[\da-z_]+(?<!_)"
ENTITY_ID = re.compile(r"^(?!.+__)" + _OBJECT_ID + r"\." + _OBJECT_ID + r"\Z")


def expand(payload: dict[str, Any]) -> dict[str, Any]:
    """The payload as discovery sees it: abbreviations replaced, ``~`` put into topics."""
    out = {ABBREVIATIONS.get(k, k): v for k, v in payload.items()}
    if isinstance(out.get("device"), dict):
        out["device"] = {DEVICE_ABBREVIATIONS.get(k, k): v for k, v in out["device"].items()}
    if isinstance(out.get("origin"), dict):
        out["origin"] = {ORIGIN_ABBREVIATIONS.get(k, k): v for k, v in out["origin"].items()}
    if isinstance(out.get("availability"), list):
        out["availability"] = [
            {ABBREVIATIONS.get(k, k): v for k, v in a.items()} if isinstance(a, dict) else a
            for a in out["availability"]
        ]
    if "~" in out:
        base = out.pop("~")
        for key, value in out.items():
            if key.endswith("topic") and isinstance(value, str) and value:
                if value[0] == "~":
                    out[key] = f"{base}{value[1:]}"
                if value[-1] == "~":
                    out[key] = f"{value[:-1]}{base}"
    return out


def _topic_problem(value: Any, publish: bool) -> str | None:
    if not isinstance(value, str) or not value:
        return "not a non-empty string"
    if len(value.encode("utf-8")) > 65535:
        return "longer than 65535 bytes"
    if any(c <= "\x1f" or "\x7f" <= c <= "\x9f" for c in value):
        return "control characters"
    levels = value.split("/")
    if publish and ("+" in value or "#" in value):
        return "a wildcard in a publish topic"
    if (
        any("+" in lv and lv != "+" for lv in levels)
        or "#" in value[:-1]
        or (value.endswith("#") and levels[-1] != "#")
    ):
        return "a misplaced wildcard"
    return None


def _template_problem(value: Any) -> str | None:
    if not isinstance(value, str):
        return "not a string"
    # Home Assistant compiles it with Jinja; no Jinja here: the delimiters must balance.
    for start, end in (("{{", "}}"), ("{%", "%}"), ("{#", "#}")):
        if value.count(start) != value.count(end):
            return f"unbalanced {start} {end}"
    return None


def _kind_problem(spec: Spec, value: Any, platform: str) -> str | None:
    if isinstance(spec, tuple):
        return None if value in spec else f"{value!r} is not one of {sorted(map(str, spec))}"
    checks: dict[str, Any] = {
        STRING: lambda v: None if isinstance(v, str | int | float) and v is not True else "string",
        "string or None": lambda v: None if v is None or isinstance(v, str) else "string or null",
        TEMPLATE: _template_problem,
        SUB_TOPIC: lambda v: _topic_problem(v, publish=False),
        PUB_TOPIC: lambda v: _topic_problem(v, publish=True),
        BOOL: lambda v: None if isinstance(v, bool) else "a JSON boolean",
        POSITIVE_INT: lambda v: (
            None if isinstance(v, int) and not isinstance(v, bool) and v >= 0 else "an integer >= 0"
        ),
        QOS: lambda v: None if v in (0, 1, 2) and not isinstance(v, bool) else "0, 1 or 2",
        ICON: lambda v: None if isinstance(v, str) and ":" in v else 'the form "prefix:name"',
        URL: lambda v: None if isinstance(v, str) and re.match(r"^https?://\S+$", v) else "a URL",
        "list": lambda v: None if isinstance(v, list) and v else "a non-empty list",
        "string list": lambda v: (
            None
            if isinstance(v, str) or (isinstance(v, list) and all(isinstance(i, str) for i in v))
            else "a list of strings"
        ),
        "entity id": lambda v: _entity_id_problem(v, platform),
    }
    if spec in ("device", "origin"):
        return None if isinstance(value, dict) else "an object"
    if spec in ("availability list", "connection list", "child device"):
        return None if isinstance(value, list | dict) else "a list"
    why = checks[spec](value)
    return f"{value!r}: {why}" if why else None


def _entity_id_problem(value: Any, platform: str) -> str | None:
    if not isinstance(value, str) or not ENTITY_ID.match(value):
        return "not an entity id (domain.object_id: a-z, 0-9 and _)"
    if value.partition(".")[0] != platform:
        return f"its domain is not {platform} (Home Assistant warns and replaces it)"
    return None


def _nested(what: str, specs: dict[str, Spec], value: dict[str, Any]) -> list[str]:
    out = []
    for key, v in value.items():
        if key not in specs:
            out.append(f"{what}.{key}: not a key Home Assistant knows")
            continue
        if (why := _kind_problem(specs[key], v, "")) is not None:
            out.append(f"{what}.{key}: {why}")
    return out


def problems(topic: str, payload: dict[str, Any]) -> list[str]:
    """What Home Assistant's discovery would refuse or silently drop in this config."""
    match = TOPIC.fullmatch(topic)
    if match is None:
        return [f"{topic}: not a discovery topic Home Assistant matches"]
    platform = match["component"]
    specs = PLATFORMS.get(platform)
    if specs is None:
        return [f"{topic}: platform {platform} is not in tests/support/ha_schema.py"]
    config = expand(payload)
    out = [f"{key}: required" for key in sorted(REQUIRED[platform] - set(config))]
    for key, value in config.items():
        if key in LEGACY:
            if not isinstance(value, str):
                out.append(f"{key}: {value!r} is not a string")
            continue
        if key not in specs:
            out.append(f"{key}: not a key of {platform} in {SOURCE} (it would be dropped)")
            continue
        if (why := _kind_problem(specs[key], value, platform)) is not None:
            out.append(f"{key}: {why}")
    if "availability_topic" in config and "availability" in config:
        out.append("availability_topic and availability exclude each other")
    device = config.get("device")
    if isinstance(device, dict):
        out += _nested("device", DEVICE, device)
        if not device.get("identifiers") and not device.get("connections"):
            out.append("device: needs identifiers or connections")
    if isinstance(config.get("origin"), dict):
        out += _nested("origin", ORIGIN, config["origin"])
        if "name" not in config["origin"]:
            out.append("origin.name: required")
    if platform == "sensor":
        out += _sensor_problems(config)
    return [f"{topic}: {p}" for p in out]


def _sensor_problems(config: dict[str, Any]) -> list[str]:
    """mqtt/sensor.py validate_sensor_state_and_device_class_config."""
    out = []
    unit = config.get("unit_of_measurement")
    state_class = config.get("state_class")
    device_class = config.get("device_class")
    if "last_reset_value_template" in config and state_class != "total":
        out.append("last_reset_value_template needs state_class total")
    if "options" in config and (state_class or unit or device_class != "enum"):
        out.append("options go with device_class enum and no state_class or unit")
    if state_class in STATE_CLASS_UNITS and unit not in STATE_CLASS_UNITS[state_class]:
        out.append(f"unit {unit!r} is not valid with state_class {state_class}")
    if unit is not None and device_class is not None:
        units = DEVICE_CLASS_UNITS.get(device_class)
        if units is None:
            out.append(
                f"the units of device_class {device_class} are not in tests/support/ha_schema.py"
            )
        elif unit not in units:
            out.append(f"unit {unit!r} is not valid with device_class {device_class}")
    return out
