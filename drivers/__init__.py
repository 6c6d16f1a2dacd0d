"""Device drivers: one module per device kind; none of them imports ``gated``.

``DRIVERS`` maps a config section and its ``driver`` value to the class that
implements it, imported only when chosen, so a laptop never needs the hardware
libraries of drivers it does not use.
"""

from __future__ import annotations

import importlib
from typing import Any

DRIVERS: dict[tuple[str, str], str] = {
    ("card", "sim"): "drivers.sim:SimCardReader",
    ("qr", "sim"): "drivers.sim:SimQrScanner",
    ("thermometer", "sim"): "drivers.sim:SimThermometer",
    ("turnstile", "sim"): "drivers.sim:SimTurnstile",
    ("prompter", "sim"): "drivers.sim:SimPrompter",
    ("turnstile", "gpio"): "drivers.turnstile:GpioTurnstile",
    ("prompter", "gpio"): "drivers.prompter:GpioPrompter",
    ("card", "wiegand"): "drivers.wiegand:WiegandCardReader",
    ("card", "rdm6300"): "drivers.rdm6300:Rdm6300CardReader",
    ("card", "hid"): "drivers.hid:HidCardReader",
    ("card", "osdp"): "drivers.osdp:OsdpCardReader",
    ("qr", "serial"): "drivers.serial_qr:SerialQrScanner",
    ("thermometer", "serial"): "drivers.serial_thermometer:SerialThermometer",
    ("qr", "camera"): "drivers.camera:CameraQrScanner",
    ("thermometer", "mlx90614"): "drivers.mlx90614:Mlx90614Thermometer",
}


def driver_class(section: str, name: str) -> Any:
    """The driver class for ``[section] driver = name``; KeyError if there is none."""
    target = DRIVERS[(section, name)]
    module_name, _, cls_name = target.partition(":")
    return getattr(importlib.import_module(module_name), cls_name)
