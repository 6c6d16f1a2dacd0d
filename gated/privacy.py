"""Masking of personal data for screens, logs and MQTT (docs/contracts.md §7, §4 ``pii``)."""

from __future__ import annotations

import copy
from typing import Any

from gated.events import TEMPERATURE_FIELDS

#: What ``pii = "none"`` keeps of a person: what a consumer needs to count.
_COUNTED = ("id", "household", "category")


def mask_id_number(value: str | None) -> str | None:
    """Keep the first 4 and last 4 characters: ``3206**********1234``."""
    if not value:
        return value
    if len(value) <= 8:
        return "*" * len(value)
    return value[:4] + "*" * (len(value) - 8) + value[-4:]


def mask_name(value: str | None) -> str | None:
    """Keep the first character of each word: ``张**``, ``J*** S****``."""
    if not value:
        return value
    words = value.split()
    if len(words) == 1:
        return value[0] + "*" * max(len(value) - 1, 1)
    return " ".join(w[0] + "*" * max(len(w) - 1, 1) for w in words)


def mask_uid(value: str | None) -> str | None:
    """Keep the last 4 characters of a card uid: ``******3D4E``."""
    if not value:
        return value
    if len(value) <= 4:
        return "*" * len(value)
    return "*" * (len(value) - 4) + value[-4:]


def mask_person(person: dict[str, Any] | None) -> dict[str, Any] | None:
    """A person dict with name and ID number masked."""
    if person is None:
        return None
    out = dict(person)
    out["name"] = mask_name(out.get("name"))
    out["id_number"] = mask_id_number(out.get("id_number"))
    return out


def reduce_event(event: dict[str, Any], pii: str) -> dict[str, Any]:
    """The event as it may leave the gate: ``full``, ``masked`` or ``none`` (docs/contracts.md §4).

    ``none`` keeps the person's id and household (a consumer needs them to count)
    but drops name, ID number, unit and every temperature.
    """
    if pii == "full":
        return event
    out = copy.deepcopy(event)
    person = out.get("person")
    if pii == "masked":
        if "person" in out:  # an event of a kind with no person gets none
            out["person"] = mask_person(person)
    else:
        if person is not None:
            out["person"] = {key: person.get(key) for key in _COUNTED}
        for key in TEMPERATURE_FIELDS:
            if key in out:
                out[key] = None
    cred = out.get("credential")
    if cred and cred.get("kind") == "card" and pii != "full":
        cred["ref"] = mask_uid(cred.get("ref"))
    if out.get("kind") == "revoke" and out.get("what") == "card":
        out["ref"] = mask_uid(out.get("ref"))  # a pass's jti and a person's id cross as they are
    return out
