"""The verdict table of docs/contracts.md §4a: every reason code comes out of at least one row."""

from __future__ import annotations

from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from gated.config import PolicyConfig
from gated.events import REASONS
from gated.policy import Facts, PassageHistory, PassFacts, decide
from gated.registry import CardLookup, Person

GREEN = Person("P1", "Zhang Wei", "320623199001011234", "1-101", "H1", "resident", "green")
YELLOW = Person("P2", "Li Na", "", "1-102", "H2", "resident", "yellow")
YELLOW_VERIFIED = Person("P3", "Wang Fang", "", "2-201", "H3", "resident", "yellow", True)
WORKER = Person("P4", "Zhao Lei", "", "", "H4", "worker", "green")
INACTIVE = Person("P5", "Gone", "", "", "H5", "resident", "green", active=False)
BLACK = Person("P6", "Sun Li", "", "", "H6", "resident", "black")

CARD = CardLookup("0A1B2C3D4E", GREEN)
GOOD_PASS = PassFacts(None, "jti-1", "P1", "H1", "green")
TUESDAY_NOON = datetime(2026, 3, 3, 12, 0, tzinfo=ZoneInfo("Asia/Shanghai"))
TUESDAY_3AM = datetime(2026, 3, 3, 3, 0, tzinfo=ZoneInfo("Asia/Shanghai"))


def facts(**kw: Any) -> Facts:
    kw.setdefault("temperature", 36.5)
    kw.setdefault("local_time", TUESDAY_NOON)
    return Facts(**kw)


def policy(**kw: Any) -> PolicyConfig:
    return PolicyConfig.model_validate(kw)


QUOTA = {"household_quota": {"max": 1, "window_h": 72, "direction": "out"}}
SCHEDULE = {"schedule": [{"category": "worker", "start": "07:00", "end": "19:00"}]}

# (name, facts, policy, decision, reasons)
TABLE: list[tuple[str, Facts, dict[str, Any], str, tuple[str, ...]]] = [
    ("card ok", facts(card=CARD), {}, "granted", ()),
    ("pass ok", facts(qr=GOOD_PASS), {}, "granted", ()),
    ("fever denies whatever else", facts(temperature=37.9, card=CARD), {}, "denied", ("fever",)),
    ("fever at the threshold", facts(temperature=37.3, card=CARD), {}, "denied", ("fever",)),
    ("just under the threshold", facts(temperature=37.29, card=CARD), {}, "granted", ()),
    ("no reading", facts(temperature=None, card=CARD), {}, "denied", ("temp_missing",)),
    (
        "only invalid readings",
        facts(temperature=None, temp_invalid_seen=True, card=CARD),
        {},
        "denied",
        ("temp_invalid", "temp_missing"),
    ),
    (
        "temperature not required",
        facts(temperature=None, card=CARD),
        {"require_temperature": False},
        "granted",
        (),
    ),
    ("no credential", facts(), {}, "denied", ("credential_missing",)),
    (
        "fever and no credential",
        facts(temperature=38.5),
        {},
        "denied",
        ("fever", "credential_missing"),
    ),
    ("unknown card", facts(card=CardLookup("FFFF", None)), {}, "denied", ("unknown_card",)),
    (
        "inactive person's card",
        facts(card=CardLookup("AB", INACTIVE)),
        {},
        "denied",
        ("unknown_card",),
    ),
    (
        "revoked card",
        facts(card=CardLookup("AB", GREEN, revoked=True)),
        {},
        "denied",
        ("card_revoked",),
    ),
    ("forged pass", facts(qr=PassFacts("pass_invalid")), {}, "denied", ("pass_invalid",)),
    ("expired pass", facts(qr=PassFacts("pass_expired", "j")), {}, "denied", ("pass_expired",)),
    (
        "early pass",
        facts(qr=PassFacts("pass_not_yet_valid", "j")),
        {},
        "denied",
        ("pass_not_yet_valid",),
    ),
    ("revoked pass", facts(qr=PassFacts("pass_revoked", "j")), {}, "denied", ("pass_revoked",)),
    ("replayed pass", facts(qr=PassFacts("pass_replayed", "j")), {}, "denied", ("pass_replayed",)),
    (
        "pass for another gate",
        facts(qr=PassFacts("pass_wrong_gate", "j")),
        {},
        "denied",
        ("pass_wrong_gate",),
    ),
    (
        "card only: a pass is not enough",
        facts(qr=GOOD_PASS),
        {"credentials": "card"},
        "denied",
        ("credential_missing",),
    ),
    (
        "qr only: a card is not enough",
        facts(card=CARD),
        {"credentials": "qr"},
        "denied",
        ("credential_missing",),
    ),
    (
        "card and qr: one missing",
        facts(card=CARD),
        {"credentials": "card_and_qr"},
        "denied",
        ("credential_missing",),
    ),
    (
        "card and qr: same person",
        facts(card=CARD, qr=GOOD_PASS),
        {"credentials": "card_and_qr"},
        "granted",
        (),
    ),
    (
        "card and qr: somebody else's pass",
        facts(card=CARD, qr=PassFacts(None, "j2", "P9", "H9", "green")),
        {"credentials": "card_and_qr"},
        "denied",
        ("person_mismatch",),
    ),
    (
        "yellow asks the guard",
        facts(card=CardLookup("C2", YELLOW)),
        {},
        "needs_guard",
        ("color_guard",),
    ),
    (
        "verified turns a guard into an allow",
        facts(card=CardLookup("C3", YELLOW_VERIFIED)),
        {},
        "granted",
        (),
    ),
    (
        "verified override switched off",
        facts(card=CardLookup("C3", YELLOW_VERIFIED)),
        {"verified_overrides_guard": False},
        "needs_guard",
        ("color_guard",),
    ),
    (
        "pass colour wins over registry colour",
        facts(qr=PassFacts(None, "j3", "P1", "H1", "red")),
        {},
        "needs_guard",
        ("color_guard",),
    ),
    (
        "a colour mapped to deny",
        facts(card=CardLookup("C6", BLACK)),
        {"colors": {"green": "allow", "black": "deny"}},
        "denied",
        ("color_denied",),
    ),
    (
        "quota used up on its direction",
        facts(card=CARD, direction="out", history=PassageHistory(household_grants=1)),
        QUOTA,
        "denied",
        ("quota_exceeded",),
    ),
    (
        "quota not counted the other way",
        facts(card=CARD, direction="in", history=PassageHistory(household_grants=5)),
        QUOTA,
        "granted",
        (),
    ),
    (
        "quota left",
        facts(card=CARD, direction="out", history=PassageHistory(household_grants=0)),
        QUOTA,
        "granted",
        (),
    ),
    (
        "hard anti-passback",
        facts(card=CARD, history=PassageHistory(last_direction="in")),
        {"antipassback": "hard"},
        "denied",
        ("antipassback",),
    ),
    (
        "soft anti-passback grants and names it",
        facts(card=CARD, history=PassageHistory(last_direction="in")),
        {"antipassback": "soft"},
        "granted",
        ("antipassback",),
    ),
    (
        "anti-passback the other way round",
        facts(card=CARD, history=PassageHistory(last_direction="out")),
        {"antipassback": "hard"},
        "granted",
        (),
    ),
    (
        "worker at night",
        facts(card=CardLookup("C4", WORKER), local_time=TUESDAY_3AM),
        SCHEDULE,
        "denied",
        ("outside_schedule",),
    ),
    ("worker by day", facts(card=CardLookup("C4", WORKER)), SCHEDULE, "granted", ()),
    (
        "resident at night: no rule for residents",
        facts(card=CARD, local_time=TUESDAY_3AM),
        SCHEDULE,
        "granted",
        (),
    ),
    ("locked gate", facts(card=CARD, mode="locked"), {}, "denied", ("gate_locked",)),
    ("free gate opens without checks", facts(temperature=39.0, mode="free"), {}, "granted", ()),
    (
        "fire releases, even when locked",
        facts(temperature=None, mode="locked", fire=True),
        {},
        "granted",
        ("fire_release",),
    ),
    (
        "guard only: a good card still asks",
        facts(card=CARD, mode="guard_only"),
        {},
        "needs_guard",
        ("guard_only",),
    ),
    (
        "guard only: the guard sees every reason",
        facts(card=CardLookup("FFFF", None), mode="guard_only"),
        {},
        "needs_guard",
        ("unknown_card", "guard_only"),
    ),
    (
        "guard only: fever is still a denial",
        facts(temperature=38.0, card=CARD, mode="guard_only"),
        {},
        "denied",
        ("fever",),
    ),
    (
        "a registered worker's pass keeps the worker's schedule",
        facts(qr=PassFacts(None, "j4", "P4", "H4", "green", holder=WORKER), local_time=TUESDAY_3AM),
        SCHEDULE,
        "denied",
        ("outside_schedule",),
    ),
    (
        "a verified holder's pass overrides the guard colour",
        facts(qr=PassFacts(None, "j5", "P3", "H3", "yellow", holder=YELLOW_VERIFIED)),
        {},
        "granted",
        (),
    ),
    (
        "the pass of a person made inactive",
        facts(qr=PassFacts(None, "j6", "P5", "H5", "green", holder=INACTIVE)),
        {},
        "denied",
        ("pass_revoked",),
    ),
    (
        "no temperature: the person's own checks are still named",
        facts(temperature=None, card=CardLookup("C2", YELLOW), mode="guard_only"),
        {},
        "needs_guard",
        ("temp_missing", "color_guard", "guard_only"),
    ),
    (
        "deny outranks guard",
        facts(
            card=CardLookup("C2", YELLOW),
            direction="out",
            history=PassageHistory(household_grants=3),
        ),
        QUOTA,
        "denied",
        ("color_guard", "quota_exceeded"),
    ),
]


@pytest.mark.parametrize(
    ("name", "f", "pol", "decision", "reasons"), TABLE, ids=[row[0] for row in TABLE]
)
def test_verdict_table(
    name: str, f: Facts, pol: dict[str, Any], decision: str, reasons: tuple[str, ...]
) -> None:
    verdict = decide(f, policy(**pol))
    assert (verdict.decision, verdict.reasons) == (decision, reasons)


def test_fever_raises_the_fever_alarm_and_a_normal_temperature_does_not() -> None:
    assert decide(facts(temperature=38.0, card=CARD), policy()).alarm == "fever"
    assert decide(facts(card=CARD), policy()).alarm is None


def test_the_person_is_the_cards_owner_or_the_passes_subject() -> None:
    assert decide(facts(card=CARD), policy()).person == GREEN
    visitor = decide(facts(qr=PassFacts(None, "j", "V1", "H7", "green")), policy()).person
    assert visitor is not None and (visitor.id, visitor.household) == ("V1", "H7")


def test_schedule_window_across_midnight() -> None:
    night = {
        "schedule": [{"category": "worker", "start": "22:00", "end": "06:00", "days": ["mon"]}]
    }
    monday_23 = datetime(2026, 3, 2, 23, 0)
    tuesday_5 = datetime(2026, 3, 3, 5, 0)  # still Monday's night shift
    tuesday_23 = datetime(2026, 3, 3, 23, 0)
    card = CardLookup("C4", WORKER)
    assert decide(facts(card=card, local_time=monday_23), policy(**night)).granted
    assert decide(facts(card=card, local_time=tuesday_5), policy(**night)).granted
    assert not decide(facts(card=card, local_time=tuesday_23), policy(**night)).granted


def test_every_reason_code_is_produced_by_the_table() -> None:
    produced = {r for row in TABLE for r in row[4]}
    # guard_timeout comes from the controller when no guard answers (test_controller).
    assert set(REASONS) - produced == {"guard_timeout"}
