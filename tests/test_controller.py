"""The controller end to end on a real SQLite file: verdicts, alarms, guard, turnstile."""

from __future__ import annotations

from pathlib import Path

from drivers.common.base import DeviceHealth, Reading
from tests.support.rig import Rig


def test_a_resident_is_granted_the_turnstile_opens_and_the_passage_is_recorded(rig: Rig) -> None:
    rig.feed("motion")
    rig.feed("temp", 36.5)
    assert rig.turnstile.state == "locked"
    rig.feed("card", "0A1B2C3D4E")
    (decision,) = rig.decisions()
    assert decision["decision"] == "granted" and decision["person"]["id"] == "P1"
    assert rig.turnstile.state == "open"
    assert rig.prompter.played == ["welcome", "measure_temp", "show_pass", "granted"]
    rig.feed("passage", True, after=1.0)
    passage = rig.events[-1]
    assert passage["kind"] == "passage" and passage["ref"] == decision["id"] and passage["passed"]
    assert rig.turnstile.state == "locked"
    assert [e["seq"] for e in rig.stored()] == [1, 2]


def test_the_decision_is_committed_before_the_turnstile_moves(rig: Rig) -> None:
    seen: list[tuple[str, int]] = []
    original_open = rig.turnstile.open

    def open_and_look(seconds: float) -> None:
        seen.append(("open", len(rig.stored())))
        original_open(seconds)

    rig.turnstile.open = open_and_look  # type: ignore[method-assign]
    rig.feed("temp", 36.5)
    rig.feed("card", "0A1B2C3D4E")
    assert seen == [("open", 1)]


def test_a_granted_person_who_does_not_pass_is_recorded(rig: Rig) -> None:
    rig.feed("temp", 36.5)
    rig.feed("card", "0A1B2C3D4E")
    rig.wait(5.0)
    passage = rig.events[-1]
    assert passage["kind"] == "passage" and passage["passed"] is False
    assert rig.turnstile.state == "locked"


def test_a_passage_with_no_grant_is_a_tailgate_alarm(rig: Rig) -> None:
    rig.feed("passage", True)
    passage, alarm = rig.events
    assert passage["ref"] is None and alarm["alarm"] == "tailgate"
    assert alarm["ref"] == passage["id"]


def test_fever_is_denied_with_an_alarm_and_the_turnstile_stays_shut(rig: Rig) -> None:
    rig.feed("temp", 38.1)
    rig.feed("temp", 38.0)
    rig.feed("card", "0A1B2C3D4E")
    decision, alarm = rig.events
    assert decision["decision"] == "denied" and decision["reasons"] == ["fever"]
    assert decision["readings_c"] == [38.1, 38.0]
    assert alarm["kind"] == "alarm" and alarm["alarm"] == "fever" and alarm["ref"] == decision["id"]
    assert rig.turnstile.history == [] and "fever" in rig.prompter.played


def test_a_temperature_and_no_pass_times_out_as_credential_missing(rig: Rig) -> None:
    rig.feed("temp", 36.6)
    rig.wait(14.0)
    assert rig.decisions() == []
    rig.wait(1.0)
    (decision,) = rig.decisions()
    assert decision["reasons"] == ["credential_missing"]


def test_an_unknown_card_is_denied_and_told_it_is_not_registered(rig: Rig) -> None:
    rig.feed("temp", 36.6)
    rig.feed("card", "FF00FF00FF")
    (decision,) = rig.decisions()
    assert decision["reasons"] == ["unknown_card"] and decision["person"] is None
    assert rig.prompter.played[-1] == "not_registered"


def test_a_one_time_pass_works_once(rig: Rig) -> None:
    token = rig.issue(sub="V1", hh="H9", otp=True)
    rig.feed("temp", 36.6)
    rig.feed("qr", token)
    rig.feed("passage", True)
    rig.feed("temp", 36.6)
    rig.feed("qr", token)
    first, second = rig.decisions()
    assert first["decision"] == "granted"
    assert second["decision"] == "denied" and second["reasons"] == ["pass_replayed"]


def test_a_revoked_pass_and_a_revoked_card_are_refused(rig: Rig) -> None:
    token = rig.issue()
    jti = rig.controller.verifier.verify(token, rig.clock.time(), "g1").jti
    assert jti is not None
    rig.registry.revoke_pass(jti, "2026-01-01T00:00:00Z")
    rig.registry.revoke_card("0a1b2c3d4e", "2026-01-01T00:00:00Z")
    rig.feed("temp", 36.6)
    rig.feed("qr", token)
    rig.feed("temp", 36.6)
    rig.feed("card", "0A1B2C3D4E")
    assert [d["reasons"] for d in rig.decisions()] == [["pass_revoked"], ["card_revoked"]]


def test_needs_guard_with_nobody_on_duty_raises_unattended_then_times_out(rig: Rig) -> None:
    rig.feed("temp", 36.6)
    rig.feed("card", "1122334455")
    decision, alarm = rig.events
    assert decision["decision"] == "needs_guard" and alarm["alarm"] == "unattended"
    rig.wait(59.0)
    assert len(rig.decisions()) == 1
    rig.wait(1.0)
    timeout = rig.decisions()[-1]
    assert timeout["decision"] == "denied" and timeout["reasons"] == ["guard_timeout"]
    assert timeout["ref"] == decision["id"]
    assert rig.turnstile.history == []


def test_the_guard_on_duty_approves_and_the_gate_opens(rig: Rig) -> None:
    rig.controller.desk.guard_on("G7")
    rig.feed("temp", 36.6)
    rig.feed("card", "1122334455")
    pending = rig.decisions()[-1]
    assert not [e for e in rig.events if e["kind"] == "alarm"]
    rig.controller.desk.decide(pending["id"], True, "G7")
    answer = rig.decisions()[-1]
    assert answer["decision"] == "guard_granted" and answer["guard"] == "G7"
    assert answer["ref"] == pending["id"] and rig.turnstile.state == "open"
    assert rig.events[0]["kind"] == "guard_on"


def test_locked_mode_denies_and_survives_a_restart(tmp_path: Path) -> None:
    rig = Rig(tmp_path)
    rig.controller.desk.set_mode("locked", "central")
    rig.feed("card", "0A1B2C3D4E")
    assert rig.decisions()[-1]["reasons"] == ["gate_locked"]
    rig.conn.close()
    again = Rig(tmp_path)
    assert again.controller.mode == "locked"
    again.conn.close()


def test_fire_frees_the_gate_with_an_alarm_and_passages_are_not_tailgating(rig: Rig) -> None:
    rig.feed("fire", True)
    assert rig.turnstile.state == "free"
    assert rig.events[-1]["alarm"] == "fire"
    rig.feed("card", "0A1B2C3D4E")
    assert rig.decisions()[-1]["reasons"] == ["fire_release"]
    rig.feed("passage", True)
    rig.feed("passage", True)
    assert not [e for e in rig.events if e.get("alarm") == "tailgate"]
    rig.feed("fire", False)
    assert rig.turnstile.state == "locked"


def test_household_quota_counts_grants_in_the_window(tmp_path: Path) -> None:
    rig = Rig(tmp_path, policy={"household_quota": {"max": 1, "window_h": 72, "direction": "in"}})
    for _ in range(2):
        rig.feed("temp", 36.6)
        rig.feed("card", "0A1B2C3D4E")
        rig.feed("passage", True)
    assert [d["reasons"] for d in rig.decisions()] == [[], ["quota_exceeded"]]
    rig.wait(72 * 3600)
    rig.feed("temp", 36.6)
    rig.feed("card", "0A1B2C3D4E")
    assert rig.decisions()[-1]["decision"] == "granted"
    rig.conn.close()


def test_hard_antipassback_refuses_a_second_entry(tmp_path: Path) -> None:
    rig = Rig(tmp_path, policy={"antipassback": "hard"})
    for _ in range(2):
        rig.feed("temp", 36.6)
        rig.feed("card", "0A1B2C3D4E")
        rig.feed("passage", True)
    assert [d["reasons"] for d in rig.decisions()] == [[], ["antipassback"]]
    rig.conn.close()


def test_events_carry_boot_clock_and_a_gap_free_seq(rig: Rig) -> None:
    rig.feed("temp", 36.5)
    rig.feed("card", "FF")
    rig.feed("passage", True)
    stored = rig.stored()
    assert [e["seq"] for e in stored] == list(range(1, len(stored) + 1))
    assert all(e["boot"] == 1 and isinstance(e["clock_synced"], bool) for e in stored)
    assert all(e["site"] == "s1" and e["gate"] == "g1" for e in stored)


def test_malformed_readings_are_counted_and_never_decide(rig: Rig) -> None:
    for kind, value in [
        ("temp", "hot"),
        ("temp", float("nan")),
        ("temp", True),
        ("card", ""),
        ("card", 1234),
        ("qr", None),
        ("qr", "   "),
    ]:
        rig.feed(kind, value)
    rig.wait(60)
    assert rig.events == []
    assert rig.controller.counters.rejected == 7
    assert rig.turnstile.history == []


def test_garbage_qr_text_is_a_denial_not_a_crash(rig: Rig) -> None:
    for text in ["https://example.com/x", "a.b.c", "\x00\xff" * 50, "e" * 10_000]:
        rig.feed("temp", 36.6)
        rig.feed("qr", text)
    assert [d["reasons"] for d in rig.decisions()] == [["pass_invalid"]] * 4
    assert rig.turnstile.history == []


def tamper(rig: Rig, active: bool, source: str = "turnstile") -> None:
    """A ``tamper`` reading from ``source``, as its driver emits it."""
    rig.clock.advance(0.1)
    rig.controller.handle(Reading("tamper", active, source))
    rig.controller.tick()


def test_a_tamper_raises_one_alarm_and_its_clear_is_a_device_event(rig: Rig) -> None:
    tamper(rig, True)
    (alarm,) = rig.events
    assert (alarm["kind"], alarm["alarm"]) == ("alarm", "tamper")
    assert (alarm["detail"], alarm["device"]) == ("turnstile enclosure opened", "turnstile")
    tamper(rig, True)  # the driver says it again: still the same tamper
    assert len(rig.events) == 1
    tamper(rig, False)
    clear = rig.events[-1]
    assert (clear["kind"], clear["device"], clear["ref"]) == ("device", "turnstile", alarm["id"])
    assert (clear["ok"], clear["detail"]) == (True, "tamper cleared")
    tamper(rig, False)
    assert len(rig.events) == 2
    assert [(e["kind"], e["seq"]) for e in rig.stored()] == [("alarm", 1), ("device", 2)]
    assert rig.controller.counters.events == 2
    tamper(rig, True)  # opened again later: a new alarm
    assert [e.get("alarm") for e in rig.events] == ["tamper", None, "tamper"]
    assert rig.turnstile.history == []  # a tamper neither opens nor locks the gate


def test_each_device_has_its_own_tamper(rig: Rig) -> None:
    tamper(rig, True)
    tamper(rig, True, "card")
    tamper(rig, True, "qr")
    assert [e["detail"] for e in rig.events] == [
        "turnstile enclosure opened",
        "card reader tampered",
        "qr tampered",
    ]
    tamper(rig, False, "card")
    assert rig.events[-1]["device"] == "card" and rig.events[-1]["ref"] == rig.events[1]["id"]
    tamper(rig, True)  # the turnstile's tamper is still on
    assert len(rig.events) == 4


def test_the_gate_works_as_before_while_tampered(rig: Rig) -> None:
    tamper(rig, True)
    rig.feed("temp", 36.5)
    rig.feed("card", "0A1B2C3D4E")
    assert rig.decisions()[-1]["decision"] == "granted" and rig.turnstile.state == "open"
    rig.feed("passage", True)
    assert rig.turnstile.state == "locked"
    tamper(rig, False)
    assert rig.turnstile.history == ["open", "locked"]


def test_a_tamper_clear_on_a_failing_device_says_it_still_fails(rig: Rig) -> None:
    rig.controller.handle(Reading("device", DeviceHealth(False, "relay: I/O error"), "turnstile"))
    tamper(rig, True)
    tamper(rig, False)
    clear = rig.events[-1]
    assert clear["ok"] is False and clear["detail"] == "tamper cleared; relay: I/O error"


def test_every_expected_device_is_in_the_health_before_it_reports(rig: Rig) -> None:
    ctl = rig.controller
    ctl.device_watch.expect(["turnstile", "prompter", "card", "thermometer"])
    devices = ctl.desk.snapshot()["devices"]
    # storage is always there: whether events can be committed
    assert set(devices) == {"turnstile", "prompter", "card", "thermometer", "storage"}
    assert devices["card"] == {"ok": True, "detail": ""}
    # a first report that says "working" is no news, as before any seeding
    ctl.handle(Reading("device", DeviceHealth(True, "connected to /dev/ttyS0"), "card"))
    assert not [e for e in rig.events if e["kind"] == "device"]
    assert ctl.desk.snapshot()["devices"]["card"]["detail"] == "connected to /dev/ttyS0"
    ctl.handle(Reading("device", DeviceHealth(False, "unplugged"), "card"))
    device = [e for e in rig.events if e["kind"] == "device"]
    assert [(e["device"], e["ok"]) for e in device] == [("card", False)]
