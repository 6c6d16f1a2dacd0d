"""The daemon's App run in-process on its own thread, so a test can drive mock GPIO pins.

``gated run`` in a child process cannot be reached through gpiozero's MockFactory (it
is per process); this runs the same ``App`` as ``gated run`` does, minus the signal
handlers, and collects the events it commits.
"""

from __future__ import annotations

import functools
import threading
from pathlib import Path
from typing import Any

from gated.app import App
from gated.registry import Registry
from gated.storage import connect
from tests.support.rig import CARDS, LI, ZHANG
from tests.support.waiting import wait_until


def register_residents(db: Path) -> None:
    """Zhang Wei (card 0A1B2C3D4E, green) and Li Na in the registry of ``db``."""
    conn = connect(db)
    try:
        Registry(conn).apply([ZHANG, LI], CARDS, "2026-01-01T00:00:00Z")
    finally:
        conn.close()


def _healthy(device: Any) -> bool:
    return bool(device.health().ok)


class RunningApp:
    """An :class:`App` whose ``run`` is on a thread; ``stop`` ends it and re-raises its error."""

    def __init__(self, config: Any):
        self.app = App(config)
        self.events: list[dict[str, Any]] = []
        self.app.controller.observers.append(self.events.append)
        self.error: BaseException | None = None
        self.code: int | None = None
        self._thread = threading.Thread(target=self._run, name="app", daemon=True)

    def _run(self) -> None:
        try:
            self.code = self.app.run()
        except BaseException as exc:  # handed to the test in stop()
            self.error = exc

    def start(self) -> RunningApp:
        self._thread.start()
        return self

    def stop(self) -> None:
        self.app.stop_event.set()
        self._thread.join(timeout=15)
        assert not self._thread.is_alive(), "the app did not stop within 15 s"
        if self.error is not None:
            raise self.error
        assert self.code == 0

    def device(self, name: str) -> Any:
        return self.app.devices[name]

    def wait_healthy(self, *names: str) -> None:
        """Wait until each device in ``names`` reports healthy (a port open, say)."""
        for name in names:
            wait_until(functools.partial(_healthy, self.device(name)), f"{name} healthy", 10)

    def wait_event(self, what: str, **fields: Any) -> dict[str, Any]:
        """The first committed event whose keys have the values in ``fields``."""

        def found() -> dict[str, Any] | None:
            for event in list(self.events):
                if all(event.get(k) == v for k, v in fields.items()):
                    return event
            return None

        event: dict[str, Any] = wait_until(found, what, 15)
        return event
