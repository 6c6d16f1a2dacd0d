"""The GPIO turnstile on MockFactory pins: relay states asserted from the pins."""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from gpiozero.pins.mock import MockPin

from drivers import driver_class
from drivers.common.base import DeviceHealth, DriverContext, Reading
from drivers.turnstile import FIRE_CLEAR_S, PASSAGE_MERGE_S, TAMPER_CLEAR_S, GpioTurnstile
from drivers.wiegand import encode_bits
from tests.support.gpio_turnstile import (
    BUZZER,
    FIRE,
    GREEN,
    PASSAGE,
    RED,
    RELAY,
    TAMPER,
    closed_fire_contact,
    closed_tamper_contact,
)
from tests.support.ledger_file import ledger_events, wait_for_event
from tests.support.readings import next_reading
from tests.support.waiting import wait_until


class Rig:
    def __init__(self, factory: Any, **options: Any):
        self.factory = factory
        self.readings: queue.Queue[Reading] = queue.Queue()
        opts: dict[str, Any] = {
            "relay_pin": RELAY,
            "active_high": True,
            "pulse_ms": None,
            "open_s": 5.0,
            "passage_pin": PASSAGE,
            "fire_pin": FIRE,
            "fire_nc": True,
            "buzzer_pin": BUZZER,
            "green_led_pin": GREEN,
            "red_led_pin": RED,
        }
        opts.update(options)
        self.t = GpioTurnstile("turnstile", self.readings.put, opts, DriverContext("mock"))

    def pin(self, n: int) -> Any:
        return self.factory.pin(n)

    @property
    def relay(self) -> bool:
        return bool(self.pin(RELAY).state)

    def next(self, kind: str, timeout: float = 10.0) -> Reading:
        return next_reading(self.readings, kind, timeout)

    def drained(self) -> list[Reading]:
        out = []
        while True:
            try:
                out.append(self.readings.get_nowait())
            except queue.Empty:
                return out


@pytest.fixture
def rig(factory: Any) -> Iterator[Rig]:
    closed_fire_contact(factory)
    r = Rig(factory)
    r.t.start()
    yield r
    r.t.stop()


def test_registered():
    assert driver_class("turnstile", "gpio") is GpioTurnstile


def test_starts_locked_and_a_grant_holds_the_relay_until_lock(rig: Rig):
    assert rig.relay is False
    rig.t.open(5.0)
    assert rig.relay is True
    rig.t.lock()
    assert rig.relay is False
    assert [s.state for s in rig.pin(RELAY).states] == [False, True, False]
    assert rig.t.health() == DeviceHealth(True, "")
    assert rig.drained() == []  # no fire, no passage, no health change


def test_active_low_relay_is_high_when_locked(factory: Any):
    r = Rig(factory, active_high=False, fire_pin=None)
    r.t.start()
    try:
        assert r.relay is True  # de-energised
        r.t.open(5.0)
        assert r.relay is False
    finally:
        r.t.stop()
    assert factory.pin(RELAY).states[-1].state is True  # stopped: de-energised


def test_a_held_release_ends_by_itself_if_lock_never_comes(rig: Rig):
    rig.t.open(0.2)
    assert rig.relay is True
    wait_until(lambda: rig.relay is False)


def test_pulse_mode_releases_for_pulse_ms_only(factory: Any):
    closed_fire_contact(factory)
    r = Rig(factory, pulse_ms=100)
    r.t.start()
    try:
        r.t.open(5.0)
        assert r.relay is True
        wait_until(lambda: r.relay is False)
        states = [s.state for s in factory.pin(RELAY).states]
        assert states == [False, True, False]
    finally:
        r.t.stop()


def test_a_second_grant_extends_the_release(rig: Rig):
    rig.t.open(0.3)
    rig.t.open(5.0)
    time.sleep(0.5)  # past the first release's end: it must not lock the second
    assert rig.relay is True
    rig.t.lock()
    assert rig.relay is False


def test_fire_frees_the_gate_at_once_and_clears_after_a_stable_period(rig: Rig):
    rig.pin(FIRE).drive_high()  # the NC contact opens: fire
    # The driver energised the relay in the GPIO callback, before anyone read the queue.
    assert rig.relay is True
    assert rig.next("fire").value is True
    rig.t.lock()  # the controller's lock does not lock people in during a fire
    assert rig.relay is True
    rig.t.free(True)  # what the controller does on the fire reading
    rig.pin(FIRE).drive_low()
    assert rig.next("fire").value is False
    assert rig.relay is True  # still free until the controller says otherwise
    rig.t.free(False)
    assert rig.relay is False


def test_a_bouncing_fire_contact_raises_one_fire_and_one_clear(rig: Rig):
    fire = rig.pin(FIRE)
    fire.drive_high()
    for _ in range(5):  # contact bounce while the alarm clears
        fire.drive_low()
        fire.drive_high()
    fire.drive_low()
    assert rig.next("fire").value is True
    assert rig.next("fire", timeout=10 + FIRE_CLEAR_S).value is False
    assert rig.relay is False
    assert [r for r in rig.drained() if r.kind == "fire"] == []


def test_a_cut_fire_wire_at_start_frees_the_gate(factory: Any):
    # Nothing drives the fire pin: the pull-up reads an open circuit, i.e. fire.
    r = Rig(factory)
    r.t.start()
    try:
        assert r.next("fire").value is True
        r.t.lock()  # what App does after starting the devices
        assert r.relay is True
    finally:
        r.t.stop()
    assert factory.pin(RELAY).state is False


def test_normally_open_fire_contact(factory: Any):
    r = Rig(factory, fire_nc=False)
    r.t.start()
    try:
        assert r.relay is False
        factory.pin(FIRE).drive_low()  # NO contact closes: fire
        assert r.relay is True
        assert r.next("fire").value is True
    finally:
        r.t.stop()


@pytest.fixture
def tamper_rig(factory: Any) -> Iterator[Rig]:
    closed_fire_contact(factory)
    closed_tamper_contact(factory)
    r = Rig(factory, tamper_pin=TAMPER)
    r.t.start()
    yield r
    r.t.stop()


def test_a_tamper_contact_that_opens_reports_tamper_and_clears_once_closed_stably(
    tamper_rig: Rig,
):
    rig = tamper_rig
    tamper = rig.pin(TAMPER)
    assert rig.drained() == []  # closed at start: no tamper
    tamper.drive_high()  # the NC contact opens: the enclosure lid is lifted
    assert rig.next("tamper").value is True
    for _ in range(5):  # the lid pressed shut bounces
        tamper.drive_low()
        tamper.drive_high()
    tamper.drive_low()
    cleared = rig.next("tamper", timeout=10 + TAMPER_CLEAR_S)
    assert cleared.value is False and cleared.source == "turnstile"
    assert [r for r in rig.drained() if r.kind == "tamper"] == []  # one raise, one clear
    # A tamper is an alarm only: the relay never moved, nor did the fire input report.
    assert [s.state for s in rig.pin(RELAY).states] == [False]
    assert rig.t.health() == DeviceHealth(True, "")


def test_a_tamper_does_not_hold_a_grant_open_nor_keep_it_shut(tamper_rig: Rig):
    rig = tamper_rig
    rig.pin(TAMPER).drive_high()
    assert rig.next("tamper").value is True
    rig.t.open(5.0)
    assert rig.relay is True
    rig.t.lock()
    assert rig.relay is False


def test_a_cut_tamper_wire_at_start_is_a_tamper(factory: Any):
    closed_fire_contact(factory)
    # Nothing drives the tamper pin: the pull-up reads an open circuit, i.e. tamper.
    r = Rig(factory, tamper_pin=TAMPER)
    r.t.start()
    try:
        assert r.next("tamper").value is True
        assert r.relay is False  # and the gate stays locked
    finally:
        r.t.stop()


def test_normally_open_tamper_contact(factory: Any):
    closed_fire_contact(factory)
    r = Rig(factory, tamper_pin=TAMPER, tamper_nc=False)
    r.t.start()
    try:
        assert r.drained() == []  # open at start: normal for an NO contact
        factory.pin(TAMPER).drive_low()  # the NO contact closes: tamper
        assert r.next("tamper").value is True
        factory.pin(TAMPER).drive_high()
        assert r.next("tamper", timeout=10 + TAMPER_CLEAR_S).value is False
    finally:
        r.t.stop()


def test_a_broken_tamper_input_is_reported_and_the_rest_works(factory: Any):
    from gpiozero import OutputDevice

    closed_fire_contact(factory)
    squatter = OutputDevice(TAMPER, pin_factory=factory)  # the tamper pin is taken
    r = Rig(factory, tamper_pin=TAMPER)
    try:
        r.t.start()
        health = r.next("device").value
        assert not health.ok and "tamper input" in health.detail
        r.t.open(5.0)
        assert r.relay is True
    finally:
        r.t.stop()
        squatter.close()


def test_stop_de_energises_whatever_was_asked(rig: Rig):
    rig.t.open(5.0)
    rig.t.free(True)
    assert rig.relay is True
    rig.t.stop()
    assert rig.pin(RELAY).states[-1].state is False
    rig.t.stop()  # twice is fine
    rig.t.lock()  # and a late lock after stop does nothing


def test_passage_sensor_reports_one_passage_per_person(rig: Rig):
    beam = rig.pin(PASSAGE)
    beam.drive_low()  # beam broken
    assert rig.next("passage").value is True
    # Legs: the beam clears and breaks again at once: still the same person.
    beam.drive_high()
    beam.drive_low()
    beam.drive_high()
    assert rig.t.passages_merged == 1
    wait_until(lambda: time.monotonic() - rig.t._passage_clear_at > PASSAGE_MERGE_S)
    beam.drive_low()  # the next person
    assert rig.next("passage").value is True
    beam.drive_high()


def test_signals_light_the_lamps_and_beep(rig: Rig):
    rig.t.signal("granted")
    wait_until(lambda: any(s.state for s in rig.pin(GREEN).states))
    wait_until(lambda: any(s.state for s in rig.pin(BUZZER).states))
    rig.t.signal("denied")
    wait_until(lambda: any(s.state for s in rig.pin(RED).states))
    assert rig.pin(GREEN).state is False  # the other lamp goes out
    rig.t.signal("guard")
    rig.t.signal("nonsense")  # logged, ignored
    assert rig.t.health().ok


class BrokenPin(MockPin):
    """A mock pin whose output can be made to fail, like a GPIO chip gone away."""

    broken = False

    def _set_state(self, value: Any) -> None:
        if self.broken and self._function == "output":
            raise OSError(5, "Input/output error")
        super()._set_state(value)


def test_a_failing_relay_marks_the_turnstile_unhealthy_until_it_works(factory: Any):
    relay = factory.pin(RELAY, pin_class=BrokenPin)
    closed_fire_contact(factory)
    r = Rig(factory)
    r.t.start()
    try:
        relay.broken = True
        r.t.open(5.0)  # does not raise into the controller
        health = r.next("device").value
        assert not health.ok and "relay" in health.detail and "Input/output" in health.detail
        relay.broken = False
        r.t.lock()
        assert r.next("device").value == DeviceHealth(True, "")
        assert r.relay is False
    finally:
        r.t.stop()


def test_a_broken_input_is_reported_and_the_relay_still_works(factory: Any):
    from gpiozero import OutputDevice

    squatter = OutputDevice(FIRE, pin_factory=factory)  # the fire pin is taken
    r = Rig(factory)
    try:
        r.t.start()
        health = r.next("device").value
        assert not health.ok and "fire input" in health.detail
        r.t.open(5.0)
        assert r.relay is True
        r.t.lock()
        assert r.relay is False
    finally:
        r.t.stop()
        squatter.close()


def test_a_relay_pin_that_cannot_open_fails_start(factory: Any):
    from gpiozero import OutputDevice

    squatter = OutputDevice(RELAY, pin_factory=factory)
    r = Rig(factory)
    try:
        with pytest.raises(OSError, match="relay on GPIO 17"):
            r.t.start()
        r.t.lock()  # App locks after start even when it failed: must not raise
    finally:
        r.t.stop()
        squatter.close()


# ---- the daemon with the GPIO turnstile and the Wiegand reader ---------------------


def test_daemon_on_mock_pins_grants_a_wiegand_card_opens_and_locks(factory: Any, tmp_path: Path):
    from gated.app import App
    from gated.config import config_from_dict
    from gated.registry import Person

    closed_fire_contact(factory)
    config = config_from_dict(
        {
            "gate": {"id": "g1", "site": "s1", "direction": "in", "timezone": "Asia/Shanghai"},
            "storage": {"path": str(tmp_path / "gated.db")},
            "hardware": {"pin_factory": "mock"},
            "policy": {"require_temperature": False},
            "card": {"driver": "wiegand", "d0_pin": 5, "d1_pin": 6, "gap_ms": 150},
            "turnstile": {
                "driver": "gpio",
                "relay_pin": RELAY,
                "passage_pin": PASSAGE,
                "fire_pin": FIRE,
                "green_led_pin": GREEN,
                "red_led_pin": RED,
            },
        },
        tmp_path / "gated.toml",
    )
    app = App(config)
    person = Person("P1", "Zhang Wei", "320623199001011234", "1-101", "H1", "resident", "green")
    app.registry.apply([person], {"083039": "P1"}, "2026-01-01T00:00:00Z")
    events: list[dict[str, Any]] = []
    app.controller.observers.append(events.append)
    runner = threading.Thread(target=app.run, daemon=True)
    runner.start()
    try:
        d0, d1 = factory.pin(5), factory.pin(6)
        app.controller.submit(lambda: None).result(timeout=10)  # every device started
        for b in encode_bits(0x083039, 26):
            pin = d1 if b else d0
            pin.drive_low()
            pin.drive_high()
            time.sleep(0.0015)
        wait_until(lambda: any(e["kind"] == "decision" for e in events))
        decision = next(e for e in events if e["kind"] == "decision")
        assert decision["decision"] == "granted"
        wait_until(lambda: factory.pin(RELAY).state is True)
        factory.pin(PASSAGE).drive_low()
        factory.pin(PASSAGE).drive_high()
        wait_until(lambda: any(e["kind"] == "passage" for e in events))
        passage = next(e for e in events if e["kind"] == "passage")
        assert passage["ref"] == decision["id"] and passage["passed"] is True
        wait_until(lambda: factory.pin(RELAY).state is False)
        # Fire: the relay is energised by the driver, the controller raises the alarm.
        factory.pin(FIRE).drive_high()
        wait_until(lambda: factory.pin(RELAY).state is True)
        wait_until(lambda: any(e.get("alarm") == "fire" for e in events))
    finally:
        app.stop_event.set()
        runner.join(timeout=10)
    assert not runner.is_alive()
    assert factory.pin(RELAY).states[-1].state is False  # stopped: locked


def test_daemon_on_mock_pins_records_a_tamper_alarm_and_its_clear(factory: Any, tmp_path: Path):
    from gated.app import App
    from gated.config import config_from_dict

    closed_fire_contact(factory)
    closed_tamper_contact(factory)
    db = tmp_path / "gated.db"
    config = config_from_dict(
        {
            "gate": {"id": "g1", "site": "s1", "direction": "in", "timezone": "Asia/Shanghai"},
            "storage": {"path": str(db)},
            "hardware": {"pin_factory": "mock"},
            "turnstile": {
                "driver": "gpio",
                "relay_pin": RELAY,
                "fire_pin": FIRE,
                "tamper_pin": TAMPER,
            },
        },
        tmp_path / "gated.toml",
    )
    app = App(config)
    runner = threading.Thread(target=app.run, daemon=True)
    runner.start()
    try:
        app.controller.submit(lambda: None).result(timeout=10)  # every device started
        factory.pin(TAMPER).drive_high()
        alarm = wait_for_event(db, lambda e: e.get("alarm") == "tamper", "the tamper alarm")
        assert alarm["kind"] == "alarm" and alarm["detail"] == "turnstile enclosure opened"
        assert alarm["device"] == "turnstile"
        factory.pin(TAMPER).drive_low()
        clear = wait_for_event(db, lambda e: e.get("ref") == alarm["id"], "the tamper's clear")
        assert clear["kind"] == "device" and clear["device"] == "turnstile"
        assert clear["ok"] is True and clear["detail"] == "tamper cleared"
    finally:
        app.stop_event.set()
        runner.join(timeout=10)
    assert not runner.is_alive()
    assert [e["kind"] for e in ledger_events(db)] == ["alarm", "device"]
    assert all(s.state is False for s in factory.pin(RELAY).states)  # never released
