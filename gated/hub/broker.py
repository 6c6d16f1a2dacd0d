"""The hub's command line at the broker: a short clean session that waits for every PUBACK.

``gated hub registry publish`` and ``gated hub revoke`` connect with the hub's ``[mqtt]``
settings (:class:`gated.mqtt.link.Link`: its URLs, TLS, credentials, protocol) under a
client id of their own, ``{client_id}-cli-{pid}`` (the running hub keeps its session),
try every URL once, and say what failed instead of retrying.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Sequence
from types import TracebackType
from typing import Any

import paho.mqtt.client as mqtt

from drivers.common.backoff import Backoff
from gated.errors import GatedError
from gated.hub.config import HubConfig
from gated.mqtt.link import Link

#: Seconds to wait for the broker's PUBACKs.
PUBACK_TIMEOUT_S = 30.0


class PublishError(GatedError, OSError):
    """The broker could not be reached, or did not confirm a message."""


class _OneRound(Backoff):
    """Every broker URL tried once: a command says what failed instead of retrying."""

    def __init__(self, stop: threading.Event):
        super().__init__()
        self.stop = stop

    def next(self) -> float:
        self.stop.set()
        return 0.0


class Broker:
    """A short connection of the hub's command line: clean session, its own client id."""

    def __init__(self, config: HubConfig):
        mq = config.mqtt
        if not mq.urls:
            raise PublishError(f"{config.source}: mqtt.urls: no broker to publish to")
        self.stop = threading.Event()
        # A will is required by Link: an empty retained one under _hub/ clears nothing.
        will = (f"{mq.topic_prefix}/_hub/{config.hub.id}/cli", b"")
        client_id = f"{mq.client_id}-cli-{os.getpid()}"
        self.link = Link(mq, client_id, will, backoff=_OneRound(self.stop))
        self.client: mqtt.Client | None = None
        self.acks: dict[int, Any] = {}

    def __enter__(self) -> Broker:
        client = self.link.connect(self.stop)
        if client is None:
            raise PublishError(f"no broker took the connection: {self.link.last_error}")
        client.on_publish = self._on_publish
        client.loop_start()
        self.client = client
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self.client is not None:
            self.client.disconnect()
            self.client.loop_stop()

    def _on_publish(self, c: Any, u: Any, mid: int, reason: Any, props: Any) -> None:
        self.acks[mid] = reason

    def send(self, messages: Sequence[tuple[str, bytes, bool]]) -> None:
        """Publish each ``(topic, payload, retain)`` with QoS 1; wait for every PUBACK."""
        assert self.client is not None
        url = self.link.connected_url
        infos = []
        for topic, payload, retain in messages:
            info = self.client.publish(topic, payload, qos=1, retain=retain)
            if info.rc != mqtt.MQTT_ERR_SUCCESS:
                raise PublishError(f"{topic}: not sent to {url}: {mqtt.error_string(info.rc)}")
            infos.append((topic, info))
        deadline = time.monotonic() + PUBACK_TIMEOUT_S
        for topic, info in infos:
            try:
                info.wait_for_publish(timeout=max(0.0, deadline - time.monotonic()))
            except (RuntimeError, ValueError) as exc:
                raise PublishError(f"{topic}: not sent to {url}: {exc}") from None
            if not info.is_published():
                raise PublishError(f"{topic}: no PUBACK from {url} within {PUBACK_TIMEOUT_S:g} s")
            reason = self.acks.get(info.mid)
            if reason is not None and getattr(reason, "is_failure", False):
                raise PublishError(f"{topic}: {url} refused it: {reason}")
