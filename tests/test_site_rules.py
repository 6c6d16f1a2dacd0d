"""The rules across the site (contracts §4b): what a peer gate's events teach the policy here.

The peer events are built as the peer's ledger stamps them and handed to
:func:`gated.site.learn.learn` as the ingest does; the rig (a real controller on sim
drivers) then decides on cards and passes.
"""

from __future__ import annotations

import itertools
import shutil
import uuid
from pathlib import Path
from typing import Any

import pytest

from gated.clock import iso_utc
from gated.events import Credential, Decision, Event, PeerRef, Revoke, parse_event
from gated.policy import Verdict, decide
from gated.privacy import reduce_event
from gated.retention import DAY_S, Retention, purge_now
from gated.session import Session
from gated.site.learn import learn
from tests.support.rig import Rig

PEER = "north-2"
ZHANG_CARD = "0A1B2C3D4E"
QUOTA_OUT = {"household_quota": {"max": 1, "window_h": 72, "direction": "out"}}
HARD = {"antipassback": "hard"}


class Peer:
    """The events of one peer gate of the rig's site, stamped as its ledger would."""

    def __init__(self, rig: Rig, gate: str = PEER):
        self.rig = rig
        self.gate = gate
        self.seq = 0

    def grant(
        self,
        direction: str,
        person: dict[str, Any] | None = None,
        credential: Credential | None = None,
        *,
        decision: str = "granted",
        reasons: tuple[str, ...] = (),
        ago_s: float = 1.0,
        seq: int | None = None,
        free: bool = False,
    ) -> Event:
        """A decision at the peer ``ago_s`` seconds before the rig's now."""
        if person is None:
            person = zhang()
        event = Decision.verdict(
            direction=direction,
            decision=decision,
            reasons=reasons,
            person=person,
            credential=credential if credential is not None else Credential.card("99AA", "green"),
            temperature_c=36.6,
            readings_c=[36.6],
            decide_ms=1.0,
            free=free,
        )
        if seq is None:
            self.seq += 1
            seq = self.seq
        return event.stamped(
            id=str(uuid.uuid4()),
            ts=iso_utc(self.rig.clock.time() - ago_s),
            site="s1",
            gate=self.gate,
            clock_synced=True,
            boot=1,
            seq=seq,
        )

    def revoke(self, what: str, ref: str, person: str | None, ago_s: float = 1.0) -> Event:
        """A ``cmd/revoke`` at the peer ``ago_s`` seconds before the rig's now."""
        self.seq += 1
        return Revoke.of(what, ref, person, "mqtt:central").stamped(
            id=str(uuid.uuid4()),
            ts=iso_utc(self.rig.clock.time() - ago_s),
            site="s1",
            gate=self.gate,
            clock_synced=True,
            boot=1,
            seq=self.seq,
        )


def zhang(**fields: Any) -> dict[str, Any]:
    """Zhang Wei of household H1 as a peer's event names him (pii full)."""
    return {
        "id": "P1",
        "name": "Zhang Wei",
        "id_number": "320623199001011234",
        "unit": "1-101",
        "household": "H1",
        "category": "resident",
        "color": "green",
        **fields,
    }


def present_card(rig: Rig, passage: bool = True) -> dict[str, Any]:
    rig.feed("temp", 36.6)
    rig.feed("card", ZHANG_CARD)
    if passage:
        rig.feed("passage", True)
    return rig.decisions()[-1]


def present_pass(rig: Rig, token: str) -> dict[str, Any]:
    rig.feed("temp", 36.6)
    rig.feed("qr", token)
    rig.feed("passage", True)
    return rig.decisions()[-1]


# -- the household quota -----------------------------------------------------------------


def test_a_household_that_went_out_at_a_peer_is_over_quota_here_within_the_window(
    tmp_path: Path,
) -> None:
    rig = Rig(tmp_path, gate={"direction": "out"}, policy=QUOTA_OUT)
    peer = Peer(rig)
    # Another member of household H1 went out at the north gate an hour ago.
    learn(rig.conn, peer.grant("out", zhang(id="P7", name="Zhang Min"), ago_s=3600))
    first = present_card(rig)
    assert (first["decision"], first["reasons"]) == ("denied", ["quota_exceeded"])
    rig.wait(71 * 3600)  # the peer's exit is 72 h old now: out of the window
    again = present_card(rig)
    assert (again["decision"], again["reasons"]) == ("granted", [])


def test_a_peers_grant_counts_only_in_the_quotas_direction(tmp_path: Path) -> None:
    rig = Rig(tmp_path, gate={"direction": "out"}, policy=QUOTA_OUT)
    learn(rig.conn, Peer(rig).grant("in"))
    assert present_card(rig)["decision"] == "granted"


def test_a_peers_grant_that_checked_nobody_uses_no_quota(tmp_path: Path) -> None:
    rig = Rig(tmp_path, gate={"direction": "out"}, policy=QUOTA_OUT)
    peer = Peer(rig)
    learn(rig.conn, peer.grant("out", free=True))  # the peer was in free mode
    learn(rig.conn, peer.grant("out", reasons=("fire_release",), free=True))
    learn(rig.conn, peer.grant("out", decision="denied", reasons=("fever",)))
    learn(rig.conn, peer.grant("out", decision="needs_guard", reasons=("color_guard",)))
    remote = Decision.remote_open("out", "mqtt:centre", None)
    learn(
        rig.conn,
        remote.stamped(
            id=str(uuid.uuid4()),
            ts=iso_utc(rig.clock.time()),
            site="s1",
            gate=PEER,
            clock_synced=True,
            boot=1,
            seq=99,
        ),
    )
    assert present_card(rig)["decision"] == "granted"


def test_a_guards_grant_at_a_peer_uses_the_quota(tmp_path: Path) -> None:
    rig = Rig(tmp_path, gate={"direction": "out"}, policy=QUOTA_OUT)
    learn(rig.conn, Peer(rig).grant("out", decision="guard_granted", reasons=("color_guard",)))
    assert present_card(rig)["reasons"] == ["quota_exceeded"]


def test_the_same_peer_event_learned_twice_counts_once(tmp_path: Path) -> None:
    quota = {"household_quota": {"max": 2, "window_h": 72, "direction": "out"}}
    rig = Rig(tmp_path, gate={"direction": "out"}, policy=quota)
    peer = Peer(rig)
    event = peer.grant("out")
    learn(rig.conn, event)
    learn(rig.conn, event)  # a replay, or the broker's redelivery
    assert rig.conn.execute("SELECT COUNT(*) FROM site_quota_use").fetchone()[0] == 1
    assert present_card(rig)["decision"] == "granted"  # 1 at the peer + 1 here = 2
    learn(rig.conn, peer.grant("out"))  # a second exit at the peer: over
    rig.feed("temp", 36.6)
    rig.feed("card", ZHANG_CARD)
    assert rig.decisions()[-1]["reasons"] == ["quota_exceeded"]


def test_learn_joins_the_callers_transaction_and_never_commits_it(tmp_path: Path) -> None:
    rig = Rig(tmp_path)
    peer = Peer(rig)
    rig.conn.execute("BEGIN IMMEDIATE")
    learn(rig.conn, peer.grant("out"))
    learn(rig.conn, peer.grant("in"))
    assert rig.conn.in_transaction
    rig.conn.execute("ROLLBACK")
    assert rig.conn.execute("SELECT COUNT(*) FROM site_quota_use").fetchone()[0] == 0
    learn(rig.conn, peer.grant("out"))  # no transaction open: one of its own
    assert not rig.conn.in_transaction
    assert rig.conn.execute("SELECT COUNT(*) FROM site_quota_use").fetchone()[0] == 1


# -- one-time passes -----------------------------------------------------------------------


def test_a_one_time_pass_used_at_a_peer_is_replayed_here(tmp_path: Path) -> None:
    rig = Rig(tmp_path)
    token = rig.issue(sub="V1", hh="H9", otp=True, jti="visit-1")
    learn(
        rig.conn,
        Peer(rig).grant(
            "in", {"id": "V1", "household": "H9"}, Credential.qr("visit-1", "green", True)
        ),
    )
    decision = present_pass(rig, token)
    assert (decision["decision"], decision["reasons"]) == ("denied", ["pass_replayed"])


def test_a_one_time_pass_shown_with_a_card_at_a_peer_is_replayed_here(tmp_path: Path) -> None:
    rig = Rig(tmp_path, policy={"credentials": "card_and_qr"})
    token = rig.issue(sub="P1", hh="H1", otp=True, jti="once-1")
    learn(
        rig.conn, Peer(rig).grant("in", zhang(), Credential.card("AB12", "green", "once-1", True))
    )
    rig.feed("temp", 36.6)
    rig.feed("card", ZHANG_CARD)
    rig.feed("qr", token)
    assert rig.decisions()[-1]["reasons"] == ["pass_replayed"]


def test_a_pass_a_peer_did_not_mark_one_time_is_not_used_up(tmp_path: Path) -> None:
    rig = Rig(tmp_path)
    token = rig.issue(sub="V1", hh="H9", jti="season-1")
    learn(rig.conn, Peer(rig).grant("in", {"id": "V1"}, Credential.qr("season-1", "green")))
    assert present_pass(rig, token)["decision"] == "granted"


def test_this_gates_decisions_say_when_the_pass_is_one_time(tmp_path: Path) -> None:
    rig = Rig(tmp_path)
    once = present_pass(rig, rig.issue(sub="V1", hh="H9", otp=True, jti="visit-2"))
    season = present_pass(rig, rig.issue(sub="V2", hh="H8", jti="season-2"))
    assert once["credential"] == {"kind": "qr", "ref": "visit-2", "color": "green", "otp": True}
    assert season["credential"] == {"kind": "qr", "ref": "season-2", "color": "green"}
    both = Rig(tmp_path / "both", policy={"credentials": "card_and_qr"})
    both.feed("temp", 36.6)
    both.feed("card", ZHANG_CARD)
    both.feed("qr", both.issue(sub="P1", hh="H1", otp=True, jti="visit-3"))
    cred = both.decisions()[-1]["credential"]
    assert (cred["pass"], cred["otp"]) == ("visit-3", True)


def test_a_second_gate_learning_this_gates_decision_refuses_the_pass_again(
    tmp_path: Path,
) -> None:
    here = Rig(tmp_path / "here")
    shutil.copytree(here.key_dir, tmp_path / "there" / "keys")  # the same issuer's key
    there = Rig(tmp_path / "there")
    token = here.issue(sub="V1", hh="H9", otp=True)
    assert present_pass(here, token)["decision"] == "granted"
    # What the broker carries: the stored body of this gate's decision, as a peer parses it.
    (stored,) = [e for e in here.stored() if e["kind"] == "decision"]
    learn(there.conn, parse_event(reduce_event(stored, "none")))
    assert present_pass(there, token)["reasons"] == ["pass_replayed"]


# -- anti-passback with an in-gate and an out-gate ------------------------------------------


def test_in_here_out_at_the_peer_in_here_again_is_granted_and_names_the_peer_event(
    tmp_path: Path,
) -> None:
    rig = Rig(tmp_path, policy=HARD)
    assert present_card(rig)["decision"] == "granted"  # in here
    rig.wait(600)
    exit_event = Peer(rig).grant("out", ago_s=60)  # out at the out-gate
    learn(rig.conn, exit_event)
    rig.wait(600)
    again = present_card(rig)
    assert (again["decision"], again["reasons"]) == ("granted", [])
    assert again["relied_on"] == {"gate": PEER, "seq": exit_event.seq, "id": exit_event.id}
    # The grant is the newest passage now: a third entry is refused again.
    third = present_card(rig)
    assert (third["decision"], third["reasons"]) == ("denied", ["antipassback"])
    assert "relied_on" not in third


def test_without_the_peers_exit_a_second_entry_is_refused(tmp_path: Path) -> None:
    rig = Rig(tmp_path, policy=HARD)
    present_card(rig)
    learn(rig.conn, Peer(rig).grant("out", ago_s=3600))  # an exit before this entry
    again = present_card(rig)
    assert (again["decision"], again["reasons"]) == ("denied", ["antipassback"])
    assert "relied_on" not in again


def test_a_peers_entry_after_the_peers_exit_refuses_an_entry_here(tmp_path: Path) -> None:
    rig = Rig(tmp_path, policy=HARD)
    present_card(rig)
    rig.wait(600)
    peer = Peer(rig)
    learn(rig.conn, peer.grant("out", ago_s=300))
    learn(rig.conn, Peer(rig, "south-1").grant("in", ago_s=100))  # in again at another in-gate
    learn(rig.conn, peer.grant("out", ago_s=400, seq=50))  # an older exit, learned late
    assert present_card(rig)["reasons"] == ["antipassback"]


def test_a_peers_entry_refuses_a_first_entry_here(tmp_path: Path) -> None:
    rig = Rig(tmp_path, policy=HARD)
    learn(rig.conn, Peer(rig).grant("in"))
    assert present_card(rig)["reasons"] == ["antipassback"]


def test_a_peers_exit_stamped_in_the_future_lifts_nothing(tmp_path: Path) -> None:
    rig = Rig(tmp_path, policy=HARD)
    present_card(rig)
    learn(rig.conn, Peer(rig).grant("out", ago_s=-3600))
    assert present_card(rig)["reasons"] == ["antipassback"]


def test_a_peers_exit_under_soft_antipassback_is_named_too(tmp_path: Path) -> None:
    rig = Rig(tmp_path, policy={"antipassback": "soft"})
    present_card(rig)
    rig.wait(60)
    exit_event = Peer(rig).grant("out", ago_s=30)
    learn(rig.conn, exit_event)
    again = present_card(rig)
    assert (again["decision"], again["reasons"]) == ("granted", [])
    assert again["relied_on"]["id"] == exit_event.id


# -- what a peer event can do at worst ---------------------------------------------------


def _peer_events(rig: Rig) -> list[Event]:
    """Every shape of peer decision a forger could send about Zhang Wei (or nobody)."""
    peer = Peer(rig, "forged-1")
    events: list[Event] = []
    people = [zhang(), zhang(id="P7"), zhang(household="H2"), {"id": "P1"}, {"household": "H1"}]
    shapes = itertools.product(
        ("granted", "guard_granted", "denied", "needs_guard"),
        ("in", "out", "both"),
        people,
        (False, True),  # free
        (-3600.0, 1.0, 7200.0),  # ago_s: from the future, just now, before this gate's entry
    )
    for decision, direction, person, free, ago_s in shapes:
        events.append(peer.grant(direction, person, decision=decision, free=free, ago_s=ago_s))
    events.append(peer.grant("in", zhang(), Credential.qr("visit-9", "green", True)))
    return events


@pytest.mark.parametrize("policy", [HARD, QUOTA_OUT | HARD, {"antipassback": "soft"}])
@pytest.mark.parametrize("entered", [False, True])
def test_a_peer_event_never_turns_a_denial_into_a_grant_but_the_documented_exit(
    tmp_path: Path, policy: dict[str, Any], entered: bool
) -> None:
    rig = Rig(tmp_path, policy=policy)
    if entered:
        present_card(rig)  # the person's last passage here: in
    rig.wait(3600)
    finder, conn = rig.controller.finder, rig.conn

    def verdict(direction: str) -> tuple[Verdict, PeerRef | None]:
        now = rig.clock.monotonic()
        s = Session(now, now, direction, readings=[36.6], card=ZHANG_CARD)
        facts = finder.facts(s, "normal", False)
        return decide(facts, rig.controller.policy), facts.history.relied_on

    lifts = 0
    for event, direction in itertools.product(_peer_events(rig), ("in", "out")):
        before, _ = verdict(direction)
        conn.execute("SAVEPOINT forged")
        try:
            learn(conn, event)
            after, relied_on = verdict(direction)
        finally:
            conn.execute("ROLLBACK TO forged")
            conn.execute("RELEASE forged")
        lifted = set(before.reasons) - set(after.reasons)
        case = (direction, event.body(), before, after)
        if relied_on is not None:
            assert relied_on.id == event.id and lifted <= {"antipassback"}, case
            assert entered and event.direction == {"in": "out", "out": "in"}[direction], case
            lifts += bool(lifted)
        else:
            assert not lifted and (after.granted <= before.granted), case
    # The exception is there to be seen: the person went in here, a peer says out.
    assert (lifts > 0) == entered, lifts


# -- privacy: what crosses under every pii setting ---------------------------------------------


@pytest.mark.parametrize("pii", ["full", "masked", "none"])
def test_every_pii_setting_carries_what_the_peers_learn(tmp_path: Path, pii: str) -> None:
    rig = Rig(tmp_path, policy={**HARD, **QUOTA_OUT})
    peer = Peer(rig)
    exit_body = peer.grant("out", ago_s=10).body()
    card_pass = peer.grant("in", zhang(), Credential.card("0A1B2C3D4E", "green", "once-2", True))
    qr_pass = peer.grant(
        "in",
        {"id": "V1", "household": "H9", "name": "Wang Fang"},
        Credential.qr("visit-4", "green", True),
    )
    for body in (exit_body, card_pass.body(), qr_pass.body()):
        sent = reduce_event(body, pii)
        if pii == "none":
            assert sent["person"] == {
                "id": body["person"]["id"],
                "household": body["person"]["household"],
                "category": body["person"].get("category"),
            }
            assert sent["temperature_c"] is None and sent["readings_c"] is None
        if pii != "full" and sent["credential"]["kind"] == "card":
            assert sent["credential"]["ref"] != "0A1B2C3D4E"  # the uid stays masked
        learn(rig.conn, parse_event(sent))
    rows = rig.conn.execute(
        "SELECT household, direction FROM site_quota_use ORDER BY seq"
    ).fetchall()
    assert rows == [("H1", "out"), ("H1", "in"), ("H9", "in")]
    uses = rig.conn.execute("SELECT jti FROM site_pass_uses ORDER BY jti").fetchall()
    assert uses == [("once-2",), ("visit-4",)]
    presence = rig.conn.execute("SELECT person_id, direction FROM site_presence ORDER BY 1")
    assert presence.fetchall() == [("P1", "in"), ("V1", "in")]


def test_with_pii_none_no_name_or_id_number_crosses(tmp_path: Path) -> None:
    rig = Rig(tmp_path)
    body = Peer(rig).grant("out").body()
    text = str(reduce_event(body, "none"))
    for secret in ("Zhang Wei", "320623199001011234", "1-101", "99AA"):
        assert secret not in text


# -- revocations ------------------------------------------------------------------------------

#: Zhang's second card (another last 4) and a third whose last 4 are his first card's.
SECOND_CARD, LOOKALIKE = "5566778899", "FFFFFF3D4E"


def with_more_cards(rig: Rig) -> None:
    rig.registry.apply([], {SECOND_CARD: "P1", LOOKALIKE: "P1"}, "2026-01-01T00:00:00Z")


def card_reasons(rig: Rig, uid: str) -> list[str]:
    rig.feed("temp", 36.6)
    rig.feed("card", uid)
    rig.wait(10)  # past the open window
    return list(rig.decisions()[-1]["reasons"])


@pytest.mark.parametrize("pii", ["masked", "none"])
def test_a_card_revoked_at_a_peer_is_revoked_here_by_its_masked_uid(
    tmp_path: Path, pii: str
) -> None:
    rig = Rig(tmp_path)
    with_more_cards(rig)
    sent = reduce_event(Peer(rig).revoke("card", ZHANG_CARD, "P1", ago_s=30).body(), pii)
    assert sent["ref"] == "******3D4E"
    learn(rig.conn, parse_event(sent))
    assert card_reasons(rig, ZHANG_CARD) == ["card_revoked"]
    # the mask cannot tell his two cards ending 3D4E apart: both go; a peer only denies
    assert card_reasons(rig, LOOKALIKE) == ["card_revoked"]
    assert card_reasons(rig, SECOND_CARD) == []  # his card with other last 4 still works
    assert "card_revoked" not in card_reasons(rig, "1122334455")  # nor anybody else's
    when = rig.conn.execute("SELECT revoked_at FROM cards WHERE uid = ?", (ZHANG_CARD,))
    assert when.fetchone()[0] == sent["ts"]  # revoked as of the peer's revocation


def test_a_full_uid_from_a_peer_revokes_exactly_that_card(tmp_path: Path) -> None:
    rig = Rig(tmp_path)
    with_more_cards(rig)
    learn(rig.conn, parse_event(Peer(rig).revoke("card", ZHANG_CARD, "P1").body()))
    assert card_reasons(rig, ZHANG_CARD) == ["card_revoked"]
    assert card_reasons(rig, LOOKALIKE) == []


def test_a_masked_uid_of_another_person_or_of_nobody_revokes_nothing(tmp_path: Path) -> None:
    rig = Rig(tmp_path)
    peer = Peer(rig)
    for person in ("P2", None):
        learn(
            rig.conn,
            parse_event(reduce_event(peer.revoke("card", ZHANG_CARD, person).body(), "masked")),
        )
    assert card_reasons(rig, ZHANG_CARD) == []


def test_a_pass_revoked_at_a_peer_is_refused_here(tmp_path: Path) -> None:
    rig = Rig(tmp_path)
    token = rig.issue(sub="V1", hh="H9", jti="season-9")
    other = rig.issue(sub="V1", hh="H9", jti="season-10")
    learn(
        rig.conn,
        parse_event(reduce_event(Peer(rig).revoke("pass", "season-9", None).body(), "none")),
    )
    assert present_pass(rig, token)["reasons"] == ["pass_revoked"]
    rig.wait(10)
    assert present_pass(rig, other)["decision"] == "granted"


def test_a_person_revoked_at_a_peer_has_every_card_and_pass_refused_here(tmp_path: Path) -> None:
    rig = Rig(tmp_path)
    with_more_cards(rig)
    token = rig.issue(sub="P1", hh="H1")
    learn(
        rig.conn, parse_event(reduce_event(Peer(rig).revoke("person", "P1", "P1").body(), "none"))
    )
    for uid in (ZHANG_CARD, SECOND_CARD, LOOKALIKE):
        assert card_reasons(rig, uid) == ["card_revoked"]
    assert present_pass(rig, token)["reasons"] == ["pass_revoked"]
    rig.wait(10)
    assert "card_revoked" not in card_reasons(rig, "1122334455")  # Li Na is not touched


def test_the_same_revoke_learned_twice_is_harmless_and_nothing_is_unrevoked(
    tmp_path: Path,
) -> None:
    rig = Rig(tmp_path)
    peer = Peer(rig)
    events = [
        parse_event(reduce_event(peer.revoke(what, ref, who, ago_s=60).body(), "masked"))
        for what, ref, who in (
            ("card", ZHANG_CARD, "P1"),
            ("pass", "j1", None),
            ("person", "P2", "P2"),
        )
    ]
    tables = (
        "SELECT uid, revoked_at FROM cards UNION ALL SELECT jti, revoked_at FROM revoked_passes"
        " UNION ALL SELECT person, revoked_at FROM revoked_persons ORDER BY 1"
    )
    for event in events:
        learn(rig.conn, event)
    first = rig.conn.execute(tables).fetchall()
    rig.clock.advance(3600)
    for event in events:
        learn(rig.conn, event)  # a replay, a redelivery
    later = [
        peer.revoke(what, ref, who)
        for what, ref, who in (("card", ZHANG_CARD, "P1"), ("person", "P2", "P2"))
    ]
    for event in later:
        learn(rig.conn, event)  # a later revoke of the same keeps the first revocation's time
    assert rig.conn.execute(tables).fetchall() == first
    assert {when for _, when in first} == {events[0].ts}


def test_this_gates_revoke_teaches_a_second_gate(tmp_path: Path) -> None:
    here = Rig(tmp_path / "here")
    here.controller._record(Revoke.of("card", ZHANG_CARD, "P1", "mqtt:central"))
    (event,) = [e for e in here.stored() if e["kind"] == "revoke"]
    there = Rig(tmp_path / "there")
    learn(there.conn, parse_event(reduce_event(event, "masked")))
    assert card_reasons(there, ZHANG_CARD) == ["card_revoked"]


# -- retention -------------------------------------------------------------------------------


def test_what_peers_taught_is_purged_like_the_gates_own(tmp_path: Path) -> None:
    rig = Rig(tmp_path)
    peer = Peer(rig)
    day = DAY_S
    learn(rig.conn, peer.grant("out", ago_s=4 * day))  # older than the 72 h window and 2 days
    learn(rig.conn, peer.grant("out", zhang(id="P7"), ago_s=1 * day))
    learn(
        rig.conn,
        peer.grant("in", {"id": "V1"}, Credential.qr("old", "green", True), ago_s=400 * day),
    )
    learn(
        rig.conn,
        peer.grant("in", {"id": "V2"}, Credential.qr("new", "green", True), ago_s=300 * day),
    )
    retention = Retention(rig.conn, rig.clock, retention_days=2, quota_window_h=72)
    plan = purge_now(retention, rig.controller._record)
    assert plan is not None
    assert (plan.site_quota_use, plan.site_pass_uses) == (1, 1)
    assert rig.conn.execute("SELECT COUNT(*) FROM site_quota_use").fetchone()[0] == 1
    assert rig.conn.execute("SELECT jti FROM site_pass_uses").fetchall() == [("new",)]
    # Presence is state, as the gate's own: the person's last passage stays known.
    assert rig.conn.execute("SELECT COUNT(*) FROM site_presence").fetchone()[0] == 4
    purge = [e for e in rig.events if e["kind"] == "purge"][-1]
    assert (purge["site_quota_use"], purge["site_pass_uses"]) == (1, 1)


def test_a_grant_here_while_passage_is_free_says_so_and_teaches_peers_nothing(
    tmp_path: Path,
) -> None:
    rig = Rig(tmp_path, gate={"direction": "out"}, policy={**QUOTA_OUT, **HARD})
    rig.controller.desk.set_mode("free", "test")
    rig.feed("card", ZHANG_CARD)
    rig.controller.desk.set_mode("normal", "test")
    rig.feed("fire", True)
    rig.feed("card", ZHANG_CARD)
    rig.feed("fire", False)
    free, fire = rig.decisions()
    assert (free["decision"], free["free"]) == ("granted", True)
    assert (fire["reasons"], fire["free"]) == (["fire_release"], True)
    peer = Rig(tmp_path / "peer", gate={"direction": "out"}, policy={**QUOTA_OUT, **HARD})
    for body in rig.stored():
        learn(peer.conn, parse_event(reduce_event(body, "none")))
    assert peer.conn.execute("SELECT COUNT(*) FROM site_quota_use").fetchone()[0] == 0
    assert peer.conn.execute("SELECT COUNT(*) FROM site_presence").fetchone()[0] == 0
    assert present_card(peer)["decision"] == "granted"
