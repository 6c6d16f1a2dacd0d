"""``gated hub run``: the ingest, the fleet page, and systemd's notify and watchdog.

The service is ready (``READY=1``) once the store is open and the fleet page listens; the
broker may come later (the ingest connects and reconnects on its own, and the page says
so). The watchdog is fed only while the ingest's threads are alive and its writer has
turned within the last :data:`STUCK_S` (a commit that fails, a full disk or a locked
database, is retried each second and still turns): a writer hung for good is restarted
by systemd rather than leaving the broker's queue to grow with nothing acknowledged.
SIGTERM/SIGINT: what came is stored and acknowledged, then the hub's ``offline`` status.
"""

from __future__ import annotations

import argparse
import logging
import signal
import threading
import time
from types import FrameType
from typing import Any

from gated.errors import ConfigError
from gated.hub import registry
from gated.hub.config import HubConfig, load_hub_config
from gated.hub.ingest import Ingest
from gated.hub.stats import HubStats
from gated.hub.store import HubStore
from gated.notify import Notifier

log = logging.getLogger(__name__)

#: Seconds the ingest's writer may go without a turn before the watchdog goes unfed.
STUCK_S = 60.0


class HubService:
    """One hub instance: ingest + web, until :attr:`stop_event` is set."""

    def __init__(self, config: HubConfig, notifier: Notifier | None = None):
        self.config = config
        self.notifier = notifier or Notifier()
        self.stats = HubStats()
        self.stop_event = threading.Event()
        self.web: Any = None

        def follow_up(store: HubStore, site: str, gate: str, publish: Any, now: float) -> int:
            return registry.follow_up(store, config, site, gate, publish, now)

        self.ingest = Ingest(config, self.stats, observer=self._observe, follow_up=follow_up)

    def _observe(self, kind: str, data: Any) -> None:
        if self.web is not None:
            self.web.notify(kind, data)

    def start(self) -> None:
        # Open (and create) the store here, so a bad path is a clear error before READY.
        HubStore(self.config.database_path).close()
        if self.config.web.listen:
            from gated.hub.web import HubWeb

            self.web = HubWeb(self.config, self.stats, self.config.database_path)
            self.web.start()
        self.ingest.start()

    def run(self) -> int:
        try:
            self.start()
            self.notifier.ready(f"hub {self.config.hub.id} running")
            log.info(
                "hub %s running: database %s, fleet page %s",
                self.config.hub.id,
                self.config.database_path,
                self.config.web.listen or "off",
            )
            while not self.stop_event.wait(1.0):
                if self.ingest.alive():
                    if time.monotonic() - self.ingest.last_turn < STUCK_S:
                        self.notifier.watchdog()
                else:
                    log.error("an ingest thread ended; stopping so systemd restarts the hub")
                    return 1
        finally:
            self.notifier.stopping("stopping")
            self.stop()
            self.notifier.close()
        return 0

    def stop(self) -> None:
        if self.ingest._threads:
            self.ingest.stop()
        if self.web is not None:
            self.web.stop()
        log.info("hub stopped")

    def install_signal_handlers(self) -> None:
        def handler(signum: int, frame: FrameType | None) -> None:
            log.info("stopping on %s", signal.Signals(signum).name)
            self.stop_event.set()

        signal.signal(signal.SIGTERM, handler)
        signal.signal(signal.SIGINT, handler)


def cmd_run(args: argparse.Namespace) -> int:
    """``gated hub run -c HUB.toml``."""
    config = load_hub_config(args.config)
    if not config.mqtt.urls:
        raise ConfigError([f"{args.config}: mqtt.urls: the hub needs a broker (at least one url)"])
    service = HubService(config)
    service.install_signal_handlers()
    return service.run()
