"""What the drivers' config models share: the strict base, the value types and the checks.

Each driver module holds the pydantic model of its own config section (for
example :class:`drivers.rdm6300.Rdm6300CardConfig`), and the daemon hands each driver
an instance of it. ``gated.config`` builds the whole configuration from these models
and uses the same value types for its own sections: the types live here because
``drivers/`` never imports ``gated/``, and both sides need them.
"""

from __future__ import annotations

import datetime
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationInfo,
)


class KeyProblem(ValueError):
    """A problem a model-level check found with one key, named relative to that model.

    The loader appends ``key`` (dotted) to the error's location, so a cross-key check
    still names the key the user has to change.
    """

    def __init__(self, key: str, reason: str):
        super().__init__(reason)
        self.key = key


class StrictModel(BaseModel):
    """A config model that rejects unknown keys: a typo must not disable a check."""

    model_config = ConfigDict(extra="forbid")


# ---- value types -----------------------------------------------------------------

_HHMM = re.compile(r"^([01]\d|2[0-3]):[0-5]\d$")


def _check_hhmm(value: str) -> str:
    if not _HHMM.match(value):
        raise ValueError(f'{value!r} is not a time of day "HH:MM" (00:00 to 23:59)')
    return value


def parse_hhmm(value: str) -> datetime.time:
    """The ``datetime.time`` of a validated ``"HH:MM"`` string."""
    hours, minutes = value.split(":")
    return datetime.time(int(hours), int(minutes))


HhMm = Annotated[str, AfterValidator(_check_hhmm)]
"""A time of day as ``"HH:MM"``, 24-hour, two digits each."""


def _check_pin(value: object) -> object:
    # Digits-only strings become numbers so "17" and 17 are the same pin.
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value.strip())
    if isinstance(value, str):
        value = value.strip()
    if isinstance(value, bool) or not isinstance(value, int | str) or value == "":
        raise ValueError("a GPIO pin is a BCM number (17) or a gpiozero pin name ('GPIO17')")
    if isinstance(value, int) and value < 0:
        raise ValueError("a GPIO pin number is 0 or more")
    return value


Pin = Annotated[int | str, BeforeValidator(_check_pin)]
"""A gpiozero pin: a BCM number (``17``) or a pin name (``"GPIO17"``, ``"BOARD11"``)."""


def _base_dir(info: ValidationInfo) -> Path | None:
    context = info.context
    base = context.get("base_dir") if isinstance(context, dict) else None
    return Path(base) if base is not None else None


def _resolve(value: Path, info: ValidationInfo) -> Path:
    value = value.expanduser()
    base = _base_dir(info)
    if base is not None and not value.is_absolute():
        return base / value
    return value


CREDENTIALS_ROOT = Path("/run/credentials")
"""Where systemd puts each unit's credentials: ``/run/credentials/UNIT/NAME``."""


def credential_path(path: Path, env: Mapping[str, str] | None = None) -> Path:
    """``path``, or the same credential in ``$CREDENTIALS_DIRECTORY`` when that is set.

    A path ``/run/credentials/UNIT/NAME`` names a systemd credential by its NAME. In a
    unit with ``LoadCredential=`` (gated.service, or a ``systemd-run`` with the same
    credentials, whose directory is ``/run/credentials/run-u7.service/``) it is read
    from that unit's own directory, so one config serves the service and the commands
    run by hand. Any other path, or no ``$CREDENTIALS_DIRECTORY``, is left as it is.
    """
    env = os.environ if env is None else env
    directory = env.get("CREDENTIALS_DIRECTORY", "")
    if not directory or not path.is_absolute():
        return path
    try:
        parts = path.relative_to(CREDENTIALS_ROOT).parts
    except ValueError:
        return path
    if len(parts) != 2 or ".." in parts:
        return path
    return Path(directory) / parts[1]


def _existing_file(value: Path, info: ValidationInfo) -> Path:
    path = credential_path(_resolve(value, info))
    if not path.exists():
        raise ValueError(f"no such file: {path}")
    if not path.is_file():
        raise ValueError(f"not a file: {path}")
    return path


def _existing_dir(value: Path, info: ValidationInfo) -> Path:
    path = _resolve(value, info)
    if not path.is_dir():
        raise ValueError(f"no such directory: {path}")
    return path


def _empty_is_none(value: object) -> object:
    # TOML has no null: "" is how a file says "none" (and how an override unsets one).
    return None if value == "" else value


ResolvedPath = Annotated[Path, AfterValidator(_resolve)]
"""A path, made absolute against the config file's directory."""

ExistingFile = Annotated[Path, AfterValidator(_existing_file)]
"""A path resolved like ``ResolvedPath`` that must name an existing file."""

OptionalFile = Annotated[ExistingFile | None, BeforeValidator(_empty_is_none)]
OptionalDir = Annotated[
    Annotated[Path, AfterValidator(_existing_dir)] | None, BeforeValidator(_empty_is_none)
]
OptionalPin = Annotated[Pin | None, BeforeValidator(_empty_is_none)]

SerialPort = Annotated[str, Field(min_length=1)]
"""A serial port as pyserial's ``serial_for_url`` takes it: a device path
(``/dev/ttyAMA0``, a stable ``/dev/serial/by-id/...`` name) or a URL (``loop://``,
``spy:///dev/ttyUSB0``, ``rfc2217://host:port``, ``socket://host:port``)."""


# ---- descriptions the models of one section share ----------------------------------

CARD_DRIVER = "Card reader: rdm6300, wiegand, hid, osdp, sim or none."
QR_DRIVER = "QR reader: camera, serial, sim or none."
THERMOMETER_DRIVER = "Thermometer: mlx90614, serial, sim or none."
TURNSTILE_DRIVER = "Turnstile: gpio or sim."
PROMPTER_DRIVER = "Prompter: gpio, sim or none."
OFFSET_C = "Degrees Celsius added to every reading (calibration against a reference)."
OPEN_S = "Seconds the turnstile stays released for one person."
NIGHT = (
    'Night hours ["HH:MM", "HH:MM"] (may cross midnight) when every motion is prompted,'
    " so people are reminded even when no guard is watching."
)
#: The ``night`` hours when none are configured.
NIGHT_DEFAULT = ("22:00", "06:00")


class SerialConfig(StrictModel):
    """What every driver of a device on a serial port is configured with.

    Each such driver's model derives from this one and gives the fields its own
    ``driver`` value, description and default.
    """

    driver: str
    port: SerialPort
    baud: int = Field(default=9600, gt=0)


class NoConfig(StrictModel):
    """The model of a driver that takes no settings."""


def take(model: type[BaseModel], config: BaseModel | Mapping[str, Any] | None) -> BaseModel:
    """``config`` as an instance of ``model``: a model as it is, a mapping as given.

    The daemon hands every driver the model instance the config file was validated
    into. A mapping (a test, a bench) is taken without validation, as its keys are:
    the model's defaults fill in what it leaves out, so a default is written once,
    in the model.
    """
    if isinstance(config, model):
        return config
    if isinstance(config, BaseModel):
        raise TypeError(f"{model.__name__} expected, not {type(config).__name__}")
    return model.model_construct(**dict(config or {}))
