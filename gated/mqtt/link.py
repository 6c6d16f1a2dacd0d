"""One connection to the central broker: URLs tried in turn, TLS, secrets from files.

A :class:`Link` makes a fresh paho client for every attempt (so paho never replays
a stale in-memory session: the outbox is the only source of truth) and walks the
configured URLs in order with exponential backoff and jitter between rounds. The
backoff is reset by the publisher once a connection has proved good, not by a bare
CONNACK: a broker that accepts and then refuses every message must not be hammered.

``mqtt.protocol = "auto"`` tries MQTT 5 and falls back to 3.1.1 for a broker that
refuses 5: a CONNACK that says "unsupported protocol version", or a close of the
connection after the CONNECT was sent and before any CONNACK (RabbitMQ 3.x does
that). A refused TCP connection, a failed TLS handshake or a CONNACK that never
comes is an outage, not an old broker: no fallback. A URL where 3.1.1 worked after
MQTT 5 was refused starts with 3.1.1 from then on, until an attempt there fails;
then MQTT 5 is tried first again. ``"5"`` and ``"3.1.1"`` speak only that protocol.
"""

from __future__ import annotations

import logging
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from drivers.common.backoff import Backoff  # shared with the device readers; named here too

if TYPE_CHECKING:
    from gated.config.sections import BrokerConfig

log = logging.getLogger(__name__)

#: CONNACK codes that mean "speak an older protocol": MQTT 5's 132, and 3.1.1's return
#: code 1 (paho reports a 3.1.1 broker's answer to a v5 CONNECT as 132 already).
_OLD_PROTOCOL = {132, 1}

#: How the status payload names a protocol.
PROTOCOL_NAMES = {MQTTProtocolVersion.MQTTv5: "5.0", MQTTProtocolVersion.MQTTv311: "3.1.1"}

V5 = MQTTProtocolVersion.MQTTv5
V311 = MQTTProtocolVersion.MQTTv311

_CLOSED_ON_V5 = "closed the connection to an MQTT 5 CONNECT before any CONNACK"

#: What to tell a user whose broker refuses MQTT 5 while ``mqtt.protocol = "5"``.
_ONLY_5_HINT = 'mqtt.protocol = "5": set "auto" or "3.1.1" for a broker that speaks only 3.1.1'


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


def read_secret(path: Path | None) -> str | None:
    """The first line of a secret file, or None when no file is configured."""
    if path is None:
        return None
    return Path(path).read_text(encoding="utf-8").splitlines()[0].strip()


class Link:
    """Connects to the first broker that answers; ``connect`` returns a live client."""

    def __init__(
        self,
        config: BrokerConfig,
        client_id: str,
        will: tuple[str, bytes],
        *,
        backoff: Backoff | None = None,
        connect_timeout_s: float = 5.0,
        window: int = 500,
        session_expiry_s: int = 0,
        prepare: Callable[[mqtt.Client], None] | None = None,
        receive_maximum: int = 0,
    ):
        self.config = config
        self.urls = [BrokerUrl.parse(u) for u in config.urls]
        self.client_id = client_id
        self.will = will
        self.backoff = backoff or Backoff()
        self.connect_timeout_s = connect_timeout_s
        self.window = window
        #: Above 0: a persistent session the broker keeps that long while the gate is
        #: away, queueing what its subscriptions match (the site's peer events); 0: a
        #: clean session at every connect.
        self.session_expiry_s = session_expiry_s
        #: Called with each new client before its CONNECT (callbacks, manual acks): what a
        #: persistent session delivers right after the CONNACK must find them set.
        self.prepare = prepare
        #: MQTT 5: the most QoS 1 and 2 messages the broker may have unacknowledged to
        #: this client at once (0: the protocol's default, 65,535). A consumer that
        #: acknowledges only once a message is stored takes no more than it can hold.
        self.receive_maximum = receive_maximum
        self.index = 0
        #: The protocol of the connection ``connect`` returned last.
        self.protocol: MQTTProtocolVersion | None = None
        self.connected_url: BrokerUrl | None = None
        self.last_error = ""
        self.attempts = 0
        #: URLs that refused MQTT 5 and then accepted 3.1.1 (``protocol = "auto"``): their
        #: next attempt starts with 3.1.1; an attempt there that fails removes the URL.
        self.remembered: dict[BrokerUrl, MQTTProtocolVersion] = {}
        #: Why the last attempt's broker turned MQTT 5 down, or None.
        self._v5_refused: str | None = None
        self._warn_plain_tls_files()

    def _warn_plain_tls_files(self) -> None:
        c = self.config
        tls = {"ca_file": c.ca_file, "cert_file": c.cert_file, "key_file": c.key_file}
        files = [k for k, path in tls.items() if path]
        for url in self.urls:
            if files and not url.tls:
                log.warning(
                    "mqtt.%s is set but %s is plain MQTT: no TLS, the certificate is not used"
                    " and the password travels in clear; use mqtts://",
                    "/".join(files),
                    url,
                )

    @property
    def protocol_name(self) -> str | None:
        """``"5.0"`` or ``"3.1.1"``: the protocol of the current connection."""
        return PROTOCOL_NAMES.get(self.protocol) if self.protocol is not None else None

    def _client(self, url: BrokerUrl, protocol: MQTTProtocolVersion) -> mqtt.Client:
        client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=self.client_id,
            clean_session=(
                None if protocol == MQTTProtocolVersion.MQTTv5 else not self.session_expiry_s
            ),
            protocol=protocol,
            reconnect_on_failure=False,
        )
        client.connect_timeout = self.connect_timeout_s
        client.max_inflight_messages_set(self.window)
        client.max_queued_messages_set(0)
        if self.prepare is not None:
            self.prepare(client)
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

    def _connect_properties(self) -> Properties | None:
        if not self.session_expiry_s and not self.receive_maximum:
            return None
        props = Properties(PacketTypes.CONNECT)
        if self.session_expiry_s:
            props.SessionExpiryInterval = self.session_expiry_s
        if self.receive_maximum:
            props.ReceiveMaximum = self.receive_maximum
        return props

    def _first_protocol(self, url: BrokerUrl) -> MQTTProtocolVersion:
        choice = self.config.protocol
        if choice == "3.1.1":
            return V311
        if choice == "5":
            return V5
        return self.remembered.get(url, V5)

    def _try(self, url: BrokerUrl, stop: threading.Event) -> mqtt.Client | None:
        """One attempt at ``url``: a client whose CONNACK accepted us, or None.

        With ``protocol = "auto"``: MQTT 5 first (a broker upgraded since is picked up),
        3.1.1 right after a refusal of 5; or 3.1.1 first where it is remembered.
        """
        protocol = self._first_protocol(url)
        client = self._attempt(url, protocol, stop)
        if client is not None:
            self.protocol = protocol
            return client
        if self.remembered.pop(url, None) is not None:
            # Whatever failed (an outage, a refusal, a broker that changed), it is no
            # longer known that 3.1.1 is what works there: MQTT 5 first next time.
            log.info("%s: MQTT 3.1.1 failed; the next attempt tries MQTT 5 first", url)
            return None
        refused = self._v5_refused
        if protocol != V5 or refused is None:
            return None
        if self.config.protocol == "5":
            self.last_error = f"{url}: {refused}; {_ONLY_5_HINT}"
            return None
        log.info("%s %s; trying MQTT 3.1.1", url, refused)
        client = self._attempt(url, V311, stop)
        if client is None:
            self.last_error += f", after MQTT 5: {refused}"
            return None
        self.protocol = V311
        self.remembered[url] = V311
        log.warning(
            "%s %s and accepted MQTT 3.1.1: 3.1.1 there from now on, until an attempt there fails",
            url,
            refused,
        )
        return client

    def _attempt(
        self, url: BrokerUrl, protocol: MQTTProtocolVersion, stop: threading.Event
    ) -> mqtt.Client | None:
        """One CONNECT in ``protocol``: the accepted client, or None with ``last_error`` set.

        ``_v5_refused`` says why, when the broker turned MQTT 5 down: its CONNACK said
        "unsupported protocol version", or it closed the connection after the CONNECT
        was sent and before any CONNACK.
        """
        self._v5_refused = None
        name = PROTOCOL_NAMES[protocol]
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
            # TCP connect and TLS handshake happen here: their failure is an outage.
            if protocol == V5:
                rc = client.connect(
                    url.host,
                    url.port,
                    self.config.keepalive_s,
                    clean_start=not self.session_expiry_s,
                    properties=self._connect_properties(),
                )
            else:
                rc = client.connect(url.host, url.port, self.config.keepalive_s)
        except (OSError, ssl.SSLError, ValueError) as exc:
            self.last_error = f"{url}: {exc} (MQTT {name})"
            return None
        # The CONNECT is out once paho has nothing left to write; a close after that,
        # and before a CONNACK, is the broker's answer to it.
        sent = rc == mqtt.MQTT_ERR_SUCCESS and not client.want_write()
        deadline = time.monotonic() + self.connect_timeout_s
        closed = rc != mqtt.MQTT_ERR_SUCCESS
        while not closed and "rc" not in result and time.monotonic() < deadline:
            if stop.is_set():
                break
            sent = sent or not client.want_write()
            if client.loop(timeout=0.05) != mqtt.MQTT_ERR_SUCCESS:
                closed = True
        reason = result.get("rc")
        if reason is not None and not reason.is_failure:
            return client
        _close(client)
        if reason is None:
            if closed and sent:
                self.last_error = f"{url}: closed the connection before any CONNACK (MQTT {name})"
                if protocol == V5:
                    self._v5_refused = _CLOSED_ON_V5
            elif closed:
                self.last_error = f"{url}: connection lost before the CONNECT was out (MQTT {name})"
            else:
                # No CONNACK: a dead or black-holed broker, not an old one; do not downgrade.
                self.last_error = f"{url}: no CONNACK (MQTT {name})"
            return None
        self.last_error = f"{url}: {reason} (MQTT {name})"
        if protocol == V5 and reason.value in _OLD_PROTOCOL:
            self._v5_refused = f"does not speak MQTT 5 ({reason})"
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
                    log.info("connected to %s (MQTT %s)", url, self.protocol_name)
                    return client
                log.warning("no connection to broker %s: %s", url, self.last_error)
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
