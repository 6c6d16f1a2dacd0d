"""The lamps and buzzer follow the verdict: what the controller asks the turnstile to show."""

from __future__ import annotations

from pathlib import Path

from tests.support.rig import Rig


def test_a_grant_shows_granted(rig: Rig) -> None:
    rig.feed("temp", 36.5)
    rig.feed("card", "0A1B2C3D4E")
    assert rig.decisions()[-1]["decision"] == "granted"
    assert rig.turnstile.signals == ["granted"]


def test_a_denial_shows_denied(rig: Rig) -> None:
    rig.feed("temp", 36.6)
    rig.feed("card", "FF00FF00FF")
    assert rig.decisions()[-1]["reasons"] == ["unknown_card"]
    assert rig.turnstile.signals == ["denied"]


def test_fever_shows_denied(rig: Rig) -> None:
    rig.feed("temp", 38.1)
    rig.feed("temp", 38.0)
    rig.feed("card", "0A1B2C3D4E")
    assert rig.decisions()[-1]["reasons"] == ["fever"]
    assert rig.turnstile.signals == ["denied"]


def test_a_garbage_pass_shows_denied(rig: Rig) -> None:
    rig.feed("temp", 36.6)
    rig.feed("qr", "https://example.com/x")
    assert rig.decisions()[-1]["reasons"] == ["pass_invalid"]
    assert rig.turnstile.signals == ["denied"]


def test_a_session_that_times_out_shows_denied(rig: Rig) -> None:
    rig.feed("temp", 36.6)
    rig.wait(15.0)
    assert rig.decisions()[-1]["reasons"] == ["credential_missing"]
    assert rig.turnstile.signals == ["denied"]


def test_needs_guard_shows_guard_then_the_guards_answer(rig: Rig) -> None:
    rig.controller.desk.guard_on("G7")
    rig.feed("temp", 36.6)
    rig.feed("card", "1122334455")  # a yellow resident: the guard decides
    first = rig.decisions()[-1]
    assert first["decision"] == "needs_guard"
    assert rig.turnstile.signals == ["guard"]
    rig.controller.desk.decide(first["id"], True, "G7")
    assert rig.turnstile.signals == ["guard", "granted"]
    rig.feed("passage", True)
    rig.feed("temp", 36.6, after=5.0)
    rig.feed("card", "1122334455")
    second = rig.decisions()[-1]
    rig.controller.desk.decide(second["id"], False, "G7")
    assert rig.turnstile.signals == ["guard", "granted", "guard", "denied"]


def test_a_guard_timeout_shows_denied(rig: Rig) -> None:
    rig.feed("temp", 36.6)
    rig.feed("card", "1122334455")
    rig.wait(60.0)
    assert rig.decisions()[-1]["reasons"] == ["guard_timeout"]
    assert rig.turnstile.signals == ["guard", "denied"]


def test_locked_mode_shows_denied(tmp_path: Path) -> None:
    rig = Rig(tmp_path)
    try:
        rig.controller.desk.set_mode("locked", "central")
        rig.feed("card", "0A1B2C3D4E")
        assert rig.decisions()[-1]["reasons"] == ["gate_locked"]
        assert rig.turnstile.signals == ["denied"]
    finally:
        rig.conn.close()


def test_guard_only_mode_shows_guard(tmp_path: Path) -> None:
    rig = Rig(tmp_path)
    try:
        rig.controller.desk.set_mode("guard_only", "central")
        rig.feed("temp", 36.5)
        rig.feed("card", "0A1B2C3D4E")
        assert rig.decisions()[-1]["decision"] == "needs_guard"
        assert rig.turnstile.signals == ["guard"]
    finally:
        rig.conn.close()


def test_motion_alone_shows_nothing(rig: Rig) -> None:
    rig.feed("motion")
    rig.wait(60.0)
    assert rig.decisions() == []
    assert rig.turnstile.signals == []
