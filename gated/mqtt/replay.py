"""``T/cmd/replay``: ledger events published again, on the publisher's thread, in batches.

A consumer that finds a gap in a gate's ``seq`` asks for it (docs/contracts.md §4b).
:func:`parse_range` checks the request; :class:`Replayer` does the work. The command is
checked and its ``req`` remembered like every other (:mod:`gated.mqtt.commands`); then
the controller thread only hands the range to the replayer, and the reading (the
publisher's own SQLite connection) and the publishing happen on the publisher's
thread, so the decision path never waits for it.

The publisher's loop gives the replayer a turn only once the live outbox rows it could
send are sent: one batch of ``batch`` (20) events per turn, with at most ``window``
replayed messages in flight, so a commit that wakes the loop waits a batch at most, and
it goes first. After each event the thread lets the controller have the interpreter.
A replayed message is not an outbox row: its PUBACK deletes nothing, and the live
stream keeps its order.

One replay runs at a time; up to :data:`MAX_OPEN` requests (the running one included)
are open, in the order they came, and one more is refused as busy. The answer goes out
once every replayed message is PUBACKed: a consumer on the same broker has them all
before the answer. A replay (running or waiting) that the end of the session interrupts
is refused: on a stop the answer says so before the gate's ``offline`` status; on a lost
connection it has nowhere to go, and the central side asks again with a new ``req``, as
for any command whose answer did not come.
"""

from __future__ import annotations

import logging
import queue
import sqlite3
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

import paho.mqtt.client as mqtt

from gated.events import topic_for

log = logging.getLogger(__name__)

#: The most seq numbers one request may name (``to - from + 1``).
MAX_NUMBERS = 10_000
#: Requests open at once (the running one and those waiting); one more is refused.
MAX_OPEN = 8


class ReplayRefused(ValueError):
    """A replay request that is not taken; ``code`` is its counter's name."""

    def __init__(self, reason: str, code: str = "range"):
        super().__init__(reason)
        self.code = code


def _seq(msg: dict[str, Any], key: str) -> int:
    if key not in msg:
        raise ReplayRefused(f"replay needs {key} (a ledger seq, a whole number from 1)")
    value = msg[key]
    if isinstance(value, bool) or not isinstance(value, int):
        raise ReplayRefused(f"{key} is not a whole number (a ledger seq): {str(value)[:32]!r}")
    if value < 1:
        raise ReplayRefused(f"{key} is {value}: a ledger seq starts at 1")
    return value


def parse_range(msg: dict[str, Any]) -> tuple[int, int]:
    """``(from, to)`` of a replay request; :class:`ReplayRefused` says what is wrong."""
    first, last = _seq(msg, "from"), _seq(msg, "to")
    if first > last:
        raise ReplayRefused(f"from {first} is after to {last}")
    if last - first + 1 > MAX_NUMBERS:
        raise ReplayRefused(
            f"from {first} to {last} is {last - first + 1} numbers: at most {MAX_NUMBERS}"
            " per request (split the range)"
        )
    return first, last


@dataclass
class _Request:
    req: str
    first: int
    last: int
    answer: Future[dict[str, Any]]
    #: Set when it starts: the next seq to read, the end of the range to read.
    cursor: int = 0
    end: int = 0
    purged: list[int] | None = None
    last_seq: int = 0
    sent: int = 0
    inflight: dict[int, int] = field(default_factory=dict)

    @property
    def read_all(self) -> bool:
        return self.cursor > self.end


class Replayer:
    """Replay requests: taken on any thread, worked on the publisher's."""

    def __init__(
        self,
        root: str,
        qos: int,
        render: Callable[[str], bytes],
        wake: Callable[[], None],
        batch: int = 20,
        window: int = 200,
    ):
        self.root = root
        self.qos = qos
        #: An event's stored body as it leaves the gate (the live events' ``pii`` reduction).
        self.render = render
        self.wake = wake
        self.batch = batch
        self.window = window
        self._waiting: queue.SimpleQueue[_Request] = queue.SimpleQueue()
        self._open = 0
        self._lock = threading.Lock()
        self._current: _Request | None = None
        #: Counters for tests and the bench.
        self.replayed = 0
        self.unreadable = 0

    def request(self, req: str, first: int, last: int) -> Future[dict[str, Any]]:
        """Queue a checked range (any thread); the future is ``sent``, ``purged``, ``last_seq``."""
        with self._lock:
            if self._open >= MAX_OPEN:
                raise ReplayRefused(
                    f"replay busy: {MAX_OPEN} requests already open; ask again later", "busy"
                )
            self._open += 1
        answer: Future[dict[str, Any]] = Future()
        self._waiting.put(_Request(req, first, last, answer))
        self.wake()
        return answer

    # -- the publisher's thread ---------------------------------------------------------

    def step(self, client: mqtt.Client, conn: sqlite3.Connection, free: int) -> bool:
        """Publish the next batch if there is room; True if more could go at once.

        ``free``: the publisher's window less the outbox rows in flight; replayed
        messages in flight count against it too, so a replay only takes room live rows
        leave.
        """
        job = self._current or self._start(conn)
        if job is None:
            return False
        room = min(self.batch, self.window - len(job.inflight), free - len(job.inflight))
        if job.read_all or room <= 0:
            self._finish_if_done()
            return False
        rows = conn.execute(
            "SELECT seq, kind, body FROM events WHERE seq >= ? AND seq <= ? ORDER BY seq LIMIT ?",
            (job.cursor, job.end, room),
        ).fetchall()
        job.cursor = int(rows[-1][0]) + 1 if len(rows) == room else job.end + 1
        for seq, kind, body in rows:
            try:
                payload = self.render(body)
            except (ValueError, TypeError, AttributeError) as exc:
                self.unreadable += 1
                log.error("event seq %d cannot be replayed (%s)", seq, exc)
                continue
            info = client.publish(f"{self.root}/{topic_for(kind)}", payload, qos=self.qos)
            if info.rc != mqtt.MQTT_ERR_SUCCESS:
                self.abandon("the connection to the broker ended")
                return False
            job.inflight[info.mid] = int(seq)
            # Hand the interpreter over: without it the controller waits for the GIL up
            # to its 5 ms switch interval at each look-up (decide p99 x7, bench/replay.py).
            time.sleep(0)
        self._finish_if_done()
        return self._current is not None and not self._current.read_all

    def acked(self, mid: int, rc: Any) -> None:
        """A PUBACK the live rows did not claim: count it if it is a replayed message's."""
        job = self._current
        if job is None or job.inflight.pop(mid, None) is None:
            return
        if rc is not None and getattr(rc, "is_failure", False):
            log.error("a replayed event was refused by the broker: %s", rc)
        else:
            job.sent += 1
            self.replayed += 1
        self._finish_if_done()

    def abandon(self, why: str) -> None:
        """End every open request with an error (the session ended); safe to repeat."""
        jobs = [self._current] if self._current is not None else []
        self._current = None
        while True:
            try:
                jobs.append(self._waiting.get_nowait())
            except queue.Empty:
                break
        for job in jobs:
            log.warning(
                "replay %s (seq %d to %d) interrupted: %s", job.req, job.first, job.last, why
            )
            self._close(job, ReplayRefused(f"replay interrupted: {why}; ask again", "interrupted"))

    def _start(self, conn: sqlite3.Connection) -> _Request | None:
        try:
            job = self._waiting.get_nowait()
        except queue.Empty:
            return None
        # One statement, one snapshot: the oldest event retention has kept, the last seq.
        oldest, last_seq = conn.execute(
            "SELECT (SELECT MIN(seq) FROM events),"
            " (SELECT CAST(value AS INTEGER) - 1 FROM meta WHERE key = 'next_seq')"
        ).fetchone()
        last_seq = int(last_seq)
        kept_from = int(oldest) if oldest is not None else last_seq + 1
        job.last_seq = last_seq
        if job.first < kept_from:
            job.purged = [job.first, min(job.last, kept_from - 1)]
        job.cursor = max(job.first, kept_from)
        job.end = min(job.last, last_seq)
        self._current = job
        log.info("replay %s: seq %d to %d", job.req, job.first, job.last)
        return job

    def _finish_if_done(self) -> None:
        job = self._current
        if job is None or not job.read_all or job.inflight:
            return
        self._current = None
        log.info("replay %s: %d events sent, purged %s", job.req, job.sent, job.purged)
        self._close(job, None)
        if not self._waiting.empty():
            self.wake()  # the next one starts at the next turn

    def _close(self, job: _Request, error: Exception | None) -> None:
        with self._lock:
            self._open -= 1
        if error is not None:
            job.answer.set_exception(error)
        else:
            job.answer.set_result(
                {"sent": job.sent, "purged": job.purged, "last_seq": job.last_seq}
            )
