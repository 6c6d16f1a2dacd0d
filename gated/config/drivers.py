"""The device sections of the config: each a union of the driver models, told apart by ``driver``.

Each driver's model lives in its driver module (:class:`drivers.rdm6300.Rdm6300CardConfig`,
...), so a driver is handed its own typed model; the value types they share are in
:mod:`drivers.common.options`. This module puts them together: each device section
(``[card]``, ``[qr]``, ``[thermometer]``, ``[turnstile]``, ``[prompter]``) is a union
of driver models told apart by their ``driver`` key, so a key that belongs to another
driver is an unknown key, not silently ignored. ``driver = "none"`` (no such device)
is a model of this module: no driver reads it.

The names are re-exported here, so ``from gated.config.drivers import ...`` (and
``from gated.config import ...``) keep working.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, Field

from drivers.camera import CameraQrConfig, CaptureSource
from drivers.common.options import (
    CARD_DRIVER,
    CREDENTIALS_ROOT,
    PROMPTER_DRIVER,
    QR_DRIVER,
    THERMOMETER_DRIVER,
    ExistingFile,
    HhMm,
    KeyProblem,
    OptionalDir,
    OptionalFile,
    OptionalPin,
    Pin,
    ResolvedPath,
    StrictModel,
    credential_path,
    parse_hhmm,
)
from drivers.hid import HidCardConfig
from drivers.mlx90614 import Mlx90614ThermometerConfig
from drivers.osdp import OsdpCardConfig
from drivers.prompter import GpioPrompterConfig
from drivers.rdm6300 import Rdm6300CardConfig
from drivers.serial_qr import SerialQrConfig
from drivers.serial_thermometer import SerialThermometerConfig
from drivers.sim import (
    SimCardConfig,
    SimPrompterConfig,
    SimQrConfig,
    SimThermometerConfig,
    SimTurnstileConfig,
)
from drivers.turnstile import GpioTurnstileConfig
from drivers.wiegand import WiegandCardConfig

__all__ = [
    "CREDENTIALS_ROOT",
    "DRIVER_MODELS",
    "CameraQrConfig",
    "CaptureSource",
    "CardConfig",
    "ExistingFile",
    "GpioPrompterConfig",
    "GpioTurnstileConfig",
    "HhMm",
    "HidCardConfig",
    "KeyProblem",
    "Mlx90614ThermometerConfig",
    "NoneCardConfig",
    "NonePrompterConfig",
    "NoneQrConfig",
    "NoneThermometerConfig",
    "OptionalDir",
    "OptionalFile",
    "OptionalPin",
    "OsdpCardConfig",
    "Pin",
    "PrompterConfig",
    "QrConfig",
    "Rdm6300CardConfig",
    "ResolvedPath",
    "SerialQrConfig",
    "SerialThermometerConfig",
    "SimCardConfig",
    "SimPrompterConfig",
    "SimQrConfig",
    "SimThermometerConfig",
    "SimTurnstileConfig",
    "StrictModel",
    "ThermometerConfig",
    "TurnstileConfig",
    "WiegandCardConfig",
    "credential_path",
    "parse_hhmm",
]


class NoneCardConfig(StrictModel):
    """No card reader."""

    driver: Literal["none"] = Field(default="none", description=CARD_DRIVER)


class NoneQrConfig(StrictModel):
    """No QR reader."""

    driver: Literal["none"] = Field(default="none", description=QR_DRIVER)


class NoneThermometerConfig(StrictModel):
    """No thermometer."""

    driver: Literal["none"] = Field(default="none", description=THERMOMETER_DRIVER)


class NonePrompterConfig(StrictModel):
    """No prompter."""

    driver: Literal["none"] = Field(default="none", description=PROMPTER_DRIVER)


CardConfig = Annotated[
    Rdm6300CardConfig
    | WiegandCardConfig
    | HidCardConfig
    | OsdpCardConfig
    | SimCardConfig
    | NoneCardConfig,
    Field(discriminator="driver"),
]

QrConfig = Annotated[
    CameraQrConfig | SerialQrConfig | SimQrConfig | NoneQrConfig, Field(discriminator="driver")
]

ThermometerConfig = Annotated[
    Mlx90614ThermometerConfig
    | SerialThermometerConfig
    | SimThermometerConfig
    | NoneThermometerConfig,
    Field(discriminator="driver"),
]

TurnstileConfig = Annotated[GpioTurnstileConfig | SimTurnstileConfig, Field(discriminator="driver")]

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
