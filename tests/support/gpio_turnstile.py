"""The GPIO turnstile's wiring on MockFactory pins: its pin numbers and its closed contacts."""

from __future__ import annotations

from typing import Any

from gpiozero.pins.mock import MockPin

RELAY, PASSAGE, FIRE, BUZZER, GREEN, RED, TAMPER = 17, 27, 22, 23, 24, 25, 26


class ContactPin(MockPin):
    """An input wired to a contact to ground: while ``closed`` the pull-up cannot lift it."""

    closed = True

    def _set_pull(self, value: Any) -> None:
        super()._set_pull(value)
        if self.closed:
            self.drive_low()


def closed_fire_contact(factory: Any) -> None:
    """Wire the normally closed fire contact, closed: no fire."""
    factory.pin(FIRE, pin_class=ContactPin)


def closed_tamper_contact(factory: Any) -> None:
    """Wire the normally closed tamper contact, closed: the enclosure is shut."""
    factory.pin(TAMPER, pin_class=ContactPin)
