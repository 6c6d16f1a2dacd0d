"""``gated selftest -c FILE``: for installers, one check of every configured device.

Pulses the relay, plays a prompt, starts each input device and waits a little for a
reading (present a card, show a pass, stand before the thermometer), then prints a
table. Exit 0 when every configured device started and is healthy, 1 otherwise.
"""

from __future__ import annotations

import queue
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from drivers import driver_class
from drivers.common.base import DeviceHealth, Driver, DriverContext, Prompter, Reading, Turnstile
from drivers.prompter import GpioPrompterConfig
from gated.app import SECTIONS
from gated.passes import describe_qr
from gated.privacy import mask_uid

if TYPE_CHECKING:
    from gated.config import Config

INPUTS = ("card", "qr", "thermometer")
#: Seconds the prompter may take to play ``welcome`` to its end.
PROMPT_WAIT_S = 10.0


@dataclass
class Check:
    """The outcome for one device."""

    device: str
    driver: str
    ok: bool
    detail: str


def _shown(reading: Reading) -> str:
    if reading.kind == "card":
        return f"card {mask_uid(str(reading.value))}"
    if reading.kind == "qr":
        return describe_qr(str(reading.value))
    if reading.kind == "temp":
        return "a temperature reading"
    return reading.kind


def _drain_fire(readings: queue.Queue[Reading]) -> bool:
    fire = False
    while True:
        try:
            r = readings.get_nowait()
        except queue.Empty:
            return fire
        if r.kind == "fire":
            fire = bool(r.value)


def run_selftest(
    config: Config, wait_s: float = 10.0, pulse_s: float = 1.0, prompt_wait_s: float = PROMPT_WAIT_S
) -> list[Check]:
    """Check every configured device; ``wait_s`` is how long to wait for a reading,
    ``pulse_s`` how long the relay is energised, ``prompt_wait_s`` how long a prompt
    may take to play (seconds)."""
    results: list[Check] = []
    ctx = DriverContext(pin_factory=config.hardware.pin_factory)
    for section in SECTIONS:
        cfg = getattr(config, section)
        if cfg.driver == "none":
            continue
        if cfg.driver == "sim":
            results.append(Check(section, "sim", True, "simulated"))
            continue
        readings: queue.Queue[Reading] = queue.Queue()
        try:
            device = driver_class(section, cfg.driver)(section, readings.put, cfg, ctx)
            device.start()
        except Exception as exc:  # the installer needs the reason, whatever it is
            results.append(Check(section, cfg.driver, False, f"did not start: {exc}"))
            continue
        try:
            results.append(
                _exercise(section, cfg.driver, device, readings, wait_s, pulse_s, prompt_wait_s)
            )
        finally:
            device.stop()
    return results


def _exercise(
    section: str,
    driver: str,
    device: Driver,
    readings: queue.Queue[Reading],
    wait_s: float,
    pulse_s: float,
    prompt_wait_s: float,
) -> Check:
    detail = "started"
    if isinstance(device, Turnstile):
        fire = _drain_fire(readings)
        if fire:
            # The relay is held energised while the fire input is active: say so plainly.
            return Check(
                section,
                driver,
                False,
                "fire input active: passage is free (check the fire-alarm contact and its wiring)",
            )
        device.open(pulse_s)
        time.sleep(pulse_s)  # the installer hears and sees the relay click
        device.lock()
        detail = f"relay pulsed for {pulse_s:g} s, then locked"
    elif isinstance(device, Prompter):
        if isinstance(device.config, GpioPrompterConfig) and device.config.audio == "none":
            detail = "no audio configured (PIR only)"
        else:
            device.play("welcome")
            detail = "played 'welcome'"
            wait_idle = getattr(device, "wait_idle", None)
            if wait_idle is not None and not wait_idle(prompt_wait_s):
                return Check(
                    section, driver, False, f"'welcome' did not finish within {prompt_wait_s:g} s"
                )
    elif section in INPUTS:
        detail = f"no reading within {wait_s:g} s (present one to see it here)"
        deadline = time.monotonic() + wait_s
        while (left := deadline - time.monotonic()) > 0:
            try:
                r = readings.get(timeout=left)
            except queue.Empty:
                break
            if r.kind == "device":
                continue
            detail = f"read {_shown(r)}"
            break
    health: DeviceHealth = device.health()
    if not health.ok:
        return Check(section, driver, False, health.detail or "unhealthy")
    return Check(section, driver, True, detail)


def format_table(results: list[Check]) -> str:
    """The results as an aligned text table."""
    rows = [("device", "driver", "result", "detail")]
    rows += [(c.device, c.driver, "ok" if c.ok else "FAILED", c.detail) for c in results]
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    return "\n".join(
        f"{r[0]:<{widths[0]}}  {r[1]:<{widths[1]}}  {r[2]:<{widths[2]}}  {r[3]}" for r in rows
    )
