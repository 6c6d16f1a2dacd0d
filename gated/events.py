"""Event vocabulary of SPEC §4: kinds, decisions, reason codes, alarm names."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

KINDS = (
    "decision",
    "passage",
    "alarm",
    "mode",
    "guard_on",
    "guard_off",
    "device",
    "purge",
    "ack",
)
DECISIONS = ("granted", "denied", "needs_guard", "guard_granted", "guard_denied")
ALARMS = ("fever", "tailgate", "device", "unattended", "fire", "tamper")
MODES = ("normal", "locked", "free", "guard_only")

REASONS = (
    "fever",
    "temp_missing",
    "temp_invalid",
    "credential_missing",
    "unknown_card",
    "card_revoked",
    "pass_invalid",
    "pass_expired",
    "pass_not_yet_valid",
    "pass_revoked",
    "pass_replayed",
    "pass_wrong_gate",
    "person_mismatch",
    "color_guard",
    "color_denied",
    "quota_exceeded",
    "antipassback",
    "outside_schedule",
    "gate_locked",
    "guard_only",
    "guard_timeout",
    "fire_release",
)


def topic_for(kind: str) -> str:
    """The topic suffix an event of ``kind`` is published on (``alarm`` or ``event``)."""
    return "alarm" if kind == "alarm" else "event"


def card_ref(event: Mapping[str, Any]) -> str | None:
    """The card uid an event's credential names (as stored: masked only on the way out)."""
    cred = event.get("credential")
    if isinstance(cred, Mapping) and cred.get("kind") == "card" and cred.get("ref"):
        return str(cred["ref"])
    return None
