"""A gate under remote commands: its controller on a thread, a publisher, a real mosquitto."""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

from gated.mqtt.link import Backoff
from gated.mqtt.publisher import Publisher
from tests.support.mosquitto import Collector, Door, Mosquitto, publish
from tests.support.rig import Rig

ROOT = "gated/s1/g1"


class Remote:
    """A rig whose controller runs on its thread, a publisher with commands, a broker.

    ``door``: the gate reaches the broker through a :class:`Door` the test can shut.
    ``auth``: the test's own clients log in with it (an ACL broker); ``mqtt`` goes into
    the gate's ``[mqtt]`` section.
    """

    def __init__(
        self,
        tmp_path: Path,
        broker: Mosquitto | None = None,
        door: bool = False,
        auth: dict[str, Any] | None = None,
        **mqtt: Any,
    ):
        self.broker = broker or Mosquitto(tmp_path).start()
        self.auth = auth or {}
        self.door = Door(self.broker.port) if door else None
        url = self.door.url if self.door is not None else self.broker.url
        self.rig = Rig(tmp_path, mqtt={"urls": [url], **mqtt})
        self.stop = threading.Event()
        ctl = self.rig.controller
        self.thread = threading.Thread(target=ctl.run, args=(self.stop,), daemon=True)
        self.thread.start()
        self.col = Collector(self.broker.port, [f"{ROOT}/#"], **self.auth)
        self.publisher = self._publisher()
        assert self.publisher.connected.wait(30)

    def _publisher(self) -> Publisher:
        pub = Publisher.for_controller(
            self.rig.config, self.rig.controller, backoff=Backoff(0.05, 0.5)
        )
        assert pub.commands is not None
        self.commands = pub.commands
        pub.start()
        return pub

    def restart(self) -> None:
        """Stop the publisher and start a new one, as a restarted daemon would."""
        self.publisher.stop()
        self.rig.controller.observers.remove(self.publisher.observe)
        self.publisher = self._publisher()
        assert self.publisher.connected.wait(30)

    def send(self, name: str, payload: Any, retain: bool = False) -> dict[str, Any]:
        """Publish a command and wait for its result (matched by req, or the n-th result)."""
        before = len(self.results())
        publish(self.broker.port, f"{ROOT}/cmd/{name}", payload, retain=retain, **self.auth)
        self.col.wait_for(lambda m: len(self.results()) > before, timeout=30)
        return self.results()[before]

    def now(self) -> float:
        """The gate's clock: what a command's ``ts`` is checked against."""
        return self.rig.clock.time()

    def results(self) -> list[dict[str, Any]]:
        with self.col.cond:
            return [json.loads(p) for t, p, _ in self.col.messages if t == f"{ROOT}/cmd_result"]

    def statuses(self) -> list[dict[str, Any]]:
        with self.col.cond:
            return [json.loads(p) for t, p, _ in self.col.messages if t == f"{ROOT}/status"]

    def close(self, keep_broker: bool = False) -> None:
        self.publisher.stop()
        self.stop.set()
        self.thread.join(10)
        self.col.close()
        if self.door is not None:
            self.door.close()
        if not keep_broker:
            self.broker.kill()
        self.rig.conn.close()
