"""An in-process gate whose controller runs on its thread, with its publisher, a real
mosquitto of its own and a subscriber: for tests of ``cmd/replay`` and its consumers."""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

from drivers.common.base import Reading
from gated.mqtt.link import Backoff
from gated.mqtt.publisher import Publisher
from tests.support.events import event
from tests.support.mosquitto import Collector, Mosquitto, publish
from tests.support.rig import Rig
from tests.support.waiting import wait_until

ROOT = "gated/s1/g1"


class Gate:
    """A rig whose controller runs on its thread, its publisher, a broker and a subscriber."""

    def __init__(self, tmp_path: Path, **mqtt: Any):
        self.broker = Mosquitto(tmp_path).start()
        self.rig = Rig(tmp_path, mqtt={"urls": [self.broker.url], **mqtt})
        self.ctl = self.rig.controller
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.ctl.run, args=(self.stop,), daemon=True)
        self.thread.start()
        self.col = Collector(self.broker.port, [f"{ROOT}/#"])
        self.publisher = Publisher.for_controller(
            self.rig.config, self.ctl, backoff=Backoff(0.05, 0.5)
        )
        assert self.publisher.commands is not None
        self.commands = self.publisher.commands
        self.publisher.start()
        assert self.publisher.connected.wait(30)

    def record(self, n: int) -> None:
        """``n`` events committed by the controller (its own recording), all at once."""

        def many() -> None:
            for i in range(n):
                self.ctl._record(event("device", device="card", ok=i % 2 == 0))

        self.ctl.submit(many).result(120)

    def arrive(self, card: str, *temps: float) -> None:
        """One person at the gate: temperatures, a card, and (if granted) the passage."""
        before = len(self.rig.decisions())
        for temp in temps:
            self.ctl.put(Reading("temp", temp, "temp"))
        self.ctl.put(Reading("card", card, "card"))
        wait_until(lambda: len(self.rig.decisions()) > before, what="a verdict")
        if self.rig.decisions()[-1]["decision"] == "granted":
            self.ctl.put(Reading("passage", True, "passage"))
        self.ctl.submit(lambda: self.rig.clock.advance(10)).result(10)  # past the open window

    def last_seq(self) -> int:
        return int(self.ctl.submit(self.rig.ledger.last_seq).result(10))

    def delivered(self) -> None:
        """Wait until every event so far reached the subscriber and left the outbox."""
        last = self.last_seq()
        wait_until(lambda: last in {e["seq"] for e in self.col.events()}, what=f"seq {last}")
        wait_until(lambda: self.rig.ledger.backlog() == 0, what="an empty outbox")

    def messages(self) -> list[tuple[str, bytes]]:
        with self.col.cond:
            return [(t, p) for t, p, _ in self.col.messages]

    def results(self) -> list[dict[str, Any]]:
        return [json.loads(p) for t, p in self.messages() if t == f"{ROOT}/cmd_result"]

    def send(self, payload: Any, timeout: float = 60) -> dict[str, Any]:
        """Publish ``cmd/replay`` and wait for its answer."""
        before = len(self.results())
        publish(self.broker.port, f"{ROOT}/cmd/replay", payload)
        self.col.wait_for(lambda m: len(self.results()) > before, timeout=timeout)
        return self.results()[before]

    def close(self) -> None:
        self.publisher.stop()
        self.stop.set()
        self.thread.join(10)
        self.col.close()
        self.broker.kill()
        self.rig.conn.close()
