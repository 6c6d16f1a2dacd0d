"""The guard desk enforces every operator rule itself, whoever calls it (screen, MQTT, demo)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.support.rig import Rig

LI_CARD = "1122334455"  # yellow: a guard's call
ZHANG_CARD = "0A1B2C3D4E"


def missing_temperature(rig: Rig) -> dict[str, Any]:
    """A card and no temperature in guard-only mode: a pending ``temp_missing`` verdict."""
    rig.controller.desk.set_mode("guard_only", "G1")
    rig.feed("card", ZHANG_CARD)
    rig.wait(16)  # the session times out without a temperature
    (pending,) = [d for d in rig.decisions() if d["decision"] == "needs_guard"]
    assert "temp_missing" in pending["reasons"]
    return pending


def fever_denial(rig: Rig) -> dict[str, Any]:
    rig.feed("temp", 38.2)
    rig.feed("temp", 38.1)
    rig.feed("card", ZHANG_CARD)
    (denial,) = rig.decisions()
    assert denial["reasons"] == ["fever"]
    assert rig.controller.desk.question(denial["id"]) == "recheck"
    return denial


def test_a_missing_temperature_needs_a_clinical_reading_to_grant(rig: Rig) -> None:
    desk = rig.controller.desk
    pending = missing_temperature(rig)
    before = len(rig.events)
    with pytest.raises(ValueError, match="clinical reading"):
        desk.decide(pending["id"], True, "G1")
    with pytest.raises(ValueError, match="fever"):
        desk.decide(pending["id"], True, "G1", confirm_temp_c=desk.policy.fever_c)
    # Refused: nothing recorded, the turnstile still locked, the question still open.
    assert len(rig.events) == before and rig.turnstile.state != "open"
    assert desk.question(pending["id"]) == "pending"
    granted = desk.decide(pending["id"], True, "G1", confirm_temp_c=36.8)
    assert granted["decision"] == "guard_granted" and granted["confirm_temp_c"] == 36.8
    assert granted["ref"] == pending["id"] and rig.turnstile.state == "open"
    assert desk.question(pending["id"]) is None


def test_a_clinical_reading_at_fever_c_never_grants_a_pending_verdict(rig: Rig) -> None:
    """A yellow card with a normal reading of the gate's own waits for the guard; should the
    guard take a clinical reading too and it is a fever, the grant is refused."""
    desk = rig.controller.desk
    rig.feed("temp", 36.6)
    rig.feed("card", LI_CARD)
    (pending,) = [d for d in rig.decisions() if d["decision"] == "needs_guard"]
    assert pending["temperature_c"] == 36.6
    before = len(rig.events)
    with pytest.raises(ValueError, match="fever"):
        desk.decide(pending["id"], True, "G1", confirm_temp_c=desk.policy.fever_c + 0.3)
    assert len(rig.events) == before and rig.turnstile.state != "open"
    assert desk.question(pending["id"]) == "pending"
    granted = desk.decide(pending["id"], True, "G1", confirm_temp_c=36.7)
    assert granted["decision"] == "guard_granted" and rig.turnstile.state == "open"


def test_a_missing_temperature_may_be_refused_without_a_reading(rig: Rig) -> None:
    desk = rig.controller.desk
    pending = missing_temperature(rig)
    denied = desk.decide(pending["id"], False, "G1")
    assert denied["decision"] == "guard_denied" and "confirm_temp_c" not in denied


def test_a_clinical_reading_at_fever_c_denies_a_fever_recheck(rig: Rig) -> None:
    desk = rig.controller.desk
    denial = fever_denial(rig)
    answer = desk.decide(denial["id"], True, "G1", confirm_temp_c=desk.policy.fever_c)
    assert answer["decision"] == "guard_denied" and answer["ref"] == denial["id"]
    assert answer["confirm_temp_c"] == desk.policy.fever_c
    assert rig.turnstile.state != "open"
    with pytest.raises(KeyError):  # once per fever denial
        desk.decide(denial["id"], True, "G1", confirm_temp_c=36.6)


def test_a_fever_recheck_looks_the_facts_up_again(rig: Rig) -> None:
    desk = rig.controller.desk
    denial = fever_denial(rig)
    with pytest.raises(ValueError, match="clinical reading"):
        desk.decide(denial["id"], True, "G1")  # a grant after a fever needs the reading
    # Since the denial the card was revoked: a normal reading does not let the person in.
    assert rig.registry.revoke_card(ZHANG_CARD, "2026-02-02T03:00:00Z")
    with pytest.raises(ValueError, match="still denied: card_revoked"):
        desk.decide(denial["id"], True, "G1", confirm_temp_c=36.7)
    assert [d["decision"] for d in rig.decisions()] == ["denied"]
    assert desk.question(denial["id"]) == "recheck"  # still open for the guard's "no"
    assert desk.decide(denial["id"], False, "G1")["decision"] == "guard_denied"


def test_a_fever_recheck_with_a_normal_reading_grants_once(rig: Rig) -> None:
    desk = rig.controller.desk
    denial = fever_denial(rig)
    granted = desk.decide(denial["id"], True, "G1", confirm_temp_c=36.7)
    assert granted["decision"] == "guard_granted" and rig.turnstile.state == "open"
    assert desk.question(denial["id"]) is None


def test_a_locked_gate_refuses_open_once(rig: Rig) -> None:
    desk = rig.controller.desk
    desk.set_mode("locked", "G1")
    before = len(rig.events)
    with pytest.raises(PermissionError, match="locked"):
        desk.open_once("G1", guard="G1")
    assert len(rig.events) == before and rig.turnstile.state != "open"
    desk.set_mode("normal", "G1")
    opened = desk.open_once("G1", guard="G1")
    assert opened["credential"] == {"kind": "remote", "ref": "G1", "color": None}
    assert rig.turnstile.state == "open"


def test_an_unknown_mode_is_refused(rig: Rig) -> None:
    with pytest.raises(ValueError, match="unknown mode"):
        rig.controller.desk.set_mode("party", "G1")
    assert rig.events == [] and rig.controller.mode == "normal"


def test_an_unknown_or_answered_event_is_a_key_error(rig: Rig) -> None:
    desk = rig.controller.desk
    with pytest.raises(KeyError):
        desk.decide("no-such-event", True, "G1")
    desk.guard_on("G1")
    rig.feed("temp", 36.6)
    rig.feed("card", LI_CARD)
    pending = rig.decisions()[-1]
    assert desk.decide(pending["id"], True, "G1")["decision"] == "guard_granted"
    with pytest.raises(KeyError):
        desk.decide(pending["id"], False, "G1")


def test_a_pending_verdict_nobody_answers_is_denied(rig: Rig) -> None:
    desk = rig.controller.desk
    rig.feed("temp", 36.6)
    rig.feed("card", LI_CARD)
    pending = rig.decisions()[-1]
    alarms = [e["alarm"] for e in rig.events if e["kind"] == "alarm"]
    assert alarms == ["unattended"]  # nobody on duty
    rig.wait(desk.policy.guard_timeout_s)
    timeout = rig.decisions()[-1]
    assert (timeout["decision"], timeout["reasons"]) == ("denied", ["guard_timeout"])
    assert timeout["ref"] == pending["id"] and desk.question(pending["id"]) is None


def test_a_second_login_of_the_same_guard_starts_no_shift(rig: Rig) -> None:
    desk = rig.controller.desk
    assert desk.log_in("G1") is not None
    assert desk.log_in("G1") is None
    assert [e["kind"] for e in rig.events] == ["guard_on"]
    assert desk.snapshot()["guards_on_duty"] == ["G1"]


def test_the_shifts_a_restart_cut_short_end_when_the_desk_is_made(tmp_path: Path) -> None:
    rig = Rig(tmp_path)
    desk = rig.controller.desk
    desk.guard_on("G1")
    desk.guard_on("G2")
    desk.guard_off("G2")
    rig.conn.close()
    again = Rig(tmp_path)  # before any action: made with its controller
    ended = [e for e in again.stored() if e.get("detail") == "restart"]
    assert [(e["kind"], e["guard"]) for e in ended] == [("guard_off", "G1")]
    assert ended[0]["seq"] == again.ledger.last_seq()  # the last event: nothing ran before it
    assert again.ledger.open_shifts() == []
    assert again.controller.desk.snapshot()["guards_on_duty"] == []
    again.conn.close()
    third = Rig(tmp_path)  # nobody on duty now: nothing more to end
    assert len([e for e in third.stored() if e.get("detail") == "restart"]) == 1
    third.conn.close()
