"""Residents, households and cards (docs/contracts.md §3 registry CSV, §7 storage).

Import checks every row before writing any: a bad row is named by its line and
nothing of the file is imported.
"""

from __future__ import annotations

import csv
import io
import re
import sqlite3
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, TextIO

from gated.errors import RegistryImportError
from gated.storage import Transaction, database

COLUMNS = (
    "person_id",
    "name",
    "id_number",
    "unit",
    "household",
    "category",
    "color",
    "verified",
    "card_uid",
)
OPTIONAL_COLUMNS = ("active",)

_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}$")
_COLOR_RE = re.compile(r"^[a-z][a-z0-9_-]{0,31}$")
_UID_RE = re.compile(r"^[0-9A-F]{1,32}$")
_TRUE = {"1", "true", "yes", "y", "t"}
_FALSE = {"0", "false", "no", "n", "f", ""}


@dataclass(frozen=True)
class Person:
    """A registered person, as the policy sees them."""

    id: str
    name: str = ""
    id_number: str = ""
    unit: str = ""
    household: str = ""
    category: str = ""
    color: str = ""
    verified: bool = False
    active: bool = True

    def as_event(self) -> dict[str, Any]:
        """The ``person`` object of an event (docs/contracts.md §4)."""
        d = asdict(self)
        del d["verified"], d["active"]
        return d


@dataclass(frozen=True)
class CardLookup:
    """What the registry knows of a presented card uid."""

    uid: str
    person: Person | None
    revoked: bool = False

    @property
    def known(self) -> bool:
        """The card belongs to an active person."""
        return self.person is not None and self.person.active


def normalise_uid(uid: str) -> str:
    """Uids compare as uppercase with no spaces (docs/contracts.md §3)."""
    return uid.strip().replace(" ", "").upper()


class Registry:
    """Look-ups and changes on the registry tables of one database connection."""

    def __init__(self, conn: sqlite3.Connection):
        self.conn = conn

    @staticmethod
    def _person(row: tuple[Any, ...]) -> Person:
        return Person(
            id=row[0],
            name=row[1],
            id_number=row[2],
            unit=row[3],
            household=row[4],
            category=row[5],
            color=row[6],
            verified=bool(row[7]),
            active=bool(row[8]),
        )

    def person(self, person_id: str) -> Person | None:
        """The person with this id, active or not."""
        row = self.conn.execute(
            "SELECT id, name, id_number, unit, household, category, color, verified, active"
            " FROM persons WHERE id = ?",
            (person_id,),
        ).fetchone()
        return self._person(row) if row else None

    def card(self, uid: str) -> CardLookup:
        """Look a presented card up; an unknown uid gives ``person=None``."""
        uid = normalise_uid(uid)
        row = self.conn.execute(
            "SELECT p.id, p.name, p.id_number, p.unit, p.household, p.category, p.color,"
            " p.verified, p.active, coalesce(c.revoked_at, r.revoked_at) FROM cards c"
            " JOIN persons p ON p.id = c.person LEFT JOIN revoked_persons r ON r.person = p.id"
            " WHERE c.uid = ?",
            (uid,),
        ).fetchone()
        if row is None:
            return CardLookup(uid, None)
        return CardLookup(uid, self._person(row[:9]), revoked=row[9] is not None)

    def pass_revoked(self, jti: str) -> bool:
        """Whether a pass id is on the revocation list."""
        row = self.conn.execute("SELECT 1 FROM revoked_passes WHERE jti = ?", (jti,)).fetchone()
        return row is not None

    def person_revoked(self, person_id: str) -> bool:
        """Whether the person was revoked: every card of theirs and pass issued to them."""
        row = self.conn.execute(
            "SELECT 1 FROM revoked_persons WHERE person = ?", (person_id,)
        ).fetchone()
        return row is not None

    def revoke_person(self, person_id: str, when: str) -> int:
        """Revoke a person's cards and every pass issued to them; how many cards."""
        with Transaction(self.conn) as c:
            return revoke_persons(c, [person_id], when)

    def revoke_card(self, uid: str, when: str) -> bool:
        """Mark a card revoked; False if the uid is not registered."""
        with Transaction(self.conn) as c:
            cur = c.execute(
                "UPDATE cards SET revoked_at = ? WHERE uid = ? AND revoked_at IS NULL",
                (when, normalise_uid(uid)),
            )
        return cur.rowcount > 0

    def revoke_pass(self, jti: str, when: str) -> None:
        """Put a pass id on the revocation list."""
        with Transaction(self.conn) as c:
            c.execute(
                "INSERT OR IGNORE INTO revoked_passes(jti, revoked_at) VALUES (?, ?)", (jti, when)
            )

    def counts(self) -> dict[str, int]:
        """How many persons and cards are registered."""
        persons = self.conn.execute("SELECT COUNT(*) FROM persons").fetchone()[0]
        cards = self.conn.execute("SELECT COUNT(*) FROM cards").fetchone()[0]
        return {"persons": int(persons), "cards": int(cards)}

    # -- CSV --------------------------------------------------------------------------

    def import_csv(self, stream: TextIO, name: str, when: str) -> dict[str, int]:
        """Import a registry CSV; every row is checked first, then all are written at once."""
        persons, cards = parse_csv(stream, name)
        self.apply(persons, cards, when)
        return {"persons": len(persons), "cards": len(cards)}

    def apply(self, persons: Iterable[Person], cards: dict[str, str], when: str) -> None:
        """Upsert persons and their cards in one transaction."""
        with Transaction(self.conn) as c:
            upsert_persons(c, persons)
            upsert_cards(c, cards, when)

    def export_csv(self, out: TextIO) -> int:
        """Write the registry as CSV, one row per card (a person without one: empty uid)."""
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow([*COLUMNS, "active"])
        n = 0
        rows = database(self.conn).query(
            "SELECT p.id AS person_id, p.name, p.id_number, p.unit, p.household, p.category,"
            " p.color, p.verified, p.active, c.uid AS card_uid FROM persons p"
            " LEFT JOIN cards c ON c.person = p.id AND c.revoked_at IS NULL ORDER BY p.id, c.uid"
        )
        for row in rows:
            row["card_uid"] = row["card_uid"] or ""
            for flag in ("verified", "active"):
                row[flag] = "true" if row[flag] else "false"
            writer.writerow([row[column] for column in (*COLUMNS, "active")])
            n += 1
        return n


def upsert_persons(c: sqlite3.Connection, persons: Iterable[Person]) -> None:
    """Insert or update persons, inside the caller's transaction (sqlite-utils nests a
    savepoint in it, so nothing is committed before the caller commits)."""
    rows = [{**asdict(p), "verified": int(p.verified), "active": int(p.active)} for p in persons]
    database(c).table("persons").upsert_all(rows, pk="id")


def revoke_persons(c: sqlite3.Connection, person_ids: list[str], when: str) -> int:
    """Revoke persons, inside the caller's transaction: their cards now (and any given them
    later) and every pass whose ``sub`` they are; how many cards were revoked now."""
    c.executemany(
        "INSERT OR IGNORE INTO revoked_persons(person, revoked_at) VALUES (?, ?)",
        [(p, when) for p in person_ids],
    )
    before = c.total_changes
    c.executemany(
        "UPDATE cards SET revoked_at = ? WHERE person = ? AND revoked_at IS NULL",
        [(when, p) for p in person_ids],
    )
    return c.total_changes - before


def upsert_cards(c: sqlite3.Connection, cards: dict[str, str], when: str) -> None:
    """Give each card uid to its person (``{uid: person_id}``), inside the caller's transaction."""
    c.executemany(
        "INSERT INTO cards(uid, person, activated_at) VALUES (?, ?, ?)"
        " ON CONFLICT(uid) DO UPDATE SET person = excluded.person",
        [(uid, pid, when) for uid, pid in cards.items()],
    )


def _flag(value: str, line: int, column: str, name: str) -> bool:
    v = value.strip().lower()
    if v in _TRUE:
        return True
    if v in _FALSE:
        return False
    raise RegistryImportError(f"{name}:{line}: {column}: expected true or false, got {value!r}")


def read_csv(path: Path) -> tuple[list[Person], dict[str, str]]:
    """Read and check a registry CSV file whole (``gated registry import``, ``gated hub
    registry publish``); :class:`RegistryImportError` names the line of the first problem."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise RegistryImportError(f"{path}: cannot read: {exc.strerror}") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        # Excel on a Chinese Windows saves "CSV" as GBK: name the line, say what to do.
        line = data.count(b"\n", 0, exc.start) + 1
        raise RegistryImportError(
            f'{path}:{line}: not UTF-8 text; save the file as "CSV UTF-8"'
        ) from None
    return parse_csv(io.StringIO(text, newline=""), str(path))


def parse_csv(stream: TextIO, name: str) -> tuple[list[Person], dict[str, str]]:
    """Check a whole registry CSV; return its persons and ``{card_uid: person_id}``."""
    text = stream.read()
    if text.startswith("\ufeff"):
        text = text[1:]
    reader = csv.DictReader(io.StringIO(text))
    header = reader.fieldnames or []
    repeated = sorted({c for c in header if header.count(c) > 1})
    if repeated:
        # DictReader keeps only the last of repeated columns: the others would be lost silently.
        raise RegistryImportError(f"{name}:1: repeated column(s): {', '.join(repeated)}")
    missing = [c for c in COLUMNS if c not in header]
    if missing:
        raise RegistryImportError(f"{name}:1: missing column(s): {', '.join(missing)}")
    unknown = [c for c in header if c not in COLUMNS and c not in OPTIONAL_COLUMNS]
    if unknown:
        raise RegistryImportError(f"{name}:1: unknown column(s): {', '.join(unknown)}")
    persons: dict[str, Person] = {}
    cards: dict[str, str] = {}
    for row in reader:
        line = reader.line_num
        if None in row or any(v is None for v in row.values()):
            raise RegistryImportError(f"{name}:{line}: wrong number of fields")
        pid = row["person_id"].strip()
        if not _ID_RE.match(pid):
            raise RegistryImportError(f"{name}:{line}: person_id: invalid id {pid!r}")
        pname = row["name"].strip()
        if not pname:
            raise RegistryImportError(f"{name}:{line}: name: empty")
        color = row["color"].strip().lower()
        if not _COLOR_RE.match(color):
            raise RegistryImportError(f"{name}:{line}: color: invalid colour {row['color']!r}")
        household = row["household"].strip()
        if household and not _ID_RE.match(household):
            raise RegistryImportError(f"{name}:{line}: household: invalid id {household!r}")
        person = Person(
            id=pid,
            name=pname,
            id_number=row["id_number"].strip(),
            unit=row["unit"].strip(),
            household=household,
            category=row["category"].strip(),
            color=color,
            verified=_flag(row["verified"], line, "verified", name),
            active=_flag(row.get("active") or "true", line, "active", name),
        )
        seen = persons.get(pid)
        if seen is not None and seen != person:
            raise RegistryImportError(
                f"{name}:{line}: person_id {pid}: differs from an earlier row of the same person"
            )
        persons[pid] = person
        raw_uid = row["card_uid"]
        if raw_uid.strip():
            uid = normalise_uid(raw_uid)
            if not _UID_RE.match(uid):
                raise RegistryImportError(
                    f"{name}:{line}: card_uid: expected hex digits, got {raw_uid!r}"
                )
            owner = cards.get(uid)
            if owner is not None and owner != pid:
                raise RegistryImportError(
                    f"{name}:{line}: card_uid {uid}: already given to {owner} in this file"
                )
            cards[uid] = pid
    return list(persons.values()), cards
