"""Registry sync from the central side: snapshots and deltas with a monotonic ``version``.

A message is checked whole before anything is written (on the publisher's thread),
then applied in ONE transaction together with the new version in ``meta``
(``registry_version``), on the controller thread: a half-applied snapshot never
decides anybody's entry. A delta is one short step; a snapshot is applied in
steps between verdicts by :mod:`gated.registry_build`, still in one transaction.

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
from dataclasses import dataclass, field
from typing import Any

from gated.registry import Person, normalise_uid, revoke_persons, upsert_cards, upsert_persons
from gated.storage import Transaction

log = logging.getLogger(__name__)

VERSION_KEY = "registry_version"
MAX_ITEMS = 200_000
#: Versions are below 2^53: exact as a JSON number everywhere (a double's integers).
MAX_VERSION = 2**53 - 1

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
