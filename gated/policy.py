"""The verdict rules of SPEC §4a, as a pure function of facts gathered for one session.

No I/O, no clock: the controller looks up the registry and the ledger, verifies the
pass, and hands the results in as :class:`Facts`. Every failing check is named;
``deny`` outranks ``guard``, which outranks ``allow``.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, time
from typing import TYPE_CHECKING

from gated.events import PeerRef
from gated.registry import CardLookup, Person

if TYPE_CHECKING:
    from gated.config import PolicyConfig, ScheduleRule

# Reasons that only inform: the verdict stays what the other checks make it.
_INFO = frozenset({"antipassback_soft"})
_GUARD = frozenset({"color_guard", "guard_only"})

_DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")


@dataclass(frozen=True)
class PassFacts:
    """A QR pass as verified: ``problem`` is the reason code, or None if it is good."""

    problem: str | None
    jti: str | None = None
    sub: str | None = None
    household: str | None = None
    color: str | None = None
    otp: bool = False
    holder: Person | None = None
    """The registry's entry for ``sub``, if the pass's subject is registered."""


@dataclass(frozen=True)
class PassageHistory:
    """What the ledger knows that the rules need, at every gate of the site."""

    household_grants: int = 0
    last_direction: str | None = None
    relied_on: PeerRef | None = None
    """The peer event whose recorded exit lifted an anti-passback refusal (the decision
    names it, SPEC §4b); the rules read only ``last_direction``."""


@dataclass(frozen=True)
class Facts:
    """Everything one session's verdict depends on."""

    mode: str = "normal"
    fire: bool = False
    direction: str = "in"
    local_time: datetime | None = None
    temperature: float | None = None
    readings: tuple[float, ...] = ()
    temp_invalid_seen: bool = False
    card: CardLookup | None = None
    qr: PassFacts | None = None
    history: PassageHistory = field(default_factory=PassageHistory)


@dataclass(frozen=True)
class Verdict:
    """The outcome: ``granted``, ``denied`` or ``needs_guard``, and why."""

    decision: str
    reasons: tuple[str, ...]
    person: Person | None = None
    color: str | None = None
    alarm: str | None = None

    @property
    def granted(self) -> bool:
        """The turnstile opens."""
        return self.decision == "granted"


def identify(facts: Facts) -> Person | None:
    """The person in front of the gate: the card's owner, else the pass's subject."""
    if facts.card is not None and facts.card.person is not None:
        return facts.card.person
    qr = facts.qr
    if qr is not None and qr.problem is None and qr.sub:
        if qr.holder is not None:
            return qr.holder  # a registered person's category, verified flag and schedule
        return Person(id=qr.sub, household=qr.household or "", category="pass")
    return None


def _credential_reasons(facts: Facts, credentials: str) -> list[str]:
    card, qr = facts.card, facts.qr
    want_card = credentials in ("card", "card_or_qr", "card_and_qr")
    want_qr = credentials in ("qr", "card_or_qr", "card_and_qr")
    if not want_card:
        card = None
    if not want_qr:
        qr = None
    if credentials == "card_and_qr":
        if card is None or qr is None:
            return ["credential_missing"]
    elif card is None and qr is None:
        return ["credential_missing"]
    reasons: list[str] = []
    if card is not None:
        if not card.known:
            reasons.append("unknown_card")
        elif card.revoked:
            reasons.append("card_revoked")
    if qr is not None and qr.problem is not None:
        reasons.append(qr.problem)
    elif qr is not None and qr.holder is not None and not qr.holder.active:
        reasons.append("pass_revoked")  # the holder's access was withdrawn in the registry
    if (
        credentials == "card_and_qr"
        and card is not None
        and card.person is not None
        and qr is not None
        and qr.problem is None
        and qr.sub != card.person.id
    ):
        reasons.append("person_mismatch")
    return reasons


def _in_window(rule: ScheduleRule, now: datetime) -> bool:
    start = time.fromisoformat(rule.start)
    end = time.fromisoformat(rule.end)
    day = _DAYS[now.weekday()]
    yesterday = _DAYS[(now.weekday() - 1) % 7]
    t = now.time()
    if start <= end:
        return day in rule.days and start <= t < end
    # The window crosses midnight: the part after midnight belongs to the day before.
    return (day in rule.days and t >= start) or (yesterday in rule.days and t < end)


def in_schedule(rules: Iterable[ScheduleRule], category: str, now: datetime) -> bool:
    """Whether ``category`` may pass at ``now``; a category with no rule always may."""
    mine = [r for r in rules if r.category in ("*", category)]
    return not mine or any(_in_window(r, now) for r in mine)


def decide(facts: Facts, policy: PolicyConfig) -> Verdict:
    """The verdict for one session under ``policy`` (a ``PolicyConfig``)."""
    person = identify(facts)
    if facts.fire:
        return Verdict("granted", ("fire_release",), person)
    if facts.mode == "free":
        return Verdict("granted", (), person)
    if facts.mode == "locked":
        return Verdict("denied", ("gate_locked",), person)

    reasons: list[str] = []
    alarm = None
    if policy.require_temperature:
        if facts.temperature is None:
            if facts.temp_invalid_seen:
                reasons.append("temp_invalid")
            reasons.append("temp_missing")
        elif facts.temperature >= policy.fever_c:
            reasons.append("fever")
            alarm = "fever"

    credential = _credential_reasons(facts, policy.credentials)
    reasons += credential
    # The person's own checks run whatever the temperature, so every failing one is named.
    credential_ok = not credential

    color = None
    if facts.qr is not None and facts.qr.problem is None and facts.qr.color:
        color = facts.qr.color
    elif person is not None and person.color:
        color = person.color
    if credential_ok and person is not None:
        action = policy.colors.get(color or "", "guard")
        if action == "deny":
            reasons.append("color_denied")
        elif action == "guard" and not (policy.verified_overrides_guard and person.verified):
            reasons.append("color_guard")

        quota = policy.household_quota
        household = person.household
        if (
            quota is not None
            and household
            and quota.direction in ("both", facts.direction)
            and facts.history.household_grants >= quota.max
        ):
            reasons.append("quota_exceeded")
        if policy.antipassback != "off" and facts.history.last_direction == facts.direction:
            reasons.append("antipassback" if policy.antipassback == "hard" else "antipassback_soft")
        if (
            policy.schedule
            and facts.local_time is not None
            and not in_schedule(policy.schedule, person.category, facts.local_time)
        ):
            reasons.append("outside_schedule")

    if facts.mode == "guard_only" and "fever" not in reasons:
        reasons.append("guard_only")

    denying = [r for r in reasons if r not in _GUARD and r not in _INFO]
    if facts.mode == "guard_only" and "fever" not in reasons:
        decision = "needs_guard"  # the guard sees every reason and decides
    elif denying:
        decision = "denied"
    elif any(r in _GUARD for r in reasons):
        decision = "needs_guard"
    else:
        decision = "granted"
    named = tuple("antipassback" if r == "antipassback_soft" else r for r in reasons)
    return Verdict(decision, named, person, color, alarm)
