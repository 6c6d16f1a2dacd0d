"""Config models of the devices, one per driver type, and the value types they share.

Each device section (``[card]``, ``[qr]``, ``[thermometer]``, ``[turnstile]``,
``[prompter]``) is a union of driver models told apart by their ``driver`` key, so
a key that belongs to another driver is an unknown key, not silently ignored.
"""

from __future__ import annotations

import datetime
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationInfo,
    field_validator,
    model_validator,
)


class KeyProblem(ValueError):
    """A problem a model-level check found with one key, named relative to that model.

    The loader appends ``key`` (dotted) to the error's location, so a cross-key check
    still names the key the user has to change.
    """

    def __init__(self, key: str, reason: str):
        super().__init__(reason)
        self.key = key


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


def _check_capture_source(value: object) -> object:
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value.strip())
    if isinstance(value, bool) or not isinstance(value, int | str) or value == "":
        raise ValueError("a camera index (0), a device path, a video file or a URL")
    if isinstance(value, int) and value < 0:
        raise ValueError("a camera index is 0 or more")
    return value


CaptureSource = Annotated[int | str, BeforeValidator(_check_capture_source)]


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


class StrictModel(BaseModel):
    """A config model that rejects unknown keys: a typo must not disable a check."""

    model_config = ConfigDict(extra="forbid")


# ---- card readers ------------------------------------------------------------------

_CARD_DRIVER = "Card reader: rdm6300, wiegand, hid, osdp, sim or none."


class Rdm6300CardConfig(StrictModel):
    """An RDM6300 125 kHz EM4100 reader on a UART (9600 8N1)."""

    driver: Literal["rdm6300"] = Field(default="rdm6300", description=_CARD_DRIVER)
    port: str = Field(min_length=1, description="Serial port the reader's TX is wired to.")
    baud: int = Field(
        default=9600, gt=0, description="Serial speed in baud (the RDM6300 sends 9600)."
    )
    debounce_s: float = Field(
        default=1.0,
        ge=0,
        description="Seconds within which the same card read again counts as one presentation.",
    )


class WiegandCardConfig(StrictModel):
    """A Wiegand 26/34 reader on two GPIO inputs."""

    driver: Literal["wiegand"] = Field(default="wiegand", description=_CARD_DRIVER)
    d0_pin: Pin = Field(description="GPIO input of the reader's D0 line (active low).")
    d1_pin: Pin = Field(description="GPIO input of the reader's D1 line (active low).")
    gap_ms: float = Field(default=25, gt=0, description="Milliseconds of silence that end a frame.")


class HidCardConfig(StrictModel):
    """A reader that types the card number like a keyboard (evdev)."""

    driver: Literal["hid"] = Field(default="hid", description=_CARD_DRIVER)
    device: str = Field(
        min_length=1,
        description="evdev device of the reader; a /dev/input/by-id/ path survives re-plugging.",
    )
    grab: bool = Field(
        default=True, description="Grab the device so its digits reach nothing else."
    )


class OsdpCardConfig(StrictModel):
    """An OSDP reader on RS-485, polled by gated as the Control Panel (libosdp)."""

    driver: Literal["osdp"] = Field(default="osdp", description=_CARD_DRIVER)
    port: str = Field(
        min_length=1, description="Serial port of the RS-485 adapter the reader is wired to."
    )
    baud: int = Field(
        default=9600, gt=0, description="Serial speed in baud, as set on the reader (OSDP: 9600)."
    )
    address: int = Field(
        default=0, ge=0, le=126, description="OSDP address of the reader, 0 to 126, as set on it."
    )
    scbk_file: OptionalFile = Field(
        default=None,
        description=(
            "File holding the reader's secure channel key (SCBK) as 32 hex digits;"
            " none = no secure channel."
        ),
    )
    install_mode: bool = Field(
        default=False,
        description=(
            "Let a reader still on the default key (SCBK-D) connect and be given the key in"
            " scbk_file; turn it off once the reader has it."
        ),
    )

    @model_validator(mode="after")
    def _install_needs_key(self) -> OsdpCardConfig:
        if self.install_mode and self.scbk_file is None:
            raise KeyProblem("scbk_file", "required when install_mode = true (the key to give)")
        return self


class SimCardConfig(StrictModel):
    """Cards come from the [sim] scenario."""

    driver: Literal["sim"] = Field(default="sim", description=_CARD_DRIVER)


class NoneCardConfig(StrictModel):
    """No card reader."""

    driver: Literal["none"] = Field(default="none", description=_CARD_DRIVER)


CardConfig = Annotated[
    Rdm6300CardConfig
    | WiegandCardConfig
    | HidCardConfig
    | OsdpCardConfig
    | SimCardConfig
    | NoneCardConfig,
    Field(discriminator="driver"),
]


# ---- QR readers --------------------------------------------------------------------

_QR_DRIVER = "QR reader: camera, serial, sim or none."


class CameraQrConfig(StrictModel):
    """A camera read through OpenCV, decoding QR codes only."""

    driver: Literal["camera"] = Field(default="camera", description=_QR_DRIVER)
    device: CaptureSource = Field(
        default=0, description="Capture source: camera index, V4L2 path, video file or stream URL."
    )
    fps: float = Field(default=10, gt=0, le=120, description="Frames per second captured.")
    decoder: Literal["zxing", "pyzbar"] = Field(
        default="zxing", description="QR decoder: zxing (zxing-cpp) or pyzbar."
    )
    width: int = Field(default=640, gt=0, description="Capture width in pixels.")
    height: int = Field(default=480, gt=0, description="Capture height in pixels.")
    motion_gate: bool = Field(
        default=True,
        description="Decode only when something moves, so an empty gate costs little CPU.",
    )


class SerialQrConfig(StrictModel):
    """A serial QR scanner (GM65-style) that sends each decoded text ended by CR/LF."""

    driver: Literal["serial"] = Field(default="serial", description=_QR_DRIVER)
    port: str = Field(min_length=1, description="Serial port of the scanner.")
    baud: int = Field(
        default=9600, gt=0, description="Serial speed in baud (9600 or 115200 mostly)."
    )


class SimQrConfig(StrictModel):
    """QR codes come from the [sim] scenario."""

    driver: Literal["sim"] = Field(default="sim", description=_QR_DRIVER)


class NoneQrConfig(StrictModel):
    """No QR reader."""

    driver: Literal["none"] = Field(default="none", description=_QR_DRIVER)


QrConfig = Annotated[
    CameraQrConfig | SerialQrConfig | SimQrConfig | NoneQrConfig, Field(discriminator="driver")
]


# ---- thermometers ------------------------------------------------------------------

_THERMOMETER_DRIVER = "Thermometer: mlx90614, serial, sim or none."
_OFFSET_C = "Degrees Celsius added to every reading (calibration against a reference)."


class Mlx90614ThermometerConfig(StrictModel):
    """An MLX90614 infrared thermometer on I2C (SMBus)."""

    driver: Literal["mlx90614"] = Field(default="mlx90614", description=_THERMOMETER_DRIVER)
    bus: int = Field(
        default=1, ge=0, description="I2C bus number (1 = /dev/i2c-1 on a Raspberry Pi)."
    )
    address: int = Field(
        default=0x5A, ge=0x03, le=0x77, description="7-bit I2C address of the sensor (0x5A = 90)."
    )
    offset_c: float = Field(default=0.0, ge=-10, le=10, description=_OFFSET_C)
    emissivity: float = Field(
        default=1.0,
        ge=0.1,
        le=1.0,
        description=(
            "Emissivity of what is measured, 0.1 to 1.0 (skin is about 0.98): readings are"
            " corrected in software from the sensor's own setting, which is never written."
        ),
    )
    interval_s: float = Field(default=0.2, gt=0, description="Seconds between reads.")


class SerialThermometerConfig(StrictModel):
    """A thermometer that sends one reading per line over a UART."""

    driver: Literal["serial"] = Field(default="serial", description=_THERMOMETER_DRIVER)
    port: str = Field(min_length=1, description="Serial port of the thermometer.")
    baud: int = Field(default=9600, gt=0, description="Serial speed in baud.")
    line_regex: str = Field(
        default=r"(-?\d+(?:\.\d+)?)",
        description="Regular expression whose one group captures degrees Celsius from a line.",
    )
    offset_c: float = Field(default=0.0, ge=-10, le=10, description=_OFFSET_C)

    @field_validator("line_regex")
    @classmethod
    def _one_group(cls, value: str) -> str:
        try:
            groups = re.compile(value).groups
        except re.error as exc:
            raise ValueError(f"not a regular expression: {exc}") from None
        if groups != 1:
            raise ValueError(f"needs exactly one capturing group, has {groups}")
        return value


class SimThermometerConfig(StrictModel):
    """Temperatures come from the [sim] scenario."""

    driver: Literal["sim"] = Field(default="sim", description=_THERMOMETER_DRIVER)
    offset_c: float = Field(default=0.0, ge=-10, le=10, description=_OFFSET_C)


class NoneThermometerConfig(StrictModel):
    """No thermometer."""

    driver: Literal["none"] = Field(default="none", description=_THERMOMETER_DRIVER)


ThermometerConfig = Annotated[
    Mlx90614ThermometerConfig
    | SerialThermometerConfig
    | SimThermometerConfig
    | NoneThermometerConfig,
    Field(discriminator="driver"),
]


# ---- turnstiles --------------------------------------------------------------------

_TURNSTILE_DRIVER = "Turnstile: gpio or sim."
_OPEN_S = "Seconds the turnstile stays released for one person."


class GpioTurnstileConfig(StrictModel):
    """A turnstile released by a relay on a GPIO output (de-energised = locked)."""

    driver: Literal["gpio"] = Field(default="gpio", description=_TURNSTILE_DRIVER)
    relay_pin: Pin = Field(description="GPIO output driving the release relay.")
    active_high: bool = Field(default=True, description="The relay is energised by a high output.")
    pulse_ms: int | None = Field(
        default=None,
        gt=0,
        description="Release with a pulse of this many ms; leave out to hold for open_s.",
    )
    open_s: float = Field(default=5.0, gt=0, le=300, description=_OPEN_S)
    passage_pin: OptionalPin = Field(
        default=None, description="GPIO input of the sensor that sees a person go through."
    )
    fire_pin: OptionalPin = Field(
        default=None, description="GPIO input of the fire alarm: free passage while it is active."
    )
    fire_nc: bool = Field(
        default=True, description="The fire contact is normally closed: an open circuit means fire."
    )
    tamper_pin: OptionalPin = Field(
        default=None,
        description="GPIO input of the enclosure or reader tamper switch:"
        " an alarm while it is active.",
    )
    tamper_nc: bool = Field(
        default=True,
        description="The tamper contact is normally closed: an open circuit means tamper.",
    )
    buzzer_pin: OptionalPin = Field(default=None, description="GPIO output of a buzzer.")
    green_led_pin: OptionalPin = Field(default=None, description="GPIO output of the green lamp.")
    red_led_pin: OptionalPin = Field(default=None, description="GPIO output of the red lamp.")


class SimTurnstileConfig(StrictModel):
    """A simulated turnstile; passages come from the [sim] scenario."""

    driver: Literal["sim"] = Field(default="sim", description=_TURNSTILE_DRIVER)
    open_s: float = Field(default=5.0, gt=0, le=300, description=_OPEN_S)


TurnstileConfig = Annotated[GpioTurnstileConfig | SimTurnstileConfig, Field(discriminator="driver")]


# ---- prompters ---------------------------------------------------------------------

_PROMPTER_DRIVER = "Prompter: gpio, sim or none."
_NIGHT = (
    'Night hours ["HH:MM", "HH:MM"] (may cross midnight) when every motion is prompted,'
    " so people are reminded even when no guard is watching."
)


class GpioPrompterConfig(StrictModel):
    """A PIR sensor on a GPIO input and spoken prompts."""

    driver: Literal["gpio"] = Field(default="gpio", description=_PROMPTER_DRIVER)
    pir_pin: Pin = Field(description="GPIO input of the PIR motion sensor.")
    audio: Literal["aplay", "dfplayer", "none"] = Field(
        default="aplay",
        description="Prompts via aplay (sounds_dir), a DFPlayer Mini (port) or none.",
    )
    port: str = Field(
        default="", description="Serial port of the DFPlayer Mini (audio = dfplayer)."
    )
    sounds_dir: OptionalDir = Field(
        default=None,
        description="Directory of the prompt WAV files, welcome.wav ... (audio = aplay).",
    )
    night: tuple[HhMm, HhMm] = Field(default=("22:00", "06:00"), description=_NIGHT)

    @model_validator(mode="after")
    def _audio_needs(self) -> GpioPrompterConfig:
        if self.audio == "dfplayer" and not self.port:
            raise KeyProblem("port", 'required when audio = "dfplayer"')
        if self.audio == "aplay" and self.sounds_dir is None:
            raise KeyProblem("sounds_dir", 'required when audio = "aplay"')
        return self


class SimPrompterConfig(StrictModel):
    """Prompts are logged, motion comes from the [sim] scenario."""

    driver: Literal["sim"] = Field(default="sim", description=_PROMPTER_DRIVER)
    night: tuple[HhMm, HhMm] = Field(default=("22:00", "06:00"), description=_NIGHT)


class NonePrompterConfig(StrictModel):
    """No prompter."""

    driver: Literal["none"] = Field(default="none", description=_PROMPTER_DRIVER)


PrompterConfig = Annotated[
    GpioPrompterConfig | SimPrompterConfig | NonePrompterConfig, Field(discriminator="driver")
]

DRIVER_MODELS: tuple[type[BaseModel], ...] = (
    Rdm6300CardConfig,
    WiegandCardConfig,
    HidCardConfig,
    OsdpCardConfig,
    SimCardConfig,
    NoneCardConfig,
    CameraQrConfig,
    SerialQrConfig,
    SimQrConfig,
    NoneQrConfig,
    Mlx90614ThermometerConfig,
    SerialThermometerConfig,
    SimThermometerConfig,
    NoneThermometerConfig,
    GpioTurnstileConfig,
    SimTurnstileConfig,
    GpioPrompterConfig,
    SimPrompterConfig,
    NonePrompterConfig,
)
"""Every driver model, for tools and tests that walk them."""
