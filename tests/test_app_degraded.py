"""The gate keeps working with what it has: a camera, thermometer or prompter that does not
work is a ``device`` event and alarm, and a card is still granted and opens the relay."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from gpiozero import DigitalInputDevice

from drivers.rdm6300 import encode_frame
from tests.support.rig import make_config
from tests.support.running_app import RunningApp, register_residents
from tests.support.serial import PtyPort
from tests.support.waiting import wait_until

RELAY, PIR = 17, 4


@pytest.fixture
def ports(tmp_path: Path) -> Iterator[dict[str, PtyPort]]:
    made = {name: PtyPort(tmp_path / f"tty{name}") for name in ("card", "thermometer")}
    yield made
    for port in made.values():
        port.close()


def gate_config(tmp_path: Path, ports: dict[str, PtyPort], **sections: Any) -> Any:
    """A gate with an RDM6300 and a serial thermometer on ptys and a GPIO turnstile."""
    config = make_config(
        tmp_path,
        **{
            "hardware": {"pin_factory": "mock"},
            "status": {"listen": ""},
            "card": {"driver": "rdm6300", "port": str(ports["card"].link)},
            "thermometer": {"driver": "serial", "port": str(ports["thermometer"].link)},
            "turnstile": {"driver": "gpio", "relay_pin": RELAY, "open_s": 3.0},
            "prompter": {"driver": "none"},
            **sections,
        },
    )
    register_residents(config.storage.path)
    return config


def present_card(gate: RunningApp, ports: dict[str, PtyPort], factory: Any, temp: bool) -> None:
    """Zhang Wei steps up (with a temperature when ``temp``), shows his card: granted, open."""
    if temp:
        ports["thermometer"].write(b"36.5\r\n")
    ports["card"].write(encode_frame("0A1B2C3D4E"))
    granted = gate.wait_event("a grant", kind="decision", decision="granted")
    assert granted["person"]["id"] == "P1"
    wait_until(lambda: factory.pin(RELAY).state, "the relay energised", 10)


def test_with_the_camera_lost_a_card_is_still_granted(tmp_path, ports, factory):
    config = gate_config(
        tmp_path, ports, qr={"driver": "camera", "device": str(tmp_path / "no-camera.avi")}
    )
    gate = RunningApp(config).start()
    try:
        gate.wait_healthy("card", "thermometer")
        lost = gate.wait_event("the camera reported lost", kind="device", device="qr", ok=False)
        gate.wait_event("a device alarm", kind="alarm", alarm="device", ref=lost["id"])
        present_card(gate, ports, factory, temp=True)
        assert not gate.device("qr").health().ok
    finally:
        gate.stop()
    assert not factory.pin(RELAY).state  # stopped: de-energised


def test_with_the_thermometer_lost_a_card_is_still_granted_when_temperature_is_optional(
    tmp_path, ports, factory
):
    config = gate_config(
        tmp_path,
        ports,
        thermometer={"driver": "mlx90614", "bus": 97},  # no /dev/i2c-97
        policy={"require_temperature": False},
    )
    gate = RunningApp(config).start()
    try:
        gate.wait_healthy("card")
        gate.wait_event(
            "the thermometer reported lost", kind="device", device="thermometer", ok=False
        )
        present_card(gate, ports, factory, temp=False)
    finally:
        gate.stop()


def test_with_the_prompter_failing_to_start_a_card_is_still_granted(tmp_path, ports, factory):
    # another program holds the PIR's GPIO line: the prompter cannot start at all
    holder = DigitalInputDevice(PIR, pin_factory=factory)
    config = gate_config(
        tmp_path, ports, prompter={"driver": "gpio", "pir_pin": PIR, "audio": "none"}
    )
    gate = RunningApp(config).start()
    try:
        failed = gate.wait_event(
            "the prompter reported", kind="device", device="prompter", ok=False
        )
        assert f"GPIO {PIR}" in failed["detail"]
        gate.wait_healthy("card", "thermometer")
        present_card(gate, ports, factory, temp=True)
    finally:
        gate.stop()
        holder.close()
