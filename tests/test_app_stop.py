"""Stopping the daemon while the gate is held open: the relay ends de-energised."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

from gated.app import App
from tests.conftest import CARDS, ZHANG, make_config
from tests.test_turnstile import FIRE, RELAY, closed_fire_contact
from tests.waiting import wait_until


def test_a_stop_during_an_open_grant_leaves_the_relay_de_energised(
    factory: Any, tmp_path: Path
) -> None:
    closed_fire_contact(factory)
    config = make_config(
        tmp_path,
        hardware={"pin_factory": "mock"},
        status={"listen": ""},
        policy={"require_temperature": False},
        turnstile={"driver": "gpio", "relay_pin": RELAY, "fire_pin": FIRE, "open_s": 30.0},
    )
    app = App(config)
    app.registry.apply([ZHANG], {"0A1B2C3D4E": CARDS["0A1B2C3D4E"]}, "2026-01-01T00:00:00Z")
    runner = threading.Thread(target=app.run, daemon=True)
    runner.start()
    try:
        app.controller.submit(lambda: None).result(timeout=10)  # every device started
        opened = app.controller.submit(lambda: app.controller.open_once("screen", guard="G1"))
        opened.result(timeout=10)
        wait_until(lambda: factory.pin(RELAY).state is True, "the relay energised")
    finally:
        app.stop_event.set()
        runner.join(timeout=10)
    assert not runner.is_alive()
    assert factory.pin(RELAY).state is False  # the grant was still open: now locked
