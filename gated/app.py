"""The daemon: config in, drivers started, one controller loop, everything closed on stop.

The data flow is one line: drivers emit readings into the controller's queue; the
controller decides, commits ledger and outbox in one transaction, then acts.
"""

from __future__ import annotations

import logging
import signal
import threading
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any, Protocol

from drivers import driver_class
from drivers.common.base import DeviceHealth, Driver, DriverContext, Reading
from drivers.sim import Feed, Scenario, ScenarioError
from gated.clock import Clock, SystemClock, clock_synced
from gated.controller import Controller
from gated.errors import ConfigError, DriverError
from gated.ledger import Ledger
from gated.mqtt.publisher import Publisher
from gated.notify import Notifier
from gated.passes import PassVerifier
from gated.registry import Registry
from gated.retention import Retention, RetentionService
from gated.site.peers import PeerBook
from gated.storage import open_checked

if TYPE_CHECKING:
    from gated.config import Config

log = logging.getLogger(__name__)

SECTIONS = ("turnstile", "prompter", "card", "qr", "thermometer")


class Service(Protocol):
    """Something that runs beside the controller (publisher, status screen)."""

    def start(self) -> None:
        """Begin work on a thread of its own."""

    def stop(self) -> None:
        """Stop and release everything; safe to call twice."""


class App:
    """One gate: storage, pass keys, devices and the controller, in start-up order."""

    def __init__(self, config: Config, clock: Clock | None = None):
        self.config = config
        self.clock = clock or SystemClock()
        self.stop_event = threading.Event()
        self.devices: dict[str, Driver] = {}
        self.services: list[Service] = []
        self.notifier = Notifier()
        self.init_storage()
        self.init_passes()
        self.init_devices()
        self.init_controller()
        self.init_site()
        self.init_retention()
        self.init_status()
        self.init_publisher()

    def init_storage(self) -> None:
        """Open the database (checked: a damaged one ends the start) and count this start;
        with no broker, drop the outbox."""
        self.conn = open_checked(self.config.storage.path, self.config.source)
        broker = bool(self.config.mqtt.urls)
        self.ledger = Ledger(
            self.conn,
            site=self.config.gate.site,
            gate=self.config.gate.id,
            clock=self.clock,
            clock_synced=clock_synced,
            outbox=broker,
        )
        if not broker and (dropped := self.ledger.drop_outbox()):
            # Rows of an earlier configuration with a broker: nothing would deliver
            # them, and they would keep their events from the purge.
            log.info(
                "no broker configured ([mqtt] urls = []): dropped %d undelivered events"
                " from the outbox (they stay in the ledger until the purge)",
                dropped,
            )
        self.ledger.start_boot()
        self.registry = Registry(self.conn)

    def init_passes(self) -> None:
        """Load the public keys passes are verified with."""
        self.verifier = PassVerifier(
            self.config.passes.public_keys, self.config.passes.max_clock_skew_s
        )

    def _scenario(self) -> Scenario | None:
        sim = self.config.sim
        if not any(getattr(self.config, s).driver == "sim" for s in SECTIONS):
            return None
        feed = Feed(sim.input, sim.speed) if sim.input is not None else None
        if sim.scenario is None:
            return Scenario([], sim.speed, feed)
        try:
            return Scenario.from_file(Path(sim.scenario), sim.speed, feed)
        except ScenarioError as exc:
            raise ConfigError([f"{self.config.source}: sim.scenario: {exc}"]) from None

    def init_devices(self) -> None:
        """Build the configured drivers (not started yet)."""
        ctx = DriverContext(pin_factory=self.config.hardware.pin_factory, scenario=self._scenario())
        for section in SECTIONS:
            cfg = getattr(self.config, section)
            if cfg.driver == "none":
                continue
            cls = driver_class(section, cfg.driver)
            self.devices[section] = cls(section, self._emit, cfg, ctx)  # its own model

    def _emit(self, reading: Reading) -> None:
        self.controller.put(reading)

    def init_controller(self) -> None:
        """The controller, with the turnstile and prompter it acts on."""
        self.controller = Controller(
            self.config,
            self.ledger,
            self.registry,
            self.verifier,
            self.devices["turnstile"],  # type: ignore[arg-type]
            self.devices.get("prompter"),  # type: ignore[arg-type]
            self.clock,
        )
        self.controller.device_watch.expect(self.devices)
        if self.config.sim.exit_when_done:
            self.controller.waiting_done = {
                name
                for name, d in self.devices.items()
                if getattr(self.config, name).driver == "sim"
            }

    def init_site(self) -> None:
        """With ``[site] share``: the book of what the site's other gates did (contracts §4b)."""
        if self.config.site.share:
            self.controller.peers = PeerBook(self.conn, self.config, self.clock)

    def init_retention(self) -> None:
        """The daily ledger purge (a service; its steps run on the controller)."""
        quota = self.config.policy.household_quota
        retention = Retention(
            self.conn,
            self.clock,
            self.config.storage.retention_days,
            quota.window_h if quota is not None else None,
            clock_synced,
            undelivered_max_days=self.config.storage.undelivered_max_days,
        )
        self.services.append(RetentionService(self.controller, retention))

    def init_publisher(self) -> None:
        """The MQTT publisher that drains the outbox (only when ``mqtt.urls`` is set)."""
        if self.config.mqtt.urls:
            self.publisher = Publisher.for_app(self)
            self.services.append(self.publisher)

    def init_status(self) -> None:
        """The guard's status screen (docs/contracts.md §8), unless ``status.listen`` is ""."""
        if not self.config.status.listen:
            return
        from gated.status.server import StatusServer

        self.services.append(
            StatusServer(
                self.config,
                self.controller,
                self.ledger.boot,
                list(self.devices),
                broker_connected=self.broker_connected,
                mqtt_refusals=self.mqtt_refusals,
            )
        )

    def mqtt_refusals(self) -> dict[str, int]:
        """Messages from the broker refused so far, by code (empty with no broker)."""
        publisher = getattr(self, "publisher", None)  # made after the status screen
        if publisher is None or publisher.commands is None:
            return {}
        return publisher.commands.refusal_counts()

    def broker_connected(self) -> bool | None:
        """Whether a service says the MQTT broker is connected (None: nobody knows)."""
        for service in self.services:
            value: Any = getattr(service, "connected", None)
            if hasattr(value, "is_set"):  # the publisher's threading.Event
                value = value.is_set()
            elif callable(value):
                value = value()
            if isinstance(value, bool):
                return value
        return None

    def start_devices(self) -> None:
        """Start every device; one that fails is reported and the gate goes on without it."""
        turnstile = self.devices["turnstile"]
        for name, device in self.devices.items():
            try:
                device.start()
            except (DriverError, OSError, ImportError, RuntimeError, ValueError) as exc:
                log.error("%s did not start: %s", name, exc)
                self.controller.put(Reading("device", DeviceHealth(False, str(exc)), name))
                self.controller.waiting_done.discard(name)
        turnstile.lock()  # type: ignore[attr-defined]
        if self.controller.mode == "free":
            turnstile.free(True)  # type: ignore[attr-defined]

    def start_services(self) -> None:
        """Start the services added to ``services`` (after the devices)."""
        for service in self.services:
            service.start()

    def run(self) -> int:
        """Run until SIGTERM/SIGINT (or, in a scripted run, until all is settled).

        Whatever fails on the way, the devices are stopped (relay de-energised) and
        the database is closed.
        """
        try:
            self.start_devices()
            self.start_services()
            if not clock_synced():
                log.warning("the system clock is not synchronised: events carry clock_synced=false")
            if self.notifier.watchdog_enabled:
                self.controller.heartbeat = self.notifier.watchdog
            self.notifier.ready(f"running, mode {self.controller.mode}")
            log.info(
                "gate %s/%s running (boot %d, mode %s, next seq %d)",
                self.config.gate.site,
                self.config.gate.id,
                self.ledger.boot,
                self.controller.mode,
                self.ledger.last_seq() + 1,
            )
            self.controller.run(self.stop_event, exit_when_done=self.config.sim.exit_when_done)
        finally:
            self.notifier.stopping("stopping")
            self.close()
            self.notifier.close()
        return 0

    def install_signal_handlers(self) -> None:
        """SIGTERM and SIGINT stop the loop; the turnstile locks and the database closes."""

        def handler(signum: int, frame: FrameType | None) -> None:
            log.info("stopping on %s", signal.Signals(signum).name)
            self.stop_event.set()

        signal.signal(signal.SIGTERM, handler)
        signal.signal(signal.SIGINT, handler)

    def close(self) -> None:
        """Stop the inputs and lock, drain the outbox, stop the services, close the database.

        By now the controller's loop has ended, so what it decided is committed; the
        devices stop first (no more input, the relay de-energised), then the publisher
        drains the outbox for up to 2 s before its ``offline`` status (docs/contracts.md §4).
        """
        for name, device in reversed(list(self.devices.items())):
            try:
                device.stop()
            except Exception as exc:  # stopping must go on for the others
                log.warning("%s did not stop cleanly: %s", name, exc)
        for service in reversed(self.services):
            try:
                service.stop()
            except Exception as exc:  # stopping must go on for the others
                log.warning("%s did not stop cleanly: %s", type(service).__name__, exc)
        self.conn.close()
        log.info("stopped; relay de-energised, database closed")
