"""The verdict rules through the controller: the look-ups and clocks that feed the policy."""

from __future__ import annotations

from pathlib import Path

import pytest

from gated.registry import Person
from tests.support.rig import ZHANG, Rig


def reasons(rig: Rig) -> list[list[str]]:
    return [d["reasons"] for d in rig.decisions()]


def test_only_invalid_readings_time_out_as_temp_invalid(rig: Rig) -> None:
    rig.feed("temp", 29.0)
    rig.feed("card", "0A1B2C3D4E")
    assert rig.decisions() == []  # still waiting for a valid temperature
    rig.wait(15.0)
    assert reasons(rig) == [["temp_invalid", "temp_missing"]]
    assert rig.decisions()[0]["readings_c"] == [29.0]


def test_card_and_pass_of_two_people_is_a_person_mismatch(tmp_path: Path) -> None:
    rig = Rig(tmp_path, policy={"credentials": "card_and_qr"})
    rig.feed("temp", 36.6)
    rig.feed("card", "0A1B2C3D4E")
    rig.feed("qr", rig.issue(sub="P2", hh="H2"))
    assert reasons(rig) == [["person_mismatch"]]
    assert rig.turnstile.history == []


def test_a_colour_mapped_to_deny_is_denied(tmp_path: Path) -> None:
    rig = Rig(tmp_path, policy={"colors": {"green": "allow", "yellow": "deny"}})
    rig.feed("temp", 36.6)
    rig.feed("card", "1122334455")
    assert reasons(rig) == [["color_denied"]]


def test_a_registered_persons_pass_keeps_their_schedule_in_the_gates_time_zone(
    tmp_path: Path,
) -> None:
    # The fake clock starts on Monday 2026-02-02 at 10:40 in Asia/Shanghai (02:40 UTC).
    evenings = [{"category": "resident", "start": "18:00", "end": "23:00"}]
    mornings = [{"category": "resident", "start": "10:00", "end": "11:00"}]
    late = Rig(tmp_path / "late", policy={"schedule": evenings})
    late.feed("temp", 36.6)
    late.feed("qr", late.issue(sub="P1"))
    assert reasons(late) == [["outside_schedule"]]
    early = Rig(tmp_path / "early", policy={"schedule": mornings})
    early.feed("temp", 36.6)
    early.feed("qr", early.issue(sub="P1"))
    assert early.decisions()[0]["decision"] == "granted"
    assert early.decisions()[0]["person"]["name"] == ZHANG.name  # the registry's entry


def test_the_pass_of_a_person_made_inactive_is_refused(rig: Rig) -> None:
    token = rig.issue(sub="P1")
    rig.registry.apply([Person(**{**ZHANG.__dict__, "active": False})], {}, "2026-02-02")
    rig.feed("temp", 36.6)
    rig.feed("qr", token)
    assert reasons(rig) == [["pass_revoked"]]


def test_soft_antipassback_grants_and_names_it(tmp_path: Path) -> None:
    rig = Rig(tmp_path, policy={"antipassback": "soft"})
    for _ in range(2):
        rig.feed("temp", 36.6)
        rig.feed("card", "0A1B2C3D4E")
        rig.feed("passage", True)
    assert reasons(rig) == [[], ["antipassback"]]
    assert [d["decision"] for d in rig.decisions()] == ["granted", "granted"]


def test_pass_times_and_gates_are_checked_against_the_gate(rig: Rig) -> None:
    expired = rig.issue(valid_s=60)
    early = rig.issue(nbf=rig.clock.time() + 3600)
    elsewhere = rig.issue(gates=["g2"])
    here = rig.issue(gates=["g1"])
    rig.wait(60 + 121)  # past exp by more than the allowed clock skew
    for token in (expired, early, elsewhere, here):
        rig.feed("temp", 36.6)
        rig.feed("qr", token)
        rig.feed("passage", True)
    assert reasons(rig) == [["pass_expired"], ["pass_not_yet_valid"], ["pass_wrong_gate"], []]


def test_an_evacuation_uses_up_no_quota_and_no_antipassback(tmp_path: Path) -> None:
    quota = {"max": 1, "window_h": 72, "direction": "in"}
    rig = Rig(tmp_path, policy={"household_quota": quota, "antipassback": "hard"})
    rig.feed("fire", True)
    rig.feed("card", "0A1B2C3D4E")
    rig.feed("passage", True)
    rig.feed("fire", False)
    rig.feed("temp", 36.6)
    rig.feed("card", "0A1B2C3D4E")
    assert reasons(rig) == [["fire_release"], []]
    assert rig.decisions()[-1]["decision"] == "granted"


def test_a_fever_is_announced_once(rig: Rig) -> None:
    rig.feed("temp", 38.2)
    rig.feed("temp", 38.1)
    rig.feed("card", "0A1B2C3D4E")
    assert reasons(rig) == [["fever"]]
    assert rig.prompter.played.count("fever") == 1
    assert rig.prompter.played[-1] == "fever"


def test_a_fever_recheck_looks_the_pass_up_again(rig: Rig) -> None:
    token = rig.issue(sub="V1", hh="H9", otp=True)
    rig.feed("temp", 38.2)
    rig.feed("temp", 38.1)
    rig.feed("qr", token)
    (denial,) = rig.decisions()
    assert denial["reasons"] == ["fever"] and denial["id"] in rig.controller.desk.fever_checks
    # Measured again, normal: the one-time pass is used by a second session.
    rig.feed("temp", 36.6)
    rig.feed("qr", token)
    rig.feed("passage", True)
    assert rig.decisions()[-1]["decision"] == "granted"
    with pytest.raises(ValueError, match="pass_replayed"):
        rig.controller.desk.decide(denial["id"], True, "G1", confirm_temp_c=36.7)
    assert [e["decision"] for e in rig.decisions()] == ["denied", "granted"]


def test_a_registered_pass_holder_uses_the_registry_households_quota(tmp_path: Path) -> None:
    quota = {"max": 1, "window_h": 72, "direction": "in"}
    rig = Rig(tmp_path, policy={"household_quota": quota})
    rig.feed("temp", 36.6)
    rig.feed("card", "0A1B2C3D4E")  # P1 of household H1
    rig.feed("passage", True)
    rig.feed("temp", 36.6)
    rig.feed("qr", rig.issue(sub="P1", hh="OTHER"))  # the pass names another household
    assert reasons(rig) == [[], ["quota_exceeded"]]
