"""What one peer gate's event teaches this gate (contracts §4b), written into the site tables.

A peer's granted decision (``granted`` or ``guard_granted``) teaches what the same
grant here would have changed: a household quota use, the person's presence (the
direction of their last granted passage, by ``ts``) and a one-time pass use. A grant
that counts none here counts none from a peer either: one with no person (a remote
open), one while passage was free (``free: true``, or ``fire_release``).

A peer's ``revoke`` (its ``cmd/revoke``) revokes the same here, in the registry tables,
at the peer's ``ts``: the pass's jti, the person, or the card. A card's uid is masked
on the wire (``mqtt.pii`` masked or none: its last 4 characters), so every active card
of that person that the mask fits is revoked; a full uid revokes exactly that card.
Nothing is ever un-revoked, so a forged revoke can only deny. Every other event teaches
nothing here.

Everything is keyed by the peer's (gate, seq), so an event learned twice (a replay, a
broker's redelivery) counts once. The rows go to ``site_quota_use``, ``site_presence``
and ``site_pass_uses`` (revocations: to the registry's), never to the ledger; the
policy reads them beside the gate's own (gated/ledger.py) and they can only add a
constraint, except a peer's recorded exit, which lifts an anti-passback refusal (and
the grant names it in ``relied_on``). A revocation learned twice is revoked once.
"""

from __future__ import annotations

import sqlite3

from gated.clock import iso_utc, parse_iso_utc
from gated.events import Decision, Event, Revoke
from gated.privacy import mask_uid
from gated.registry import normalise_uid, revoke_persons
from gated.storage import Transaction

#: The decisions that let somebody through.
GRANTS = frozenset({"granted", "guard_granted"})


def learn(conn: sqlite3.Connection, event: Event) -> None:
    """Record what ``event`` (validated by ``parse_event``, from another gate of this site,
    header stamped) teaches; a second time, nothing.

    Inside the caller's transaction when one is open (several events may be learned in
    one; ``learn`` never commits it), else in a short one of its own.
    """
    if not conn.in_transaction:
        with Transaction(conn) as c:
            _learn(c, event)
        return
    _learn(conn, event)


def _learn(c: sqlite3.Connection, event: Event) -> None:
    if isinstance(event, Revoke):
        _revoke(c, event)
        return
    if not isinstance(event, Decision) or event.decision not in GRANTS:
        return
    gate, seq, event_id, stamp = event.gate, event.seq, event.id, event.ts
    if gate is None or seq is None or event_id is None or stamp is None:
        raise ValueError("a peer event to learn from needs its gate, seq, id and ts")
    ts = parse_iso_utc(stamp).timestamp()
    cred = event.credential
    jti = cred.one_time_jti() if cred is not None else None
    if jti:
        # The first use stays; a later replay of the same pass is the one refused.
        c.execute(
            "INSERT OR IGNORE INTO site_pass_uses(jti, gate, seq, ts) VALUES (?, ?, ?, ?)",
            (jti, gate, seq, ts),
        )
    person = event.person
    if (
        person is None
        or not person.id
        or event.free
        or "fire_release" in event.reasons
        or event.direction is None
    ):
        return  # nobody was checked: no quota used, presence as it was
    if person.household:
        c.execute(
            "INSERT OR IGNORE INTO site_quota_use(gate, seq, household, direction, ts)"
            " VALUES (?, ?, ?, ?, ?)",
            (gate, seq, person.household, event.direction, ts),
        )
    # The newest passage by ts wins; the same event again changes nothing.
    c.execute(
        "INSERT INTO site_presence(person_id, direction, ts, gate, seq, event_id)"
        " VALUES (?, ?, ?, ?, ?, ?)"
        " ON CONFLICT(person_id) DO UPDATE SET direction = excluded.direction,"
        " ts = excluded.ts, gate = excluded.gate, seq = excluded.seq,"
        " event_id = excluded.event_id WHERE excluded.ts > site_presence.ts",
        (person.id, event.direction, ts, gate, seq, event_id),
    )


def _revoke(c: sqlite3.Connection, event: Revoke) -> None:
    """What a peer revoked, revoked here too (already revoked: as it was)."""
    if event.ts is None:
        raise ValueError("a peer event to learn from needs its gate, seq, id and ts")
    when = iso_utc(parse_iso_utc(event.ts).timestamp())
    if event.what == "pass":
        c.execute(
            "INSERT OR IGNORE INTO revoked_passes(jti, revoked_at) VALUES (?, ?)",
            (event.ref, when),
        )
        return
    if event.what == "person":
        revoke_persons(c, [event.ref], when)
        return
    person = event.person.id if event.person is not None else None
    if "*" not in event.ref:  # the full uid (``mqtt.pii = "full"``): that very card
        c.execute(
            "UPDATE cards SET revoked_at = ? WHERE uid = ? AND revoked_at IS NULL",
            (when, normalise_uid(event.ref)),
        )
        return
    if not person:
        return  # a masked uid of nobody known fits no card for certain
    active = c.execute(
        "SELECT uid FROM cards WHERE person = ? AND revoked_at IS NULL", (person,)
    ).fetchall()
    # Two cards of the person that the mask fits both go: a peer only adds constraints.
    c.executemany(
        "UPDATE cards SET revoked_at = ? WHERE uid = ? AND revoked_at IS NULL",
        [(when, uid) for (uid,) in active if mask_uid(uid) == event.ref],
    )
