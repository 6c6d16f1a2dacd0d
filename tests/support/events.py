"""Events for tests that fill a ledger: a kind and the fields the test cares about."""

from __future__ import annotations

from typing import Any

from gated.events import TYPES, Event

#: What an event of each kind says when the test does not care.
_PLAIN: dict[str, dict[str, Any]] = {
    "decision": {
        "direction": "in",
        "decision": "granted",
        "reasons": [],
        "person": None,
        "credential": None,
        "temperature_c": None,
        "readings_c": [],
        "ref": None,
        "guard": None,
    },
    "passage": {"ref": None, "passed": True, "direction": "in"},
    "alarm": {"alarm": "device", "detail": ""},
    "mode": {"mode": "normal", "previous": "normal", "by": "test"},
    "guard_on": {"guard": "G1"},
    "guard_off": {"guard": "G1"},
    "device": {"device": "test", "ok": True, "detail": ""},
    "ack": {"ref": "", "alarm": "device", "guard": None},
    "revoke": {"what": "pass", "ref": "j1", "person": None, "by": "test"},
}


def event(kind: str, **fields: Any) -> Event:
    """An event of ``kind`` with ``fields``, the rest of what it needs plain."""
    return TYPES[kind].model_validate({"kind": kind, **_PLAIN[kind], **fields})
