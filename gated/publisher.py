"""The publisher: drains the outbox to the central broker, in ``seq`` order, nothing lost.

It runs on its own thread with its own SQLite connection and never touches the
decision path: the controller commits an event and its outbox row, the publisher
reads ``outbox JOIN events`` in ``seq`` order, publishes with QoS 1 and a bounded
window of messages in flight, and deletes a row only once its PUBACK is in, in small
batched transactions. After any reconnect it starts again from the lowest row still
in the outbox, so delivery is at least once (a consumer dedupes by ``id``) and a
consumer sees ``seq`` in order.

The retained status follows the gate: it is published on connect, every
``status_interval_s``, and within a second of an applied command or of an event
that changes what it says (mode, device health, the turnstile opening or closing).
"""

from __future__ import annotations

import json
import logging
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from datetime import datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import paho.mqtt.client as mqtt

from gated import __version__, registry_sync
from gated.clock import clock_synced
from gated.commands import Commands
from gated.ha_discovery import discovery_messages
from gated.ledger import iso_utc
from gated.mqtt_input import decode
from gated.mqtt_link import Backoff, Link, _close
from gated.privacy import reduce_event
from gated.storage import connect

log = logging.getLogger(__name__)

Snapshot = Callable[[], "Future[dict[str, Any]]"]

#: Event kinds after which the status is published again (soon, at most once a second).
STATUS_KINDS = frozenset({"mode", "device", "alarm", "decision", "passage"})


class Publisher:
    """A service (``start``/``stop``) that keeps the broker up to date with the outbox."""

    def __init__(
        self,
        config: Any,
        *,
        commands: Commands | None = None,
        snapshot: Snapshot | None = None,
        window: int = 500,
        batch: int = 200,
        backoff: Backoff | None = None,
        status_interval_s: float = 30.0,
        stable_s: float = 10.0,
        wall: Callable[[], float] = time.time,
    ):
        self.config = config
        self.mq = config.mqtt
        self.db_path = Path(config.storage.path)
        gate, site = config.gate.id, config.gate.site
        self.root = f"{self.mq.topic_prefix}/{site}/{gate}"
        self.registry_topic = f"{self.mq.topic_prefix}/{site}/registry"
        self.client_id = self.mq.client_id or f"gated-{site}-{gate}"
        self.tz = ZoneInfo(config.gate.timezone)
        self.commands = commands
        self.snapshot = snapshot
        self.window = window
        self.batch = batch
        self.status_interval_s = status_interval_s
        #: A connection up this long (or one event PUBACKed) resets the backoff.
        self.stable_s = stable_s
        #: Unix time of the status ``ts`` and of "today": the controller's clock.
        self.wall = wall
        self.link = Link(self.mq, self.client_id, self._will(), backoff=backoff, window=window)
        self.stop_event = threading.Event()
        self.thread: threading.Thread | None = None
        self.conn: Any = None
        self.connected = threading.Event()
        self._outgoing: queue.SimpleQueue[tuple[str, bytes, bool]] = queue.SimpleQueue()
        self._acks: list[tuple[int, Any]] = []
        self._state: dict[str, Any] = {}
        self._status_due = False
        self._state_stale = False
        #: Counters for the screen, metrics and tests.
        self.published = 0
        self.delivered = 0
        self.refused = 0
        self.bad_rows = 0
        self.sessions = 0

    @classmethod
    def for_app(cls, app: Any) -> Publisher:
        """The publisher of a running :class:`gated.app.App`, with its commands."""
        return cls.for_controller(app.config, app.controller)

    @classmethod
    def for_controller(cls, config: Any, ctl: Any, **options: Any) -> Publisher:
        """A publisher that takes commands for ``ctl``, reports its state and follows its events."""

        def state() -> dict[str, Any]:
            held = ctl.mode == "free" or ctl.fire
            return {**ctl.snapshot(), "turnstile": "open" if held or ctl.grants else "locked"}

        options.setdefault("wall", ctl.clock.time)
        commands = Commands(ctl, registry_max_bytes=config.mqtt.registry_max_bytes)
        pub = cls(config, commands=commands, snapshot=lambda: ctl.submit(state), **options)
        ctl.observers.append(pub.observe)
        return pub

    def observe(self, event: dict[str, Any]) -> None:
        """Controller observer: an event that changes the status asks for a new one."""
        if event.get("kind") in STATUS_KINDS:
            self._state_stale = True

    # -- service ----------------------------------------------------------------------

    def start(self) -> None:
        """Open the publisher's own database connection and start its thread."""
        self.conn = connect(self.db_path)
        self._ask_state()  # so that the first status already has the gate's state
        self.thread = threading.Thread(target=self._run, name="publisher", daemon=True)
        self.thread.start()

    def stop(self) -> None:
        """Publish ``offline``, disconnect, close the connection; safe to call twice."""
        self.stop_event.set()
        if self.thread is not None:
            self.thread.join(timeout=15)
            self.thread = None
        if self.conn is not None:
            self.conn.close()
            self.conn = None

    def backlog(self) -> int:
        """Events still waiting in the outbox."""
        return int(self.conn.execute("SELECT COUNT(*) FROM outbox").fetchone()[0])

    # -- the thread -------------------------------------------------------------------

    def _run(self) -> None:
        while not self.stop_event.is_set():
            client = self.link.connect(self.stop_event)
            if client is None:
                return
            self.sessions += 1
            try:
                self._session(client)
            except Exception:  # a bug must not end publishing: log, reconnect
                log.exception("publisher session failed")
            finally:
                self.connected.clear()
                _close(client)
            if not self.stop_event.is_set():
                log.warning("disconnected from %s; reconnecting", self.link.connected_url)
                self.stop_event.wait(self.link.backoff.next())

    def _session(self, client: mqtt.Client) -> None:
        inflight: dict[int, int] = {}
        acked: list[int] = []
        self._acks = []
        client.on_publish = self._on_publish
        client.on_message = self._on_message
        cursor = 0
        self._outgoing = queue.SimpleQueue()
        self._birth(client)
        self.connected.set()
        last_flush = last_status = last_asked = connected_at = time.monotonic()
        proven = False
        try:
            while not self.stop_event.is_set():
                more = False
                if len(inflight) < self.window:
                    rows = self._rows(cursor, self.window - len(inflight))
                    more = len(rows) == self.window - len(inflight)
                    for seq, topic, body in rows:
                        cursor = seq
                        payload = self._payload(seq, body)
                        if payload is None:
                            continue
                        info = client.publish(f"{self.root}/{topic}", payload, qos=self.mq.qos)
                        if info.rc != mqtt.MQTT_ERR_SUCCESS:
                            return
                        inflight[info.mid] = seq
                        self.published += 1
                if not self._take_acks(inflight, acked):
                    return
                if client.loop(timeout=0.0 if more else 0.1) != mqtt.MQTT_ERR_SUCCESS:
                    return
                if not self._take_acks(inflight, acked):
                    return
                now = time.monotonic()
                if not proven and (acked or now - connected_at >= self.stable_s):
                    # An event the broker took, or a connection that stayed up: a good
                    # broker. A CONNACK alone proves nothing (it may refuse every message).
                    proven = True
                    self.link.backoff.reset()
                if len(acked) >= self.batch or (acked and now - last_flush > 0.05):
                    self._delete(acked)
                    last_flush = now
                self._send_outgoing(client)
                if now - last_status > self.status_interval_s:
                    last_status = now
                    self._ask_state()
                elif self._state_stale and now - last_asked >= 1.0:
                    self._state_stale = False
                    last_asked = now
                    self._ask_state()
                if self._status_due:
                    self._status_due = False
                    self._publish_status(client)
        finally:
            self._delete(acked)  # what the broker confirmed leaves the outbox, whatever happened
        self._goodbye(client)

    def _on_publish(self, client: Any, userdata: Any, mid: int, rc: Any, props: Any) -> None:
        if rc is not None and getattr(rc, "is_failure", False):
            self.refused += 1
            log.error("the broker refused a message (mid %d): %s; check its ACL", mid, rc)
        self._acks.append((mid, rc))

    def _take_acks(self, inflight: dict[int, int], acked: list[int]) -> bool:
        """Move PUBACKed rows to ``acked``; False if the broker refused one (reconnect)."""
        acks, self._acks = self._acks, []
        ok = True
        for mid, rc in acks:
            seq = inflight.pop(mid, None)
            if seq is None:
                continue  # status, command results, discovery
            if rc is not None and getattr(rc, "is_failure", False):
                log.error("event seq %d refused by the broker; it stays in the outbox", seq)
                ok = False
                continue
            acked.append(seq)
        return ok

    def _rows(self, after: int, limit: int) -> list[tuple[int, str, str]]:
        return list(
            self.conn.execute(
                "SELECT o.seq, o.topic, e.body FROM outbox o JOIN events e ON e.seq = o.seq"
                " WHERE o.seq > ? ORDER BY o.seq LIMIT ?",
                (after, limit),
            )
        )

    def _payload(self, seq: int, body: str) -> bytes | None:
        if self.mq.pii == "full":
            return body.encode()
        try:
            event = json.loads(body)
            return json.dumps(
                reduce_event(event, self.mq.pii), ensure_ascii=False, separators=(",", ":")
            ).encode()
        except (ValueError, TypeError, AttributeError) as exc:
            self.bad_rows += 1
            log.error("event seq %d cannot be published (%s); it stays in the outbox", seq, exc)
            return None

    def _delete(self, acked: list[int]) -> None:
        if not acked:
            return
        self.conn.execute("BEGIN IMMEDIATE")
        try:
            self.conn.executemany("DELETE FROM outbox WHERE seq = ?", [(s,) for s in acked])
            self.conn.execute("COMMIT")
        except Exception:
            self.conn.execute("ROLLBACK")
            raise
        self.delivered += len(acked)
        acked.clear()

    # -- status, commands, discovery --------------------------------------------------

    def _will(self) -> tuple[str, bytes]:
        body = {"state": "offline", "ts": None, "version": __version__, "reason": "connection lost"}
        return f"{self.root}/status", json.dumps(body).encode()

    def _birth(self, client: mqtt.Client) -> None:
        self._publish_status(client)
        self._ask_state()
        if self.commands is not None:
            client.subscribe(f"{self.root}/cmd/+", qos=1)
            client.subscribe(self.registry_topic, qos=1)
        if self.mq.ha_discovery:
            site, gate = self.config.gate.site, self.config.gate.id
            messages = discovery_messages(self.mq.topic_prefix, site, gate, pii=self.mq.pii)
            for topic, payload in messages:
                client.publish(topic, payload, qos=1, retain=True)

    def _publish_status(self, client: mqtt.Client) -> None:
        client.publish(f"{self.root}/status", self._status("online"), qos=1, retain=True)

    def _goodbye(self, client: mqtt.Client) -> None:
        info = client.publish(f"{self.root}/status", self._status("offline"), qos=1, retain=True)
        deadline = time.monotonic() + 2.0
        while not info.is_published() and time.monotonic() < deadline:
            if client.loop(timeout=0.05) != mqtt.MQTT_ERR_SUCCESS:
                return
        client.disconnect()

    def _ask_state(self) -> None:
        if self.snapshot is None:
            return

        def done(fut: Future[dict[str, Any]]) -> None:
            if fut.exception() is None:
                self._state = fut.result()
                self._status_due = True

        self.snapshot().add_done_callback(done)

    def _today(self) -> dict[str, int]:
        now = datetime.fromtimestamp(self.wall(), self.tz)
        midnight = now.replace(hour=0, minute=0, second=0, microsecond=0)
        since = iso_utc(midnight.timestamp())
        counts = {"granted": 0, "denied": 0, "needs_guard": 0}
        for decision, n in self.conn.execute(
            "SELECT decision, COUNT(*) FROM events WHERE kind = 'decision' AND ts >= ?"
            " GROUP BY decision",
            (since,),
        ):
            key = str(decision).removeprefix("guard_")
            if key in counts:
                counts[key] += int(n)
        return counts

    def _status(self, state: str) -> bytes:
        st = self._state
        mode_row = self.conn.execute("SELECT value FROM meta WHERE key = 'mode'").fetchone()
        last = st.get("last_verdict") or {}
        body = {
            "state": state,
            "ts": iso_utc(self.wall()),
            "version": __version__,
            "mode": st.get("mode") or (mode_row[0] if mode_row else "normal"),
            "devices": st.get("devices", {}),
            "backlog": self.backlog(),
            "today": self._today(),
            "last_temperature_c": None if self.mq.pii == "none" else last.get("temperature_c"),
            "registry_version": registry_sync.applied_version(self.conn),
            "broker": str(self.link.connected_url),
            "protocol": self.link.protocol_name,
            "turnstile": st.get("turnstile"),
            "clock_synced": clock_synced(),
        }
        return json.dumps(body, ensure_ascii=False).encode()

    def _on_message(self, client: Any, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        """Every message the broker delivers: refused or handled, it never ends the session.

        Payloads go through the one input guard (:mod:`gated.mqtt_input`), in
        :meth:`Commands.handle` and :meth:`_registry`; whatever still goes wrong is counted
        and logged here, since paho would let it end the session (and a retained message
        would end every session after it).
        """
        if self.commands is None:
            return
        topic = "?"
        try:
            topic = msg.topic
            if topic == self.registry_topic:
                self._registry(bytes(msg.payload))
                return
            name = topic.removeprefix(f"{self.root}/cmd/")
            if not msg.payload and not msg.retain:
                # Someone clearing a retained command (an empty retained publish): nothing to do.
                log.info("empty message on %s ignored (a retained command cleared?)", topic)
                return
            fut = self.commands.handle(name, bytes(msg.payload), retained=bool(msg.retain))
            result_topic = f"{self.root}/cmd_result"

            def reply(f: Future[dict[str, Any]]) -> None:
                result = f.result()
                if result.get("ok"):
                    self._state_stale = True  # a mode change, an open: the status says so soon
                payload = json.dumps(result, ensure_ascii=False).encode()
                self._outgoing.put((result_topic, payload, False))

            fut.add_done_callback(reply)
        except UnicodeDecodeError:  # paho hands over a topic that is not UTF-8 as it came
            self.commands.count_refused("topic")
            log.warning("message refused: its topic is not UTF-8")
        except Exception:
            self.commands.count_refused("error")
            log.exception("message on %r could not be handled", topic[:200])

    def _registry(self, payload: bytes) -> None:
        assert self.commands is not None
        if not payload:
            log.info("empty message on %s ignored (snapshot cleared?)", self.registry_topic)
            return
        try:
            change = registry_sync.parse(decode(payload, self.mq.registry_max_bytes))
        except ValueError as exc:  # InputRefused, RegistryMessageError
            self.commands.count_refused(getattr(exc, "code", "registry"))
            log.warning("registry message refused: %s", str(exc)[:200])
            return
        commands = self.commands

        def done(fut: Future[Any]) -> None:
            exc = fut.exception()
            if exc is not None:
                commands.count_refused("registry")
                log.warning("registry %s %d refused: %s", change.kind, change.version, exc)
            else:
                self._status_due = True

        runner = commands.registry_runner(change)
        commands.controller.submit(runner).add_done_callback(done)

    def _send_outgoing(self, client: mqtt.Client) -> None:
        while True:
            try:
                topic, payload, retain = self._outgoing.get_nowait()
            except queue.Empty:
                return
            client.publish(topic, payload, qos=1, retain=retain)
