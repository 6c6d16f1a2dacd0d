"""Each peer gate's ``seq``, tracked on the controller's thread; its events taken once.

:class:`PeerBook` is the controller-thread half of peer sharing (the publisher-thread
half is :mod:`gated.site.feed`). Per peer it keeps, in the gate's own database:

- ``site_peers(gate, through, highest, last_seen, received)``: every seq 1..``through``
  is known (taken, or purged at the peer), ``highest`` is the highest seq known to
  exist (seen, or named by the peer's status or a replay answer), ``last_seen`` the
  unix time of the last message heard from it, ``received`` the events taken;
- ``site_peer_seqs(gate, seq)``: the seqs above ``through`` already taken.

``missing`` is the numbers between ``through`` and ``highest`` not taken. An event whose
(gate, seq) is known is a duplicate and is dropped; a new one goes to
:func:`gated.site.learn.learn` and is marked known in the same transaction, one per
batch. A gap that has waited ``[site] reorder_s`` is asked for with ``cmd/replay``
(:meth:`PeerBook.due`), newest part first, at most ``replay_max`` numbers a request and
:data:`MAX_ASKS` requests open per peer; a range asked is not asked again before its
answer or ``replay_timeout_s``. A peer that is not online is not asked (its gap is
asked once it is back). A ``purged`` part of an answer counts as known, and so does
everything below it (a replay purges below the oldest event kept).
"""

from __future__ import annotations

import logging
import sqlite3
import uuid
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from gated.events import Event
from gated.site import learn as rules
from gated.storage import Transaction

if TYPE_CHECKING:
    from gated.clock import Clock
    from gated.config import Config

log = logging.getLogger(__name__)

SCHEMA = """
CREATE TABLE IF NOT EXISTS site_peers (
    gate TEXT PRIMARY KEY,
    through INTEGER NOT NULL DEFAULT 0,
    highest INTEGER NOT NULL DEFAULT 0,
    last_seen REAL,
    received INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS site_peer_seqs (
    gate TEXT NOT NULL,
    seq INTEGER NOT NULL,
    PRIMARY KEY (gate, seq)
) WITHOUT ROWID;
"""

#: Replay requests open at once to one peer (its replayer takes 8 from everyone).
MAX_ASKS = 2
#: At most this often a ``through`` that moved alone makes a new status (the screen and
#: ``T/status``): within a second of a change, not once per batch of a busy site.
THROUGH_EVERY_S = 1.0
#: A peer heard from this recently (seconds) is online, whatever its status says.
ONLINE_S = 60.0
#: The longest a peer that answers badly is left alone before it is asked again.
MAX_BACKOFF_S = 60.0


@dataclass(frozen=True)
class Ask:
    """A ``cmd/replay`` to publish: ``peer``'s seqs ``first`` to ``last``."""

    peer: str
    req: str
    first: int
    last: int


@dataclass(frozen=True)
class PeerStatus:
    """A peer's retained ``T/status``, as far as it matters here."""

    gate: str
    online: bool
    #: The peer's ledger's last seq and its outbox backlog, when the status says them.
    last_seq: int | None = None
    backlog: int = 0


@dataclass(frozen=True)
class ReplayAnswer:
    """A peer's ``cmd_result`` for one of this gate's replay requests."""

    gate: str
    req: str
    ok: bool
    purged: tuple[int, int] | None = None
    last_seq: int | None = None


#: What the feed hands over, in the order it came: events, statuses and answers.
Item = Event | PeerStatus | ReplayAnswer


@dataclass
class Peer:
    """What this gate knows of one peer's ``seq`` stream."""

    gate: str
    through: int = 0
    highest: int = 0
    above: set[int] = field(default_factory=set)
    last_seen: float | None = None
    received: int = 0
    #: Monotonic time (controller clock) of the last message heard; None: not this run.
    heard_at: float | None = None
    #: The state its retained status says ("online" / "offline"), None: no status seen.
    state: str | None = None
    #: (highest, when it became known): a gap below ``highest`` is noticed from then.
    noticed: list[tuple[int, float]] = field(default_factory=list)
    #: Open requests: req -> (first, last, deadline).
    asked: dict[str, tuple[int, int, float]] = field(default_factory=dict)
    not_before: float = 0.0
    failures: int = 0
    #: seqs taken since the last write (for ``site_peer_seqs``).
    new: set[int] = field(default_factory=set)

    @property
    def missing(self) -> int:
        """Numbers between ``through`` and ``highest`` not taken."""
        return max(0, self.highest - self.through - len(self.above))

    def online(self, now: float) -> bool:
        """Its status says online, or it was heard from in the last :data:`ONLINE_S`."""
        recent = self.heard_at is not None and now - self.heard_at < ONLINE_S
        return self.state == "online" or recent

    def knows(self, seq: int) -> bool:
        """Whether ``seq`` is known (taken or purged)."""
        return seq <= self.through or seq in self.above

    def take(self, seq: int) -> None:
        """Mark ``seq`` known."""
        self.above.add(seq)
        self.new.add(seq)
        self.compact()

    def known_through(self, seq: int) -> None:
        """Mark every seq up to ``seq`` known (purged at the peer)."""
        if seq > self.through:
            self.through = seq
            self.above = {s for s in self.above if s > seq}
            self.new = {s for s in self.new if s > seq}
            self.compact()
        self.exists(seq, None)

    def exists(self, seq: int, now: float | None) -> None:
        """``seq`` is known to exist (seen, or named by the peer); a gap noticed at ``now``."""
        if seq > self.highest:
            self.highest = seq
            if now is not None:
                self.noticed.append((seq, now))

    def compact(self) -> None:
        """Move ``through`` over the taken seqs right above it."""
        while self.through + 1 in self.above:
            self.through += 1
            self.above.discard(self.through)
        self.noticed = [(h, t) for h, t in self.noticed if h > self.through]

    def gaps(self, upto: int) -> list[tuple[int, int]]:
        """The missing ranges in ``through + 1 .. upto``, lowest first."""
        out: list[tuple[int, int]] = []
        start = self.through + 1
        for seq in sorted(s for s in self.above if s <= upto):
            if seq > start:
                out.append((start, seq - 1))
            start = seq + 1
        if start <= upto:
            out.append((start, upto))
        return out


def _subtract(ranges: list[tuple[int, int]], cover: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """``ranges`` less the numbers ``cover`` holds."""
    for c0, c1 in cover:
        left: list[tuple[int, int]] = []
        for a, b in ranges:
            if b < c0 or a > c1:
                left.append((a, b))
                continue
            if a < c0:
                left.append((a, c0 - 1))
            if b > c1:
                left.append((c1 + 1, b))
        ranges = left
    return ranges


class PeerBook:
    """The peers of one gate; every method runs on the controller thread."""

    def __init__(self, conn: sqlite3.Connection, config: Config, clock: Clock):
        self.conn = conn
        self.gate = config.gate.id
        site = config.site
        self.reorder_s = site.reorder_s
        self.replay_max = site.replay_max
        self.replay_timeout_s = site.replay_timeout_s
        self.clock = clock
        self.peers: dict[str, Peer] = {}
        self._loaded = False
        #: Counters for the screen, metrics, tests and the bench.
        self.taken = 0
        self.duplicates = 0
        self.unlearned = 0
        self.asks = 0
        self.timeouts = 0
        self.batches = 0
        self.checks = 0
        #: Each peer's ``through`` as the last status showed it, and when (monotonic).
        self._told: dict[str, int] = {}
        self._told_at = float("-inf")
        #: Set by :meth:`due`: a ``through`` moved since the last status and is due now.
        self.through_news = False

    # -- storage ------------------------------------------------------------------------

    def _load(self) -> None:
        if self._loaded:
            return
        self.conn.executescript(SCHEMA)
        now = self.clock.monotonic()
        self.peers = {}
        rows = self.conn.execute(
            "SELECT gate, through, highest, last_seen, received FROM site_peers"
        ).fetchall()
        for gate, through, highest, last_seen, received in rows:
            peer = Peer(str(gate), int(through), int(highest), last_seen=last_seen)
            peer.received = int(received)
            peer.above = {
                int(s)
                for (s,) in self.conn.execute(
                    "SELECT seq FROM site_peer_seqs WHERE gate = ? AND seq > ?", (gate, through)
                )
            }
            if peer.highest > peer.through:
                peer.noticed = [(peer.highest, now)]  # a gap from before the restart
            self.peers[peer.gate] = peer
        self._loaded = True

    def _save(self, c: sqlite3.Connection, peer: Peer) -> None:
        c.execute(
            "INSERT INTO site_peers(gate, through, highest, last_seen, received)"
            " VALUES (?, ?, ?, ?, ?) ON CONFLICT(gate) DO UPDATE SET through = excluded.through,"
            " highest = excluded.highest, last_seen = excluded.last_seen,"
            " received = excluded.received",
            (peer.gate, peer.through, peer.highest, peer.last_seen, peer.received),
        )
        c.execute(
            "DELETE FROM site_peer_seqs WHERE gate = ? AND seq <= ?", (peer.gate, peer.through)
        )
        c.executemany(
            "INSERT OR IGNORE INTO site_peer_seqs(gate, seq) VALUES (?, ?)",
            [(peer.gate, s) for s in sorted(peer.new) if s > peer.through],
        )
        peer.new.clear()

    def _peer(self, gate: str) -> Peer:
        peer = self.peers.get(gate)
        if peer is None:
            peer = self.peers[gate] = Peer(gate)
        return peer

    # -- what the feed hands over -----------------------------------------------------

    def take(self, items: list[Item]) -> bool:
        """Take a batch in order, in one transaction; True if a new status is due: what
        ``status`` shows of a peer beside its ``through`` changed (a new peer, its missing
        count, online), or a ``through`` moved and none was shown for a second."""
        self._load()
        before = self._shown()
        now, wall = self.clock.monotonic(), self.clock.time()
        touched: set[str] = set()
        try:
            with Transaction(self.conn) as c:
                for item in items:
                    peer = self._peer(str(item.gate))
                    touched.add(peer.gate)
                    if isinstance(item, PeerStatus) and not item.online:
                        peer.heard_at = None  # its will, or its goodbye: offline from now
                    else:
                        peer.heard_at, peer.last_seen = now, wall
                    if isinstance(item, Event):
                        self._event(c, peer, item, now)
                    elif isinstance(item, PeerStatus):
                        self._status(peer, item, now)
                    else:
                        self._answer(peer, item, now)
                for gate in touched:
                    self._save(c, self.peers[gate])
        except Exception:
            self._loaded = False  # the memory may be ahead of the file: read it again
            self._load()
            raise
        self.batches += 1
        if self._shown() != before:
            self._tell(now)
            return True
        return self._through_moved(now)

    def _tell(self, now: float) -> None:
        self._told = {g: p.through for g, p in self.peers.items()}
        self._told_at = now

    def _through_moved(self, now: float) -> bool:
        """Whether a ``through`` that moved since the last status is due to be shown."""
        if now - self._told_at < THROUGH_EVERY_S:
            return False
        if {g: p.through for g, p in self.peers.items()} == self._told:
            return False
        self._tell(now)
        return True

    def _event(self, c: sqlite3.Connection, peer: Peer, event: Event, now: float) -> None:
        seq = int(event.seq or 0)
        if peer.knows(seq):
            self.duplicates += 1
            return
        try:
            rules.learn(c, event)
        except sqlite3.Error:
            raise  # the batch is not taken: the events come again (replay)
        except Exception:  # a rule's bug must not stop the other events
            self.unlearned += 1
            log.exception("peer %s seq %d: its rules failed; taken as known", peer.gate, seq)
        peer.exists(seq, now)
        peer.take(seq)
        peer.received += 1
        self.taken += 1

    def _status(self, peer: Peer, status: PeerStatus, now: float) -> None:
        peer.state = "online" if status.online else "offline"
        if status.last_seq is not None:
            # What its outbox still holds is on its way live: not a gap yet.
            peer.exists(max(0, status.last_seq - status.backlog), now)

    def _answer(self, peer: Peer, answer: ReplayAnswer, now: float) -> None:
        asked = peer.asked.pop(answer.req, None)
        if asked is None:
            return  # timed out already, or from before a restart
        first, last, _ = asked
        if not answer.ok:
            self._back_off(peer, now, f"replay {answer.req} refused")
            return
        if answer.purged is not None:
            peer.known_through(answer.purged[1])
        if answer.last_seq is not None:
            peer.exists(answer.last_seq, now)
        top = min(last, peer.highest if answer.last_seq is None else answer.last_seq)
        still = _subtract(peer.gaps(top), [(1, first - 1)]) if top >= first else []
        if still:
            # Answered, yet not all came: do not ask again at once.
            self._back_off(peer, now, f"replay {answer.req} left {len(still)} gaps")
        else:
            peer.failures = 0

    def _back_off(self, peer: Peer, now: float, why: str) -> None:
        peer.failures += 1
        wait = min(MAX_BACKOFF_S, self.reorder_s * 2**peer.failures)
        peer.not_before = now + wait
        log.warning("peer %s: %s; asking again in %.0f s", peer.gate, why, wait)

    # -- what to ask, what to show ----------------------------------------------------

    def due(self) -> list[Ask]:
        """The replay requests to send now (their ranges count as asked from now)."""
        self._load()
        self.checks += 1
        now = self.clock.monotonic()
        self.through_news = self._through_moved(now)  # one held back by THROUGH_EVERY_S
        out: list[Ask] = []
        for peer in self.peers.values():
            for req, (_, _, deadline) in list(peer.asked.items()):
                if now >= deadline:
                    del peer.asked[req]
                    self.timeouts += 1
                    self._back_off(peer, now, f"replay {req} not answered")
            if not peer.missing or now < peer.not_before or not peer.online(now):
                continue
            room = MAX_ASKS - len(peer.asked)
            ripe = [h for h, t in peer.noticed if now - t >= self.reorder_s]
            if room <= 0 or not ripe:
                continue
            upto = min(max(ripe), peer.highest)
            cover = [(a, b) for a, b, _ in peer.asked.values()]
            ranges = _subtract(peer.gaps(upto), cover)
            for a, b in reversed(ranges):  # newest first: the rules' windows are recent
                while b >= a and room > 0:
                    lo = max(a, b - self.replay_max + 1)
                    req = f"{self.gate[:24]}-{uuid.uuid4().hex[:20]}"
                    peer.asked[req] = (lo, b, now + self.replay_timeout_s)
                    out.append(Ask(peer.gate, req, lo, b))
                    self.asks += 1
                    room -= 1
                    b = lo - 1
        return out

    def status(self) -> dict[str, dict[str, Any]]:
        """``T/status.peers``: ``{gate: {"through", "missing", "online"}}``."""
        self._load()
        now = self.clock.monotonic()
        return {
            g: {"through": p.through, "missing": p.missing, "online": p.online(now)}
            for g, p in sorted(self.peers.items())
        }

    def _shown(self) -> dict[str, tuple[int, bool]]:
        now = self.clock.monotonic()
        return {g: (p.missing, p.online(now)) for g, p in self.peers.items()}
