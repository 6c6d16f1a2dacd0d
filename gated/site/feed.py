"""The site's peer topics, on the publisher's thread: checked, refused or handed over.

With ``[site] share`` the gate subscribes, on its one MQTT connection, to its own
site's ``{prefix}/{site}/+/event``, ``+/alarm``, ``+/status`` (retained) and
``+/cmd_result`` (the answers to its replay requests), QoS 1 (MQTT 5: no-local, so its
own messages do not come back, and retain-as-published, so a retained event is known
as one even when it comes live). Every message goes through the input guard
(:func:`gated.mqtt.inbound.decode`), then the strict event types
(:func:`gated.events.parse_event`). Refused, counted in ``gated_mqtt_refused_total``
and logged (never applied, never the end of the session): what the guard refuses
(``peer_size``, ``peer_depth``, ``peer_number``, ``peer_json``, ``peer_utf8``), a
retained event (``peer_retained``: peers publish events without retain), what
``parse_event`` refuses (``peer_event``), a missing ``id``, ``seq`` or ``ts``
(``peer_header``), a body ``site`` not ours (``peer_site``), a body ``gate`` not the
topic's (``peer_gate``), an alarm on ``event`` or the other way round, or a topic level
that is no gate id (``peer_topic``), a status or an answer that is not one
(``peer_status``, ``peer_answer``), more waiting than :data:`MAX_WAITING`
(``peer_overflow``: a gap the replay fills later). The gate's own messages are
skipped silently, and so are the answers to other consumers' commands.

What is taken is handed to the controller (:class:`gated.site.peers.PeerBook`) in
batches: one batch in flight at a time, each one all that waited (up to
:data:`BATCH_MAX`) after at most :data:`FLUSH_S`, so a burst of 1,000 events is a few
submits. Every :data:`CHECK_S` the book is asked which gaps are due, and their
``cmd/replay`` requests go out from here.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.subscribeoptions import SubscribeOptions

from gated.config.sections import _NAME
from gated.errors import EventError
from gated.events import parse_event, topic_for
from gated.mqtt.inbound import COMMAND_MAX_BYTES, InputRefused, decode
from gated.site.peers import Ask, Item, PeerBook, PeerStatus, ReplayAnswer

log = logging.getLogger(__name__)

#: Largest peer message taken (an event is a few hundred bytes; a status a few KiB).
PEER_MAX_BYTES = COMMAND_MAX_BYTES
#: Longest an event waits before its batch goes to the controller (seconds).
FLUSH_S = 0.02
#: Most items in one batch.
BATCH_MAX = 1000
#: Most items waiting for the controller; beyond, a message is dropped (and counted).
MAX_WAITING = 50_000
#: How often the book is asked which gaps are due (seconds, real time).
CHECK_S = 0.25
#: Replay requests remembered for their answers (the oldest is forgotten first).
MAX_REQS = 1000

Submit = Callable[[Callable[[], Any]], "Future[Any]"]

LEAVES = ("event", "alarm", "status", "cmd_result")


class Refused(ValueError):
    """A peer message not taken; ``code`` is its counter's name."""

    def __init__(self, code: str, reason: str):
        super().__init__(reason)
        self.code = code


def _whole(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


class SiteFeed:
    """The publisher-thread half of peer sharing (see the module docstring)."""

    def __init__(
        self,
        book: PeerBook,
        submit: Submit,
        *,
        prefix: str,
        site: str,
        gate: str,
        wall: Callable[[], float],
        count_refused: Callable[[str], None],
        wake: Callable[[], None],
        changed: Callable[[], None],
    ):
        self.book = book
        self.submit = submit
        self.site = site
        self.gate = gate
        self.base = f"{prefix}/{site}/"
        self.wall = wall
        self.count_refused = count_refused
        self.wake = wake
        #: Called when what ``T/status.peers`` shows changed (a new status soon).
        self.changed = changed
        self._lock = threading.Lock()
        self._waiting: list[Item] = []
        self._first_at = 0.0
        self._busy = False
        self._checking = False
        self._next_check = 0.0
        self._asks: list[Ask] = []
        #: The reqs this gate sent (their answers are taken, others' skipped).
        self._reqs: dict[str, None] = {}
        #: Counters for tests and the bench.
        self.accepted = 0
        self.submits = 0
        self.asked = 0

    # -- the connection ---------------------------------------------------------------

    def subscribe(self, client: mqtt.Client, v5: bool) -> None:
        """Subscribe to the site's peer topics (at every connect)."""
        for leaf in LEAVES:
            topic = f"{self.base}+/{leaf}"
            if v5:
                # Retain as published: a retained event is refused even when it comes live.
                options = SubscribeOptions(qos=1, noLocal=True, retainAsPublished=True)
                client.subscribe(topic, options=options)
            else:
                client.subscribe(topic, qos=1)

    def handles(self, topic: str) -> bool:
        """Whether ``topic`` is one of the peer topics (``{base}{gate}/{leaf}``)."""
        if not topic.startswith(self.base):
            return False
        parts = topic[len(self.base) :].split("/")
        return len(parts) == 2 and parts[1] in LEAVES

    def message(self, topic: str, payload: bytes, retained: bool) -> None:
        """One message on a peer topic: refused and counted, skipped, or taken."""
        gate, leaf = topic[len(self.base) :].split("/")
        if gate == self.gate:
            return  # its own echo (MQTT 3.1.1 has no no-local)
        try:
            if not _NAME.match(gate):
                raise Refused("peer_topic", "the topic's gate level is no gate id")
            if leaf == "status":
                self._status(gate, payload)
            elif leaf == "cmd_result":
                self._answer(gate, payload)
            else:
                self._event(gate, leaf, payload, retained)
        except Refused as exc:
            self.count_refused(exc.code)
            log.warning("peer message on %r refused: %s", topic[:200], str(exc)[:200])

    @staticmethod
    def _decode(payload: bytes) -> Any:
        try:
            return decode(payload, PEER_MAX_BYTES)
        except InputRefused as exc:
            raise Refused(f"peer_{exc.code}", exc.reason) from None

    def _event(self, gate: str, leaf: str, payload: bytes, retained: bool) -> None:
        if retained and not payload:
            return  # a retained event cleared
        if retained:
            raise Refused("peer_retained", "a retained event: peers publish events without retain")
        try:
            event = parse_event(self._decode(payload), newer=True)  # a newer peer may add fields
        except EventError as exc:
            raise Refused("peer_event", str(exc)) from None
        if event.seq is None or not event.id or event.ts is None:
            raise Refused("peer_header", "no seq, id or ts")
        if event.site != self.site:
            raise Refused("peer_site", f"site {str(event.site)[:64]!r} is not this gate's")
        if event.gate != gate:
            raise Refused("peer_gate", f"gate {str(event.gate)[:64]!r} on {gate!r}'s topic")
        if topic_for(event.kind) != leaf:
            raise Refused("peer_topic", f"a {event.kind} event on {leaf}")
        self.accepted += 1
        self._put(event)

    def _status(self, gate: str, payload: bytes) -> None:
        if not payload:
            return  # a retained status cleared
        msg = self._decode(payload)
        if not isinstance(msg, dict) or msg.get("state") not in ("online", "offline"):
            raise Refused("peer_status", "not a status (state online or offline)")
        last_seq, backlog = msg.get("last_seq"), msg.get("backlog", 0)
        if last_seq is not None and not _whole(last_seq):
            raise Refused("peer_status", "last_seq is not a whole number")
        if not _whole(backlog):
            backlog = 0  # the will has none
        online = msg["state"] == "online"
        self._put(PeerStatus(gate, online, last_seq if online else None, int(backlog)))

    def _answer(self, gate: str, payload: bytes) -> None:
        msg = self._decode(payload)
        if not isinstance(msg, dict):
            raise Refused("peer_answer", "a command result that is not an object")
        req = msg.get("req")
        if not isinstance(req, str) or req not in self._reqs:
            return  # another consumer's answer
        del self._reqs[req]
        purged, last_seq = msg.get("purged"), msg.get("last_seq")
        span: tuple[int, int] | None = None
        if isinstance(purged, list) and len(purged) == 2 and all(_whole(x) for x in purged):
            span = (int(purged[0]), int(purged[1]))
        elif purged is not None:
            raise Refused("peer_answer", "purged is not [from, to]")
        if last_seq is not None and not _whole(last_seq):
            raise Refused("peer_answer", "last_seq is not a whole number")
        self._put(ReplayAnswer(gate, req, msg.get("ok") is True, span, last_seq))

    # -- handing over -----------------------------------------------------------------

    def _put(self, item: Item) -> None:
        with self._lock:
            if len(self._waiting) >= MAX_WAITING:
                overflow = True
            else:
                overflow = False
                if not self._waiting:
                    self._first_at = time.monotonic()
                self._waiting.append(item)
        if overflow:
            self.count_refused("peer_overflow")

    def _flush(self) -> None:
        with self._lock:
            if self._busy or not self._waiting:
                return
            young = time.monotonic() - self._first_at < FLUSH_S
            if young and len(self._waiting) < BATCH_MAX:
                return
            batch, self._waiting = self._waiting[:BATCH_MAX], self._waiting[BATCH_MAX:]
            self._first_at = time.monotonic()
            self._busy = True
        self.submits += 1
        book = self.book
        self.submit(lambda: book.take(batch)).add_done_callback(self._taken)

    def _taken(self, fut: Future[Any]) -> None:
        exc = fut.exception()
        if exc is not None:
            log.error("peer events not taken: %s (a replay brings them again)", exc)
        elif fut.result():
            self.changed()
        with self._lock:
            self._busy = False
        self.wake()  # what waited meanwhile goes next

    def next_due(self) -> float:
        """Monotonic time the publisher's loop should call :meth:`turn` again by."""
        with self._lock:
            if self._asks:
                return 0.0
            due = self._next_check
            if self._waiting and not self._busy:
                due = min(due, self._first_at + FLUSH_S)
        return due

    def turn(self, client: mqtt.Client) -> None:
        """The publisher loop's turn: hand over what waits, ask what is due, send asks."""
        self._flush()
        now = time.monotonic()
        if now >= self._next_check and not self._checking:
            self._next_check = now + CHECK_S
            self._checking = True
            self.submit(self.book.due).add_done_callback(self._due)
        with self._lock:
            asks, self._asks = self._asks, []
        for ask in asks:
            body = {
                "req": ask.req,
                "from": ask.first,
                "to": ask.last,
                "ts": self.wall(),
                "by": self.gate,
            }
            self._reqs[ask.req] = None
            while len(self._reqs) > MAX_REQS:  # unanswered ones the book timed out
                del self._reqs[next(iter(self._reqs))]
            topic = f"{self.base}{ask.peer}/cmd/replay"
            client.publish(topic, json.dumps(body).encode(), qos=1)
            self.asked += 1
            log.info("asked %s for seq %d to %d (%s)", ask.peer, ask.first, ask.last, ask.req)

    def _due(self, fut: Future[list[Ask]]) -> None:
        self._checking = False
        if fut.exception() is not None:
            log.error("peer gaps not checked: %s", fut.exception())
            return
        if self.book.through_news:
            self.changed()
        asks = fut.result()
        if asks:
            with self._lock:
                self._asks += asks
            self.wake()
