"""Cards in the hub's daily report: those a site's registry does not hold, those new to a site.

The uids are compared as the gates published them: masked (``[mqtt] pii = "masked"``, the
default) against the registry's masked, full ones by uid; both are shown masked.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any
from zoneinfo import ZoneInfo

from gated.events import card_ref
from gated.privacy import mask_uid
from gated.registry import normalise_uid
from gated.report import local_time


def _registered(body: Mapping[str, Any]) -> tuple[set[str], set[str]]:
    """The card uids a registry snapshot holds, and the same masked."""
    cards: set[str] = set()
    for person in body.get("persons") or ():
        if isinstance(person, Mapping):
            for uid in person.get("cards") or ():
                if isinstance(uid, str) and uid.strip():
                    cards.add(normalise_uid(uid))
    return cards, {str(mask_uid(c)) for c in cards}


def _is_masked(card: str) -> bool:
    return "*" in card


def unregistered_cards(
    site: str, by_gate: Mapping[str, list[dict[str, Any]]], registry: tuple[int, Any] | None
) -> list[dict[str, Any]]:
    """Cards presented at ``site`` that its registry at the hub does not hold (sessions)."""
    held, held_masked = _registered(registry[1]) if registry is not None else (set(), set())
    found: dict[str, dict[str, Any]] = {}
    for gate, events in by_gate.items():
        for e in events:
            card = card_ref(e)
            # A guard's answer repeats the card of the session it answers: counted once.
            if e.get("kind") != "decision" or card is None or e.get("ref") is not None:
                continue
            if registry is None:
                reasons = e.get("reasons")
                if not (isinstance(reasons, list) and "unknown_card" in reasons):
                    continue
                match = None
            elif _is_masked(card):
                if card in held_masked:
                    continue
                match = "masked"
            else:
                if normalise_uid(card) in held:
                    continue
                match = "uid"
            u = found.setdefault(
                card,
                {
                    "site": site,
                    "card": mask_uid(card),
                    "count": 0,
                    "gates": set(),
                    "source": "gate" if registry is None else "registry",
                    "registry_version": None if registry is None else registry[0],
                    "match": match,
                },
            )
            u["count"] += 1
            u["gates"].add(gate)
    out = []
    for u in found.values():
        u["gates"] = sorted(u["gates"])
        out.append(u)
    return sorted(out, key=lambda u: (-u["count"], str(u["card"])))


def first_used_cards(
    site: str,
    by_gate: Mapping[str, list[dict[str, Any]]],
    uses: list[tuple[str, str, int, str]],
    start: str,
    tz: ZoneInfo,
) -> list[dict[str, Any]]:
    """Cards with no decision stored at any gate of ``site`` stamped before the day."""
    before = {c for _, c, _, ts in uses if ts < start}
    first: dict[str, tuple[str, str, dict[str, Any]]] = {}
    for gate, events in by_gate.items():
        for e in events:
            card = card_ref(e) if e.get("kind") == "decision" else None
            if card is None or card in before:
                continue
            ts = str(e.get("ts", ""))
            if card not in first or ts < first[card][0]:
                first[card] = (ts, gate, e)
    out = []
    for card, (ts, gate, e) in sorted(first.items(), key=lambda kv: kv[1][0]):
        person = e.get("person")
        out.append(
            {
                "site": site,
                "gate": gate,
                "time": local_time(ts, tz),
                "card": mask_uid(card),
                "person": person.get("id") if isinstance(person, Mapping) else None,
            }
        )
    return out
