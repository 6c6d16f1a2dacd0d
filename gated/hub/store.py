"""The hub's store: every gate's events, once each, and what the hub knows of every gate.

SQLite through sqlite-utils (embedded: ``gated hub run`` needs no database server), WAL and
``synchronous=FULL``, one connection per thread. The SQL is kept to what PostgreSQL also
speaks (``INSERT ... ON CONFLICT DO NOTHING``, no ``INSERT OR ...``), so the schema is the
one a database server will reuse.

- ``hub_events(site, gate, seq, ...)``: each event as the gate published it (``body``),
  keyed by (site, gate, seq): a duplicate is not stored again.
- ``hub_gates``: per gate, its last status, clock, restarts, and continuity: ``through``
  (every seq up to it is held, or was reported purged by the gate), ``highest`` (the highest
  seq known to exist: seen, or named by the gate's status or a replay answer), ``purged``
  (seqs the gate said it no longer has: counted, never forgotten).
- ``hub_purged``: the ranges behind ``purged``; ``hub_replays``: the ``cmd/replay`` asked
  and their answers; ``hub_rejects``: messages refused, kept (capped) for inspection.
- ``hub_registry``, ``hub_revokes``: each site's registry versions and revocations
  (:mod:`gated.hub.registry`). A version is written before it is sent (its number is
  never given again); ``published_at`` is set once the broker confirmed it (PUBACK),
  ``error`` says why it was not: a row without ``published_at`` is not the site's latest.
- ``hub_alarm_acks``: alarms an operator acknowledged.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import sqlite_utils

from gated.errors import StorageError
from gated.events import card_ref

SCHEMA_VERSION = 1

#: A gate: (site, gate).
Key = tuple[str, str]

SCHEMA = """
CREATE TABLE IF NOT EXISTS hub_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS hub_events (
    site TEXT NOT NULL,
    gate TEXT NOT NULL,
    seq INTEGER NOT NULL,
    id TEXT NOT NULL,
    kind TEXT NOT NULL,
    ts TEXT NOT NULL,
    boot INTEGER,
    clock_synced INTEGER,
    received_at REAL NOT NULL,
    body TEXT NOT NULL,
    PRIMARY KEY (site, gate, seq)
);
CREATE INDEX IF NOT EXISTS hub_events_site_ts ON hub_events (site, ts);
CREATE INDEX IF NOT EXISTS hub_events_received ON hub_events (received_at);
-- The fleet page's open alarms, read on every change: the alarms alone, and the gates'
-- own acks by the alarm they answer (HubStore.alarms reads nothing else of hub_events).
CREATE INDEX IF NOT EXISTS hub_events_alarms ON hub_events (site, gate, received_at)
    WHERE kind = 'alarm';
CREATE INDEX IF NOT EXISTS hub_events_acks ON hub_events (site, gate, json_extract(body, '$.ref'))
    WHERE kind = 'ack';
CREATE TABLE IF NOT EXISTS hub_gates (
    site TEXT NOT NULL,
    gate TEXT NOT NULL,
    state TEXT,
    status TEXT,
    status_at REAL,
    last_seen REAL,
    boot INTEGER,
    boots INTEGER NOT NULL DEFAULT 0,
    clock_synced INTEGER,
    skew_s REAL,
    registry_version INTEGER,
    last_seq INTEGER,
    backlog INTEGER,
    mode TEXT,
    through INTEGER NOT NULL DEFAULT 0,
    highest INTEGER NOT NULL DEFAULT 0,
    received INTEGER NOT NULL DEFAULT 0,
    duplicates INTEGER NOT NULL DEFAULT 0,
    conflicts INTEGER NOT NULL DEFAULT 0,
    purged INTEGER NOT NULL DEFAULT 0,
    last_event_ts TEXT,
    last_event_kind TEXT,
    last_event_seq INTEGER,
    PRIMARY KEY (site, gate)
);
CREATE TABLE IF NOT EXISTS hub_purged (
    site TEXT NOT NULL,
    gate TEXT NOT NULL,
    first INTEGER NOT NULL,
    last INTEGER NOT NULL,
    at REAL NOT NULL,
    PRIMARY KEY (site, gate, first)
);
CREATE TABLE IF NOT EXISTS hub_replays (
    req TEXT PRIMARY KEY,
    site TEXT NOT NULL,
    gate TEXT NOT NULL,
    first INTEGER NOT NULL,
    last INTEGER NOT NULL,
    asked_at REAL NOT NULL,
    answered_at REAL,
    ok INTEGER,
    sent INTEGER,
    error TEXT
);
CREATE TABLE IF NOT EXISTS hub_rejects (
    id INTEGER PRIMARY KEY,
    received_at REAL NOT NULL,
    topic TEXT NOT NULL,
    code TEXT NOT NULL,
    reason TEXT NOT NULL,
    payload BLOB
);
CREATE TABLE IF NOT EXISTS hub_registry (
    site TEXT NOT NULL,
    version INTEGER NOT NULL,
    made_at REAL NOT NULL,
    published_at REAL,
    error TEXT,
    persons INTEGER NOT NULL,
    cards INTEGER NOT NULL,
    sha256 TEXT NOT NULL,
    body TEXT NOT NULL,
    PRIMARY KEY (site, version)
);
CREATE TABLE IF NOT EXISTS hub_revokes (
    id INTEGER PRIMARY KEY,
    site TEXT NOT NULL,
    version INTEGER NOT NULL,
    what TEXT NOT NULL,
    ref TEXT NOT NULL,
    at REAL NOT NULL,
    by TEXT
);
CREATE TABLE IF NOT EXISTS hub_conflicts (
    site TEXT NOT NULL,
    gate TEXT NOT NULL,
    seq INTEGER NOT NULL,
    id TEXT NOT NULL,
    boot INTEGER,
    received_at REAL NOT NULL,
    body TEXT NOT NULL,
    PRIMARY KEY (site, gate, seq, id)
);
CREATE TABLE IF NOT EXISTS hub_card_uses (
    site TEXT NOT NULL,
    gate TEXT NOT NULL,
    card TEXT NOT NULL,
    seq INTEGER NOT NULL,
    ts TEXT NOT NULL,
    PRIMARY KEY (site, gate, card)
);
CREATE TABLE IF NOT EXISTS hub_alarm_acks (
    site TEXT NOT NULL,
    gate TEXT NOT NULL,
    seq INTEGER NOT NULL,
    by TEXT,
    at REAL NOT NULL,
    PRIMARY KEY (site, gate, seq)
);
"""

#: Refused messages kept for inspection; the oldest go first.
MAX_REJECTS = 10_000
#: Bytes of a refused payload kept.
REJECT_BYTES = 4096
#: Rows scanned at once while moving ``through`` forward.
SCAN = 5000

_INSERT_EVENT = (
    "INSERT INTO hub_events(site, gate, seq, id, kind, ts, boot, clock_synced, received_at, body)"
    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING"
)

GATE_COLUMNS = (
    "site",
    "gate",
    "state",
    "last_seen",
    "boot",
    "boots",
    "mode",
    "backlog",
    "clock_synced",
    "skew_s",
    "registry_version",
    "last_seq",
    "received",
    "duplicates",
    "conflicts",
    "through",
    "highest",
    "purged",
    "last_event_ts",
    "last_event_kind",
    "status",
)


@dataclass(frozen=True)
class EventRow:
    """One event to store, as parsed from a gate's message."""

    site: str
    gate: str
    seq: int
    id: str
    kind: str
    ts: str
    boot: int | None
    clock_synced: bool | None
    received_at: float
    body: str


@dataclass
class Stored:
    """What :meth:`HubStore.add_events` did."""

    stored: int = 0
    duplicates: int = 0
    #: (site, gate) whose ``through`` moved.
    moved: tuple[tuple[str, str], ...] = ()
    #: The rows stored (not the duplicates).
    new: list[EventRow] = field(default_factory=list)
    #: Rows whose (site, gate, seq) is held with another event id: not stored.
    conflicts: list[EventRow] = field(default_factory=list)


def is_online(row: dict[str, Any], now: float, offline_after_s: float) -> bool:
    """A gate whose status says online and that was heard from within ``offline_after_s``."""
    seen = row.get("last_seen")
    return row.get("state") == "online" and seen is not None and now - seen < offline_after_s


def missing_of(row: dict[str, Any], above: int) -> int:
    """Numbers between ``through`` and ``highest`` neither held nor purged."""
    return max(0, int(row["highest"]) - int(row["through"]) - above)


class HubStore:
    """One connection to the hub's database (a thread uses its own)."""

    def __init__(self, path: Path | str):
        self.path = Path(path)
        self._lock = threading.Lock()
        try:
            if str(path) != ":memory:":
                self.path.parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=FULL")
            conn.execute("PRAGMA busy_timeout=10000")
            self.db = sqlite_utils.Database(conn)
            self.conn = conn
            conn.executescript(SCHEMA)
            conn.execute(
                "INSERT INTO hub_meta(key, value) VALUES ('schema', ?) ON CONFLICT DO NOTHING",
                (str(SCHEMA_VERSION),),
            )
        except (sqlite3.Error, OSError) as exc:
            raise StorageError(f"cannot open the hub database {path}: {exc}") from exc

    def close(self) -> None:
        self.conn.close()

    # -- writing ----------------------------------------------------------------------

    def begin(self) -> None:
        self.conn.execute("BEGIN IMMEDIATE")

    def commit(self) -> None:
        self.conn.execute("COMMIT")

    def rollback(self) -> None:
        if self.conn.in_transaction:
            self.conn.execute("ROLLBACK")

    def _gate(self, site: str, gate: str) -> None:
        self.conn.execute(
            "INSERT INTO hub_gates(site, gate) VALUES (?, ?) ON CONFLICT DO NOTHING", (site, gate)
        )

    def add_events(self, rows: Sequence[EventRow]) -> Stored:
        """Store ``rows`` (inside a transaction the caller holds); duplicates are skipped.

        All rows in one ``executemany``; only when some were held already (a batch the
        broker handed over again) are they inserted again one by one, to tell which. Then
        each gate of the batch is read once and updated once.
        """
        out = Stored()
        c = self.conn
        values = [
            (
                r.site,
                r.gate,
                r.seq,
                r.id,
                r.kind,
                r.ts,
                r.boot,
                None if r.clock_synced is None else int(r.clock_synced),
                r.received_at,
                r.body,
            )
            for r in rows
        ]
        c.execute("SAVEPOINT add_events")
        if c.executemany(_INSERT_EVENT, values).rowcount == len(rows):
            new = list(rows)
        else:
            c.execute("ROLLBACK TO add_events")
            new = []
            for r, v in zip(rows, values, strict=True):
                if c.execute(_INSERT_EVENT, v).rowcount:
                    new.append(r)
                    continue
                (held,) = c.execute(
                    "SELECT id FROM hub_events WHERE site = ? AND gate = ? AND seq = ?",
                    (r.site, r.gate, r.seq),
                ).fetchone()
                if held != r.id:
                    # The same seq with another id: a gate whose ledger started again from
                    # 1 (a new database), or a forgery. Neither is a duplicate to drop.
                    out.conflicts.append(r)
        c.execute("RELEASE add_events")
        out.stored, out.new = len(new), new
        out.duplicates = len(rows) - len(new) - len(out.conflicts)
        self._card_uses(new)
        per_gate: dict[tuple[str, str], list[EventRow]] = {}
        for r in new:
            per_gate.setdefault((r.site, r.gate), []).append(r)
        seen: dict[tuple[str, str], list[float]] = {}
        for r in rows:
            seen.setdefault((r.site, r.gate), []).append(r.received_at)
        c.executemany(
            "INSERT INTO hub_gates(site, gate) VALUES (?, ?) ON CONFLICT DO NOTHING", list(seen)
        )
        clashes: dict[tuple[str, str], int] = {}
        for r in out.conflicts:
            clashes[(r.site, r.gate)] = clashes.get((r.site, r.gate), 0) + 1
        if out.conflicts:
            # Kept whole (no cap, no truncation): they may be a gate's real new events.
            c.executemany(
                "INSERT INTO hub_conflicts(site, gate, seq, id, boot, received_at, body)"
                " VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
                [
                    (r.site, r.gate, r.seq, r.id, r.boot, r.received_at, r.body)
                    for r in out.conflicts
                ],
            )
        if clashes:
            c.executemany(
                "UPDATE hub_gates SET conflicts = conflicts + ? WHERE site = ? AND gate = ?",
                [(n, *k) for k, n in clashes.items()],
            )
        if out.duplicates:
            dups: dict[tuple[str, str], int] = {}
            for key, times in seen.items():
                dups[key] = len(times) - len(per_gate.get(key, ())) - clashes.get(key, 0)
            c.executemany(
                "UPDATE hub_gates SET duplicates = duplicates + ?, last_seen = max("
                "coalesce(last_seen, 0), ?) WHERE site = ? AND gate = ?",
                [(n, max(seen[k]), *k) for k, n in dups.items() if n],
            )
        newest, counts, moved = [], [], []
        for (site, gate), got in per_gate.items():
            boot, through, highest, newest_seq = c.execute(
                "SELECT boot, through, highest, last_event_seq FROM hub_gates"
                " WHERE site = ? AND gate = ?",
                (site, gate),
            ).fetchone()
            # Restarts, not events: a boot counted once however many of its events came.
            boots = len(
                {r.boot for r in got if r.boot is not None and boot is not None and r.boot > boot}
            )
            last = max(got, key=lambda r: r.seq)
            now_through = through
            if highest <= through:
                # No gap known: nothing above ``through`` is held or purged but this batch.
                for seq in sorted(r.seq for r in got):
                    if seq == now_through + 1:
                        now_through = seq
                    elif seq > now_through + 1:
                        break
            elif any(r.seq == through + 1 for r in got):
                now_through = self._advanced(site, gate, through)
            if now_through != through:
                moved.append((site, gate))
            common = (
                len(got),
                last.seq,
                now_through,
                max(r.received_at for r in got),
                boots,
                now_through,
            )
            if newest_seq is None or last.seq >= newest_seq:
                newest.append(
                    (
                        *common,
                        last.boot if last.boot is not None else boot,
                        None if last.clock_synced is None else int(last.clock_synced),
                        last.ts,
                        last.kind,
                        last.seq,
                        site,
                        gate,
                    )
                )
            else:
                counts.append((*common, site, gate))
        counted = (
            "UPDATE hub_gates SET received = received + ?, highest = max(highest, ?, ?),"
            " last_seen = max(coalesce(last_seen, 0), ?), boots = boots + ?, through = ?"
        )
        c.executemany(counted + " WHERE site = ? AND gate = ?", counts)
        c.executemany(
            counted + ", boot = ?, clock_synced = ?, last_event_ts = ?, last_event_kind = ?,"
            " last_event_seq = ? WHERE site = ? AND gate = ?",
            newest,
        )
        out.moved = tuple(moved)
        return out

    def _card_uses(self, rows: Sequence[EventRow]) -> None:
        """Each card's first decision per gate, kept as its events come (and past their purge):
        the reports' first uses read this, not every decision ever stored."""
        uses = []
        for r in rows:
            if r.kind != "decision" or '"card"' not in r.body:
                continue
            card = card_ref(json.loads(r.body))
            if card:
                uses.append((r.site, r.gate, card, r.seq, r.ts))
        if uses:
            self.conn.executemany(
                "INSERT INTO hub_card_uses(site, gate, card, seq, ts) VALUES (?, ?, ?, ?, ?)"
                " ON CONFLICT (site, gate, card) DO UPDATE SET"
                " seq = min(seq, excluded.seq), ts = min(ts, excluded.ts)",
                uses,
            )

    def advance(self, site: str, gate: str) -> bool:
        """Move ``through`` over the seqs held or purged right above it; whether it moved."""
        (through,) = self.conn.execute(
            "SELECT through FROM hub_gates WHERE site = ? AND gate = ?", (site, gate)
        ).fetchone()
        moved = self._advanced(site, gate, through)
        if moved != through:
            self.conn.execute(
                "UPDATE hub_gates SET through = ?, highest = max(highest, ?)"
                " WHERE site = ? AND gate = ?",
                (moved, moved, site, gate),
            )
        return moved != through

    def _advanced(self, site: str, gate: str, through: int) -> int:
        """Where ``through`` gets to over the seqs held or purged right above it."""
        c = self.conn
        purged = c.execute(
            "SELECT first, last FROM hub_purged WHERE site = ? AND gate = ? AND last > ?"
            " ORDER BY first",
            (site, gate, through),
        ).fetchall()
        progressed = True
        while progressed:
            progressed = False
            for first, last in purged:
                if first <= through + 1 and last > through:
                    through = last
                    progressed = True
            for (s,) in c.execute(
                "SELECT seq FROM hub_events WHERE site = ? AND gate = ? AND seq > ?"
                " ORDER BY seq LIMIT ?",
                (site, gate, through, SCAN),
            ).fetchall():
                if s != through + 1:
                    break
                through = s
                progressed = True
        return int(through)

    def status(self, site: str, gate: str, msg: dict[str, Any], seen: float | None) -> None:
        """A gate's status message; ``seen``: when the gate was last heard from by it (unix
        time; None for a retained one with no stamp, such as its will)."""
        self._gate(site, gate)
        online = msg.get("state") == "online"
        last_seq = msg.get("last_seq") if online else None
        backlog = msg.get("backlog") if isinstance(msg.get("backlog"), int) else 0
        version = msg.get("registry_version")
        known = None
        if isinstance(last_seq, int) and not isinstance(last_seq, bool):
            # What its outbox still holds is on its way live: not a gap yet.
            known = max(0, last_seq - int(backlog or 0))
        self.conn.execute(
            "UPDATE hub_gates SET state = ?, status = ?, status_at = ?,"
            " last_seen = CASE WHEN ? IS NULL THEN last_seen"
            " ELSE max(coalesce(last_seen, 0), ?) END,"
            " mode = coalesce(?, mode), backlog = coalesce(?, backlog),"
            " registry_version = CASE WHEN ? THEN ? ELSE registry_version END,"
            " clock_synced = coalesce(?, clock_synced),"
            " last_seq = coalesce(?, last_seq), highest = max(highest, coalesce(?, 0))"
            " WHERE site = ? AND gate = ?",
            (
                msg.get("state"),
                json.dumps(msg, ensure_ascii=False, separators=(",", ":")),
                seen,
                seen,
                seen,
                msg.get("mode") if isinstance(msg.get("mode"), str) else None,
                backlog if online else None,
                online and "registry_version" in msg,
                version if isinstance(version, int) else None,
                None if not isinstance(msg.get("clock_synced"), bool) else int(msg["clock_synced"]),
                last_seq if isinstance(last_seq, int) else None,
                known,
                site,
                gate,
            ),
        )

    def skew(self, site: str, gate: str, skew_s: float) -> None:
        self.conn.execute(
            "UPDATE hub_gates SET skew_s = ? WHERE site = ? AND gate = ?", (skew_s, site, gate)
        )

    def purged(self, site: str, gate: str, first: int, last: int, at: float) -> None:
        """The gate reports ``first..last`` purged: counted, and known from now on."""
        self._gate(site, gate)
        c = self.conn
        # Only what is not held and not counted already.
        held = c.execute(
            "SELECT count(*) FROM hub_events WHERE site = ? AND gate = ? AND seq BETWEEN ? AND ?",
            (site, gate, first, last),
        ).fetchone()[0]
        counted = 0
        for a, b in c.execute(
            "SELECT first, last FROM hub_purged WHERE site = ? AND gate = ? AND last >= ?"
            " AND first <= ?",
            (site, gate, first, last),
        ):
            counted += min(b, last) - max(a, first) + 1
        new = max(0, last - first + 1 - held - counted)
        c.execute(
            "INSERT INTO hub_purged(site, gate, first, last, at) VALUES (?, ?, ?, ?, ?)"
            " ON CONFLICT (site, gate, first) DO UPDATE SET last = max(last, excluded.last)",
            (site, gate, first, last, at),
        )
        c.execute(
            "UPDATE hub_gates SET purged = purged + ?, highest = max(highest, ?)"
            " WHERE site = ? AND gate = ?",
            (new, last, site, gate),
        )
        self.advance(site, gate)

    def through(self, site: str, gate: str) -> int:
        row = self.conn.execute(
            "SELECT through FROM hub_gates WHERE site = ? AND gate = ?", (site, gate)
        ).fetchone()
        return int(row[0]) if row else 0

    def last_seq_is(self, site: str, gate: str, last_seq: int) -> None:
        """The gate says its ledger ends at ``last_seq``: ``highest`` is at least that, and
        no higher than that and what is held or purged (a forged or stale status's word
        does not leave a gap that nothing can fill)."""
        self._gate(site, gate)
        c = self.conn
        (held,) = c.execute(
            "SELECT coalesce(max(seq), 0) FROM hub_events WHERE site = ? AND gate = ?",
            (site, gate),
        ).fetchone()
        (gone,) = c.execute(
            "SELECT coalesce(max(last), 0) FROM hub_purged WHERE site = ? AND gate = ?",
            (site, gate),
        ).fetchone()
        c.execute(
            "UPDATE hub_gates SET highest = max(through, ?, ?, ?) WHERE site = ? AND gate = ?",
            (last_seq, held, gone, site, gate),
        )

    def known_exists(self, site: str, gate: str, seq: int) -> None:
        """``seq`` exists at the gate (a replay answer's ``last_seq``)."""
        self._gate(site, gate)
        self.conn.execute(
            "UPDATE hub_gates SET highest = max(highest, ?) WHERE site = ? AND gate = ?",
            (seq, site, gate),
        )

    def reject(self, topic: str, code: str, reason: str, payload: bytes, at: float) -> None:
        """Keep a refused message for inspection (the newest :data:`MAX_REJECTS`)."""
        cur = self.conn.execute(
            "INSERT INTO hub_rejects(received_at, topic, code, reason, payload)"
            " VALUES (?, ?, ?, ?, ?)",
            (at, topic[:512], code, reason[:512], payload[:REJECT_BYTES]),
        )
        if cur.lastrowid and cur.lastrowid % 100 == 0:
            self.conn.execute(
                "DELETE FROM hub_rejects WHERE id <= ?", (cur.lastrowid - MAX_REJECTS,)
            )

    def asked(self, req: str, site: str, gate: str, first: int, last: int, at: float) -> None:
        self.conn.execute(
            "INSERT INTO hub_replays(req, site, gate, first, last, asked_at)"
            " VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
            (req, site, gate, first, last, at),
        )

    def answered(self, req: str, ok: bool, sent: int | None, error: str | None, at: float) -> None:
        self.conn.execute(
            "UPDATE hub_replays SET answered_at = ?, ok = ?, sent = ?, error = ? WHERE req = ?",
            (at, int(ok), sent, error, req),
        )

    # -- reading ----------------------------------------------------------------------

    def gate_rows(self) -> list[dict[str, Any]]:
        """Every gate's row, by site and gate (``status`` parsed)."""
        cols = ", ".join(GATE_COLUMNS)
        rows = self.conn.execute(f"SELECT {cols} FROM hub_gates ORDER BY site, gate")
        return [self._gate_row(row) for row in rows.fetchall()]

    def gate_row(self, site: str, gate: str) -> dict[str, Any] | None:
        """One gate's row as :meth:`gate_rows` gives it (None: not heard of)."""
        cols = ", ".join(GATE_COLUMNS)
        row = self.conn.execute(
            f"SELECT {cols} FROM hub_gates WHERE site = ? AND gate = ?", (site, gate)
        ).fetchone()
        return None if row is None else self._gate_row(row)

    def _gate_row(self, row: tuple[Any, ...]) -> dict[str, Any]:
        d = dict(zip(GATE_COLUMNS, row, strict=True))
        d["status"] = json.loads(d["status"]) if d["status"] else None
        d["clock_synced"] = None if d["clock_synced"] is None else bool(d["clock_synced"])
        d["missing"] = missing_of(d, self.held_above(d["site"], d["gate"], d["through"]))
        return d

    def held_above(self, site: str, gate: str, through: int) -> int:
        """Events held (or purged) above ``through``: ``missing`` leaves them out."""
        c = self.conn
        (held,) = c.execute(
            "SELECT count(*) FROM hub_events WHERE site = ? AND gate = ? AND seq > ?",
            (site, gate, through),
        ).fetchone()
        for a, b in c.execute(
            "SELECT first, last FROM hub_purged WHERE site = ? AND gate = ? AND last > ?",
            (site, gate, through),
        ):
            held += b - max(a, through + 1) + 1
        return int(held)

    def gaps(self, site: str, gate: str, limit: int = 16) -> list[tuple[int, int]]:
        """The missing ranges of a gate between ``through`` and ``highest``, lowest first."""
        c = self.conn
        row = c.execute(
            "SELECT through, highest FROM hub_gates WHERE site = ? AND gate = ?", (site, gate)
        ).fetchone()
        if row is None:
            return []
        through, highest = row
        covered = [
            (a, b)
            for a, b in c.execute(
                "SELECT first, last FROM hub_purged WHERE site = ? AND gate = ? AND last > ?"
                " ORDER BY first",
                (site, gate, through),
            )
        ]
        known = list(covered)
        run: list[int] = []
        for (seq,) in c.execute(
            "SELECT seq FROM hub_events WHERE site = ? AND gate = ? AND seq > ? AND seq <= ?"
            " ORDER BY seq",
            (site, gate, through, highest),
        ):
            if run and seq == run[1] + 1:
                run[1] = seq
            else:
                if run:
                    known.append((run[0], run[1]))
                run = [seq, seq]
        if run:
            known.append((run[0], run[1]))
        out: list[tuple[int, int]] = []
        start = through + 1
        for a, b in sorted(known):
            if a > start:
                out.append((start, min(a - 1, highest)))
                if len(out) >= limit:
                    return out
            start = max(start, b + 1)
        if start <= highest:
            out.append((start, highest))
        return out[:limit]

    def events(
        self,
        *,
        site: str | None = None,
        gate: str | None = None,
        since: str | None = None,
        until: str | None = None,
        kinds: Iterable[str] | None = None,
    ) -> Iterator[dict[str, Any]]:
        """Stored event bodies by (site, gate, seq); ``since``/``until`` bound ``ts``."""
        where, args = [], []
        for col, value in (("site", site), ("gate", gate)):
            if value is not None:
                where.append(f"{col} = ?")
                args.append(value)
        if since is not None:
            where.append("ts >= ?")
            args.append(since)
        if until is not None:
            where.append("ts < ?")
            args.append(until)
        if kinds is not None:
            kinds = list(kinds)
            where.append(f"kind IN ({','.join('?' * len(kinds))})")
            args.extend(kinds)
        sql = "SELECT body FROM hub_events"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY site, gate, seq"
        for (body,) in self.conn.execute(sql, args):
            yield json.loads(body)

    def decisions_by_id(
        self, site: str, gate: str, ids: Iterable[str], *, after: str | None = None
    ) -> dict[str, dict[str, Any]]:
        """A gate's stored decisions by id; ``after``: first look among those stamped since it.

        (The decisions a day's passages refer to were taken just before it: the bounded look
        reads a few rows by the (site, ts) index, the rest are looked for in the gate's whole
        history.)
        """
        todo = sorted(set(ids))
        out: dict[str, dict[str, Any]] = {}
        for bound in ((after,) if after is not None else ()) + (None,):
            todo = [i for i in todo if i not in out]
            for i in range(0, len(todo), 500):
                chunk = todo[i : i + 500]
                sql = (
                    "SELECT body FROM hub_events WHERE site = ? AND gate = ? AND kind = 'decision'"
                    f" AND id IN ({','.join('?' * len(chunk))})"
                )
                args: list[Any] = [site, gate, *chunk]
                if bound is not None:
                    sql += " AND ts >= ?"
                    args.append(bound)
                for (body,) in self.conn.execute(sql, args):
                    event = json.loads(body)
                    out[str(event.get("id"))] = event
        return out

    def count_events(self, site: str, since: str, until: str) -> int:
        """Events of ``site`` stamped in ``[since, until)`` (by the (site, ts) index alone)."""
        (n,) = self.conn.execute(
            "SELECT count(*) FROM hub_events WHERE site = ? AND ts >= ? AND ts < ?",
            (site, since, until),
        ).fetchone()
        return int(n)

    def card_uses(self, site: str) -> list[tuple[str, str, int, str]]:
        """Per gate of ``site`` and card uid (as stored): its first stored decision's seq and ts."""
        rows = self.conn.execute(
            "SELECT gate, card, seq, ts FROM hub_card_uses WHERE site = ?", (site,)
        )
        return [(str(g), str(c), int(q), str(t)) for g, c, q, t in rows]

    def latest_registry(self, site: str) -> tuple[int, dict[str, Any]] | None:
        """The newest registry snapshot of ``site`` the broker confirmed: (version, body)."""
        row = self.conn.execute(
            "SELECT version, body FROM hub_registry WHERE site = ? AND published_at IS NOT NULL"
            " ORDER BY version DESC LIMIT 1",
            (site,),
        ).fetchone()
        return None if row is None else (int(row[0]), json.loads(row[1]))

    #: An alarm not acknowledged at the hub nor by its gate's own guard (an ``ack``
    #: event whose ``ref`` is the alarm's id). ``+e.id``: compared without the column's
    #: affinity, so the lookup is a seek in ``hub_events_acks``.
    _OPEN = (
        " AND a.seq IS NULL AND NOT EXISTS (SELECT 1 FROM hub_events k WHERE k.kind = 'ack'"
        " AND k.site = e.site AND k.gate = e.gate AND json_extract(k.body, '$.ref') = +e.id)"
    )
    _ALARMS = (
        " FROM hub_events e LEFT JOIN hub_alarm_acks a"
        " ON a.site = e.site AND a.gate = e.gate AND a.seq = e.seq WHERE e.kind = 'alarm'"
    )

    def alarms(self, *, unacked: bool = True, limit: int = 200) -> list[dict[str, Any]]:
        """The fleet's alarms, newest first (by the hub's receive time)."""
        sql = "SELECT e.body, a.by, a.at" + self._ALARMS
        if unacked:
            sql += self._OPEN
        # ``+``: sorted after the read, so the read goes by ``hub_events_alarms`` (the
        # alarms alone), not by ``hub_events_received`` through every event held.
        sql += " ORDER BY +e.received_at DESC LIMIT ?"
        out = []
        for body, by, at in self.conn.execute(sql, (limit,)):
            event = json.loads(body)
            event["hub_ack"] = {"by": by, "at": at} if at is not None else None
            out.append(event)
        return out

    def open_alarms(self, site: str | None = None, gate: str | None = None) -> dict[Key, int]:
        """How many alarms are open (as :meth:`alarms` has them), by gate: every gate's,
        or one gate's (``site`` and ``gate``); a gate with none is left out."""
        sql = "SELECT e.site, e.gate, count(*)" + self._ALARMS
        args: tuple[str, ...] = ()
        if site is not None and gate is not None:
            sql += " AND e.site = ? AND e.gate = ?"
            args = (site, gate)
        sql += self._OPEN + " GROUP BY e.site, e.gate"
        return {(s, g): int(n) for s, g, n in self.conn.execute(sql, args)}

    def ack_alarm(self, site: str, gate: str, seq: int, by: str, at: float) -> bool:
        """An operator acknowledges an alarm at the hub; False when there is no such alarm."""
        row = self.conn.execute(
            "SELECT 1 FROM hub_events WHERE site = ? AND gate = ? AND seq = ? AND kind = 'alarm'",
            (site, gate, seq),
        ).fetchone()
        if row is None:
            return False
        self.conn.execute(
            "INSERT INTO hub_alarm_acks(site, gate, seq, by, at) VALUES (?, ?, ?, ?, ?)"
            " ON CONFLICT DO NOTHING",
            (site, gate, seq, by, at),
        )
        return True

    # -- the sites' registries (gated.hub.registry) --------------------------------------

    def registry_made(self, site: str) -> int:
        """The highest version the hub made for ``site`` (confirmed or not; 0: none): the
        next one goes above it. A version a gate reports is never taken for it (a forged
        status would use up the site's versions)."""
        (made,) = self.conn.execute(
            "SELECT max(version) FROM hub_registry WHERE site = ?", (site,)
        ).fetchone()
        return int(made or 0)

    def registry_ahead(self, site: str, version: int) -> list[tuple[str, int]]:
        """The gates of ``site`` whose last status reports a registry version above ``version``."""
        return [
            (str(gate), int(v))
            for gate, v in self.conn.execute(
                "SELECT gate, registry_version FROM hub_gates WHERE site = ?"
                " AND registry_version > ? ORDER BY gate",
                (site, version),
            )
        ]

    def registry_add(
        self, site: str, version: int, body: str, persons: int, cards: int, sha256: str, at: float
    ) -> None:
        """A version made (not yet confirmed by the broker)."""
        self.conn.execute(
            "INSERT INTO hub_registry(site, version, made_at, persons, cards, sha256, body)"
            " VALUES (?, ?, ?, ?, ?, ?, ?)",
            (site, version, at, persons, cards, sha256, body),
        )

    def registry_sent(self, site: str, version: int, at: float | None, error: str | None) -> None:
        """The broker confirmed ``version`` at ``at``, or it was not published (``error``)."""
        self.conn.execute(
            "UPDATE hub_registry SET published_at = ?, error = ? WHERE site = ? AND version = ?",
            (at, error, site, version),
        )

    def registry_latest(self, site: str) -> dict[str, Any] | None:
        """The site's newest version the broker confirmed (with its ``body``), or None."""
        rows = self.registry_history(site, published_only=True, limit=1, bodies=True)
        return rows[0] if rows else None

    def registry_confirmed(self, site: str, limit: int = 2) -> list[int]:
        """The site's newest versions the broker confirmed, newest first (no bodies read)."""
        rows = self.conn.execute(
            "SELECT version FROM hub_registry WHERE site = ? AND published_at IS NOT NULL"
            " ORDER BY version DESC LIMIT ?",
            (site, limit),
        )
        return [int(v) for (v,) in rows]

    def registry_body(self, site: str, version: int) -> str | None:
        """The message of the site's ``version`` (up to ``registry_max_bytes``), or None."""
        row = self.conn.execute(
            "SELECT body FROM hub_registry WHERE site = ? AND version = ?", (site, version)
        ).fetchone()
        return None if row is None else str(row[0])

    def registry_history(
        self, site: str, *, published_only: bool = False, limit: int = 1000, bodies: bool = False
    ) -> list[dict[str, Any]]:
        """The site's versions, newest first: ``version, made_at, published_at, error,
        persons, cards, sha256`` (and ``body`` with ``bodies``)."""
        cols = ["version", "made_at", "published_at", "error", "persons", "cards", "sha256"]
        if bodies:
            cols.append("body")
        sql = f"SELECT {', '.join(cols)} FROM hub_registry WHERE site = ?"
        if published_only:
            sql += " AND published_at IS NOT NULL"
        sql += " ORDER BY version DESC LIMIT ?"
        return [dict(zip(cols, row, strict=True)) for row in self.conn.execute(sql, (site, limit))]

    def registry_versions(self) -> dict[str, int]:
        """Each site's newest version the broker confirmed."""
        rows = self.conn.execute(
            "SELECT site, max(version) FROM hub_registry WHERE published_at IS NOT NULL"
            " GROUP BY site"
        )
        return {site: int(v) for site, v in rows}

    def revoke_add(self, site: str, version: int, what: str, ref: str, at: float, by: str) -> None:
        """A card, pass or person revoked at the site from ``version`` on."""
        self.conn.execute(
            "INSERT INTO hub_revokes(site, version, what, ref, at, by) VALUES (?, ?, ?, ?, ?, ?)",
            (site, version, what, ref, at, by),
        )

    def revokes(self, site: str, version: int | None = None) -> dict[str, list[str]]:
        """``{"card"|"pass"|"person": [ref, ...]}`` revoked at the site (in ``version`` only,
        when given), each once, in the order they were revoked."""
        sql = "SELECT what, ref FROM hub_revokes WHERE site = ?"
        args: list[Any] = [site]
        if version is not None:
            sql += " AND version = ?"
            args.append(version)
        out: dict[str, list[str]] = {"card": [], "pass": [], "person": []}
        for what, ref in self.conn.execute(sql + " ORDER BY id", args):
            if what in out and ref not in out[what]:
                out[what].append(ref)
        return out

    def site_gates(self, site: str) -> list[dict[str, Any]]:
        """The gates of ``site`` the hub knows: ``gate, state, last_seen, registry_version``."""
        cols = ("gate", "state", "last_seen", "registry_version")
        rows = self.conn.execute(
            f"SELECT {', '.join(cols)} FROM hub_gates WHERE site = ? ORDER BY gate", (site,)
        )
        return [dict(zip(cols, row, strict=True)) for row in rows]

    def meta(self, key: str) -> str | None:
        row = self.conn.execute("SELECT value FROM hub_meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else str(row[0])

    def set_meta(self, key: str, value: str | None) -> None:
        """Set (or, with None, delete) a ``hub_meta`` value."""
        if value is None:
            self.conn.execute("DELETE FROM hub_meta WHERE key = ?", (key,))
        else:
            self.conn.execute(
                "INSERT INTO hub_meta(key, value) VALUES (?, ?)"
                " ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                (key, value),
            )

    def counts(self) -> dict[str, int]:
        """Rows per table, for /metrics and tests."""
        out = {}
        for table in ("hub_events", "hub_gates", "hub_rejects", "hub_replays"):
            (n,) = self.conn.execute(f"SELECT count(*) FROM {table}").fetchone()
            out[table] = int(n)
        return out

    def rejects(self, limit: int = 100) -> list[dict[str, Any]]:
        cols = ("id", "received_at", "topic", "code", "reason", "payload")
        rows = self.conn.execute(
            "SELECT id, received_at, topic, code, reason, payload FROM hub_rejects"
            " ORDER BY id DESC LIMIT ?",
            (limit,),
        )
        return [dict(zip(cols, r, strict=True)) for r in rows]

    def purge(self, before_received: float) -> int:
        """Delete events (and refused messages) the hub received before ``before_received``
        (retention); each card's first use per gate (``hub_card_uses``) stays."""
        # Only below each gate's ``through``: an event held above a gap stays, or the gap
        # would look wider and be asked for again.
        cur = self.conn.execute(
            "DELETE FROM hub_events WHERE received_at < ? AND seq <= (SELECT g.through"
            " FROM hub_gates g WHERE g.site = hub_events.site AND g.gate = hub_events.gate)",
            (before_received,),
        )
        # What was refused may hold names and temperatures too: it goes with the rest.
        self.conn.execute("DELETE FROM hub_rejects WHERE received_at < ?", (before_received,))
        return int(cur.rowcount)
