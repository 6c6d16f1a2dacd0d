"""What the GPIO drivers share: the pin factory chosen by name and a health tracker.

gpiozero is imported inside the functions, so this module imports on any machine.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from drivers.common.base import DeviceHealth, Emit, Reading, describe

__all__ = ["GpioError", "HealthTracker", "close_quietly", "describe", "pin_factory"]

log = logging.getLogger(__name__)

_factories: dict[str, Any] = {}
_factories_lock = threading.Lock()


class GpioError(OSError):
    """A GPIO device could not be opened or driven; the message says which and why."""


def pin_factory(name: str) -> Any:
    """The gpiozero pin factory called ``name``, one per process.

    ``"mock"`` is one process-wide :class:`gpiozero.pins.mock.MockFactory`: a test
    calls this function with ``"mock"`` to get the very factory the drivers use and
    drives its pins. ``"default"`` is gpiozero's own choice (``GPIOZERO_PIN_FACTORY``
    or the first that loads: lgpio, rpigpio, pigpio, native). Any other name is a
    gpiozero pin factory entry point (``lgpio``, ``rpigpio``, ``pigpio``, ``native``).
    """
    with _factories_lock:
        if name in _factories:
            return _factories[name]
        try:
            if name == "default":
                from gpiozero import Device

                Device.ensure_pin_factory()
                factory = Device.pin_factory
            elif name == "mock":
                from gpiozero.pins.mock import MockFactory

                factory = MockFactory()
            else:
                from importlib.metadata import entry_points

                found = [
                    ep for ep in entry_points(group="gpiozero_pin_factories") if ep.name == name
                ]
                if not found:
                    raise GpioError(f"no gpiozero pin factory called {name!r}")
                factory = found[0].load()()
        except GpioError:
            raise
        except Exception as exc:  # gpiozero raises ImportError, OSError, RuntimeError...
            raise GpioError(f"GPIO pin factory {name!r} did not load: {exc}") from exc
        _factories[name] = factory
        return factory


class HealthTracker:
    """A device's health made of its parts' problems; emits a reading when it changes.

    Each part (``"relay"``, ``"fire input"``, ``"audio"``...) is fine or has one
    problem; the device is healthy when no part has one.
    """

    def __init__(self, name: str, emit: Emit):
        self.name = name
        self.emit = emit
        self._problems: dict[str, str] = {}
        self._last = DeviceHealth(True, "")
        self._lock = threading.Lock()

    def set(self, part: str, problem: str | None) -> None:
        """Record ``part`` as fine (``None``) or failing with ``problem``."""
        with self._lock:
            if problem is None:
                self._problems.pop(part, None)
            else:
                self._problems[part] = problem
            now = self.current()
            if now == self._last:
                return
            self._last = now
        if now.ok:
            log.info("%s recovered", self.name)
        else:
            log.warning("%s unhealthy: %s", self.name, now.detail)
        self.emit(Reading("device", now, self.name))

    def current(self) -> DeviceHealth:
        """The health as of now."""
        if not self._problems:
            return DeviceHealth(True, "")
        return DeviceHealth(False, "; ".join(f"{p}: {d}" for p, d in self._problems.items()))


def close_quietly(device: Any) -> None:
    """Close a gpiozero device (or anything with ``close``), ignoring errors."""
    if device is None:
        return
    try:
        device.close()
    except Exception as exc:  # closing goes on for the other devices
        log.debug("close failed: %s", exc)
