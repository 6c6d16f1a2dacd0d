"""The publisher: drains the outbox to the central broker, in ``seq`` order, nothing lost.

It runs on its own thread with its own SQLite connection and never touches the
decision path: the controller commits an event and its outbox row, the publisher
reads ``outbox JOIN events`` in ``seq`` order, publishes with QoS 1 and a bounded
window of messages in flight, and deletes a row only once its PUBACK is in, in small
batched transactions. After any reconnect it starts again from the lowest row still
in the outbox, so delivery is at least once (a consumer dedupes by ``id``) and a
consumer sees ``seq`` in order.

The loop sleeps in one ``select`` over paho's socket and a wake socket of its own: a
commit (the controller's observer), a command result or a status to send writes a
byte there, so an event leaves for the broker as soon as it is committed, not at the
next poll. On stop it drains the outbox for up to ``drain_s`` (SPEC §4) before its
``offline`` status.

The retained status follows the gate: it is published on connect, every
``status_interval_s``, and within a second of an applied command or of an event
that changes what it says (mode, device health, the turnstile opening or closing).
Its first one waits (briefly) for the gate's state, so it lists every device.
"""

from __future__ import annotations

import contextlib
import json
import logging
import queue
import select
import socket
import ssl
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo

import paho.mqtt.client as mqtt

from gated import __version__
from gated.clock import clock_synced, iso_utc
from gated.mqtt import registry_sync
from gated.mqtt.commands import Commands
from gated.mqtt.ha_discovery import discovery_messages
from gated.mqtt.inbound import decode
from gated.mqtt.link import Backoff, Link, _close
from gated.mqtt.replay import Replayer
from gated.privacy import reduce_event
from gated.site.feed import SiteFeed, Submit
from gated.site.peers import PeerBook
from gated.storage import Transaction, connect

if TYPE_CHECKING:
    from gated.app import App
    from gated.config import Config
    from gated.controller import Controller

log = logging.getLogger(__name__)

Snapshot = Callable[[], "Future[dict[str, Any]]"]

#: Event kinds after which the status is published again (soon, at most once a second).
STATUS_KINDS = frozenset({"mode", "device", "alarm", "decision", "passage"})

#: How long the first connection waits for the gate's state (normally a few ms).
FIRST_STATE_WAIT_S = 2.0


def event_payload(body: str, pii: str) -> bytes:
    """A ledger event's stored body as it is published, reduced by ``pii`` (SPEC §4)."""
    if pii == "full":
        return body.encode()
    event = json.loads(body)
    return json.dumps(reduce_event(event, pii), ensure_ascii=False, separators=(",", ":")).encode()


class _Outgoing(queue.SimpleQueue[tuple[str, bytes, bool]]):
    """Messages other threads hand to the loop (command results); each one wakes it."""

    def __init__(self, wake: Callable[[], None]):
        self._wake = wake

    def put(
        self, item: tuple[str, bytes, bool], block: bool = True, timeout: float | None = None
    ) -> None:
        """Queue ``item`` and wake the loop."""
        super().put(item, block, timeout)
        self._wake()


class Publisher:
    """A service (``start``/``stop``) that keeps the broker up to date with the outbox."""

    def __init__(
        self,
        config: Config,
        *,
        commands: Commands | None = None,
        snapshot: Snapshot | None = None,
        window: int = 500,
        batch: int = 200,
        backoff: Backoff | None = None,
        status_interval_s: float = 30.0,
        stable_s: float = 10.0,
        wall: Callable[[], float] = time.time,
        poll_s: float = 0.1,
        drain_s: float = 2.0,
        peers: PeerBook | None = None,
        submit: Submit | None = None,
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
        #: The longest the loop sleeps with nothing due: it looks at the outbox then even
        #: if no commit woke it (a plain publisher polls; one for a controller is woken).
        self.poll_s = poll_s
        #: On stop, how long the outbox may take to drain before the ``offline`` status.
        self.drain_s = drain_s
        self._drain_until = 0.0
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        #: ``[site] share``: the site's peer topics (gated/site/feed.py), or None.
        self.site: SiteFeed | None = None
        if peers is not None and submit is not None:
            self.site = SiteFeed(
                peers,
                submit,
                prefix=self.mq.topic_prefix,
                site=site,
                gate=gate,
                wall=wall,
                count_refused=self._count_refused,
                wake=self.wake,
                changed=self.state_changed,
            )
        self.link = Link(
            self.mq,
            self.client_id,
            self._will(),
            backoff=backoff,
            window=window,
            session_expiry_s=config.site.session_expiry_s if self.site is not None else 0,
        )
        self.stop_event = threading.Event()
        self.thread: threading.Thread | None = None
        self.conn: Any = None
        self.connected = threading.Event()
        self._outgoing = _Outgoing(self.wake)
        self._acks: list[tuple[int, Any]] = []
        self._state: dict[str, Any] = {}
        self._state_ready = threading.Event()
        self._status_wanted = False
        self._state_stale = False
        #: ``cmd/replay``: ledger events again, between live rows (gated/mqtt/replay.py).
        self.replayer = Replayer(
            self.root, self.mq.qos, lambda body: event_payload(body, self.mq.pii), self.wake
        )
        if commands is not None:
            commands.replay = self.replayer.request
        #: Counters for the screen, metrics and tests.
        self.published = 0
        self.delivered = 0
        self.refused = 0
        self.bad_rows = 0
        self.sessions = 0
        #: Loop turns ended by a wake-up (a commit, a command result, a status to send).
        self.wakeups = 0
        #: Events still in the outbox when the last stop's drain ran out of time.
        self.left_at_stop = 0

    @classmethod
    def for_app(cls, app: App) -> Publisher:
        """The publisher of a running :class:`gated.app.App`, with its commands."""
        return cls.for_controller(app.config, app.controller)

    @classmethod
    def for_controller(cls, config: Config, ctl: Controller, **options: Any) -> Publisher:
        """A publisher that takes commands for ``ctl``, reports its state and follows its events."""

        def state() -> dict[str, Any]:
            held = ctl.mode == "free" or ctl.fire
            return {**ctl.desk.snapshot(), "turnstile": "open" if held or ctl.grants else "locked"}

        options.setdefault("wall", ctl.clock.time)
        options.setdefault("poll_s", 1.0)  # every commit wakes it: the poll is a backstop
        commands = Commands(ctl, registry_max_bytes=config.mqtt.registry_max_bytes)
        if config.site.share:
            if ctl.peers is None:
                ctl.peers = PeerBook(ctl.ledger.conn, config, ctl.clock)
            options.setdefault("peers", ctl.peers)
            options.setdefault("submit", ctl.submit)
        pub = cls(config, commands=commands, snapshot=lambda: ctl.submit(state), **options)
        ctl.observers.append(pub.observe)
        ctl.state_watchers.append(pub.state_changed)  # storage failing: no event says so
        if pub.site is not None:
            # A peer's missing count or online moved (on the controller thread): the
            # status and the screen follow, as for any change with no event of its own.
            pub.site.changed = ctl.notify_state_watchers
        return pub

    def observe(self, event: dict[str, Any]) -> None:
        """Controller observer (after the commit): send it now; a new status if it says so."""
        if event.get("kind") in STATUS_KINDS:
            self._state_stale = True
        self.wake()

    def state_changed(self) -> None:
        """Controller state watcher: the gate's state changed with no event (storage
        failed); the status says so within a second."""
        self._state_stale = True
        self.wake()

    def _count_refused(self, code: str) -> None:
        if self.commands is not None:
            self.commands.count_refused(code)

    def wake(self) -> None:
        """End the loop's wait now (any thread): something is there to send."""
        with contextlib.suppress(OSError):  # full: a wake-up is pending; closed: stopped
            self._wake_w.send(b"\0")

    @property
    def _status_due(self) -> bool:
        return self._status_wanted

    @_status_due.setter
    def _status_due(self, due: bool) -> None:
        # Set from the controller's thread (a new state, a registry applied): wake the loop.
        self._status_wanted = due
        if due:
            self.wake()

    # -- service ----------------------------------------------------------------------

    def start(self) -> None:
        """Open the publisher's own database connection and start its thread."""
        self.conn = connect(self.db_path)
        self._ask_state()  # so that the first status already has the gate's state
        self.thread = threading.Thread(target=self._run, name="publisher", daemon=True)
        self.thread.start()

    def stop(self) -> None:
        """Drain the outbox (up to ``drain_s``), publish ``offline``, disconnect, close the
        connection; safe to call twice."""
        self._drain_until = time.monotonic() + self.drain_s
        self.stop_event.set()
        self.wake()
        if self.thread is not None:
            self.thread.join(timeout=15)
            self.thread = None
        if self.conn is not None:
            self.conn.close()
            self.conn = None
        self._wake_r.close()
        self._wake_w.close()

    def backlog(self) -> int:
        """Events still waiting in the outbox."""
        return int(self.conn.execute("SELECT COUNT(*) FROM outbox").fetchone()[0])

    # -- the thread -------------------------------------------------------------------

    def _run(self) -> None:
        if self.snapshot is not None:
            # The first status says what the gate is (mode, every device): wait for it.
            deadline = time.monotonic() + FIRST_STATE_WAIT_S
            while not self._state_ready.wait(0.05) and not self.stop_event.is_set():
                if time.monotonic() > deadline:
                    log.warning("no state from the controller yet; the first status lacks it")
                    break
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
        self._outgoing = _Outgoing(self.wake)
        self._birth(client)
        self.connected.set()
        last_flush = last_status = last_asked = connected_at = time.monotonic()
        proven = False
        try:
            while True:
                rows: list[tuple[int, str, str]] = []
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
                if not more and not self.stop_event.is_set():
                    # Live rows first: a replay batch only when the outbox has no more.
                    more = self.replayer.step(client, self.conn, self.window - len(inflight))
                if self.site is not None and not self.stop_event.is_set():
                    self.site.turn(client)
                if not self._take_acks(inflight, acked):
                    return
                stopping = self.stop_event.is_set()
                if stopping and not rows and not inflight:
                    break  # drained: nothing is left that the broker could take
                now = time.monotonic()
                if stopping and now >= self._drain_until:
                    self.left_at_stop = self.backlog() - len(acked)
                    log.warning(
                        "stopping with %d events not confirmed by the broker; they stay in"
                        " the outbox for the next start",
                        self.left_at_stop,
                    )
                    break
                if more:
                    timeout = 0.0
                else:
                    due = [
                        now + min(self.poll_s, self.mq.keepalive_s / 4),
                        last_status + self.status_interval_s,
                    ]
                    if acked:
                        due.append(last_flush + 0.05)
                    if self._state_stale:
                        due.append(last_asked + 1.0)
                    if not proven:
                        due.append(connected_at + self.stable_s)
                    if stopping:
                        due.append(self._drain_until)
                    elif self.site is not None:
                        due.append(self.site.next_due())
                    timeout = max(0.0, min(due) - now)
                if self._turn(client, timeout) != mqtt.MQTT_ERR_SUCCESS:
                    return
                if not self._take_acks(inflight, acked):
                    return
                now = time.monotonic()
                if not proven and (acked or now - connected_at >= self.stable_s):
                    # An event the broker took, or a connection that stayed up: a good
                    # broker. A CONNACK alone proves nothing (it may refuse every message).
                    proven = True
                    self.link.backoff.reset()
                if len(acked) >= self.batch or (acked and now - last_flush >= 0.05):
                    self._delete(acked)
                    last_flush = now
                self._send_outgoing(client)
                if stopping:
                    continue  # the controller has stopped: no new state to ask for
                if now - last_status >= self.status_interval_s:
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
            # On a stop the answers still go out (in _goodbye); on a lost connection they cannot.
            stopping = self.stop_event.is_set()
            self.replayer.abandon(
                "the gate is stopping" if stopping else "the connection to the broker ended"
            )
        self._goodbye(client)

    def _turn(self, client: mqtt.Client, timeout: float) -> mqtt.MQTTErrorCode:
        """One turn of paho's network loop, in a ``select`` a wake-up also ends.

        paho's ``loop()`` selects on its socket and a socketpair only its own
        ``publish()`` writes to; this is that loop (``loop_read``, ``loop_write``,
        ``loop_misc``) with the publisher's wake socket in the same ``select``.
        """
        sock = client.socket()
        if sock is None:
            return mqtt.MQTT_ERR_NO_CONN
        pending = sock.pending() if isinstance(sock, ssl.SSLSocket) else 0  # TLS, already read
        writing = [sock] if client.want_write() else []
        try:
            readable, _, _ = select.select(
                [sock, self._wake_r], writing, [], 0.0 if pending else timeout
            )
        except (OSError, ValueError, TypeError):  # the socket closed under us
            return mqtt.MQTT_ERR_CONN_LOST
        if self._wake_r in readable:
            self.wakeups += 1
            with contextlib.suppress(OSError):
                self._wake_r.recv(4096)
        if sock in readable or pending:
            rc = client.loop_read()
            if rc != mqtt.MQTT_ERR_SUCCESS:
                return rc
        if client.socket() is not None and client.want_write():
            rc = client.loop_write()
            if rc != mqtt.MQTT_ERR_SUCCESS:
                return rc
        return client.loop_misc()

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
                self.replayer.acked(mid, rc)  # a replayed event, a status, a command result
                continue
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
        try:
            return event_payload(body, self.mq.pii)
        except (ValueError, TypeError, AttributeError) as exc:
            self.bad_rows += 1
            log.error("event seq %d cannot be published (%s); it stays in the outbox", seq, exc)
            return None

    def _delete(self, acked: list[int]) -> None:
        if not acked:
            return
        with Transaction(self.conn) as c:
            c.executemany("DELETE FROM outbox WHERE seq = ?", [(s,) for s in acked])
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
        if self.site is not None:
            self.site.subscribe(client, self.link.protocol == mqtt.MQTTv5)
        if self.mq.ha_discovery:
            site, gate = self.config.gate.site, self.config.gate.id
            messages = discovery_messages(self.mq.topic_prefix, site, gate, pii=self.mq.pii)
            for topic, payload in messages:
                client.publish(topic, payload, qos=1, retain=True)

    def _publish_status(self, client: mqtt.Client) -> None:
        client.publish(f"{self.root}/status", self._status("online"), qos=1, retain=True)

    def _goodbye(self, client: mqtt.Client) -> None:
        self._send_outgoing(client)
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
                self._state_ready.set()
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
            "last_seq": self._last_seq(),
            "peers": st.get("peers", {}),
        }
        return json.dumps(body, ensure_ascii=False).encode()

    def _last_seq(self) -> int:
        row = self.conn.execute("SELECT value FROM meta WHERE key = 'next_seq'").fetchone()
        return int(row[0]) - 1 if row else 0

    def _on_message(self, client: Any, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        """Every message the broker delivers: refused or handled, it never ends the session.

        Payloads go through the one input guard (:mod:`gated.mqtt.inbound`), in
        :meth:`Commands.handle` and :meth:`_registry`; whatever still goes wrong is counted
        and logged here, since paho would let it end the session (and a retained message
        would end every session after it).
        """
        topic = "?"
        try:
            topic = msg.topic
            if self.site is not None and self.site.handles(topic):
                self.site.message(topic, bytes(msg.payload), bool(msg.retain))
                return
            if self.commands is None:
                return
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
            self._count_refused("topic")
            log.warning("message refused: its topic is not UTF-8")
        except Exception:
            self._count_refused("error")
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

        commands.apply_registry(change).add_done_callback(done)

    def _send_outgoing(self, client: mqtt.Client) -> None:
        while True:
            try:
                topic, payload, retain = self._outgoing.get_nowait()
            except queue.Empty:
                return
            client.publish(topic, payload, qos=1, retain=retain)
