"""The sections of the gate's configuration, one pydantic model each (see ``gated.config``)."""

from __future__ import annotations

import re
import zoneinfo
from pathlib import Path
from typing import Annotated, Literal
from urllib.parse import urlsplit

from pydantic import (
    AfterValidator,
    Field,
    field_validator,
    model_validator,
)

from gated.config.drivers import (
    ExistingFile,
    HhMm,
    KeyProblem,
    OptionalFile,
    ResolvedPath,
    StrictModel,
)

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


def known_zone(value: str) -> str:
    """``value`` when it is an IANA time zone this machine knows, else a ValueError."""
    try:
        zoneinfo.ZoneInfo(value)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError, OSError):
        raise ValueError(f"unknown time zone {value!r} (e.g. 'Asia/Shanghai')") from None
    return value


def pin_hashes(value: dict[str, str], what: str) -> dict[str, str]:
    """A table of logins (guards, operators): each name an id, each value a `gated hash-pin`
    hash; a bad hash is named by its login's key."""
    from gated.status.auth import GUARD_ID, parse_pin_hash

    for name, pin_hash in value.items():
        if not GUARD_ID.match(name):
            raise ValueError(f"{name!r}: {what} is 1 to 32 letters, digits, '_.-'")
        try:
            parse_pin_hash(pin_hash)
        except ValueError as exc:
            raise KeyProblem(name, str(exc)) from None
    return value


class GateConfig(StrictModel):
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
        return known_zone(value)


class StorageConfig(StrictModel):
    """Where the registry, the ledger and the outbox live."""

    path: ResolvedPath = Field(
        default=Path("/var/lib/gated/gated.db"),
        description="SQLite file: registry, ledger and outbox.",
    )
    retention_days: int = Field(
        default=30, ge=1, description="Days ledger events are kept before the daily purge."
    )
    undelivered_max_days: int = Field(
        default=90,
        ge=1,
        description=(
            "Days an event the broker never had is kept at most (a broker configured but"
            " unreachable); then purged with a device alarm. At least retention_days."
        ),
    )

    @model_validator(mode="after")
    def _undelivered_outlives_retention(self) -> StorageConfig:
        if self.undelivered_max_days < self.retention_days:
            raise KeyProblem(
                "undelivered_max_days",
                f"{self.undelivered_max_days} is below retention_days ({self.retention_days}):"
                f" set it to {self.retention_days} or more (an undelivered event is kept at"
                " least as long as a delivered one)",
            )
        return self


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


class BrokerConfig(StrictModel):
    """A connection to the central broker: the gate's ``[mqtt]``, and the hub's."""

    urls: list[Annotated[str, AfterValidator(_check_broker_url)]] = Field(
        default=[],
        description="Brokers, tried in order; [] = none: events stay in the ledger, no outbox.",
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
    keepalive_s: int = Field(default=30, ge=5, le=65535, description="MQTT keepalive in seconds.")
    protocol: Literal["auto", "5", "3.1.1"] = Field(
        default="auto",
        description='MQTT version: "auto" (5, else 3.1.1 where 5 is refused), "5" or "3.1.1".',
    )

    @model_validator(mode="after")
    def _cert_with_key(self) -> BrokerConfig:
        if (self.cert_file is None) != (self.key_file is None):
            raise KeyProblem(
                "key_file" if self.key_file is None else "cert_file",
                "cert_file and key_file go together",
            )
        tls_files = [k for k in ("ca_file", "cert_file") if getattr(self, k) is not None]
        if tls_files and self.urls and not any(u.startswith("mqtts://") for u in self.urls):
            # A CA given for a plain connection would silently not be used.
            raise KeyProblem(tls_files[0], "set, but no url is mqtts://: TLS would not be used")
        return self


class MqttConfig(BrokerConfig):
    """The central broker every event is reported to."""

    qos: Literal[1, 2] = Field(
        default=1,
        description="QoS of what the gate publishes: 1 or 2 (with 0 nothing confirms delivery).",
    )
    pii: Literal["masked", "full", "none"] = Field(
        default="masked", description="Personal data in published events: masked, full or none."
    )
    ha_discovery: bool = Field(
        default=False, description="Publish Home Assistant MQTT discovery (homeassistant/...)."
    )
    registry_max_bytes: int = Field(
        default=64 * 1024 * 1024,
        ge=1024,
        description="Largest registry message taken (snapshot or delta), in bytes.",
    )


class SiteConfig(StrictModel):
    """The gates of one site learning from each other's events (docs/contracts.md §4b)."""

    share: bool | None = Field(
        default=None,
        description=(
            "Learn from the site's other gates over the broker; default: true when"
            " [mqtt] urls is set, else false (true needs a broker)."
        ),
    )
    reorder_s: float = Field(
        default=2.0,
        gt=0,
        le=600,
        description="Seconds a gap in a peer's seq may wait for a late message before a replay.",
    )
    replay_max: int = Field(
        default=10_000,
        ge=1,
        le=10_000,
        description="Most seq numbers asked for in one cmd/replay (a longer gap is split).",
    )
    replay_timeout_s: float = Field(
        default=60.0,
        gt=0,
        description="Seconds a replay request may go unanswered before it is asked again.",
    )
    session_expiry_s: int = Field(
        default=0,
        ge=0,
        le=2**32 - 1,
        description=(
            "Above 0: a persistent MQTT session the broker keeps that long while the gate is"
            " away, queueing its peers' events (and its commands); 0: a clean session, and"
            " what the gate missed is replayed."
        ),
    )


# Unknown keys that are a secret written inline get a reason that says what to do.
INLINE_SECRETS: dict[tuple[str, ...], str] = {
    ("mqtt", "password"): "secrets come from files: use password_file",
    ("status", "guard_pin"): "never the PIN itself: use guard_pin_hash (`gated hash-pin`)",
}


class QuotaConfig(StrictModel):
    """How often a household may pass in a sliding window."""

    max: int = Field(ge=1, description="Granted verdicts a household may have per window.")
    window_h: float = Field(default=72, gt=0, description="Length of the sliding window in hours.")
    direction: Direction = Field(
        default="out", description="Direction the quota counts: in, out, both."
    )


class ScheduleRule(StrictModel):
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


_DEFAULT_COLORS: dict[str, Literal["allow", "guard", "deny"]] = {
    "green": "allow",
    "blue": "allow",
    "yellow": "guard",
    "red": "guard",
    "pink": "guard",
}


class PolicyConfig(StrictModel):
    """What a person must show and how the verdict is reached (docs/contracts.md §4a)."""

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


class PassesConfig(StrictModel):
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


class StatusConfig(StrictModel):
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
        default=5,
        ge=1,
        le=5,
        description=(
            "PIN tries per guard id within lockout_s (at most 5, docs/contracts.md §8); the "
            "booth's own screen (loopback) has its own count, apart from other machines."
        ),
    )
    lockout_gate_after: int = Field(
        default=20,
        ge=1,
        le=20,
        description="PIN tries per gate within lockout_s, for all guard ids (at most 20).",
    )
    lockout_s: float = Field(
        default=300,
        ge=300,
        le=86400,
        description="Seconds a wrong PIN counts against lockout_after and lockout_gate_after.",
    )
    session_h: float = Field(
        default=12, gt=0, le=168, description="Hours a login lasts; then the guard goes off duty."
    )

    kiosk_token_file: OptionalFile = Field(
        default=None,
        description=(
            "File holding the read-only token of kiosks and Prometheus (32 characters or "
            "more); none = beyond loopback only a guard's login reads the screen."
        ),
    )
    host_names: list[str] = Field(
        default=[],
        description=(
            "Names the screen is reached by (the Host header), besides the address a "
            "client connected to, localhost on loopback, and this machine's host name."
        ),
    )
    max_clients: int = Field(
        default=20, ge=1, le=200, description="Live screens (event streams) at once; more get 503."
    )
    max_connections: int = Field(
        default=64,
        ge=2,
        le=400,
        description=(
            "Open connections at once from other machines, and as many from this one "
            "(the booth), counted apart; more get 503."
        ),
    )
    tls_cert_file: OptionalFile = Field(
        default=None,
        description="Certificate chain (PEM) to serve the screen over HTTPS; none = plain HTTP.",
    )
    tls_key_file: OptionalFile = Field(
        default=None, description="Private key (PEM) of tls_cert_file."
    )

    @field_validator("host_names")
    @classmethod
    def _host_names(cls, value: list[str]) -> list[str]:
        for name in value:
            if not re.fullmatch(r"[A-Za-z0-9]([A-Za-z0-9.:-]{0,252})", name):
                raise ValueError(f"{name!r}: a host name or an IP address, without a port")
        return [name.lower().rstrip(".") for name in value]

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
        return pin_hashes(value, "a guard id")

    @model_validator(mode="after")
    def _loopback_without_pin(self) -> StatusConfig:
        from gated.status.auth import is_loopback

        host = self.listen.rpartition(":")[0]
        if self.listen and not is_loopback(host) and not (self.guard_pin_hash or self.guards):
            raise KeyProblem(
                "listen", "beyond loopback only with a guard PIN: set guard_pin_hash or guards"
            )
        if (self.tls_cert_file is None) != (self.tls_key_file is None):
            raise KeyProblem("tls_key_file", "set both tls_cert_file and tls_key_file, or neither")
        if self.max_clients >= self.max_connections:
            raise KeyProblem("max_clients", "must be below max_connections")
        if self.kiosk_token_file is not None:
            from gated.status.auth import check_kiosk_token

            problem = check_kiosk_token(self.kiosk_token_file)
            if problem:
                raise KeyProblem("kiosk_token_file", problem)
        return self


class HardwareConfig(StrictModel):
    """How the GPIO pins are reached."""

    pin_factory: Literal["default", "mock", "lgpio", "rpigpio", "pigpio", "native"] = Field(
        default="default",
        description="gpiozero pin factory: default, mock (no hardware), lgpio (Pi 5), ...",
    )


class SimConfig(StrictModel):
    """What the sim drivers play."""

    scenario: OptionalFile = Field(default=None, description="JSON Lines file of timed inputs.")
    exit_when_done: bool = Field(
        default=False, description="Exit once the scenario is played and its sessions settled."
    )
    speed: float = Field(default=1.0, gt=0, description="Playback speed: 2.0 plays twice as fast.")
    input: ResolvedPath | None = Field(
        default=None,
        description="A file (or FIFO) followed while the gate runs: each line played as it comes.",
    )

    @model_validator(mode="after")
    def _input_never_ends(self) -> SimConfig:
        if self.input is not None and self.exit_when_done:
            raise KeyProblem("exit_when_done", "not with sim.input, which never ends")
        return self
