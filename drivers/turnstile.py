"""A turnstile on GPIO: release relay, passage sensor, fire and tamper inputs, lamps, buzzer.

The relay is energised while any of three things asks for it: a grant (``open``, a
pulse of ``pulse_ms`` or held for ``open_s`` until ``lock``), the controller's
``free`` (mode ``free`` or fire), or the fire input as this driver sees it. The
driver energises the relay on fire itself, in the GPIO callback, so egress does not
wait for the controller's queue. The tamper input (an enclosure or reader tamper
switch) only reports: it never moves the relay.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable
from typing import Any, Literal

from pydantic import Field

from drivers.common.base import DeviceHealth, Reading, Turnstile
from drivers.common.gpio import GpioError, HealthTracker, close_quietly, describe, pin_factory
from drivers.common.options import OPEN_S, TURNSTILE_DRIVER, OptionalPin, Pin, StrictModel

log = logging.getLogger(__name__)

#: Seconds the fire input must stay clear before the fire counts as over: a
#: bouncing contact must not raise and clear the alarm several times.
FIRE_CLEAR_S = 0.5
#: Seconds the tamper contact must stay closed before the tamper counts as over
#: (a lid pressed shut bounces like any contact).
TAMPER_CLEAR_S = FIRE_CLEAR_S
#: Seconds within which a beam broken again is the same person (legs, a bag).
PASSAGE_MERGE_S = 0.3
#: What each verdict shows: (lamp, seconds lit, beeps, seconds per beep).
SIGNALS: dict[str, tuple[str, float, int, float]] = {
    "granted": ("green", 2.0, 1, 0.1),
    "denied": ("red", 2.0, 2, 0.15),
    "guard": ("red", 3.0, 3, 0.3),
}


class GpioTurnstileConfig(StrictModel):
    """A turnstile released by a relay on a GPIO output (de-energised = locked)."""

    driver: Literal["gpio"] = Field(default="gpio", description=TURNSTILE_DRIVER)
    relay_pin: Pin = Field(description="GPIO output driving the release relay.")
    active_high: bool = Field(default=True, description="The relay is energised by a high output.")
    pulse_ms: int | None = Field(
        default=None,
        gt=0,
        description="Release with a pulse of this many ms; leave out to hold for open_s.",
    )
    open_s: float = Field(default=5.0, gt=0, le=300, description=OPEN_S)
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


class LatchedContact:
    """A contact input to ground (the Pi's pull-up) that is active at once, clear slowly.

    It turns active at the first edge that makes it so and clear only once it has read
    clear for ``clear_s``: a bouncing contact raises once and clears once. With ``nc``
    (normally closed) an open circuit, a cut wire included, is active. ``on_change``
    is called with the new state, under ``lock``.
    """

    def __init__(
        self,
        what: str,
        device: Any,
        nc: bool,
        clear_s: float,
        lock: threading.RLock,
        on_change: Callable[[bool], None],
    ):
        self.what = what
        self.device = device
        self.nc = nc
        self.clear_s = clear_s
        self.active = False
        self._lock = lock
        self._on_change = on_change
        self._timer: threading.Timer | None = None

    def start(self) -> None:
        """Follow the input's edges, and report it at once if it is active already."""
        self.device.when_activated = self._changed
        self.device.when_deactivated = self._changed
        self._changed()  # active (or a cut wire) already at start

    def cancel(self) -> None:
        """Stop following the input (before its device is closed); forget its state."""
        with self._lock:
            if self._timer is not None:
                self._timer.cancel()
            self._timer = None
            self.device = None
            self.active = False

    def _reads_active(self, device: Any) -> bool:
        # Wired to ground with a pull-up: a closed contact reads active (low).
        closed = bool(device.is_active)
        return not closed if self.nc else closed

    def _changed(self) -> None:
        device = self.device
        if device is None:
            return
        try:
            active = self._reads_active(device)
        except Exception as exc:  # a closed device during stop
            log.debug("%s not read: %s", self.what, exc)
            return
        with self._lock:
            if self.device is None:
                return
            if active:
                if self._timer is not None:
                    self._timer.cancel()
                    self._timer = None
                if not self.active:
                    self._set(True)
            elif self.active and self._timer is None:
                timer = threading.Timer(self.clear_s, self._maybe_clear)
                timer.daemon = True
                self._timer = timer
                timer.start()

    def _maybe_clear(self) -> None:
        with self._lock:
            if threading.current_thread() is not self._timer:
                return  # cancelled: the contact turned active again, or stop
            self._timer = None
            if self.device is None:
                return
            try:
                active = self._reads_active(self.device)
            except Exception as exc:
                log.debug("%s not read: %s", self.what, exc)
                return
            if not active and self.active:
                self._set(False)

    def _set(self, active: bool) -> None:
        self.active = active
        self._on_change(active)


class GpioTurnstile(Turnstile):
    """A turnstile released by a relay on a GPIO output; de-energised means locked.

    Config: :class:`GpioTurnstileConfig` (``[turnstile] driver = "gpio"``). Inputs are
    wired to ground with the Pi's pull-up: active low.
    Emits ``passage``, ``fire`` and ``tamper`` readings (True when the tamper contact
    opens, False once it has been closed for :data:`TAMPER_CLEAR_S`).
    """

    config_model = GpioTurnstileConfig
    config: GpioTurnstileConfig

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        pulse_ms = self.config.pulse_ms
        self.pulse_s: float | None = pulse_ms / 1000.0 if pulse_ms else None
        self.fire_nc = self.config.fire_nc
        self.tamper_nc = self.config.tamper_nc
        self.health_tracker = HealthTracker(self.name, self.emit)
        self._lock = threading.RLock()
        self._relay: Any = None
        self._logged_energised = False
        self._passage: Any = None
        self._fire_in: LatchedContact | None = None
        self._tamper_in: LatchedContact | None = None
        self._lamps: dict[str, Any] = {}
        self._buzzer: Any = None
        self._fire = False  # the fire input as this driver last reported it
        self._free = False  # the controller's free(): mode free or fire
        self._open_until: float | None = None  # monotonic end of a grant's release
        self._timer: threading.Timer | None = None
        self._passage_clear_at = -math.inf
        self.passages_merged = 0

    # -- life cycle --------------------------------------------------------------------

    def start(self) -> None:
        """Open the relay de-energised, then the inputs and outputs; report fire at once.

        The relay starts de-energised (locked) and ``stop`` de-energises it: the gate
        is fail-secure, so a daemon that is not running never leaves it open. Fire is
        fail-safe the other way round: the input is normally closed, so fire and a
        cut wire both read as fire and free the gate while the daemon runs. (Wire the
        fire panel to the turnstile's own release too: no software holds the gate
        open when the daemon is down.)
        """
        factory = pin_factory(self.ctx.pin_factory)
        from gpiozero import LED, Buzzer, DigitalInputDevice, OutputDevice

        config = self.config
        try:
            self._relay = OutputDevice(
                config.relay_pin,
                active_high=config.active_high,
                initial_value=False,
                pin_factory=factory,
            )
        except Exception as exc:  # gpiozero raises many kinds; the relay is the gate
            raise GpioError(f"relay on GPIO {config.relay_pin}: {describe(exc)}") from exc

        def optional(part: str, pin: int | str | None, build: Any) -> Any:
            if pin is None:
                return None
            try:
                device = build(pin)
            except Exception as exc:  # one broken part must not stop the others
                self.health_tracker.set(part, f"GPIO {pin}: {describe(exc)}")
                return None
            return device

        def contact(
            what: str, pin: int | str | None, nc: bool, clear_s: float, on: Callable[[bool], None]
        ) -> LatchedContact | None:
            device = optional(
                what, pin, lambda p: DigitalInputDevice(p, pull_up=True, pin_factory=factory)
            )
            if device is None:
                return None
            return LatchedContact(what, device, nc, clear_s, self._lock, on)

        self._fire_in = contact(
            "fire input", config.fire_pin, self.fire_nc, FIRE_CLEAR_S, self._set_fire
        )
        self._tamper_in = contact(
            "tamper input", config.tamper_pin, self.tamper_nc, TAMPER_CLEAR_S, self._set_tamper
        )
        self._passage = optional(
            "passage sensor",
            config.passage_pin,
            lambda p: DigitalInputDevice(p, pull_up=True, pin_factory=factory),
        )
        for lamp, pin in (("green", config.green_led_pin), ("red", config.red_led_pin)):
            device = optional(
                f"{lamp} lamp",
                pin,
                lambda p: LED(p, initial_value=False, pin_factory=factory),
            )
            if device is not None:
                self._lamps[lamp] = device
        self._buzzer = optional(
            "buzzer",
            config.buzzer_pin,
            lambda p: Buzzer(p, initial_value=False, pin_factory=factory),
        )
        for latched in (self._fire_in, self._tamper_in):
            if latched is not None:
                latched.start()  # fire, tamper (or a cut wire) already at start: reported now
        if self._passage is not None:
            self._passage.when_activated = self._beam_broken
            self._passage.when_deactivated = self._beam_clear

    def stop(self) -> None:
        """De-energise the relay (locked, fail-secure) and release every pin."""
        inputs = [c.device for c in (self._fire_in, self._tamper_in) if c is not None]
        with self._lock:
            if self._timer is not None:
                self._timer.cancel()
            self._timer = None
            for latched in (self._fire_in, self._tamper_in):
                if latched is not None:
                    latched.cancel()
            self._open_until = None
            self._free = False
            self._fire = False
            if self._relay is not None:
                try:
                    self._relay.off()
                except Exception as exc:  # still release the pins below
                    log.error("relay not de-energised on stop: %s", describe(exc))
        for device in (*inputs, self._passage, self._buzzer, *self._lamps.values()):
            close_quietly(device)
        close_quietly(self._relay)
        self._relay = self._passage = self._buzzer = None
        self._fire_in = self._tamper_in = None
        self._lamps = {}

    def health(self) -> DeviceHealth:
        """Healthy unless a pin failed to open or to switch."""
        return self.health_tracker.current()

    # -- what the controller asks ------------------------------------------------------

    def open(self, seconds: float) -> None:
        """Release for one person: a pulse of ``pulse_ms``, or held for ``seconds``.

        A held release also ends by itself after ``seconds``, should ``lock`` never come.
        """
        hold = self.pulse_s if self.pulse_s is not None else float(seconds)
        with self._lock:
            self._open_until = time.monotonic() + hold
            self._arm_timer(hold)
            self._apply()

    def lock(self) -> None:
        """End a release; the relay stays energised only for fire or free passage."""
        with self._lock:
            self._open_until = None
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
            self._apply()

    def free(self, active: bool) -> None:
        """Hold the barrier open (mode free, fire) or return to normal."""
        with self._lock:
            self._free = bool(active)
            self._apply()

    def signal(self, verdict: str) -> None:
        """Light the verdict's lamp and beep: granted green, denied and guard red."""
        if verdict not in SIGNALS:
            log.warning("unknown verdict signal %r", verdict)
            return
        lamp_name, lit_s, beeps, beep_s = SIGNALS[verdict]
        lamp = self._lamps.get(lamp_name)
        other = self._lamps.get("red" if lamp_name == "green" else "green")
        try:
            if other is not None:
                other.off()
            if lamp is not None:
                lamp.blink(on_time=lit_s, off_time=0, n=1, background=True)
            if self._buzzer is not None:
                self._buzzer.beep(on_time=beep_s, off_time=beep_s, n=beeps, background=True)
        except Exception as exc:  # lamps are a courtesy; the gate goes on
            self.health_tracker.set("lamps", describe(exc))
        else:
            self.health_tracker.set("lamps", None)

    # -- relay -------------------------------------------------------------------------

    def _arm_timer(self, seconds: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer = threading.Timer(seconds, self._release_ended)
        self._timer.daemon = True
        self._timer.start()

    def _release_ended(self) -> None:
        with self._lock:
            if threading.current_thread() is not self._timer:
                return  # cancelled, or replaced by a later release
            self._timer = None
            self._open_until = None
            self._apply()

    @property
    def energised(self) -> bool:
        """Whether the relay should be energised now (fire, free or a release)."""
        return self._fire or self._free or self._open_until is not None

    def _apply(self) -> None:
        with self._lock:
            if self._relay is None:
                return
            want = self.energised
            try:
                if want:
                    self._relay.on()
                else:
                    self._relay.off()
            except Exception as exc:  # a dead relay must be reported, not crash the caller
                self.health_tracker.set("relay", describe(exc))
            else:
                self.health_tracker.set("relay", None)
                if want != self._logged_energised:
                    self._logged_energised = want
                    log.debug("relay %s", "energised" if want else "de-energised")

    # -- fire and tamper inputs -------------------------------------------------------

    def _set_fire(self, active: bool) -> None:
        with self._lock:
            self._fire = active
            self._apply()  # energise first: egress must not wait for anyone
        log.warning("fire input %s", "active: gate freed" if active else "cleared")
        self.emit(Reading("fire", active, self.name))

    def _set_tamper(self, active: bool) -> None:
        # An alarm only: an opened enclosure neither frees nor locks the gate.
        log.warning(
            "tamper input %s", "open: enclosure opened or wire cut" if active else "cleared"
        )
        self.emit(Reading("tamper", active, self.name))

    # -- passage sensor ----------------------------------------------------------------

    def _beam_broken(self) -> None:
        now = time.monotonic()
        with self._lock:
            if now - self._passage_clear_at < PASSAGE_MERGE_S:
                self.passages_merged += 1
                return
        self.emit(Reading("passage", True, self.name))

    def _beam_clear(self) -> None:
        with self._lock:
            self._passage_clear_at = time.monotonic()
