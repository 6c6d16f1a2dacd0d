"""The in/out ledger: every event, its gap-free ``seq``, and its outbox row.

An event is written to ``events`` and ``outbox`` in one transaction before
anything acts on it (SPEC §4, §7); with no broker configured there is nobody to
deliver to, so no outbox row is written (one would keep its event from the purge
for ``undelivered_max_days``). ``seq`` comes from a counter in ``meta``
incremented in that same transaction, so it is gap-free and survives restarts
and purges.

``card_first_use`` keeps, for every card uid, the stamp and ``seq`` of the first
decision it was presented at, written in that decision's transaction. Retention
keeps it for cards in the registry (and drops a stranger's uid with its events), so
the daily report can tell a card's first use after the events of that day are gone.

What the policy reads of the past is the site's: the gate's own quota uses, presence and
one-time pass uses beside what its peers taught (the ``site_*`` tables, SPEC §4b).
"""

from __future__ import annotations

import json
import sqlite3
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

from gated.clock import Clock, iso_utc
from gated.events import Decision, Event, PeerRef, topic_for
from gated.storage import Transaction

E = TypeVar("E", bound=Event)


@dataclass(frozen=True)
class Effects:
    """State that changes with an event, committed in the event's transaction."""

    quota_household: str | None = None
    quota_direction: str | None = None
    presence_person: str | None = None
    presence_direction: str | None = None
    pass_use_jti: str | None = None
    mode: str | None = None


@dataclass(frozen=True)
class Presence:
    """A person's last granted passage: its direction, unix ``ts`` and, learned from a
    peer gate, that gate's event (None: this gate's own)."""

    direction: str
    ts: float
    peer: PeerRef | None = None


_FIRST_USE_SCHEMA = (
    "CREATE TABLE card_first_use (uid TEXT PRIMARY KEY, ts TEXT NOT NULL, seq INTEGER NOT NULL)"
)


def ensure_card_first_use(conn: sqlite3.Connection) -> None:
    """Create ``card_first_use``; in a database from before it, fill it from the ledger.

    The backfill knows the cards of the events still there (those within retention
    when the gate was upgraded); from then on every first use is recorded.
    """
    sql = "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'card_first_use'"
    if conn.execute(sql).fetchone():
        return
    with Transaction(conn) as c:
        if c.execute(sql).fetchone():  # another process was first
            return
        c.execute(_FIRST_USE_SCHEMA)
        # In seq order, so the first decision with a card is the one that stays.
        c.execute(
            "INSERT OR IGNORE INTO card_first_use(uid, ts, seq)"
            " SELECT json_extract(body, '$.credential.ref'), ts, seq FROM events"
            " WHERE kind = 'decision' AND json_extract(body, '$.credential.kind') = 'card'"
            " AND json_extract(body, '$.credential.ref') IS NOT NULL ORDER BY seq"
        )


class Ledger:
    """Appends events for one gate; the controller thread is its only writer."""

    def __init__(
        self,
        conn: sqlite3.Connection,
        *,
        site: str,
        gate: str,
        clock: Clock,
        clock_synced: Callable[[], bool] | None = None,
        outbox: bool = True,
    ):
        self.conn = conn
        self.outbox = outbox  # False: no broker configured, no outbox rows
        self.site = site
        self.gate = gate
        self.clock = clock
        self._clock_synced = clock_synced or (lambda: True)
        self.boot = int(self._meta("boot"))
        ensure_card_first_use(conn)

    def _meta(self, key: str) -> str:
        row = self.conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return str(row[0])

    def get_meta(self, key: str, default: str) -> str:
        """A persisted setting (the gate mode survives restarts)."""
        row = self.conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return str(row[0]) if row else default

    def start_boot(self) -> int:
        """Count one more daemon start; events carry this number as ``boot``."""
        with Transaction(self.conn) as c:
            c.execute("UPDATE meta SET value = CAST(value AS INTEGER) + 1 WHERE key = 'boot'")
        self.boot = int(self._meta("boot"))
        return self.boot

    def append(self, event: E, effects: Effects | None = None) -> E:
        """Commit ``event`` stamped with its header (id, ts, site, gate, clock_synced,
        boot, seq) and ``effects``, in one transaction; returns the stamped event."""
        now = self.clock.time()
        header = {
            "id": event.id or str(uuid.uuid4()),
            "ts": iso_utc(now),
            "site": self.site,
            "gate": self.gate,
            "clock_synced": bool(self._clock_synced()),
            "boot": self.boot,
        }
        person = getattr(event, "person", None)
        decision = event.decision if isinstance(event, Decision) else None
        with Transaction(self.conn) as c:
            seq = int(
                c.execute(
                    "UPDATE meta SET value = CAST(value AS INTEGER) + 1 WHERE key = 'next_seq'"
                    " RETURNING CAST(value AS INTEGER) - 1"
                ).fetchone()[0]
            )
            stamped = event.stamped(**header, seq=seq)
            c.execute(
                "INSERT INTO events(seq, id, ts, kind, decision, person_id, body)"
                " VALUES (?, ?, ?, ?, ?, ?, ?)",
                (
                    seq,
                    stamped.id,
                    stamped.ts,
                    event.kind,
                    decision,
                    person.id if person is not None else None,
                    stamped.to_json(),
                ),
            )
            if self.outbox:
                c.execute(
                    "INSERT INTO outbox(seq, topic) VALUES (?, ?)", (seq, topic_for(event.kind))
                )
            card = stamped.card_ref() if isinstance(stamped, Decision) else None
            if card is not None:
                c.execute(
                    "INSERT OR IGNORE INTO card_first_use(uid, ts, seq) VALUES (?, ?, ?)",
                    (card, stamped.ts, seq),
                )
            if effects is not None:
                self._apply(c, effects, seq, now)
        return stamped

    @staticmethod
    def _apply(c: sqlite3.Connection, fx: Effects, seq: int, now: float) -> None:
        if fx.quota_household:
            c.execute(
                "INSERT INTO quota_use(household, direction, ts, seq) VALUES (?, ?, ?, ?)",
                (fx.quota_household, fx.quota_direction or "", now, seq),
            )
        if fx.presence_person:
            c.execute(
                "INSERT OR REPLACE INTO presence(person_id, direction, ts, seq) VALUES (?,?,?,?)",
                (fx.presence_person, fx.presence_direction or "", now, seq),
            )
        if fx.mode:
            c.execute("INSERT OR REPLACE INTO meta(key, value) VALUES ('mode', ?)", (fx.mode,))
        if fx.pass_use_jti:
            c.execute(
                "INSERT OR IGNORE INTO pass_uses(jti, seq, ts) VALUES (?, ?, ?)",
                (fx.pass_use_jti, seq, now),
            )

    # -- what the policy needs to know about the past, at every gate of the site --------
    # The site tables hold what the peer gates taught (gated/site/learn.py, SPEC §4b).

    def quota_used(self, household: str, since: float, direction: str | None) -> int:
        """Granted verdicts for ``household`` since unix time ``since`` (on ``direction``),
        at this gate and at its peers."""
        where = "household = ? AND ts >= ?"
        args: tuple[Any, ...] = (household, since)
        if direction not in (None, "both"):
            where += " AND direction = ?"
            args += (direction,)
        sql = (
            f"SELECT (SELECT COUNT(*) FROM quota_use WHERE {where})"
            f" + (SELECT COUNT(*) FROM site_quota_use WHERE {where})"
        )
        return int(self.conn.execute(sql, args + args).fetchone()[0])

    def last_direction(self, person_id: str) -> str | None:
        """The direction of the person's last granted passage at this gate, if any."""
        own = self.presence(person_id)
        return own.direction if own is not None else None

    def presence(self, person_id: str) -> Presence | None:
        """The person's last granted passage at this gate."""
        row = self.conn.execute(
            "SELECT direction, ts FROM presence WHERE person_id = ?", (person_id,)
        ).fetchone()
        return Presence(str(row[0]), float(row[1])) if row else None

    def site_presence(self, person_id: str) -> Presence | None:
        """The person's last granted passage at a peer gate (by ``ts``), and its event."""
        row = self.conn.execute(
            "SELECT direction, ts, gate, seq, event_id FROM site_presence WHERE person_id = ?",
            (person_id,),
        ).fetchone()
        if row is None:
            return None
        peer = PeerRef(gate=str(row[2]), seq=int(row[3]), id=str(row[4]))
        return Presence(str(row[0]), float(row[1]), peer)

    def pass_used(self, jti: str) -> bool:
        """Whether a one-time pass has already let somebody through, here or at a peer."""
        row = self.conn.execute(
            "SELECT EXISTS (SELECT 1 FROM pass_uses WHERE jti = ?)"
            " OR EXISTS (SELECT 1 FROM site_pass_uses WHERE jti = ?)",
            (jti, jti),
        ).fetchone()
        return bool(row[0])

    # -- reading ----------------------------------------------------------------------

    def clock_synced(self) -> bool:
        """Whether the clock events are stamped with is synchronised right now."""
        return bool(self._clock_synced())

    def last_seq(self) -> int:
        """The highest ``seq`` handed out so far (0 before the first event)."""
        return int(self._meta("next_seq")) - 1

    def open_shifts(self) -> list[str]:
        """The guards whose last shift event is ``guard_on`` (still on duty, as recorded)."""
        rows = self.conn.execute(
            "SELECT json_extract(body, '$.guard') AS guard, kind, MAX(seq) FROM events"
            " WHERE kind IN ('guard_on', 'guard_off') GROUP BY guard"
        ).fetchall()
        return [guard for guard, kind, _ in rows if guard and kind == "guard_on"]

    def backlog(self) -> int:
        """How many events wait in the outbox."""
        return int(self.conn.execute("SELECT COUNT(*) FROM outbox").fetchone()[0])

    def drop_outbox(self) -> int:
        """Delete every outbox row (no broker to deliver them to); how many there were."""
        with Transaction(self.conn) as c:
            return int(c.execute("DELETE FROM outbox").rowcount)


def iter_events(
    conn: sqlite3.Connection, since: str | None = None, after_seq: int = 0
) -> Iterator[dict[str, Any]]:
    """Events in ``seq`` order, optionally those stamped at or after ISO time ``since``."""
    sql = "SELECT body FROM events WHERE seq > ?"
    args: list[Any] = [after_seq]
    if since:
        sql += " AND ts >= ?"
        args.append(since)
    sql += " ORDER BY seq"
    for (body,) in conn.execute(sql, args):
        yield json.loads(body)
