"""One connection to the central broker: URLs tried in turn, TLS, secrets from files.

A :class:`Link` makes a fresh paho client for every attempt (so paho never replays
a stale in-memory session: the outbox is the only source of truth), tries MQTT 5
first and falls back to 3.1.1 for a broker that refuses it, and walks the
configured URLs in order with exponential backoff and jitter between rounds.
"""

from __future__ import annotations

import logging
import random
import ssl
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

log = logging.getLogger(__name__)

#: CONNACK reason codes (MQTT 5 and 3.1.1) that mean "speak an older protocol".
_OLD_PROTOCOL = {132, 1}


@dataclass(frozen=True)
class BrokerUrl:
    """``mqtt://host:port`` (plain) or ``mqtts://host:port`` (TLS)."""

    host: str
    port: int
    tls: bool

    @classmethod
    def parse(cls, url: str) -> BrokerUrl:
        """Parse a URL the config has already validated."""
        parts = urlsplit(url)
        tls = parts.scheme == "mqtts"
        return cls(parts.hostname or "", parts.port or (8883 if tls else 1883), tls)

    def __str__(self) -> str:
        return f"{'mqtts' if self.tls else 'mqtt'}://{self.host}:{self.port}"


class Backoff:
    """Exponential delays with full jitter between ``low`` and ``high`` seconds."""

    def __init__(self, low: float = 0.5, high: float = 15.0):
        self.low = low
        self.high = high
        self.current = low

    def next(self) -> float:
        """The next delay (random in [current/2, current]); doubles ``current``."""
        delay = random.uniform(self.current / 2, self.current)
        self.current = min(self.high, self.current * 2)
        return delay

    def reset(self) -> None:
        """Back to the shortest delay (after a good connection)."""
        self.current = self.low


def read_secret(path: Path | None) -> str | None:
    """The first line of a secret file, or None when no file is configured."""
    if path is None:
        return None
    return Path(path).read_text(encoding="utf-8").splitlines()[0].strip()


class Link:
    """Connects to the first broker that answers; ``connect`` returns a live client."""

    def __init__(
        self,
        config: Any,
        client_id: str,
        will: tuple[str, bytes],
        *,
        backoff: Backoff | None = None,
        connect_timeout_s: float = 5.0,
        window: int = 500,
    ):
        self.config = config
        self.urls = [BrokerUrl.parse(u) for u in config.urls]
        self.client_id = client_id
        self.will = will
        self.backoff = backoff or Backoff()
        self.connect_timeout_s = connect_timeout_s
        self.window = window
        self.index = 0
        self.protocol: dict[BrokerUrl, MQTTProtocolVersion] = {}
        self.connected_url: BrokerUrl | None = None
        self.last_error = ""
        self.attempts = 0

    def _client(self, url: BrokerUrl, protocol: MQTTProtocolVersion) -> mqtt.Client:
        client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=self.client_id,
            clean_session=None if protocol == MQTTProtocolVersion.MQTTv5 else True,
            protocol=protocol,
            reconnect_on_failure=False,
        )
        client.connect_timeout = self.connect_timeout_s
        client.max_inflight_messages_set(self.window)
        client.max_queued_messages_set(0)
        topic, payload = self.will
        client.will_set(topic, payload, qos=1, retain=True)
        if self.config.username:
            client.username_pw_set(self.config.username, read_secret(self.config.password_file))
        if url.tls:
            ca = self.config.ca_file
            cert = self.config.cert_file
            key = self.config.key_file
            client.tls_set(
                ca_certs=str(ca) if ca else None,
                certfile=str(cert) if cert else None,
                keyfile=str(key) if key else None,
                cert_reqs=ssl.CERT_REQUIRED,
            )
        return client

    def _try(self, url: BrokerUrl, stop: threading.Event) -> mqtt.Client | None:
        """One attempt at ``url``: a client whose CONNACK accepted us, or None."""
        protocol = self.protocol.get(url, MQTTProtocolVersion.MQTTv5)
        while True:
            try:
                client = self._client(url, protocol)
            except (OSError, ValueError, IndexError) as exc:
                # a missing or empty secret file, an unreadable CA: say so, retry later
                self.last_error = f"{url}: cannot set up the connection: {exc}"
                return None
            result: dict[str, Any] = {}
            client.user_data_set(result)
            client.on_connect = _record_connack
            try:
                if protocol == MQTTProtocolVersion.MQTTv5:
                    client.connect(url.host, url.port, self.config.keepalive_s, clean_start=True)
                else:
                    client.connect(url.host, url.port, self.config.keepalive_s)
            except (OSError, ssl.SSLError, ValueError) as exc:
                self.last_error = f"{url}: {exc}"
                return None
            deadline = time.monotonic() + self.connect_timeout_s
            while "rc" not in result and time.monotonic() < deadline and not stop.is_set():
                if client.loop(timeout=0.05) != mqtt.MQTT_ERR_SUCCESS:
                    break
            rc = result.get("rc")
            if rc is not None and not rc.is_failure:
                self.protocol[url] = protocol
                return client
            _close(client)
            code = getattr(rc, "value", None)
            if protocol == MQTTProtocolVersion.MQTTv5 and (rc is None or code in _OLD_PROTOCOL):
                # No CONNACK at all, or "unsupported protocol version": try 3.1.1 once.
                protocol = MQTTProtocolVersion.MQTTv311
                continue
            self.last_error = f"{url}: {rc if rc is not None else 'no CONNACK'}"
            return None

    def connect(self, stop: threading.Event) -> mqtt.Client | None:
        """Walk the URLs until one accepts us; backoff between full rounds; None on stop."""
        while not stop.is_set():
            for _ in range(len(self.urls)):
                url = self.urls[self.index]
                self.attempts += 1
                client = self._try(url, stop)
                if client is not None:
                    self.connected_url = url
                    self.backoff.reset()
                    log.info("connected to %s (%s)", url, self.protocol[url].name)
                    return client
                log.warning("broker %s not reachable: %s", url, self.last_error)
                self.index = (self.index + 1) % len(self.urls)
                if stop.is_set():
                    return None
            # The first URL is the preferred one: each round starts from it again.
            self.index = 0
            stop.wait(self.backoff.next())
        return None


def _record_connack(c: Any, result: dict[str, Any], flags: Any, rc: Any, props: Any) -> None:
    result["rc"] = rc


def _close(client: mqtt.Client) -> None:
    try:
        sock = client.socket()
        if sock is not None:
            sock.close()
    except OSError:
        pass
