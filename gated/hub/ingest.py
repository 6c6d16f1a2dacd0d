"""The hub's MQTT side: every gate's events stored once, acknowledged only once committed.

One persistent MQTT session (clean start off, session expiry ``[hub] session_expiry_s``):
while the hub is stopped, or killed, the broker queues what its subscriptions match, and
hands it over at the next connect. Subscriptions, QoS 1:

- ``$share/{share_group}/{prefix}/+/+/event`` and ``.../alarm`` (plain with
  ``share_group = ""``): several hub instances on one database share the stream;
- ``{prefix}/+/+/status`` and ``{prefix}/+/+/cmd_result``, plain: a retained status is not
  delivered to a shared subscription, and every instance wants every gate's state.

paho's acknowledgements are manual: the network thread (:meth:`Ingest._net`) only queues
each message; the writer thread (:meth:`Ingest._write`) takes all that waits, checks each
message (the input guard :func:`gated.mqtt.inbound.decode`, then the strict event types
:func:`gated.events.parse_event` with ``newer=True``, the body's site and gate against the
topic's), stores the batch in one transaction and only then sends each message's PUBACK.
A hub killed between the two has the batch again from the broker: the rows are keyed by
(site, gate, seq) and a duplicate is counted, not stored again. A message refused is
counted by code, kept in ``hub_rejects`` for inspection, and acknowledged: it would be
refused again. A transaction that fails (a full disk) acknowledges nothing and is tried
again; the broker holds the messages meanwhile.

Continuity: each gate's ``through`` and ``highest`` are in the store (:mod:`gated.hub.store`).
Once a second the writer looks at the gates with a gap: one noticed :data:`GAP_S` ago, of a
gate that is online, is asked for with ``cmd/replay`` (lowest part first, at most
:data:`ASK_MAX` numbers, :data:`MAX_ASKS` open per gate, :data:`ASK_TIMEOUT_S` to answer,
backing off after a refusal or a timeout). The answer's ``purged`` part is counted as
purged; its ``last_seq`` is known to exist. A gate that is offline is asked once it is back.
"""

from __future__ import annotations

import contextlib
import json
import logging
import queue
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import paho.mqtt.client as mqtt

from gated import __version__
from gated.clock import iso_utc, parse_iso_utc
from gated.config.sections import _NAME
from gated.errors import EventError
from gated.events import parse_event
from gated.hub.config import HubConfig
from gated.hub.stats import HubStats
from gated.hub.store import EventRow, HubStore, is_online
from gated.mqtt.inbound import COMMAND_MAX_BYTES, InputRefused, decode
from gated.mqtt.link import V5, Link

log = logging.getLogger(__name__)

LEAVES = ("event", "alarm", "status", "cmd_result")
#: Largest message taken from a gate (an event is a few hundred bytes; a status a few KiB).
MAX_BYTES = COMMAND_MAX_BYTES
#: A gap this old (seconds) is asked for.
GAP_S = 5.0
#: Numbers one replay request names at most (the gate's own limit).
ASK_MAX = 10_000
#: Requests open per gate.
MAX_ASKS = 2
#: Seconds a gate has to answer a replay request.
ASK_TIMEOUT_S = 30.0
#: The longest a gate that answers badly is left alone.
MAX_BACKOFF_S = 120.0
#: Most messages in one transaction.
BATCH_MAX = 2000
#: Messages the broker may have handed over unacknowledged (MQTT 5 Receive Maximum):
#: a backlog after an outage comes in at the pace the store takes it, not all into memory
#: (about 7 MB of them), and five batches' worth, so the broker goes on sending while a
#: batch commits (at 2,000, one batch, the hub stored a fifth less).
RECEIVE_MAX = 10_000
#: Why an event whose seq the hub holds with another id is kept aside.
CONFLICT = (
    "seq already held with another event id: the gate's ledger started again from 1"
    " (a new or recovered database?) or the event is forged"
)
#: A connection that lasted this long (seconds) was a good one: the backoff starts again.
STEADY_S = 30.0
#: How often the retention purge runs (seconds).
PURGE_EVERY_S = 3600.0


@dataclass
class _Message:
    client: mqtt.Client
    mid: int
    qos: int
    topic: str
    payload: bytes
    retain: bool
    at: float


@dataclass
class _Gap:
    """What the planner keeps of one gate with a gap (in memory: a restart asks again)."""

    since: float
    asked: dict[str, tuple[int, int, float]] = field(default_factory=dict)
    not_before: float = 0.0
    failures: int = 0


class Refused(ValueError):
    def __init__(self, code: str, reason: str):
        super().__init__(reason)
        self.code = code


Publish = Callable[[str, bytes, int, bool], None]
#: Called after a commit: an alarm stored (its body), a gate whose row changed.
Observer = Callable[[str, Any], None]
#: Called when a gate comes online or says a registry version (the registry's follow-up).
FollowUp = Callable[[HubStore, str, str, Publish, float], int]


def _whole(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


class Ingest:
    """Subscribe, check, store, acknowledge; ask for gaps (see the module docstring)."""

    def __init__(
        self,
        config: HubConfig,
        stats: HubStats,
        *,
        observer: Observer | None = None,
        follow_up: FollowUp | None = None,
        wall: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
    ):
        self.config = config
        self.stats = stats
        self.observer = observer
        self.follow_up = follow_up
        self.wall = wall
        self.monotonic = monotonic
        self.prefix = config.mqtt.topic_prefix
        self.hubs = f"{self.prefix}/_hub/"
        self.hub_topic = f"{self.hubs}{config.hub.id}/status"
        offline = {"state": "offline", "ts": None, "version": __version__, "hub": config.hub.id}
        self.link = Link(
            config.mqtt,
            config.mqtt.client_id,
            (self.hub_topic, json.dumps(offline).encode()),
            session_expiry_s=config.hub.session_expiry_s,
            prepare=self._prepare,
            receive_maximum=RECEIVE_MAX,
        )
        self._queue: queue.Queue[_Message] = queue.Queue()
        self._stop_net = threading.Event()
        self._lost = threading.Event()
        self._stop_write = threading.Event()
        self._client: mqtt.Client | None = None
        self._client_lock = threading.Lock()
        self._gaps: dict[tuple[str, str], _Gap] = {}
        #: Open replay requests: req -> (site, gate, first, last).
        self._reqs: dict[str, tuple[str, str, int, int]] = {}
        self._threads: list[threading.Thread] = []
        self._retry: list[_Message] = []
        self._next_plan = 0.0
        self._next_purge = 0.0
        #: Set once the first subscription is acknowledged (tests, readiness).
        self.subscribed = threading.Event()
        #: Monotonic time of the writer's last turn (the service's watchdog reads it).
        self.last_turn = time.monotonic()
        self.store: HubStore | None = None

    # -- the network thread -----------------------------------------------------------

    def _prepare(self, client: mqtt.Client) -> None:
        client.manual_ack_set(True)
        client.on_message = self._on_message
        client.on_subscribe = self._on_subscribe
        client.on_disconnect = self._on_disconnect

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        self._queue.put(
            _Message(
                client, msg.mid, msg.qos, msg.topic, bytes(msg.payload), msg.retain, self.wall()
            )
        )

    def _on_subscribe(self, client: mqtt.Client, *args: Any) -> None:
        log.info("subscribed to the gates' topics under %s/", self.prefix)
        self.subscribed.set()

    def _subscribe(self, client: mqtt.Client, v5: bool) -> None:
        group = self.config.hub.share_group
        topics = []
        for leaf in ("event", "alarm"):
            plain = f"{self.prefix}/+/+/{leaf}"
            topics.append(f"$share/{group}/{plain}" if group and v5 else plain)
        topics += [f"{self.prefix}/+/+/status", f"{self.prefix}/+/+/cmd_result"]
        client.subscribe([(t, 1) for t in topics])

    def _hub_status(self, client: mqtt.Client) -> None:
        body = {
            "state": "online",
            "ts": iso_utc(self.wall()),
            "version": __version__,
            "hub": self.config.hub.id,
        }
        client.publish(self.hub_topic, json.dumps(body).encode(), qos=1, retain=True)

    def _net(self) -> None:
        while not self._stop_net.is_set():
            client = self.link.connect(self._stop_net)
            if client is None:
                break
            v5 = self.link.protocol == V5
            if self.config.hub.share_group and not v5:
                log.warning(
                    "the broker speaks MQTT 3.1.1: no shared subscription, this hub takes"
                    " every event (run one instance only)"
                )
            self._lost.clear()
            # paho's own thread from here: a publish or an acknowledgement from the writer
            # thread is queued to it (and wakes it), never written to the socket at once.
            client.loop_start()
            with self._client_lock:
                self._client = client
            self._subscribe(client, v5)
            self._hub_status(client)
            self.stats.connected = True
            began = time.monotonic()
            while not self._stop_net.is_set() and client.is_connected():
                if self._lost.wait(0.2):
                    log.warning("lost the broker connection; connecting again")
                    break
            self.stats.connected = False
            with self._client_lock:
                self._client = None
            if self._stop_net.is_set():
                self._goodbye(client)
            with contextlib.suppress(OSError, ValueError):
                client.disconnect()
            client.loop_stop()
            if time.monotonic() - began >= STEADY_S:
                self.link.backoff.reset()
            else:
                # A broker that takes the hub and drops it again (a wrong ACL, another
                # instance with the same client id) is not hammered.
                self._stop_net.wait(self.link.backoff.next())

    def _on_disconnect(self, client: mqtt.Client, *args: Any) -> None:
        self._lost.set()

    def _goodbye(self, client: mqtt.Client) -> None:
        """The hub's ``offline`` status, sent and flushed before the disconnect."""
        body = {"state": "offline", "ts": iso_utc(self.wall()), "version": __version__}
        body["hub"] = self.config.hub.id
        info = client.publish(self.hub_topic, json.dumps(body).encode(), qos=1, retain=True)
        with contextlib.suppress(RuntimeError, ValueError):
            info.wait_for_publish(timeout=2.0)

    def publish(self, topic: str, payload: bytes, qos: int = 1, retain: bool = False) -> None:
        """Publish on the current connection (any thread); dropped while there is none."""
        with self._client_lock:
            client = self._client
        if client is None:
            raise ConnectionError("not connected to the broker")
        client.publish(topic, payload, qos=qos, retain=retain)

    # -- the writer thread ------------------------------------------------------------

    def _write(self) -> None:
        self.store = HubStore(self.config.database_path)
        try:
            while True:
                self.last_turn = time.monotonic()
                batch = self._retry or self._take()
                self._retry = []
                if batch:
                    self._commit(batch)
                elif self._stop_write.is_set() and self._queue.empty():
                    break
                now = self.monotonic()
                if now >= self._next_plan:
                    self._next_plan = now + 1.0
                    try:
                        self._plan(now)
                    except Exception as exc:  # a locked or full database: next second again
                        self.store.rollback()
                        log.error("cannot plan the replay requests: %s", exc)
                if now >= self._next_purge:
                    self._next_purge = now + PURGE_EVERY_S
                    self._purge()
        finally:
            self.store.close()

    def _take(self) -> list[_Message]:
        try:
            first = self._queue.get(timeout=0.2)
        except queue.Empty:
            return []
        batch = [first]
        while len(batch) < BATCH_MAX:
            try:
                batch.append(self._queue.get_nowait())
            except queue.Empty:
                break
        return batch

    def _commit(self, batch: list[_Message]) -> None:
        assert self.store is not None
        store = self.store
        rows: list[EventRow] = []
        statuses: list[tuple[str, str, dict[str, Any], float | None, float | None]] = []
        answers: list[tuple[str, str, dict[str, Any]]] = []
        refused: list[tuple[_Message, Refused]] = []
        for m in batch:
            if m.topic.startswith(self.hubs):
                continue  # a hub instance's own status (this one's or another's)
            try:
                site, gate, leaf = self._topic(m.topic)
                if leaf in ("event", "alarm"):
                    rows.append(self._event(m, site, gate, leaf))
                elif leaf == "status":
                    status = self._status(m)
                    if status is not None:
                        statuses.append((site, gate, *status))
                else:
                    answer = self._answer(m)
                    if answer is not None:
                        answers.append((site, gate, answer))
            except Refused as why:
                refused.append((m, why))
        try:
            store.begin()
            result = store.add_events(rows)
            for site, gate, msg, seen, skew in statuses:
                store.status(site, gate, msg, seen)
                if skew is not None:
                    store.skew(site, gate, skew)
            for site, gate, answer in answers:
                self._answered(store, site, gate, answer)
            for m, r in refused:
                store.reject(m.topic, r.code, str(r), m.payload, m.at)
            store.commit()
        except Exception as exc:  # sqlite3.Error, OSError: nothing is acknowledged
            store.rollback()
            if self._stop_write.is_set():
                # Not acknowledged: the broker hands them over again at the next start.
                log.error("cannot store %d messages at the stop: %s", len(batch), exc)
                return
            log.error("cannot store %d messages, trying again: %s", len(batch), exc)
            self._retry = batch
            self._stop_write.wait(1.0)
            return
        self.stats.last_commit = self.wall()
        self.stats.add("commits")
        self._ack(batch)
        self.stats.add("stored", result.stored)
        self.stats.add("duplicates", result.duplicates)
        for row in result.conflicts:
            self.stats.refused("seq_conflict")
            log.warning(
                "%s/%s seq %d: %s (kept in hub_conflicts)", row.site, row.gate, row.seq, CONFLICT
            )
        self.stats.add("statuses", len(statuses))
        for m, r in refused:
            self.stats.refused(r.code)
            log.warning("refused %s: %s (%s)", m.topic[:200], r, r.code)
        try:
            self._after(store, result.new, statuses)
        except Exception as exc:  # what follows a commit never ends the ingest
            store.rollback()
            log.error("after a commit: %s", exc)

    def _ack(self, batch: list[_Message]) -> None:
        with self._client_lock:
            current = self._client
        n = 0
        for m in batch:
            # A message of an earlier connection: the broker hands it over again (a duplicate).
            if m.qos and m.client is current:
                m.client.ack(m.mid, m.qos)
                n += 1
        self.stats.add("acked", n)

    def _after(
        self,
        store: HubStore,
        new: list[EventRow],
        statuses: list[tuple[str, str, dict[str, Any], float | None, float | None]],
    ) -> None:
        changed = {(r.site, r.gate) for r in new}
        for site, gate, msg, *_ in statuses:
            changed.add((site, gate))
            # Every online status: the follow-up sees whether the gate is behind its site's
            # registry (back from away, or a snapshot the broker lost) and paces itself.
            if self.follow_up is not None and msg.get("state") == "online":
                try:
                    self.follow_up(store, site, gate, self.publish, self.wall())
                except Exception as exc:  # never the end of the ingest
                    log.warning("registry follow-up for %s/%s failed: %s", site, gate, exc)
        if self.observer is None:
            return
        for r in new:
            if r.kind == "alarm":
                self.observer("alarm", json.loads(r.body))
        for site, gate in changed:
            # The page reads the gate's row back itself: no fleet-wide read per commit here.
            self.observer("gate", {"site": site, "gate": gate})

    # -- checking ---------------------------------------------------------------------

    def _topic(self, topic: str) -> tuple[str, str, str]:
        rest = topic.removeprefix(self.prefix + "/")
        parts = rest.split("/")
        if rest == topic or len(parts) != 3 or parts[2] not in LEAVES:
            raise Refused("topic", "not a gate's event, alarm, status or cmd_result topic")
        site, gate, leaf = parts
        if not _NAME.match(site) or not _NAME.match(gate):
            raise Refused("topic", "a topic level that is no site or gate id")
        return site, gate, leaf

    @staticmethod
    def _decode(m: _Message) -> Any:
        try:
            return decode(m.payload, MAX_BYTES)
        except InputRefused as exc:
            raise Refused(exc.code, str(exc)) from None

    def _event(self, m: _Message, site: str, gate: str, leaf: str) -> EventRow:
        if m.retain:
            raise Refused("retained", "a retained event (gates publish events without retain)")
        data = self._decode(m)
        try:
            event = parse_event(data, newer=True)
        except EventError as exc:
            raise Refused("event", str(exc)) from None
        if event.site != site or event.gate != gate:
            raise Refused("site_gate", "the body's site or gate is not the topic's")
        if (event.kind == "alarm") != (leaf == "alarm"):
            raise Refused("topic", f"a {event.kind} event on {leaf}")
        assert event.seq is not None and event.id is not None and event.ts is not None
        return EventRow(
            site=site,
            gate=gate,
            seq=event.seq,
            id=event.id,
            kind=event.kind,
            ts=event.ts,
            boot=event.boot,
            clock_synced=event.clock_synced,
            received_at=m.at,
            body=m.payload.decode("utf-8"),
        )

    def _status(self, m: _Message) -> tuple[dict[str, Any], float | None, float | None] | None:
        if not m.payload:
            return None  # a retained status cleared
        msg = self._decode(m)
        if not isinstance(msg, dict) or msg.get("state") not in ("online", "offline"):
            raise Refused("status", "not a status (state online or offline)")
        for key in ("last_seq", "backlog", "registry_version"):
            if msg.get(key) is not None and not _whole(msg[key]):
                raise Refused("status", f"{key} is not a whole number")
        ts = msg.get("ts")
        stamp = None
        if isinstance(ts, str):
            try:
                stamp = parse_iso_utc(ts).timestamp()
            except ValueError:
                raise Refused("status", "ts is not an ISO time") from None
        if not m.retain:
            skew = stamp - m.at if stamp is not None else None
            return msg, m.at, skew
        # A retained status may be old: the gate was heard from when it was stamped.
        return msg, min(stamp, m.at) if stamp is not None else None, None

    def _answer(self, m: _Message) -> dict[str, Any] | None:
        msg = self._decode(m)
        if not isinstance(msg, dict):
            raise Refused("answer", "a command result that is not an object")
        req = msg.get("req")
        if not isinstance(req, str) or req not in self._reqs:
            return None  # another consumer's answer, or one from before a restart
        purged, last_seq = msg.get("purged"), msg.get("last_seq")
        if purged is not None and not (
            isinstance(purged, list) and len(purged) == 2 and all(_whole(x) for x in purged)
        ):
            raise Refused("answer", "purged is not [from, to]")
        if last_seq is not None and not _whole(last_seq):
            raise Refused("answer", "last_seq is not a whole number")
        return msg

    # -- continuity -------------------------------------------------------------------

    def _answered(self, store: HubStore, site: str, gate: str, msg: dict[str, Any]) -> None:
        req = msg["req"]
        asked = self._reqs.get(req)
        if asked is None or asked[:2] != (site, gate):
            return  # not this gate's to answer: the request stays open
        del self._reqs[req]
        _, _, first, last = asked
        ok = msg.get("ok") is True
        sent = msg.get("sent") if _whole(msg.get("sent")) else None
        store.answered(req, ok, sent, str(msg.get("error") or "") or None, self.wall())
        self.stats.add("replay_answers")
        gap = self._gaps.get((site, gate))
        if gap is not None:
            gap.asked.pop(req, None)
        if not ok:
            if gap is not None:
                self._back_off(gap, f"{site}/{gate}: replay {req} refused: {msg.get('error')}")
            return
        before = store.through(site, gate)
        purged = msg.get("purged")
        # Only what was asked can be purged: a forged [1, 2**53] moves nothing beyond it.
        lo, hi = (max(purged[0], first), min(purged[1], last)) if purged else (1, 0)
        if lo <= hi:
            store.purged(site, gate, lo, hi, self.wall())
            log.warning(
                "%s/%s: events %d to %d purged at the gate before the hub had them",
                site,
                gate,
                lo,
                hi,
            )
        if msg.get("last_seq") is not None:
            # The gate's own word on its last seq: a higher ``highest`` (a forged or stale
            # status) comes down to it, so no gap is asked for that does not exist.
            store.last_seq_is(site, gate, int(msg["last_seq"]))
        if gap is None:
            return
        if store.through(site, gate) > before:
            gap.failures = 0
        else:
            self._back_off(gap, f"{site}/{gate}: replay {req} answered, nothing of the gap came")

    def _back_off(self, gap: _Gap, why: str) -> None:
        gap.failures += 1
        wait = min(MAX_BACKOFF_S, GAP_S * 2**gap.failures)
        gap.not_before = self.monotonic() + wait
        log.warning("%s; asking again in %.0f s", why, wait)

    def _plan(self, now: float) -> None:
        """Ask for the gaps that are due (the writer thread, once a second)."""
        assert self.store is not None
        store = self.store
        rows = store.conn.execute(
            "SELECT site, gate, state, last_seen FROM hub_gates WHERE highest > through"
        ).fetchall()
        with_gap = set()
        wall = self.wall()
        for site, gate, state, last_seen in rows:
            key = (site, gate)
            with_gap.add(key)
            gap = self._gaps.setdefault(key, _Gap(since=now))
            for req, (_, _, deadline) in list(gap.asked.items()):
                if now >= deadline:
                    del gap.asked[req]
                    self._reqs.pop(req, None)
                    self._back_off(gap, f"{site}/{gate}: replay {req} not answered")
            if not self.config.hub.replay or now - gap.since < GAP_S or now < gap.not_before:
                continue
            online = is_online(
                {"state": state, "last_seen": last_seen}, wall, self.config.hub.offline_after_s
            )
            if not online or len(gap.asked) >= MAX_ASKS:
                continue
            cover = [(a, b) for a, b, _ in gap.asked.values()]
            for a, whole in store.gaps(site, gate):
                b = min(whole, a + ASK_MAX - 1)
                if len(gap.asked) >= MAX_ASKS:
                    break
                if any(a >= c0 and b <= c1 for c0, c1 in cover):
                    continue
                self._ask(store, site, gate, a, b, gap, now)
        for key in set(self._gaps) - with_gap:
            del self._gaps[key]

    def _ask(
        self, store: HubStore, site: str, gate: str, first: int, last: int, gap: _Gap, now: float
    ) -> None:
        req = f"hub-{uuid.uuid4().hex[:24]}"
        body = {
            "req": req,
            "ts": round(self.wall(), 3),
            "by": f"hub:{self.config.hub.id}",
            "from": first,
            "to": last,
        }
        try:
            self.publish(f"{self.prefix}/{site}/{gate}/cmd/replay", json.dumps(body).encode())
        except (ConnectionError, ValueError, OSError):
            return
        gap.asked[req] = (first, last, now + ASK_TIMEOUT_S)
        self._reqs[req] = (site, gate, first, last)
        store.begin()
        store.asked(req, site, gate, first, last, self.wall())
        store.commit()
        self.stats.add("replay_requests")
        log.info("%s/%s: asked for events %d to %d (%s)", site, gate, first, last, req)

    def _purge(self) -> None:
        assert self.store is not None
        before = self.wall() - self.config.hub.retention_days * 86400
        try:
            self.store.begin()
            n = self.store.purge(before)
            self.store.commit()
        except Exception as exc:
            self.store.rollback()
            log.error("retention purge failed: %s", exc)
            return
        if n:
            log.info(
                "retention: %d events older than %d days purged", n, self.config.hub.retention_days
            )

    # -- life -------------------------------------------------------------------------

    def start(self) -> None:
        for name, target in (("hub-writer", self._write), ("hub-mqtt", self._net)):
            t = threading.Thread(target=target, name=name, daemon=True)
            t.start()
            self._threads.append(t)

    def stop(self, timeout: float = 10.0) -> None:
        """Store and acknowledge what came, then the ``offline`` status and the disconnect."""
        self._stop_write.set()
        self._threads[0].join(timeout)
        self._stop_net.set()
        self._threads[1].join(timeout)

    def alive(self) -> bool:
        return all(t.is_alive() for t in self._threads)
