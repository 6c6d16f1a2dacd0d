"""The gate's configuration: a TOML file validated into pydantic models.

Every section and every driver type is a model that rejects unknown keys, so a typo
cannot silently disable a check. ``load_config`` reports every problem of a file at
once, one line each: ``"{file}: {dotted.key}: {reason}"``.

Relative paths in the file are resolved against the file's directory, and every file
the config names must exist: a gate refuses to start rather than fail at the first
arrival. Secrets (the MQTT password) come from files, never from the config text.
"""

from __future__ import annotations

import copy
import os
import re
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

from pydantic import (
    BaseModel,
    Field,
    PrivateAttr,
    ValidationError,
    model_validator,
)
from pydantic_core import ErrorDetails

from gated.config.drivers import (
    DRIVER_MODELS,
    CameraQrConfig,
    CardConfig,
    GpioPrompterConfig,
    GpioTurnstileConfig,
    HidCardConfig,
    KeyProblem,
    Mlx90614ThermometerConfig,
    NoneCardConfig,
    NonePrompterConfig,
    NoneQrConfig,
    NoneThermometerConfig,
    PrompterConfig,
    QrConfig,
    Rdm6300CardConfig,
    SerialQrConfig,
    SerialThermometerConfig,
    SimCardConfig,
    SimPrompterConfig,
    SimQrConfig,
    SimThermometerConfig,
    SimTurnstileConfig,
    ThermometerConfig,
    TurnstileConfig,
    WiegandCardConfig,
)
from gated.config.sections import (
    INLINE_SECRETS,
    GateConfig,
    HardwareConfig,
    MqttConfig,
    PassesConfig,
    PolicyConfig,
    QuotaConfig,
    ScheduleRule,
    SimConfig,
    SiteConfig,
    StatusConfig,
    StorageConfig,
    StrictModel,
)
from gated.errors import ConfigError

__all__ = [
    "DRIVER_MODELS",
    "SECTION_MODELS",
    "CameraQrConfig",
    "Config",
    "GateConfig",
    "GpioPrompterConfig",
    "GpioTurnstileConfig",
    "HardwareConfig",
    "HidCardConfig",
    "Mlx90614ThermometerConfig",
    "MqttConfig",
    "NoneCardConfig",
    "NonePrompterConfig",
    "NoneQrConfig",
    "NoneThermometerConfig",
    "PassesConfig",
    "PolicyConfig",
    "QuotaConfig",
    "Rdm6300CardConfig",
    "ScheduleRule",
    "SerialQrConfig",
    "SerialThermometerConfig",
    "SimCardConfig",
    "SimConfig",
    "SimPrompterConfig",
    "SimQrConfig",
    "SimThermometerConfig",
    "SimTurnstileConfig",
    "SiteConfig",
    "StatusConfig",
    "StorageConfig",
    "WiegandCardConfig",
    "config_from_dict",
    "load_config",
    "read_toml",
    "validate_file",
]


M = TypeVar("M", bound=BaseModel)


class Config(StrictModel):
    """The whole configuration of one gate.

    ``source`` is the file it was read from; it is a private attribute, not a field,
    so it can never be written in the TOML itself. ``mqtt.client_id`` left empty is
    filled in as ``gated-{site}-{id}``.
    """

    gate: GateConfig = Field(description="Who this gate is.")
    storage: StorageConfig = Field(default_factory=StorageConfig, description="Local storage.")
    mqtt: MqttConfig = Field(default_factory=MqttConfig, description="Central broker.")
    policy: PolicyConfig = Field(default_factory=PolicyConfig, description="The checks.")
    passes: PassesConfig = Field(default_factory=PassesConfig, description="QR passes.")
    status: StatusConfig = Field(default_factory=StatusConfig, description="Status screen.")
    hardware: HardwareConfig = Field(default_factory=HardwareConfig, description="GPIO.")
    card: CardConfig = Field(default_factory=NoneCardConfig, description="Card reader.")
    qr: QrConfig = Field(default_factory=NoneQrConfig, description="QR reader.")
    thermometer: ThermometerConfig = Field(
        default_factory=NoneThermometerConfig, description="Thermometer."
    )
    turnstile: TurnstileConfig = Field(description="Turnstile (required).")
    prompter: PrompterConfig = Field(default_factory=NonePrompterConfig, description="Prompter.")
    sim: SimConfig = Field(default_factory=SimConfig, description="Simulated inputs.")
    site: SiteConfig = Field(default_factory=SiteConfig, description="The site's other gates.")

    _source: Path = PrivateAttr(default_factory=lambda: Path("<dict>"))

    @property
    def source(self) -> Path:
        """The file this config was read from (absolute)."""
        return self._source

    @model_validator(mode="after")
    def _whole(self) -> Config:
        if not self.mqtt.client_id:
            self.mqtt.client_id = f"gated-{self.gate.site}-{self.gate.id}"
        if self.site.share is None:
            self.site.share = bool(self.mqtt.urls)
        elif self.site.share and not self.mqtt.urls:
            raise KeyProblem(
                "site.share",
                "true needs a broker: peers are heard over MQTT; set [mqtt] urls or share = false",
            )
        if self.gate.direction == "both":
            # One reader on a two-way gate cannot tell which way a person is going.
            if self.policy.antipassback != "off":
                raise KeyProblem(
                    "policy.antipassback",
                    'needs gate.direction "in" or "out": a two-way gate cannot tell the way',
                )
            quota = self.policy.household_quota
            if quota is not None and quota.direction != "both":
                raise KeyProblem(
                    "policy.household_quota.direction",
                    'must be "both" on a gate whose direction is "both"',
                )
        seen: dict[int | str, str] = {}
        for key, pin in self._pins():
            if pin in seen:
                raise KeyProblem(key, f"pin {pin} is also {seen[pin]}")
            seen[pin] = key
        return self

    def _pins(self) -> list[tuple[str, int | str]]:
        sections = {"card": self.card, "turnstile": self.turnstile, "prompter": self.prompter}
        return [
            (f"{section}.{name}", value)
            for section, model in sections.items()
            for name, value in model
            if name.endswith("_pin") and value is not None
        ]


SECTION_MODELS: tuple[type[BaseModel], ...] = (
    Config,
    GateConfig,
    StorageConfig,
    MqttConfig,
    PolicyConfig,
    QuotaConfig,
    ScheduleRule,
    PassesConfig,
    StatusConfig,
    HardwareConfig,
    SimConfig,
    SiteConfig,
)
"""Every non-driver model, for tools and tests that walk them."""

# Pydantic puts the union tag into an error's location (card.rdm6300.port); a user
# wrote card.port, so these sections drop it.
_UNION_SECTIONS = frozenset(
    name for name, field in Config.model_fields.items() if field.discriminator
)
_TABLE_TYPES = frozenset({"model_type", "model_attributes_type", "dict_type"})
_BARE_KEY = re.compile(r"^[A-Za-z0-9_-]+$")


def load_config(path: str | Path, overrides: Mapping[str, Any] | None = None) -> Config:
    """Read, merge ``overrides`` over, and validate a TOML config; raise ConfigError."""
    path = Path(path)
    data = read_toml(path)
    if overrides:
        data = _merge(data, overrides)
    return config_from_dict(data, path)


def read_toml(path: Path) -> dict[str, Any]:
    """A TOML file's tables; ConfigError naming the file (and the line) when it is not one."""
    try:
        text = path.read_bytes().decode("utf-8")
    except OSError as exc:
        raise ConfigError([f"{path}: cannot read: {exc.strerror or exc}"]) from None
    except UnicodeDecodeError as exc:
        raise ConfigError([f"{path}: not UTF-8 text: {exc.reason}"]) from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError([f"{path}: {_toml_problem(str(exc), text)}"]) from None


def config_from_dict(data: Mapping[str, Any], source: Path) -> Config:
    """Validate a config given as a dict, as if read from the file ``source``."""
    config = validate_file(Config, data, source)
    config._source = Path(os.path.abspath(source))
    return config


def validate_file(model: type[M], data: Mapping[str, Any], source: Path) -> M:
    """``data`` as ``model``, relative paths against ``source``'s directory; every problem
    at once as a ConfigError (one ``"{file}: {dotted.key}: {reason}"`` line each)."""
    absolute = Path(os.path.abspath(source))
    try:
        return model.model_validate(data, context={"base_dir": absolute.parent})
    except ValidationError as exc:
        raise ConfigError([_problem(str(source), e) for e in exc.errors()]) from None


def _merge(base: Mapping[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in over.items():
        old = merged.get(key)
        # Switching a device to another driver replaces its section: the old
        # driver's keys would be unknown keys of the new one.
        if (
            isinstance(old, Mapping)
            and isinstance(value, Mapping)
            and old.get("driver", value.get("driver")) == value.get("driver", old.get("driver"))
        ):
            merged[key] = _merge(old, value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def _toml_problem(message: str, text: str) -> str:
    match = re.fullmatch(r"(?s)(.*) \(at line (\d+), column (\d+)\)", message)
    if match:
        return f"line {match[2]}: {match[1]} (column {match[3]})"
    if message.endswith(" (at end of document)"):
        lines = text.count("\n") + 1
        return f"line {lines}: {message.removesuffix(' (at end of document)')} (at end of file)"
    return message


def _problem(source: str, error: ErrorDetails) -> str:
    loc: list[int | str] = list(error["loc"])
    if len(loc) >= 2 and loc[0] in _UNION_SECTIONS:
        del loc[1]
    kind = error["type"]
    ctx = error.get("ctx") or {}
    cause = ctx.get("error")
    if isinstance(cause, KeyProblem):
        loc.extend(cause.key.split("."))
        reason = str(cause)
    elif kind == "value_error" and cause is not None:
        reason = str(cause)
    elif kind == "missing":
        reason = "required key missing"
    elif kind == "extra_forbidden":
        reason = INLINE_SECRETS.get(tuple(map(str, loc)), "unknown key (typo?)")
    elif kind == "union_tag_not_found":
        loc.append("driver")
        reason = "required key missing"
    elif kind == "union_tag_invalid":
        loc.append("driver")
        reason = f"unknown driver {ctx.get('tag')!r} (one of {ctx.get('expected_tags')})"
    elif kind in _TABLE_TYPES:
        reason = "should be a table"
    else:
        reason = error["msg"]
    if not loc:
        return f"{source}: {reason}"
    return f"{source}: {_dotted(loc)}: {reason}"


def _dotted(loc: list[int | str]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            name = part if _BARE_KEY.match(part) else f'"{part}"'
            out += f".{name}" if out else name
    return out
