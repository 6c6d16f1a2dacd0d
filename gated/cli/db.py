"""``gated db check`` and ``gated db recover``: a damaged database found and rebuilt.

``check`` asks SQLite itself (``PRAGMA integrity_check``, or ``quick_check``).
``recover`` keeps the damaged file beside the database (``gated.db.damaged-<UTC time>``,
with its ``-wal`` and ``-shm``), builds a new file with the project's own schema, copies
into it every row SQLite can still read, table by table, continues ``seq`` and the boot
counter after the highest recovered, and records a ``device`` event that says how many
rows were saved. It reads through SQLite's own b-trees rather than with the sqlite3
shell's ``.recover``: Debian 12's SQLite (3.40.1) is built without the ``sqlite_dbpage``
table that ``.recover`` needs, and fails on every file there.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import sqlite3
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gated.errors import GatedError
from gated.events import Device
from gated.storage import connect, problems

if TYPE_CHECKING:
    from gated.config import Config

#: Tables of the registry (the rest is the ledger and its state).
REGISTRY_TABLES = ("persons", "cards", "revoked_passes")
#: Rows read per query while salvaging a table.
BATCH = 500


def _config(path: str) -> Config:
    from gated.config import load_config

    return load_config(path)


def in_use(path: Path) -> bool:
    """Whether a process has the database open: in WAL mode every connection holds a
    shared lock on the first byte after the locks of ``-shm`` (SQLite's DMS byte)."""
    shm = Path(f"{path}-shm")
    try:
        fd = os.open(shm, os.O_RDWR)
    except FileNotFoundError:
        return False
    try:
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB, 1, 128)
        except OSError:
            return True
        fcntl.lockf(fd, fcntl.LOCK_UN, 1, 128)
        return False
    finally:
        os.close(fd)  # before SQLite opens the file: closing drops this process's locks


def _quoted(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _columns(conn: sqlite3.Connection, table: str) -> list[str]:
    return [str(r[1]) for r in conn.execute(f"PRAGMA table_info({_quoted(table)})")]


def salvage(conn: sqlite3.Connection, table: str, columns: list[str]) -> Iterator[tuple[Any, ...]]:
    """Every row of ``table`` SQLite can still read, in rowid order, with its rowid first.

    Reading goes on after a damaged page: a seek past it (``rowid > x``) walks the
    b-tree down another way, and a bisection finds the first rowid readable after it."""
    cols = ", ".join(_quoted(c) for c in columns)
    sql = f"SELECT rowid, {cols} FROM {_quoted(table)} WHERE rowid > ? ORDER BY rowid LIMIT ?"

    def batch(after: int, n: int) -> list[tuple[Any, ...]] | None:
        try:
            return list(conn.execute(sql, (after, n)))
        except sqlite3.DatabaseError:
            return None

    after = -(2**63)
    while True:
        rows = batch(after, BATCH)
        if rows is not None:
            if not rows:
                return
            yield from rows
            after = int(rows[-1][0])
            continue
        # Rows one by one up to the damage, then the first readable seek past it.
        while (row := batch(after, 1)) is not None:
            if not row:
                return
            yield row[0]
            after = int(row[0][0])
        bad, step = after, 1
        while True:
            probe = bad + step
            if probe >= 2**63 - 1:
                return
            if batch(probe, 1) is not None:
                break
            step *= 2
        lo, hi = bad, probe  # seeking past lo fails, past hi works
        while hi - lo > 1:
            mid = (lo + hi) // 2
            if batch(mid, 1) is None:
                lo = mid
            else:
                hi = mid
        after = hi


@dataclass
class Recovered:
    """What a recovery saved, table by table, and what it had to leave."""

    saved: dict[str, int] = field(default_factory=dict)
    dropped: dict[str, int] = field(default_factory=dict)
    last_seq: int = 0
    boot: int = 0

    def registry_rows(self) -> int:
        """Rows of persons, cards and revoked passes saved."""
        return sum(self.saved.get(t, 0) for t in REGISTRY_TABLES)


def _valid_event(row: dict[str, Any]) -> bool:
    # A row is an event only if its body parses and names the same seq: a page that
    # reads but holds garbage must not become a ledger entry.
    try:
        body = json.loads(row["body"])
    except (TypeError, ValueError):
        return False
    return isinstance(body, dict) and body.get("seq") == row["seq"] and body.get("id") == row["id"]


def rebuild(damaged: Path, target: Path) -> Recovered:
    """Build ``target`` with the project's schema from what ``damaged`` still holds."""
    out = Recovered()
    # Two connections: a read that meets a damaged page must not touch the new file's
    # transaction (SQLite rolls back a transaction that hit corruption).
    src = sqlite3.connect(f"file:{damaged}?mode=ro", uri=True)
    conn = connect(target)
    try:
        try:
            old_tables = src.execute(
                "SELECT name, sql FROM sqlite_master WHERE type = 'table'"
                " AND name NOT LIKE 'sqlite_%' ORDER BY rootpage"
            ).fetchall()
        except sqlite3.DatabaseError as exc:
            raise GatedError(
                f"{damaged}: its list of tables is unreadable ({exc}): nothing can be read"
                " table by table"
            ) from None
        conn.execute("PRAGMA foreign_keys=OFF")  # rows come table by table; checked after
        new_tables = {
            r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
        }
        conn.execute("BEGIN IMMEDIATE")
        for name, sql in old_tables:
            if name not in new_tables and sql:
                conn.execute(sql)  # a table this build does not create (a later version's)
            have = set(_columns(conn, name))
            columns = [c for c in _columns(src, name) if c in have]
            insert = (
                f"INSERT OR {'REPLACE' if name == 'meta' else 'IGNORE'} INTO {_quoted(name)}"
                f" ({', '.join(_quoted(c) for c in columns)})"
                f" VALUES ({', '.join('?' for _ in columns)})"
            )
            saved = dropped = 0
            for row in salvage(src, name, columns) if columns else ():
                values = row[1:]
                if name == "events" and not _valid_event(dict(zip(columns, values, strict=True))):
                    dropped += 1
                    continue
                saved += conn.execute(insert, values).rowcount
            out.saved[name] = saved
            if dropped:
                out.dropped[name] = dropped
        conn.execute("COMMIT")
        _drop_orphans(conn, out)
        _continue_counters(conn, out)
    finally:
        conn.close()
        src.close()
    return out


def _drop_orphans(conn: sqlite3.Connection, out: Recovered) -> None:
    # An outbox row whose event is lost, a card whose person is lost: not kept.
    conn.execute("BEGIN IMMEDIATE")
    for table, rowid, _parent, _fk in conn.execute("PRAGMA foreign_key_check").fetchall():
        conn.execute(f"DELETE FROM {_quoted(table)} WHERE rowid = ?", (rowid,))
        out.saved[table] = out.saved.get(table, 0) - 1
        out.dropped[table] = out.dropped.get(table, 0) + 1
    conn.execute("COMMIT")
    conn.execute("PRAGMA foreign_keys=ON")


def _continue_counters(conn: sqlite3.Connection, out: Recovered) -> None:
    # seq goes on after the highest seq recovered, or after the counter if it survived
    # higher (events the hub may have had must never get their seq again); boot too.
    def meta(key: str) -> int:
        row = conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        try:
            return int(row[0]) if row else 0
        except ValueError:
            return 0

    top = conn.execute("SELECT COALESCE(MAX(seq), 0) FROM events").fetchone()[0]
    boots = conn.execute(
        "SELECT COALESCE(MAX(CAST(json_extract(body, '$.boot') AS INTEGER)), 0) FROM events"
    ).fetchone()[0]
    next_seq = max(meta("next_seq"), int(top) + 1)
    out.boot = max(meta("boot"), int(boots))
    out.last_seq = next_seq - 1
    conn.execute("BEGIN IMMEDIATE")
    conn.execute("INSERT OR REPLACE INTO meta(key, value) VALUES ('next_seq', ?)", (str(next_seq),))
    conn.execute("INSERT OR REPLACE INTO meta(key, value) VALUES ('boot', ?)", (str(out.boot),))
    conn.execute("COMMIT")


def _files(path: Path) -> list[Path]:
    return [Path(f"{path}{suffix}") for suffix in ("", "-wal", "-shm")]


def _stamp() -> str:
    # A file-name stamp for the kept copies (``gated.db.corrupt-20260301T080000Z``): no
    # colons or dots, unlike gated.clock.iso_utc's stamps, which are stored and sent.
    return datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")


def recover(config: Config, path: Path) -> tuple[Path, Recovered, Device]:
    """Recover the database at ``path``; the damaged file is kept beside it."""
    from gated.clock import SystemClock, clock_synced
    from gated.ledger import Ledger

    if not path.exists():
        raise GatedError(f"{path}: no database there")
    if in_use(path):
        raise GatedError(
            f"{path} is open in another process: stop the gate first (systemctl stop gated)"
        )
    stamp = _stamp()
    damaged = path.with_name(f"{path.name}.damaged-{stamp}")
    building = path.with_name(f"{path.name}.recovering-{stamp}")
    moved: list[tuple[Path, Path]] = []
    try:
        for src, dst in zip(_files(path), _files(damaged), strict=True):
            if src.exists():
                os.replace(src, dst)
                moved.append((src, dst))
        out = rebuild(damaged, building)
        conn = connect(building)
        try:
            ledger = Ledger(
                conn,
                site=config.gate.site,
                gate=config.gate.id,
                clock=SystemClock(),
                clock_synced=clock_synced,
            )
            event = ledger.append(
                Device.health(
                    "storage",
                    True,
                    f"database recovered from {damaged.name}: {out.saved.get('events', 0)}"
                    f" ledger events and {out.registry_rows()} registry rows saved"
                    f" ({sum(out.dropped.values())} unreadable rows left out); seq goes on"
                    f" after {out.last_seq}",
                    saved=dict(out.saved),
                    dropped=dict(out.dropped),
                    damaged_file=damaged.name,
                )
            )
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        finally:
            conn.close()
        for extra in _files(building)[1:]:
            extra.unlink(missing_ok=True)
        os.replace(building, path)
    except BaseException:
        for extra in _files(building):
            extra.unlink(missing_ok=True)
        for src, dst in reversed(moved):  # as it was: nothing half done stays
            os.replace(dst, src)
        raise
    return damaged, out, event


def cmd_db_check(args: argparse.Namespace) -> int:
    """Exit 0 when SQLite finds the database sound, 1 when it is damaged."""
    config = _config(args.config)
    path = Path(config.storage.path)
    if not path.exists():
        raise GatedError(f"{path}: no database there")
    found = problems(path, quick=args.quick)
    check = "quick_check" if args.quick else "integrity_check"
    if not found:
        print(f"{path}: ok ({check})")
        return 0
    print(f"{path}: DAMAGED ({check} found {len(found)} problem(s)):")
    for line in found[:10]:
        print(f"  {line}")
    print(f"stop the gate (systemctl stop gated), then run: gated db recover -c {args.config}")
    return 1


def cmd_db_recover(args: argparse.Namespace) -> int:
    """Rebuild the database from what the damaged file still holds."""
    config = _config(args.config)
    path = Path(config.storage.path)
    damaged, out, event = recover(config, path)
    print(f"kept the damaged file as {damaged}")
    for table, n in sorted(out.saved.items()):
        lost = out.dropped.get(table, 0)
        print(f"  {table}: {n} rows saved" + (f", {lost} left out" if lost else ""))
    print(f"seq goes on after {out.last_seq}; recorded as event {event.seq} (device storage)")
    found = problems(path)
    if found:
        print(f"{path}: the rebuilt file is not sound: {found[0]}", file=sys.stderr)
        return 1
    print(f"{path}: ok (integrity_check); start the gate again (systemctl start gated)")
    return 0


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``db check`` and ``db recover`` to the command line."""
    db = sub.add_parser("db", help="check or recover the database")
    dsub = db.add_subparsers(dest="db_command", metavar="ACTION")
    dsub.required = True
    p = dsub.add_parser("check", help="ask SQLite whether the database is sound (exit 1: damaged)")
    p.add_argument("-c", "--config", required=True)
    p.add_argument("--quick", action="store_true", help="PRAGMA quick_check: faster, less thorough")
    p.set_defaults(func=cmd_db_check)
    p = dsub.add_parser(
        "recover",
        help="keep the damaged file beside it and rebuild the database from what is readable",
    )
    p.add_argument("-c", "--config", required=True)
    p.set_defaults(func=cmd_db_recover)
