"""The hub's configuration (``HUB.toml``): validated like the gate's, every problem named.

``[hub]`` who the hub is and where it stores; ``[mqtt]`` the broker, with the gate's
connection keys (:class:`gated.config.sections.BrokerConfig`); ``[web]`` the fleet page;
``[report]`` the time zone days are counted in. docs/contracts.md §9.
"""

from __future__ import annotations

import zoneinfo
from pathlib import Path
from typing import Annotated, Literal

from pydantic import AfterValidator, Field, PrivateAttr, field_validator, model_validator

from gated.config import read_toml, validate_file
from gated.config.drivers import KeyProblem, OptionalFile, StrictModel
from gated.config.sections import (
    BrokerConfig,
    TopicName,
    _check_listen,
    known_zone,
    pin_hashes,
)

#: Below a day a hub stopped over a night would lose what the broker queued for it.
MIN_SESSION_EXPIRY_S = 86400


def _check_database(value: str) -> str:
    if value.startswith("sqlite:///") and len(value) > len("sqlite:///"):
        return value
    if value.startswith("postgresql://"):
        raise ValueError(
            "postgresql:// is not supported by this version yet: use sqlite:///PATH (embedded)"
        )
    raise ValueError('"sqlite:///PATH" (PATH relative to this file\'s directory, or absolute)')


class HubSection(StrictModel):
    """Who the hub is and where it keeps the district's ledger."""

    id: TopicName = Field(description="This hub's id (its MQTT client id is gated-hub-{id}).")
    database: Annotated[str, AfterValidator(_check_database)] = Field(
        default="sqlite:////var/lib/gated-hub/hub.db",
        description="Where events are stored: sqlite:///PATH (embedded, the default).",
    )
    password_file: OptionalFile = Field(
        default=None, description="File holding the database password (for a database server)."
    )
    share_group: str = Field(
        default="",
        pattern=r"^$|^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$",
        description='MQTT 5 shared subscription group of the hub instances; "" = plain.',
    )
    replay: bool = Field(default=True, description="Ask gates for the events the hub lacks.")
    black_below: float = Field(
        default=0.95,
        ge=0,
        le=1,
        description="A gate whose compliance share is below this is on the day's black list.",
    )
    session_expiry_s: int = Field(
        default=7 * 86400,
        ge=MIN_SESSION_EXPIRY_S,
        le=2**32 - 1,
        description="Seconds the broker keeps the hub's session (queueing for it) while away.",
    )
    retention_days: int = Field(
        default=365, ge=1, le=36500, description="Days stored events are kept before the purge."
    )
    registry_max_bytes: int = Field(
        default=64 * 1024 * 1024,
        ge=1024,
        description="Largest registry snapshot published: the gates' [mqtt] registry_max_bytes.",
    )
    offline_after_s: float = Field(
        default=90,
        ge=10,
        le=86400,
        description="A gate not heard from for this long shows offline, whatever its status said.",
    )


class WebSection(StrictModel):
    """The fleet page."""

    listen: Annotated[str, AfterValidator(_check_listen)] = Field(
        default="127.0.0.1:8090", description='host:port of the fleet page; "" = none.'
    )
    operators: dict[str, str] = Field(
        default={},
        description="Operator logins: name = hash from `gated hash-pin` (needed beyond loopback).",
    )
    language: Literal["zh-CN", "en"] = Field(
        default="zh-CN", description="Page language: zh-CN, en."
    )
    host_names: list[str] = Field(
        default=[], description="Names the page is reached by (the Host header), as the gate's."
    )
    tls_cert_file: OptionalFile = Field(
        default=None, description="Certificate chain (PEM) to serve the page over HTTPS."
    )
    tls_key_file: OptionalFile = Field(
        default=None, description="Private key (PEM) of tls_cert_file."
    )

    @field_validator("operators")
    @classmethod
    def _hashes(cls, value: dict[str, str]) -> dict[str, str]:
        return pin_hashes(value, "an operator name")

    @model_validator(mode="after")
    def _login_beyond_loopback(self) -> WebSection:
        from gated.status.auth import is_loopback

        host = self.listen.rpartition(":")[0]
        if self.listen and not is_loopback(host) and not self.operators:
            raise KeyProblem("listen", "beyond loopback only with operators: set [web] operators")
        if (self.tls_cert_file is None) != (self.tls_key_file is None):
            raise KeyProblem("tls_key_file", "set both tls_cert_file and tls_key_file, or neither")
        return self


class ReportSection(StrictModel):
    """How days are counted."""

    timezone: str = Field(default="UTC", description="IANA time zone days are counted in.")

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        return known_zone(value)


class HubConfig(StrictModel):
    """The whole configuration of one hub instance."""

    hub: HubSection = Field(description="Who the hub is.")
    mqtt: BrokerConfig = Field(default_factory=BrokerConfig, description="The broker.")
    web: WebSection = Field(default_factory=WebSection, description="The fleet page.")
    report: ReportSection = Field(default_factory=ReportSection, description="Reports.")

    _source: Path = PrivateAttr(default_factory=lambda: Path("<dict>"))

    @property
    def source(self) -> Path:
        """The file this config was read from (absolute)."""
        return self._source

    @property
    def database_path(self) -> Path:
        """The SQLite file of ``hub.database`` (relative to the config file's directory)."""
        path = Path(self.hub.database.removeprefix("sqlite:///"))
        return path if path.is_absolute() else self._source.parent / path

    @property
    def tz(self) -> zoneinfo.ZoneInfo:
        return zoneinfo.ZoneInfo(self.report.timezone)

    @model_validator(mode="after")
    def _whole(self) -> HubConfig:
        if not self.mqtt.client_id:
            self.mqtt.client_id = f"gated-hub-{self.hub.id}"
        if self.hub.share_group and self.mqtt.protocol == "3.1.1":
            raise KeyProblem(
                "hub.share_group",
                'shared subscriptions need MQTT 5: set share_group = "" with protocol "3.1.1"',
            )
        return self


def load_hub_config(path: str | Path) -> HubConfig:
    """Read and validate a hub config; ConfigError with one line per problem."""
    path = Path(path)
    config = validate_file(HubConfig, read_toml(path), path)
    config._source = path.resolve()
    return config
