"""``gated report daily``: a real ledger built through the controller, counted by hand."""

from __future__ import annotations

import json
from datetime import date, datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from gated.cli.main import main
from gated.events import Decision, Passage
from gated.report import daily_report, day_bounds, format_text
from gated.retention import Retention, purge_now
from tests.support.rig import Rig

TZ = ZoneInfo("Asia/Shanghai")
ZHANG_CARD, LI_CARD, STRANGER = "0A1B2C3D4E", "1122334455", "FF00FF00FF"
DAY1, DAY2, DAY3 = date(2026, 2, 2), date(2026, 2, 3), date(2026, 2, 4)


def session(rig: Rig, temps: list[float], card: str | None, passage: bool = False) -> None:
    for t in temps:
        rig.feed("temp", t)
    if card:
        rig.feed("card", card)
    if passage:
        rig.feed("passage", True, after=1.0)


def pending_id(rig: Rig) -> str:
    (event_id,) = rig.controller.desk.pending
    return event_id


def local_now(rig: Rig) -> datetime:
    return datetime.fromtimestamp(rig.clock.time(), TZ)


def advance_to(rig: Rig, hour: int, minute: int, second: int) -> None:
    now = local_now(rig)
    target = now.replace(hour=hour, minute=minute, second=second, microsecond=0)
    rig.wait((target - now).total_seconds())


@pytest.fixture
def ledger(tmp_path: Path) -> Rig:
    """Three days at gate s1/g1 (Asia/Shanghai); the FakeClock starts 2026-02-02 10:40."""
    rig = Rig(tmp_path)
    c = rig.controller
    assert local_now(rig).date() == DAY1
    # Day 1: Zhang's card is used for the first time.
    session(rig, [36.5], ZHANG_CARD, passage=True)

    rig.wait(86_400)
    assert local_now(rig).date() == DAY2
    # 1. Li (yellow: a guard decides), nobody on duty: unattended, then guard_timeout.
    session(rig, [36.6], LI_CARD)
    rig.wait(61)
    # 2. Li again, still nobody: the same unattended period; G7 comes and lets her in.
    rig.wait(300)
    session(rig, [36.6], LI_CARD)
    rig.wait(30)
    c.desk.guard_on("G7")
    c.desk.decide(pending_id(rig), True, "G7")
    rig.feed("passage", True, after=2.0)
    # 3. Zhang: granted, passes.
    session(rig, [36.5], ZHANG_CARD, passage=True)
    # 4. Li, G7 on duty (no alarm): G7 refuses.
    session(rig, [36.6], LI_CARD)
    c.desk.decide(pending_id(rig), False, "G7")
    # 4b. G7 opens the gate from the screen for somebody: no check at all.
    c.desk.open_once("screen", guard="G7")
    rig.feed("passage", True, after=2.0)
    # 5. G7 leaves; an hour later Li again: a second unattended period, nobody came.
    c.desk.guard_off("G7")
    rig.wait(3600)
    session(rig, [36.6], LI_CARD)
    rig.wait(61)
    # 6. A card that is not in the registry, twice.
    session(rig, [36.5], STRANGER)
    rig.wait(600)
    session(rig, [36.5], STRANGER)
    # 7. Fire: free passage without checks; Zhang goes through (no temperature).
    rig.feed("fire", True)
    rig.feed("card", ZHANG_CARD)
    rig.feed("passage", True, after=1.0)
    rig.feed("fire", False)
    # 8. Fever, measured twice.
    session(rig, [38.0, 38.1], ZHANG_CARD)
    # 9. Somebody slips through with no grant open.
    rig.feed("passage", True, after=20)
    # 10. Zhang granted at 23:59:58, passes after midnight (day 3).
    advance_to(rig, 23, 59, 57)
    session(rig, [36.5], ZHANG_CARD)
    rig.feed("passage", True, after=3.0)
    assert local_now(rig).date() == DAY3
    return rig


def report_of(rig: Rig, day: date, capsys: pytest.CaptureFixture[str]) -> dict[str, Any]:
    config = rig.tmp_path / "gated.toml"
    config.write_text(
        f'[gate]\nid = "g1"\nsite = "s1"\ntimezone = "Asia/Shanghai"\n'
        f'[storage]\npath = "{rig.config.storage.path}"\n[turnstile]\ndriver = "sim"\n'
    )
    capsys.readouterr()
    code = main(
        ["report", "daily", "-c", str(config), "--date", day.isoformat(), "--format", "json"]
    )
    out = capsys.readouterr().out
    assert code == 0
    return dict(json.loads(out))


def test_day_with_every_kind_of_entry(ledger: Rig, capsys: pytest.CaptureFixture[str]) -> None:
    r = report_of(ledger, DAY2, capsys)
    assert (r["date"], r["timezone"], r["site"], r["gate"]) == (
        "2026-02-03",
        "Asia/Shanghai",
        "s1",
        "g1",
    )
    assert r["decisions"] == {
        "denied": 5,  # 2 guard timeouts, 2 unknown card, 1 fever
        "granted": 4,  # Zhang, the remote open, the fire release, Zhang at 23:59:58
        "guard_denied": 1,
        "guard_granted": 1,
        "needs_guard": 4,
    }
    # Once per session: Li's four sessions each said color_guard once, though the
    # guard's two answers repeat it; the two timeouts add guard_timeout.
    assert r["reasons"] == {
        "color_guard": 4,
        "fever": 1,
        "fire_release": 1,
        "guard_timeout": 2,
        "unknown_card": 2,
    }
    # Per decision event, the rows of r["decisions"] (plain grants name no reason).
    assert r["reasons_by_decision"] == {
        "denied": {"fever": 1, "guard_timeout": 2, "unknown_card": 2},
        "granted": {"fire_release": 1},
        "guard_denied": {"color_guard": 1},
        "guard_granted": {"color_guard": 1},
        "needs_guard": {"color_guard": 4},
    }
    assert r["alarms"] == {"fever": 1, "fire": 1, "tailgate": 1, "unattended": 3}
    assert r["passages"] == {"passed": 5, "not_passed": 0, "without_grant": 1, "tailgates": 1}
    # Every passage that went through: guard-granted Li and Zhang were checked; the
    # fire release had no temperature, the remote open and the tailgater nothing.
    assert r["compliance"] == {
        "passages": 5,
        "checked": 2,
        "share": 0.4,
        "without_temperature": 3,
        "without_credential": 2,
    }
    assert r["overrides"] == {"G7": {"guard_denied": 1, "guard_granted": 1, "remote_open": 1}}
    (fever,) = r["fever_alarms"]
    assert fever["temperature_c"] == 38.1
    assert fever["person"] == {"id": "P1", "name": "Z**** W**"}
    first, second = r["unattended_periods"]
    assert first["alarms"] == 2 and first["start"] == "10:40:01"
    assert first["ended_by"]["guard"] == "G7"
    assert second["alarms"] == 1 and second["ended_by"] is None
    assert first["end"] < first["ended_by"]["time"] < second["start"]
    assert [(c["card"], c["person"]) for c in r["first_used_cards"]] == [
        ("******4455", "P2"),
        ("******00FF", None),
    ]
    (unknown,) = r["unknown_cards"]
    assert (unknown["card"], unknown["count"]) == ("******00FF", 2)
    assert unknown["first"] < unknown["last"]
    assert r["boots"] == [1] and r["unsynced_clock_events"] == 0


def test_first_day_and_a_passage_after_midnight(
    ledger: Rig, capsys: pytest.CaptureFixture[str]
) -> None:
    day1 = report_of(ledger, DAY1, capsys)
    assert day1["decisions"] == {"granted": 1}
    assert [c["card"] for c in day1["first_used_cards"]] == ["******3D4E"]
    assert day1["compliance"]["share"] == 1.0
    # Day 3 holds only the passage of a decision taken at 23:59:58 the day before.
    day3 = report_of(ledger, DAY3, capsys)
    assert day3["decisions"] == {} and day3["events_by_kind"] == {"passage": 1}
    assert day3["compliance"]["passages"] == 1 and day3["compliance"]["checked"] == 1
    assert day3["first_used_cards"] == []
    empty = report_of(ledger, date(2026, 3, 1), capsys)
    assert empty["events"] == 0 and empty["compliance"]["share"] is None


def test_text_report_names_everything_and_no_personal_data(
    ledger: Rig, capsys: pytest.CaptureFixture[str]
) -> None:
    r = report_of(ledger, DAY2, capsys)
    text = format_text(r)
    for needle in (
        "gated daily report: s1/g1, 2026-02-03 (Asia/Shanghai)",
        "needs_guard          4",
        "Reasons, once per session:\n  color_guard              4\n",
        "Reasons by decision:\n  denied          fever                    1\n",
        "  needs_guard     color_guard              4\n",
        "  guard_granted   color_guard              1\n",
        "Passages: 5 passed, 0 not passed; 1 with no grant open, 1 of them tailgates",
        "Compliance: 2 of 5 passages (40.0%)",
        "G7: granted 1, denied 1, opened remotely 1",
        "decisions waited; guard G7 on duty at",
        "decisions waited; no guard came",
        "******00FF  2 times",
        "38.1 °C  P1 Z**** W**",
    ):
        assert needle in text, needle
    for secret in ("Zhang Wei", "320623199001011234", ZHANG_CARD, LI_CARD, STRANGER, "Li Na"):
        assert secret not in text
        assert secret not in json.dumps(r, ensure_ascii=False)


def test_day_bounds_follow_the_gate_time_zone() -> None:
    assert day_bounds(DAY2, TZ) == ("2026-02-02T16:00:00.000Z", "2026-02-03T16:00:00.000Z")
    # A day with a daylight-saving change is 23 hours long.
    start, end = day_bounds(date(2026, 3, 29), ZoneInfo("Europe/Berlin"))
    assert (start, end) == ("2026-03-28T23:00:00.000Z", "2026-03-29T22:00:00.000Z")


def test_malformed_events_do_not_break_the_report() -> None:
    events: list[dict[str, Any]] = [
        {"kind": "decision"},
        {"kind": "decision", "decision": "granted", "reasons": "fever", "credential": "x"},
        {"kind": "passage", "passed": True, "ref": "no-such-decision"},
        {"kind": "alarm", "alarm": "fever", "ts": "garbage", "temperature_c": "hot"},
        {"kind": "alarm", "alarm": "unattended"},
        {"kind": "guard_on"},
        {"kind": "something new"},
        {},
    ]
    r = daily_report(events, day=DAY2, tz=TZ, site="s1", gate="g1")
    assert r["events"] == 8
    assert r["reasons"] == {} and r["reasons_by_decision"] == {}
    assert r["compliance"] == {
        "passages": 1,
        "checked": 0,
        "share": 0.0,
        "without_temperature": 1,
        "without_credential": 1,
    }
    assert r["fever_alarms"] == [{"time": "??:??:??", "person": None, "temperature_c": None}]
    assert format_text(r)


def test_free_passages_and_a_guards_clinical_reading_in_compliance(
    rig: Rig, capsys: pytest.CaptureFixture[str]
) -> None:
    c = rig.controller
    # Guard-only: Li shows her card with no temperature; G7 grants her with the
    # clinical reading he took himself, which stands in for the gate's.
    c.desk.set_mode("guard_only", "G7")
    c.desk.guard_on("G7")
    rig.feed("card", LI_CARD)
    rig.wait(16)  # the session times out without a temperature: a guard decides
    (needs_guard,) = [e for e in rig.decisions() if e["decision"] == "needs_guard"]
    assert needs_guard["temperature_c"] is None and "temp_missing" in needs_guard["reasons"]
    c.desk.decide(needs_guard["id"], True, "G7", confirm_temp_c=36.7)
    rig.feed("passage", True, after=1.0)
    # The same granted without a reading, as a gate recorded it before the desk asked for
    # one (an older ledger still holds such grants): granted, but unchecked.
    rig.feed("card", LI_CARD)
    rig.wait(16)
    unchecked = c.desk.pending.pop(pending_id(rig))
    granted = rig.ledger.append(
        Decision.follow_up(unchecked.decision, "guard_granted", "G7"), unchecked.effects
    )
    rig.clock.advance(1.0)
    rig.ledger.append(Passage.of_grant(granted, True))
    # Free mode: two people walk through with nothing open, no tailgate alarm.
    c.desk.set_mode("free", "G7")
    rig.feed("passage", True, after=5.0)
    rig.feed("passage", True, after=5.0)
    c.desk.set_mode("normal", "G7")
    r = report_of(rig, local_now(rig).date(), capsys)
    assert r["passages"] == {"passed": 4, "not_passed": 0, "without_grant": 2, "tailgates": 0}
    assert r["compliance"] == {
        "passages": 4,
        "checked": 1,
        "share": 0.25,
        "without_temperature": 3,
        "without_credential": 2,
    }
    sessions = r["reasons"]
    assert sessions["temp_missing"] == 2 and sessions["guard_only"] == 2
    assert r["reasons_by_decision"]["guard_granted"]["temp_missing"] == 2
    assert r["reasons_by_decision"]["needs_guard"]["temp_missing"] == 2


def test_a_guards_answer_after_midnight_repeats_no_reason(
    rig: Rig, capsys: pytest.CaptureFixture[str]
) -> None:
    # Li needs a guard at 23:59:50; G7 answers at 00:00:20, on the next day.
    rig.controller.desk.guard_on("G7")
    advance_to(rig, 23, 59, 49)
    session(rig, [36.6], LI_CARD)
    first_day = local_now(rig).date()
    rig.wait(30)
    rig.controller.desk.decide(pending_id(rig), False, "G7")
    before = report_of(rig, first_day, capsys)
    after = report_of(rig, local_now(rig).date(), capsys)
    assert before["reasons"] == {"color_guard": 1}
    assert before["decisions"] == {"needs_guard": 1}
    assert after["decisions"] == {"guard_denied": 1}
    assert after["reasons"] == {}  # counted on the day the session began
    assert after["reasons_by_decision"] == {"guard_denied": {"color_guard": 1}}


def test_bad_date_and_missing_database(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "gated.toml"
    config.write_text(
        f'[gate]\nid = "g1"\nsite = "s1"\n[storage]\npath = "{tmp_path / "none.db"}"\n'
        '[turnstile]\ndriver = "sim"\n'
    )
    with pytest.raises(SystemExit) as exc:
        main(["report", "daily", "-c", str(config), "--date", "2026-13-01"])
    assert exc.value.code == 2
    assert "not a date" in capsys.readouterr().err
    assert main(["report", "daily", "-c", str(config)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no database" in err[0]
    assert not (tmp_path / "none.db").exists()


def test_a_card_first_used_before_a_purge_is_not_new_after_it(
    rig: Rig, capsys: pytest.CaptureFixture[str]
) -> None:
    session(rig, [36.5], ZHANG_CARD, passage=True)  # Zhang's first use, day 0
    rig.wait(40 * 86_400)
    rig.conn.execute("DELETE FROM outbox")  # the broker has everything
    plan = purge_now(Retention(rig.conn, rig.clock, retention_days=30), rig.controller._record)
    assert plan is not None and plan.events == 2
    assert rig.conn.execute("SELECT COUNT(*) FROM events WHERE kind = 'decision'").fetchone() == (
        0,
    )
    session(rig, [36.5], ZHANG_CARD, passage=True)
    session(rig, [36.6], LI_CARD)  # Li's first use ever
    r = report_of(rig, local_now(rig).date(), capsys)
    assert [(c["card"], c["person"]) for c in r["first_used_cards"]] == [("******4455", "P2")]
    assert r["purged_events"] == 2


def test_the_report_fills_the_first_uses_of_a_database_from_before(
    ledger: Rig, capsys: pytest.CaptureFixture[str]
) -> None:
    # A file the daemon has not opened since the upgrade: the report makes the table.
    ledger.conn.execute("DROP TABLE card_first_use")
    r = report_of(ledger, DAY2, capsys)
    assert [c["card"] for c in r["first_used_cards"]] == ["******4455", "******00FF"]
    assert ledger.conn.execute("SELECT COUNT(*) FROM card_first_use").fetchone() == (3,)
