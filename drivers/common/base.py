"""What every driver shares: the reading it emits and the interface it offers."""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

from pydantic import BaseModel

from drivers.common.options import NoConfig, take

#: Kinds of reading a driver may emit, and the type of ``Reading.value`` for each.
#: ``motion`` bool, ``temp`` float (degrees Celsius, already offset-corrected),
#: ``card`` str (uid as the registry stores it), ``qr`` str (raw decoded text),
#: ``passage`` bool, ``fire`` bool (True = fire input active), ``tamper`` bool (True =
#: an enclosure or reader tamper switch is open), ``device`` DeviceHealth (a driver's
#: health changed), ``done`` None (a simulated driver has played its last input).
READING_KINDS = (
    "motion",
    "temp",
    "card",
    "qr",
    "passage",
    "fire",
    "tamper",
    "device",
    "done",
)


def describe(exc: BaseException) -> str:
    """A short one-line reason for a device failure (the OS's words when there are some)."""
    cause = exc.__cause__ or (None if exc.__suppress_context__ else exc.__context__)
    if isinstance(cause, OSError) and cause.strerror:
        return cause.strerror  # pyserial wraps the OSError in a longer message
    if isinstance(exc, OSError) and exc.strerror and exc.errno is not None:
        return exc.strerror
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


@dataclass(frozen=True)
class DeviceHealth:
    """Whether a device works, with a short human-readable detail."""

    ok: bool
    detail: str = ""


@dataclass(frozen=True)
class Reading:
    """One input from a device, stamped with the monotonic clock when it was read."""

    kind: str
    value: Any
    source: str
    t: float = field(default_factory=time.monotonic)


Emit = Callable[[Reading], None]


@dataclass
class DriverContext:
    """What a driver may need beyond its own config.

    ``pin_factory`` names gpiozero's pin factory (``mock`` in tests); ``scenario`` is
    the shared :class:`drivers.sim.Scenario` that simulated drivers play.
    """

    pin_factory: str = "default"
    scenario: Any = None


class Driver(ABC):
    """A device: started once, stopped once, asked for its health at any time.

    Readings go to ``emit``, which must be cheap and thread-safe (the controller's
    queue ``put``). Hardware libraries are imported in ``start`` so that the module
    imports on any machine.

    ``config`` is the driver's own config model (``config_model``, defined in the
    driver's module), the ``[section]`` the daemon validated; a driver reads its
    settings from it. A mapping is taken as given, the model's defaults filling what
    it leaves out (see :func:`drivers.common.options.take`).
    """

    #: The name used in health reports and readings, e.g. ``"card"``.
    name: str = "device"
    #: The model of this driver's config section.
    config_model: ClassVar[type[BaseModel]] = NoConfig
    config: BaseModel

    def __init__(
        self,
        name: str,
        emit: Emit,
        config: BaseModel | Mapping[str, Any] | None = None,
        ctx: DriverContext | None = None,
    ):
        self.name = name
        self.emit = emit
        self.config = take(self.config_model, config)
        self.ctx = ctx or DriverContext()

    @abstractmethod
    def start(self) -> None:
        """Open the device and begin emitting readings."""

    @abstractmethod
    def stop(self) -> None:
        """Stop emitting and release the device; safe to call twice."""

    def health(self) -> DeviceHealth:
        """The device's current health."""
        return DeviceHealth(True, "")


class Turnstile(Driver):
    """The barrier: locked when de-energised, opened for a grant, freed for fire."""

    @abstractmethod
    def open(self, seconds: float) -> None:
        """Let one person through: release for ``seconds`` (or one pulse)."""

    @abstractmethod
    def lock(self) -> None:
        """De-energise: the barrier is locked (fail-secure)."""

    @abstractmethod
    def free(self, active: bool) -> None:
        """Hold the barrier open (``True``) or return to normal (``False``)."""

    def signal(self, verdict: str) -> None:
        """Show a verdict on LEDs and buzzer: ``granted``, ``denied`` or ``guard``."""


class Prompter(Driver):
    """The voice prompter: plays named prompts, reports the PIR as ``motion``."""

    PROMPTS = (
        "welcome",
        "show_pass",
        "measure_temp",
        "remeasure",
        "granted",
        "denied",
        "fever",
        "wait_guard",
        "not_registered",
    )

    @abstractmethod
    def play(self, prompt: str) -> None:
        """Play one of ``PROMPTS``; must not block the caller."""
