"""Registry sync from the central side: snapshots and deltas with a monotonic ``version``.

A message is checked whole before anything is written (on the publisher's thread),
then applied in ONE transaction together with the new version in ``meta``
(``registry_version``), on the controller thread: a half-applied snapshot never
decides anybody's entry. A delta is one short step. A snapshot (up to 200,000
persons) is applied by :class:`SnapshotBuild` in steps of :data:`CHUNK_ROWS` rows
between verdicts: staged in TEMP side tables of the controller's connection and
compared with the live registry there, then only what differs is written in one
transaction. A crash mid-build leaves the old registry and version (TEMP tables
die with the connection); a newer snapshot arriving mid-build abandons the older.

- ``{"type": "snapshot", "version": N, "persons": [...], "revoked_cards": [...],
  "revoked_passes": [...], "revoked_persons": [...]}`` replaces the registry: persons it
  does not name become inactive, cards it does not name are removed. Applied when N >
  the applied version.
- ``{"type": "delta", "version": N, "persons": [...], "remove_persons": [...],
  "remove_cards": [...], "revoked_cards": [...], "revoked_passes": [...],
  "revoked_persons": [...]}`` is applied only when N is exactly the applied version + 1;
  a stale one (N <= applied) or one after a gap is refused (the gate waits for the next
  snapshot).

A person is ``{"id", "name", "id_number", "unit", "household", "category", "color",
"verified", "active", "cards": ["UID", ...]}`` (only ``id`` is required).

``version`` is an integer from 1 to 2^53 - 1 (a JSON number a consumer in any
language reads exactly): a larger one would freeze sync, every later snapshot
looking stale. A ``revoked_persons`` id has its cards and every pass issued to it
(``sub``) refused from then on, as ``cmd/revoke {"person"}`` does.
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Callable, Generator, Iterable, Iterator
from concurrent.futures import Future
from contextlib import contextmanager
from dataclasses import dataclass, field
from itertools import islice
from typing import Any

from gated.registry import Person, normalise_uid, revoke_persons, upsert_cards, upsert_persons
from gated.storage import Transaction

log = logging.getLogger(__name__)

VERSION_KEY = "registry_version"
MAX_ITEMS = 200_000
#: Versions are below 2^53: exact as a JSON number everywhere (a double's integers).
MAX_VERSION = 2**53 - 1
#: Rows a snapshot step stages or compares: a few milliseconds on the controller thread.
CHUNK_ROWS = 1000

_TEXT_FIELDS = ("name", "id_number", "unit", "household", "category", "color")


class RegistryMessageError(ValueError):
    """A registry message that is malformed, stale or out of order (nothing applied)."""


@dataclass
class Change:
    """A checked registry message, ready to apply."""

    kind: str
    version: int
    persons: list[Person] = field(default_factory=list)
    cards: dict[str, str] = field(default_factory=dict)
    remove_persons: list[str] = field(default_factory=list)
    remove_cards: list[str] = field(default_factory=list)
    revoked_cards: list[str] = field(default_factory=list)
    revoked_passes: list[str] = field(default_factory=list)
    revoked_persons: list[str] = field(default_factory=list)


def _strings(msg: dict[str, Any], key: str) -> list[str]:
    value = msg.get(key, [])
    if not isinstance(value, list) or len(value) > MAX_ITEMS:
        raise RegistryMessageError(f"{key} is not a list of strings")
    if not all(isinstance(v, str) and v.strip() and len(v) <= 128 for v in value):
        raise RegistryMessageError(f"{key} holds an empty or non-text entry")
    return [v.strip() for v in value]


def _person(raw: Any, index: int) -> tuple[Person, list[str]]:
    if not isinstance(raw, dict):
        raise RegistryMessageError(f"persons[{index}] is not an object")
    pid = raw.get("id")
    if not isinstance(pid, str) or not pid.strip() or len(pid) > 128:
        raise RegistryMessageError(f"persons[{index}].id is missing or not text")
    values: dict[str, Any] = {}
    for key in _TEXT_FIELDS:
        v = raw.get(key, "green" if key == "color" else "")
        if not isinstance(v, str) or len(v) > 256:
            raise RegistryMessageError(f"persons[{index}].{key} is not text")
        values[key] = v
    for key in ("verified", "active"):
        v = raw.get(key, key == "active")
        if not isinstance(v, bool):
            raise RegistryMessageError(f"persons[{index}].{key} is not true/false")
        values[key] = v
    cards = _strings({"cards": raw.get("cards", [])}, "cards")
    unknown = set(raw) - {"id", "cards", "verified", "active", *_TEXT_FIELDS}
    if unknown:
        raise RegistryMessageError(f"persons[{index}] has unknown keys {sorted(unknown)}")
    return Person(id=pid.strip(), **values), [normalise_uid(c) for c in cards]


def parse(msg: Any) -> Change:
    """Check a registry message whole; raise :class:`RegistryMessageError` with the reason."""
    if not isinstance(msg, dict):
        raise RegistryMessageError("not a JSON object")
    kind = msg.get("type")
    if kind not in ("snapshot", "delta"):
        raise RegistryMessageError('type is not "snapshot" or "delta"')
    version = msg.get("version")
    if isinstance(version, bool) or not isinstance(version, int):
        raise RegistryMessageError("version is not an integer")
    if not 0 < version <= MAX_VERSION:
        raise RegistryMessageError("version is not from 1 to 2^53-1")
    raw_persons = msg.get("persons", [])
    if not isinstance(raw_persons, list) or len(raw_persons) > MAX_ITEMS:
        raise RegistryMessageError("persons is not a list")
    change = Change(kind, version)
    seen: set[str] = set()
    for i, raw in enumerate(raw_persons):
        person, cards = _person(raw, i)
        if person.id in seen:
            raise RegistryMessageError(f"person {i} appears twice")
        seen.add(person.id)
        change.persons.append(person)
        for uid in cards:
            if uid in change.cards:
                raise RegistryMessageError(f"card ending {uid[-4:]} belongs to two persons")
            change.cards[uid] = person.id
    change.revoked_cards = [normalise_uid(u) for u in _strings(msg, "revoked_cards")]
    change.revoked_passes = _strings(msg, "revoked_passes")
    change.revoked_persons = _strings(msg, "revoked_persons")
    if kind == "delta":
        change.remove_persons = _strings(msg, "remove_persons")
        change.remove_cards = [normalise_uid(u) for u in _strings(msg, "remove_cards")]
    elif "remove_persons" in msg or "remove_cards" in msg:
        raise RegistryMessageError("a snapshot names what exists, it removes nothing")
    return change


def applied_version(conn: sqlite3.Connection) -> int:
    """The registry version last applied (0: none yet, or one out of range)."""
    row = conn.execute("SELECT value FROM meta WHERE key = ?", (VERSION_KEY,)).fetchone()
    if row is None:
        return 0
    value = str(row[0])
    if value.isdigit() and len(value) <= 16 and 0 < int(value) <= MAX_VERSION:
        return int(value)
    # Written before versions were bounded: it froze sync; the next snapshot applies.
    log.warning("stored registry version %.20r is out of range: taken as none", value)
    return 0


def apply(conn: sqlite3.Connection, change: Change, when: str) -> str:
    """Apply a checked change in one transaction (controller thread); returns what it did."""
    try:
        return _apply(conn, change, when)
    except sqlite3.IntegrityError as exc:
        raise RegistryMessageError(f"inconsistent registry change: {exc}") from None


def _apply(conn: sqlite3.Connection, change: Change, when: str) -> str:
    with Transaction(conn) as c:
        have = applied_version(c)
        if change.kind == "snapshot":
            if change.version == have:
                return f"snapshot {have} already applied"
            if change.version < have:
                raise RegistryMessageError(f"stale snapshot {change.version} (have {have})")
        elif change.version <= have:
            raise RegistryMessageError(f"stale delta {change.version} (have {have})")
        elif change.version != have + 1:
            raise RegistryMessageError(
                f"delta {change.version} after a gap (have {have}): waiting for a snapshot"
            )
        _write(c, change, when)
        c.execute(
            "INSERT OR REPLACE INTO meta(key, value) VALUES (?, ?)",
            (VERSION_KEY, str(change.version)),
        )
    return f"{change.kind} {change.version} applied ({len(change.persons)} persons)"


def _write(c: sqlite3.Connection, ch: Change, when: str) -> None:
    upsert_persons(c, ch.persons)
    if ch.kind == "snapshot":
        c.execute("CREATE TEMP TABLE IF NOT EXISTS sync_ids (id TEXT PRIMARY KEY)")
        c.execute("DELETE FROM sync_ids")
        c.executemany("INSERT INTO sync_ids(id) VALUES (?)", [(p.id,) for p in ch.persons])
        c.execute("UPDATE persons SET active = 0 WHERE id NOT IN (SELECT id FROM sync_ids)")
        c.execute("DELETE FROM sync_ids")
        c.executemany("INSERT INTO sync_ids(id) VALUES (?)", [(u,) for u in ch.cards])
        c.execute("DELETE FROM cards WHERE uid NOT IN (SELECT id FROM sync_ids)")
        c.execute("DELETE FROM sync_ids")
    upsert_cards(c, ch.cards, when)
    c.executemany("DELETE FROM cards WHERE uid = ?", [(u,) for u in ch.remove_cards])
    c.executemany("UPDATE persons SET active = 0 WHERE id = ?", [(p,) for p in ch.remove_persons])
    c.executemany(
        "UPDATE cards SET revoked_at = ? WHERE uid = ? AND revoked_at IS NULL",
        [(when, u) for u in ch.revoked_cards],
    )
    c.executemany(
        "INSERT OR IGNORE INTO revoked_passes(jti, revoked_at) VALUES (?, ?)",
        [(j, when) for j in ch.revoked_passes],
    )
    revoke_persons(c, ch.revoked_persons, when)


# -- a snapshot in steps between verdicts -----------------------------------------------

_PERSON_COLUMNS = ("id", *_TEXT_FIELDS, "verified", "active")
_COLS = ", ".join(_PERSON_COLUMNS)
_SAME_PERSON = " AND ".join(f"p.{k} = sync_persons.{k}" for k in _PERSON_COLUMNS)
_SET_PERSON = ", ".join(f"{k} = excluded.{k}" for k in _PERSON_COLUMNS[1:])
#: The side tables, TEMP: on the controller's connection only, gone with it after a crash.
_SIDE = {
    "sync_persons": f"{_COLS}, PRIMARY KEY (id)",
    "sync_cards": "uid TEXT PRIMARY KEY, person TEXT NOT NULL",
    "sync_changed_persons": "r INTEGER PRIMARY KEY",
    "sync_changed_cards": "r INTEGER PRIMARY KEY",
    "sync_gone_persons": "id TEXT PRIMARY KEY",
    "sync_gone_cards": "uid TEXT PRIMARY KEY",
    "sync_revoked_cards": "uid TEXT PRIMARY KEY",
    "sync_revoked_passes": "jti TEXT PRIMARY KEY",
    "sync_revoked_persons": "id TEXT PRIMARY KEY",
}


@contextmanager
def _staging(c: sqlite3.Connection) -> Iterator[None]:
    # Deferred: writes to TEMP tables only, so no lock on the main file is held.
    c.execute("BEGIN")
    try:
        yield
    except BaseException:
        c.execute("ROLLBACK")
        raise
    c.execute("COMMIT")


class SnapshotBuild:
    """A snapshot applied in short steps (controller thread): :meth:`step` until it says done.

    The snapshot is staged in the side tables, compared with the live registry in
    chunks, and what differs is written in one transaction with the version. A
    delta applied between two steps makes it compare again before the swap.
    """

    def __init__(
        self, conn: sqlite3.Connection, change: Change, when: str, chunk: int = CHUNK_ROWS
    ):
        if change.kind != "snapshot":
            raise ValueError("only a snapshot is built in steps")
        self.conn = conn
        self.change = change
        self.when = when
        self.chunk = chunk
        self._steps = self._run()
        self._seen = {"persons": 0, "cards": 0}

    @property
    def version(self) -> int:
        """The version this build applies."""
        return self.change.version

    def step(self) -> str | None:
        """Run one short step: what was done once the snapshot is in, else None."""
        try:
            return next(self._steps)
        except sqlite3.IntegrityError as exc:
            self.close()
            raise RegistryMessageError(f"inconsistent registry change: {exc}") from None
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        """Stop here (a newer snapshot came, or it failed) and drop the side tables."""
        self._steps.close()
        self._drop()

    def _drop(self) -> None:
        for name in _SIDE:
            self.conn.execute(f"DROP TABLE IF EXISTS temp.{name}")

    def _check(self, have: int) -> None:
        if self.version < have:
            raise RegistryMessageError(f"stale snapshot {self.version} (have {have})")

    def _chunks(self, items: Iterable[Any]) -> Iterator[list[Any]]:
        it = iter(items)
        while part := list(islice(it, self.chunk)):
            yield part

    def _run(self) -> Generator[str | None, None, None]:
        c, ch = self.conn, self.change
        have = applied_version(c)
        if self.version == have:
            yield f"snapshot {have} already applied"
            return
        self._check(have)
        for name, columns in _SIDE.items():
            c.execute(f"DROP TABLE IF EXISTS temp.{name}")
            c.execute(f"CREATE TEMP TABLE {name} ({columns})")
        marks = ", ".join("?" * len(_PERSON_COLUMNS))
        for part in self._chunks(ch.persons):
            with _staging(c):
                c.executemany(
                    f"INSERT INTO temp.sync_persons({_COLS}) VALUES ({marks})",
                    [tuple(getattr(p, k) for k in _PERSON_COLUMNS) for p in part],
                )
            yield None
        lists: dict[str, Iterable[tuple[str, ...]]] = {
            "sync_cards(uid, person)": ch.cards.items(),
            "sync_revoked_cards(uid)": ((u,) for u in ch.revoked_cards),
            "sync_revoked_passes(jti)": ((j,) for j in ch.revoked_passes),
            "sync_revoked_persons(id)": ((i,) for i in ch.revoked_persons),
        }
        for target, rows in lists.items():
            for part in self._chunks(rows):
                values = ", ".join("?" * len(part[0]))
                with _staging(c):
                    c.executemany(f"INSERT OR IGNORE INTO temp.{target} VALUES ({values})", part)
                yield None
        while True:
            base = applied_version(c)
            self._check(base)
            yield from self._compare()
            c.execute("BEGIN IMMEDIATE")
            try:
                if applied_version(c) != base:
                    c.execute("ROLLBACK")
                    continue  # a delta came in between: compare with it
                changed = self._swap()
                c.execute("COMMIT")
            except BaseException:
                c.execute("ROLLBACK")
                raise
            break
        yield None
        for name in _SIDE:  # emptied in steps: dropping 200,000 rows at once takes ~70 ms
            for _, b in self._ranges(f"temp.{name}", 5 * self.chunk):
                c.execute(f"DELETE FROM temp.{name} WHERE rowid <= ?", (b,))
                yield None
            c.execute(f"DROP TABLE temp.{name}")
        yield f"snapshot {self.version} applied ({len(ch.persons)} persons, {changed} changed)"

    def _ranges(self, table: str, size: int = 0) -> Iterator[tuple[int, int]]:
        size = size or self.chunk
        top = self.conn.execute(f"SELECT coalesce(max(rowid), 0) FROM {table}").fetchone()[0]
        for a in range(0, int(top), size):
            yield a, a + size

    def _compare(self) -> Iterator[None]:
        c = self.conn
        with _staging(c):
            for name in ("gone_persons", "gone_cards", "changed_persons", "changed_cards"):
                c.execute(f"DELETE FROM temp.sync_{name}")
        steps = (
            (
                "temp.sync_persons",
                "INSERT INTO temp.sync_changed_persons SELECT rowid FROM temp.sync_persons"
                " WHERE rowid > ? AND rowid <= ? AND NOT EXISTS (SELECT 1 FROM main.persons p"
                f" WHERE p.id = sync_persons.id AND {_SAME_PERSON})",
            ),
            (
                "temp.sync_cards",
                "INSERT INTO temp.sync_changed_cards SELECT rowid FROM temp.sync_cards"
                " WHERE rowid > ? AND rowid <= ? AND NOT EXISTS (SELECT 1 FROM main.cards c"
                " WHERE c.uid = sync_cards.uid AND c.person = sync_cards.person)",
            ),
            (
                "main.persons",
                "INSERT INTO temp.sync_gone_persons SELECT id FROM main.persons"
                " WHERE rowid > ? AND rowid <= ? AND active = 1"
                " AND id NOT IN (SELECT id FROM temp.sync_persons)",
            ),
            (
                "main.cards",
                "INSERT INTO temp.sync_gone_cards SELECT uid FROM main.cards"
                " WHERE rowid > ? AND rowid <= ? AND uid NOT IN (SELECT uid FROM temp.sync_cards)",
            ),
        )
        for table, sql in steps:
            if table.startswith("main."):
                top = c.execute(f"SELECT coalesce(max(rowid), 0) FROM {table}").fetchone()[0]
                self._seen[table[5:]] = int(top)
            for a, b in self._ranges(table):
                with _staging(c):
                    c.execute(sql, (a, b))
                yield None

    def _swap(self) -> int:
        """Write what differs, in the caller's transaction; how many rows it wrote."""
        c, w = self.conn, self.when
        before = c.total_changes
        c.execute(
            "UPDATE main.persons SET active = 0 WHERE id IN (SELECT id FROM temp.sync_gone_persons)"
        )
        # Rows that appeared after they were compared (another process's import).
        c.execute(
            "UPDATE main.persons SET active = 0 WHERE rowid > ? AND active = 1"
            " AND id NOT IN (SELECT id FROM temp.sync_persons)",
            (self._seen["persons"],),
        )
        c.execute(
            f"INSERT INTO main.persons({_COLS}) SELECT {_COLS} FROM temp.sync_persons"
            " WHERE rowid IN (SELECT r FROM temp.sync_changed_persons)"
            f" ON CONFLICT(id) DO UPDATE SET {_SET_PERSON}"
        )
        c.execute("DELETE FROM main.cards WHERE uid IN (SELECT uid FROM temp.sync_gone_cards)")
        c.execute(
            "DELETE FROM main.cards WHERE rowid > ?"
            " AND uid NOT IN (SELECT uid FROM temp.sync_cards)",
            (self._seen["cards"],),
        )
        c.execute(
            "INSERT INTO main.cards(uid, person, activated_at)"
            " SELECT uid, person, ? FROM temp.sync_cards"
            " WHERE rowid IN (SELECT r FROM temp.sync_changed_cards)"
            " ON CONFLICT(uid) DO UPDATE SET person = excluded.person",
            (w,),
        )
        c.execute(
            "UPDATE main.cards SET revoked_at = ? WHERE revoked_at IS NULL"
            " AND uid IN (SELECT uid FROM temp.sync_revoked_cards)",
            (w,),
        )
        c.execute(
            "INSERT OR IGNORE INTO main.revoked_passes(jti, revoked_at)"
            " SELECT jti, ? FROM temp.sync_revoked_passes",
            (w,),
        )
        ids = [r[0] for r in c.execute("SELECT id FROM temp.sync_revoked_persons")]
        revoke_persons(c, ids, w)
        changed = c.total_changes - before
        c.execute(
            "INSERT OR REPLACE INTO meta(key, value) VALUES (?, ?)",
            (VERSION_KEY, str(self.version)),
        )
        return changed


class Snapshots:
    """Runs snapshot builds one step per controller queue turn, so verdicts go in between.

    ``submit`` runs a callable on the controller thread; the newest snapshot wins:
    one arriving mid-build abandons the build of an older one.
    """

    def __init__(
        self,
        submit: Callable[[Callable[[], Any]], Future[Any]],
        conn: sqlite3.Connection,
        when: Callable[[], str],
    ):
        self.submit = submit
        self.conn = conn
        self.when = when
        self.current: tuple[SnapshotBuild, Future[dict[str, Any]]] | None = None

    def building(self) -> int | None:
        """The version being built now, if any."""
        return self.current[0].version if self.current else None

    def apply(self, change: Change) -> Future[dict[str, Any]]:
        """Build ``change`` (a snapshot); the future holds ``{"version"}`` once it is in."""
        fut: Future[dict[str, Any]] = Future()

        def begin() -> None:
            if self.current is not None:
                old, old_fut = self.current
                if old.version >= change.version:
                    raise RegistryMessageError(f"snapshot {old.version} is being applied")
                old.close()
                old_fut.set_exception(
                    RegistryMessageError(f"abandoned for snapshot {change.version}")
                )
            build = SnapshotBuild(self.conn, change, self.when())
            self.current = (build, fut)
            step(build)

        def step(build: SnapshotBuild) -> None:
            if self.current is None or self.current[0] is not build:
                return  # abandoned
            try:
                detail = build.step()
            except Exception as exc:
                self.current = None
                fut.set_exception(exc)
                return
            if detail is None:
                self.submit(lambda: step(build))
                return
            self.current = None
            log.info("registry: %s", detail)
            fut.set_result({"version": applied_version(self.conn)})

        def started(f: Future[Any]) -> None:
            exc = f.exception()
            if exc is not None and not fut.done():
                fut.set_exception(exc)

        self.submit(begin).add_done_callback(started)
        return fut
