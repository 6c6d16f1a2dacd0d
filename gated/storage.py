"""The SQLite file: opened in WAL mode with ``synchronous=FULL``, schema created once.

One file holds the registry and the ledger, so a verdict and the quota or
anti-passback state it changes are committed in the same transaction. Registry
upserts and exports go through sqlite-utils (:func:`database`), which nests a
savepoint inside the caller's ``BEGIN IMMEDIATE``; the ledger's hot path writes
its few fixed statements with sqlite3 directly.
"""

from __future__ import annotations

import contextlib
import sqlite3
from pathlib import Path

import sqlite_utils

from gated.errors import StorageError

SCHEMA_VERSION = 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);

CREATE TABLE IF NOT EXISTS persons (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    id_number TEXT NOT NULL DEFAULT '',
    unit TEXT NOT NULL DEFAULT '',
    household TEXT NOT NULL DEFAULT '',
    category TEXT NOT NULL DEFAULT '',
    color TEXT NOT NULL DEFAULT 'green',
    verified INTEGER NOT NULL DEFAULT 0,
    active INTEGER NOT NULL DEFAULT 1
);
CREATE TABLE IF NOT EXISTS cards (
    uid TEXT PRIMARY KEY,
    person TEXT NOT NULL REFERENCES persons(id),
    activated_at TEXT,
    revoked_at TEXT
);
CREATE INDEX IF NOT EXISTS cards_person ON cards(person);
CREATE TABLE IF NOT EXISTS revoked_passes (jti TEXT PRIMARY KEY, revoked_at TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS revoked_persons (person TEXT PRIMARY KEY, revoked_at TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS pass_uses (jti TEXT PRIMARY KEY, seq INTEGER NOT NULL, ts REAL NOT NULL);

CREATE TABLE IF NOT EXISTS events (
    seq INTEGER PRIMARY KEY,
    id TEXT NOT NULL UNIQUE,
    ts TEXT NOT NULL,
    kind TEXT NOT NULL,
    decision TEXT,
    person_id TEXT,
    body TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS events_ts ON events(ts);
CREATE TABLE IF NOT EXISTS outbox (
    seq INTEGER PRIMARY KEY REFERENCES events(seq),
    topic TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS quota_use (
    household TEXT NOT NULL,
    direction TEXT NOT NULL,
    ts REAL NOT NULL,
    seq INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS quota_use_hh ON quota_use(household, ts);
CREATE TABLE IF NOT EXISTS presence (
    person_id TEXT PRIMARY KEY,
    direction TEXT NOT NULL,
    ts REAL NOT NULL,
    seq INTEGER NOT NULL
);
-- What the site's peer gates taught (SPEC §4b, gated/site/learn.py), by (gate, seq):
-- never part of the ledger, never republished.
CREATE TABLE IF NOT EXISTS site_quota_use (
    gate TEXT NOT NULL,
    seq INTEGER NOT NULL,
    household TEXT NOT NULL,
    direction TEXT NOT NULL,
    ts REAL NOT NULL,
    PRIMARY KEY (gate, seq)
);
CREATE INDEX IF NOT EXISTS site_quota_use_hh ON site_quota_use(household, ts);
CREATE INDEX IF NOT EXISTS site_quota_use_ts ON site_quota_use(ts);
CREATE TABLE IF NOT EXISTS site_presence (
    person_id TEXT PRIMARY KEY,
    direction TEXT NOT NULL,
    ts REAL NOT NULL,
    gate TEXT NOT NULL,
    seq INTEGER NOT NULL,
    event_id TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS site_pass_uses (
    jti TEXT PRIMARY KEY,
    gate TEXT NOT NULL,
    seq INTEGER NOT NULL,
    ts REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS site_pass_uses_ts ON site_pass_uses(ts);
CREATE TABLE IF NOT EXISTS command_reqs (req TEXT PRIMARY KEY, ts REAL NOT NULL);
CREATE INDEX IF NOT EXISTS command_reqs_ts ON command_reqs(ts);
"""


def connect(path: Path | str) -> sqlite3.Connection:
    """Open (and create) the database; WAL, ``synchronous=FULL``, explicit transactions."""
    path = Path(path)
    try:
        if str(path) != ":memory:":
            path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
        # Only takes effect on a new file, and only before WAL: the daily purge then
        # gives freed pages back with incremental_vacuum (gated/retention.py).
        conn.execute("PRAGMA auto_vacuum=INCREMENTAL")
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")
        conn.execute("PRAGMA foreign_keys=ON")
        conn.execute("PRAGMA busy_timeout=5000")
        conn.executescript(_SCHEMA)
        conn.execute(
            "INSERT OR IGNORE INTO meta(key, value) VALUES ('schema', ?), ('next_seq', '1'),"
            " ('boot', '0')",
            (str(SCHEMA_VERSION),),
        )
    except (sqlite3.Error, OSError) as exc:
        raise StorageError(f"cannot open database {path}: {exc}") from exc
    return conn


def problems(path: Path | str, quick: bool = False, limit: int = 100) -> list[str]:
    """What SQLite's ``integrity_check`` (or ``quick_check``) finds wrong with the file
    at ``path``: [] when it is sound. Read-only: a damaged file is never written to."""
    pragma = "quick_check" if quick else "integrity_check"
    try:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        try:
            conn.execute("PRAGMA busy_timeout=5000")
            rows = conn.execute(f"PRAGMA {pragma}({int(limit)})").fetchall()
        finally:
            conn.close()
    except sqlite3.DatabaseError as exc:  # not a database at all, or unreadable
        return [str(exc)]
    # One problem a line; SQLite heads a report with "*** in database main ***".
    found = [
        line.strip()
        for r in rows
        for line in str(r[0]).splitlines()
        if line.strip() and not line.startswith("*** ")
    ]
    return [] if found == ["ok"] else found


def open_checked(path: Path | str, config_path: Path | str) -> sqlite3.Connection:
    """:func:`connect` after SQLite's ``quick_check``: a damaged file is not opened for
    writing, and the error says which commands repair it."""
    path = Path(path)
    if str(path) != ":memory:" and path.exists():
        found = problems(path, quick=True, limit=1)
        if found:
            raise StorageError(
                f"the database {path} is damaged ({found[0]}): run `gated db check -c"
                f" {config_path}`, then, with the gate stopped (systemctl stop gated),"
                f' `gated db recover -c {config_path}` (docs/install.md, "The database is'
                ' damaged")'
            )
    return connect(path)


def database(conn: sqlite3.Connection) -> sqlite_utils.Database:
    """The sqlite-utils view of a connection opened by :func:`connect`."""
    return sqlite_utils.Database(conn)


class Transaction:
    """``with Transaction(conn):`` runs a ``BEGIN IMMEDIATE`` ... ``COMMIT`` block.

    Inside a transaction already open on ``conn`` it is a savepoint of it instead: a
    step that opens its own (a peer event's rules, gated/site/) can run inside its
    caller's batch, and the batch still commits once.
    """

    def __init__(self, conn: sqlite3.Connection):
        self.conn = conn
        self.nested = False

    def __enter__(self) -> sqlite3.Connection:
        if self.conn.in_transaction:
            self.nested = True
            self.conn.execute("SAVEPOINT nested")
        else:
            self.conn.execute("BEGIN IMMEDIATE")
        return self.conn

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        if self.nested:
            if exc_type is not None and self.conn.in_transaction:
                with contextlib.suppress(sqlite3.Error):
                    self.conn.execute("ROLLBACK TO nested")
            with contextlib.suppress(sqlite3.Error):
                self.conn.execute("RELEASE nested")
            return
        if exc_type is not None:
            self._rollback()
            return
        try:
            self.conn.execute("COMMIT")
        except sqlite3.Error:
            self._rollback()  # a COMMIT that failed may leave the transaction open
            raise

    def _rollback(self) -> None:
        # SQLite may have rolled back already (a full disk): a ROLLBACK would then fail
        # and hide the error that says why.
        if self.conn.in_transaction:
            with contextlib.suppress(sqlite3.Error):
                self.conn.execute("ROLLBACK")
