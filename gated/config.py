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
import datetime
import os
import re
import tomllib
import zoneinfo
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_core import ErrorDetails

from gated.config_drivers import (
    DRIVER_MODELS,
    CameraQrConfig,
    CardConfig,
    ExistingFile,
    GpioPrompterConfig,
    GpioTurnstileConfig,
    HhMm,
    HidCardConfig,
    KeyProblem,
    Mlx90614ThermometerConfig,
    NoneCardConfig,
    NonePrompterConfig,
    NoneQrConfig,
    NoneThermometerConfig,
    OptionalFile,
    PrompterConfig,
    QrConfig,
    Rdm6300CardConfig,
    ResolvedPath,
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
    parse_hhmm,
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
    "StatusConfig",
    "StorageConfig",
    "WiegandCardConfig",
    "config_from_dict",
    "load_config",
]

Direction = Literal["in", "out", "both"]
Day = Literal["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
ALL_DAYS: list[Day] = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"]

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


def _check_name(value: str) -> str:
    if not _NAME.match(value):
        raise ValueError(
            "1 to 64 letters, digits, '_', '.' or '-', starting with a letter or digit "
            "(it goes into MQTT topics)"
        )
    return value


TopicName = Annotated[str, AfterValidator(_check_name)]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class GateConfig(_Model):
    """Who this gate is and which way it lets people through."""

    id: TopicName = Field(description="This gate's id, unique within its site.")
    site: TopicName = Field(description="The site (compound, building, district) of the gate.")
    direction: Direction = Field(
        default="in", description="Which way the gate lets people through: in, out or both."
    )
    timezone: str = Field(
        default="UTC", description="IANA time zone of schedules, night hours and reports."
    )

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        try:
            zoneinfo.ZoneInfo(value)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError, OSError):
            raise ValueError(f"unknown time zone {value!r} (e.g. 'Asia/Shanghai')") from None
        return value


class StorageConfig(_Model):
    """Where the registry, the ledger and the outbox live."""

    path: ResolvedPath = Field(
        default=Path("/var/lib/gated/gated.db"),
        description="SQLite file: registry, ledger and outbox.",
    )
    retention_days: int = Field(
        default=30, ge=1, description="Days ledger events are kept before the daily purge."
    )


def _check_broker_url(value: str) -> str:
    url = urlsplit(value)
    if "@" in url.netloc:
        # Not echoed: the URL holds a secret.
        raise ValueError("no credentials in the URL: use username and password_file")
    try:
        port = url.port
    except ValueError as exc:
        raise ValueError(f"{value!r}: {exc}") from None
    if url.scheme not in ("mqtt", "mqtts"):
        raise ValueError(f"{value!r}: the scheme is mqtt:// or mqtts://")
    if not url.hostname:
        raise ValueError(f"{value!r}: no host")
    if port == 0 or url.path not in ("", "/") or url.query or url.fragment:
        raise ValueError(f"{value!r}: expected mqtt[s]://host[:port]")
    return value


def _check_topic_prefix(value: str) -> str:
    if not value or value.startswith("/") or value.endswith("/") or "//" in value:
        raise ValueError("levels separated by '/', with no leading, trailing or empty level")
    if any(c in value for c in "+#\0"):
        raise ValueError("no MQTT wildcards ('+', '#') in a topic")
    return value


class MqttConfig(_Model):
    """The central broker every event is reported to."""

    urls: list[Annotated[str, AfterValidator(_check_broker_url)]] = Field(
        default=[], description="Brokers, tried in order; [] = none, events wait in the outbox."
    )
    client_id: str = Field(default="", description='MQTT client id; "" = gated-{site}-{id}.')
    username: str = Field(default="", description='User name at the broker ("" = anonymous).')
    password_file: OptionalFile = Field(
        default=None, description="File holding the broker password."
    )
    ca_file: OptionalFile = Field(
        default=None, description="CA certificates (PEM) the broker is checked with."
    )
    cert_file: OptionalFile = Field(
        default=None, description="Client certificate (PEM) for mutual TLS."
    )
    key_file: OptionalFile = Field(default=None, description="Private key (PEM) of cert_file.")
    topic_prefix: Annotated[str, AfterValidator(_check_topic_prefix)] = Field(
        default="gated", description="First topic levels: {topic_prefix}/{site}/{id}/..."
    )
    qos: Literal[0, 1, 2] = Field(
        default=1, description="QoS of what the gate publishes: 0, 1 or 2."
    )
    pii: Literal["masked", "full", "none"] = Field(
        default="masked", description="Personal data in published events: masked, full or none."
    )
    ha_discovery: bool = Field(
        default=False, description="Publish Home Assistant MQTT discovery (homeassistant/...)."
    )
    keepalive_s: int = Field(default=30, ge=5, le=65535, description="MQTT keepalive in seconds.")

    @model_validator(mode="after")
    def _cert_with_key(self) -> MqttConfig:
        if (self.cert_file is None) != (self.key_file is None):
            raise KeyProblem(
                "key_file" if self.key_file is None else "cert_file",
                "cert_file and key_file go together",
            )
        return self


# Unknown keys that are a secret written inline get a reason that says what to do.
_INLINE_SECRETS: dict[tuple[str, ...], str] = {
    ("mqtt", "password"): "secrets come from files: use password_file",
    ("status", "guard_pin"): "never the PIN itself: use guard_pin_hash (`gated hash-pin`)",
}


class QuotaConfig(_Model):
    """How often a household may pass in a sliding window."""

    max: int = Field(ge=1, description="Granted verdicts a household may have per window.")
    window_h: float = Field(default=72, gt=0, description="Length of the sliding window in hours.")
    direction: Direction = Field(
        default="out", description="Direction the quota counts: in, out, both."
    )


class ScheduleRule(_Model):
    """A window of allowed hours for a category of person."""

    category: str = Field(
        default="*", min_length=1, description='Category it applies to; "*" = every.'
    )
    days: list[Day] = Field(
        default_factory=lambda: list(ALL_DAYS),
        min_length=1,
        description="Days the window opens on (mon ... sun).",
    )
    start: HhMm = Field(description='Start of the window, "HH:MM" in the gate\'s time zone.')
    end: HhMm = Field(description="End of the window; earlier than start = crosses midnight.")

    @model_validator(mode="after")
    def _not_empty(self) -> ScheduleRule:
        if self.start == self.end:
            raise KeyProblem("end", "equals start: an empty window")
        return self

    @property
    def start_time(self) -> datetime.time:
        """``start`` as a ``datetime.time``."""
        return parse_hhmm(self.start)

    @property
    def end_time(self) -> datetime.time:
        """``end`` as a ``datetime.time``."""
        return parse_hhmm(self.end)


_DEFAULT_COLORS: dict[str, Literal["allow", "guard", "deny"]] = {
    "green": "allow",
    "blue": "allow",
    "yellow": "guard",
    "red": "guard",
    "pink": "guard",
}


class PolicyConfig(_Model):
    """What a person must show and how the verdict is reached (SPEC §4a)."""

    fever_c: float = Field(
        default=37.3, description="Fever at or above this many °C: denied, alarm."
    )
    valid_temp_c: tuple[float, float] = Field(
        default=(34.0, 42.5),
        description="[low, high] °C of a plausible reading; else measure again.",
    )
    remeasure: int = Field(
        default=1, ge=0, le=5, description="Extra readings asked for after a fever reading, 0 to 5."
    )
    session_timeout_s: float = Field(
        default=15, gt=0, le=600, description="Seconds without progress that end a session."
    )
    require_temperature: bool = Field(
        default=True, description="A valid temperature reading is needed before a grant."
    )
    credentials: Literal["card_or_qr", "card", "qr", "card_and_qr"] = Field(
        default="card_or_qr", description="Credential needed: card_or_qr, card, qr or card_and_qr."
    )
    colors: dict[str, Literal["allow", "guard", "deny"]] = Field(
        default_factory=lambda: dict(_DEFAULT_COLORS),
        description="Pass colour to verdict: allow, guard (a guard decides) or deny.",
    )
    verified_overrides_guard: bool = Field(
        default=True, description="A verified person passes where the colour would need a guard."
    )
    antipassback: Literal["off", "soft", "hard"] = Field(
        default="off",
        description="Same direction twice in a row at this site: off, soft (flag) or hard (deny).",
    )
    guard_timeout_s: float = Field(
        default=60,
        gt=0,
        description="Seconds a guard has to decide before needs_guard becomes a denial.",
    )
    household_quota: QuotaConfig | None = Field(
        default=None, description="Limit on a household's granted verdicts; leave out for none."
    )
    schedule: list[ScheduleRule] = Field(
        default=[],
        description=(
            "Allowed hours per category: when any rule matches a person's category, that "
            "person may pass only inside one of their matching rules' windows; categories "
            "with no rule are unrestricted."
        ),
    )

    @model_validator(mode="after")
    def _temperatures(self) -> PolicyConfig:
        low, high = self.valid_temp_c
        if low >= high:
            raise KeyProblem("valid_temp_c", f"low {low} must be below high {high}")
        if not low < self.fever_c < high:
            raise KeyProblem("fever_c", f"{self.fever_c} is outside valid_temp_c [{low}, {high}]")
        return self


class PassesConfig(_Model):
    """How QR passes are verified offline."""

    public_keys: dict[str, ExistingFile] = Field(
        default={}, description="kid = public key file (PEM, as `gated keygen` writes)."
    )
    max_clock_skew_s: float = Field(
        default=120, ge=0, description="Seconds of clock difference allowed on nbf and exp."
    )


def _check_listen(value: str) -> str:
    if value == "":
        return value
    host, sep, port = value.rpartition(":")
    if not sep or not host.strip("[]") or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f'{value!r}: expected "host:port", e.g. "127.0.0.1:8080"')
    return value


class StatusConfig(_Model):
    """The local status screen for the guard."""

    listen: Annotated[str, AfterValidator(_check_listen)] = Field(
        default="127.0.0.1:8080", description='host:port of the status screen; "" = no screen.'
    )
    guard_pin_hash: str = Field(
        default="", description='The guard PIN\'s hash from `gated hash-pin`; "" = no guard login.'
    )
    language: Literal["zh-CN", "en"] = Field(
        default="zh-CN", description="Screen language: zh-CN, en."
    )
    guards: dict[str, str] = Field(
        default={},
        description=(
            "Per-guard PINs: guard id = hash from `gated hash-pin`; a guard listed here "
            "logs in only with its own PIN, any other guard id with guard_pin_hash."
        ),
    )
    lockout_after: int = Field(
        default=5, ge=1, le=100, description="Wrong PINs in a row that lock a guard id out."
    )
    lockout_s: float = Field(
        default=300, gt=0, description="Seconds a guard id (or client address) stays locked out."
    )
    session_h: float = Field(
        default=12, gt=0, le=168, description="Hours a login lasts; then the guard goes off duty."
    )

    @field_validator("guard_pin_hash")
    @classmethod
    def _not_a_pin(cls, value: str) -> str:
        if value.isdigit():
            raise ValueError("looks like a bare PIN: store the output of `gated hash-pin`")
        if value:
            from gated.status.auth import parse_pin_hash

            parse_pin_hash(value)
        return value

    @field_validator("guards")
    @classmethod
    def _guard_hashes(cls, value: dict[str, str]) -> dict[str, str]:
        from gated.status.auth import GUARD_ID, parse_pin_hash

        for guard, pin_hash in value.items():
            if not GUARD_ID.match(guard):
                raise ValueError(f"{guard!r}: a guard id is 1 to 32 letters, digits, '_.-'")
            try:
                parse_pin_hash(pin_hash)
            except ValueError as exc:
                raise KeyProblem(guard, str(exc)) from None
        return value

    @model_validator(mode="after")
    def _loopback_without_pin(self) -> StatusConfig:
        from gated.status.auth import is_loopback

        host = self.listen.rpartition(":")[0]
        if self.listen and not is_loopback(host) and not (self.guard_pin_hash or self.guards):
            raise KeyProblem(
                "listen", "beyond loopback only with a guard PIN: set guard_pin_hash or guards"
            )
        return self


class HardwareConfig(_Model):
    """How the GPIO pins are reached."""

    pin_factory: Literal["default", "mock", "lgpio", "rpigpio", "pigpio", "native"] = Field(
        default="default",
        description="gpiozero pin factory: default, mock (no hardware), lgpio (Pi 5), ...",
    )


class SimConfig(_Model):
    """What the sim drivers play."""

    scenario: OptionalFile = Field(default=None, description="JSON Lines file of timed inputs.")
    exit_when_done: bool = Field(
        default=False, description="Exit once the scenario is played and its sessions settled."
    )
    speed: float = Field(default=1.0, gt=0, description="Playback speed: 2.0 plays twice as fast.")


class Config(_Model):
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

    _source: Path = PrivateAttr(default_factory=lambda: Path("<dict>"))

    @property
    def source(self) -> Path:
        """The file this config was read from (absolute)."""
        return self._source

    @model_validator(mode="after")
    def _whole(self) -> Config:
        if not self.mqtt.client_id:
            self.mqtt.client_id = f"gated-{self.gate.site}-{self.gate.id}"
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
    try:
        text = path.read_bytes().decode("utf-8")
    except OSError as exc:
        raise ConfigError([f"{path}: cannot read: {exc.strerror or exc}"]) from None
    except UnicodeDecodeError as exc:
        raise ConfigError([f"{path}: not UTF-8 text: {exc.reason}"]) from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError([f"{path}: {_toml_problem(str(exc), text)}"]) from None
    if overrides:
        data = _merge(data, overrides)
    return config_from_dict(data, path)


def config_from_dict(data: Mapping[str, Any], source: Path) -> Config:
    """Validate a config given as a dict, as if read from the file ``source``."""
    absolute = Path(os.path.abspath(source))
    try:
        config = Config.model_validate(data, context={"base_dir": absolute.parent})
    except ValidationError as exc:
        raise ConfigError([_problem(str(source), e) for e in exc.errors()]) from None
    config._source = absolute
    return config


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
        reason = _INLINE_SECRETS.get(tuple(map(str, loc)), "unknown key (typo?)")
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
