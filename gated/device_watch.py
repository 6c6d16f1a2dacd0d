"""What the devices say of themselves: the health map, and its news as ledger events.

Every configured device is in the map from the start (working until it reports); a
report that changes a device's health is a ``device`` event, and a failure also a
``device`` alarm. A tamper input raises one ``tamper`` alarm however often the device
repeats it, and its clear is a ``device`` event referring to that alarm. Like the
controller that owns it, the watch runs on the controller's thread and records
through the controller (``record``, ``alarm``), so each event is committed first.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from drivers.common.base import DeviceHealth
from gated.events import Alarm, Device, Event

#: What a ``tamper`` alarm says, by the device (the reading's source) that reported it.
TAMPER_DETAIL = {"turnstile": "turnstile enclosure opened", "card": "card reader tampered"}

Record = Callable[[Event], Event]


class DeviceWatch:
    """The health of every device, and the tampers active now (controller thread)."""

    def __init__(self, record: Record, alarm: Callable[..., Alarm]):
        self._record = record
        self._alarm = alarm
        #: Every configured device's health (see :meth:`expect`), and what else
        #: reports one; the screen and ``T/status.devices`` list all of it.
        self.health: dict[str, DeviceHealth] = {}
        #: Devices that reported their health at least once (a seeded entry is a guess).
        self.reported: set[str] = set()
        #: Devices whose tamper is active, with the id of the alarm it raised.
        self.tampered: dict[str, str] = {}

    def expect(self, names: Iterable[str]) -> None:
        """Seed the health with every configured device: working until it reports."""
        for name in names:
            self.health.setdefault(name, DeviceHealth(True, ""))

    def tamper(self, active: bool, source: str) -> None:
        """A tamper input of ``source`` became ``active`` (or cleared)."""
        # An alarm, nothing more: the gate neither opens (an intruder must not gain a
        # free gate by opening a box) nor locks (no one is locked in by a loose lid).
        if active == (source in self.tampered):
            return  # one alarm per tamper, however often the device repeats it
        if active:
            detail = TAMPER_DETAIL.get(source, f"{source} tampered")
            self.tampered[source] = str(self._alarm("tamper", detail, device=source).id)
            return
        # The clear is the device back to normal: a ``device`` event (``mode`` is for
        # what changes passage, as fire does), ``ok`` its health as known now.
        health = self.health.get(source, DeviceHealth(True, ""))
        detail = "tamper cleared" + ("" if health.ok else f"; {health.detail}")
        self._record(Device.health(source, health.ok, detail, ref=self.tampered.pop(source)))

    def report(self, name: str, health: object) -> None:
        """Device ``name`` reported its ``health`` (a :class:`DeviceHealth`)."""
        if not isinstance(health, DeviceHealth):
            return
        # A first report that says "working" is no news, whatever the seed's detail.
        before = self.health.get(name) if name in self.reported else None
        self.reported.add(name)
        self.health[name] = health
        if before == health or (before is None and health.ok):
            return
        event = self._record(Device.health(name, health.ok, health.detail))
        if not health.ok:
            self._alarm("device", f"{name}: {health.detail}", ref=event.id)
