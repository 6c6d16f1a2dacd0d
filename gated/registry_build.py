"""A registry snapshot applied in short steps on the controller thread, atomically.

A snapshot of up to 200,000 persons is staged in TEMP side tables of the
controller's connection in chunks of :data:`CHUNK_ROWS` rows, compared with the
live registry in chunks, and only what differs is written in one transaction with
the new version: verdicts are decided between the steps, and every one sees the
old registry or the new, never half of each. A crash mid-build leaves the old
registry and version (TEMP tables die with the connection); a newer snapshot
arriving mid-build abandons the older.
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Callable, Generator, Iterable, Iterator
from concurrent.futures import Future
from contextlib import contextmanager
from dataclasses import fields
from itertools import islice
from typing import Any

from gated.mqtt.registry_sync import VERSION_KEY, Change, RegistryMessageError, applied_version
from gated.registry import Person, revoke_persons

log = logging.getLogger(__name__)

#: Rows a snapshot step stages or compares: a few milliseconds on the controller thread.
CHUNK_ROWS = 1000

_PERSON_COLUMNS = tuple(f.name for f in fields(Person))

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
