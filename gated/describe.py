"""One readable line per event, with personal data masked (logs, the demo)."""

from __future__ import annotations

from typing import Any

from gated.privacy import mask_name, mask_uid


def _who(event: dict[str, Any]) -> str:
    person = event.get("person") or {}
    cred = event.get("credential") or {}
    parts = []
    if cred.get("kind") == "card":
        parts.append(f"card {mask_uid(cred.get('ref'))}")
    elif cred.get("kind") == "qr":
        parts.append(f"pass {str(cred.get('ref') or '?')[:8]}")
    if person.get("name"):
        parts.append(str(mask_name(person["name"])))
    elif person.get("id"):
        parts.append(str(person["id"]))
    if cred.get("color"):
        parts.append(str(cred["color"]))
    return " ".join(parts)


def describe_event(event: dict[str, Any]) -> str:
    """``#12 decision DENIED card ******3D4E 张** green: fever``; no temperature shown."""
    kind = event["kind"]
    head = f"#{event.get('seq', '?')} {event.get('ts', '')[11:19]} {kind}"
    if kind == "decision":
        reasons = ", ".join(event.get("reasons") or []) or "ok"
        guard = f" by guard {event['guard']}" if event.get("guard") else ""
        who = _who(event) or "unidentified"
        return f"{head} {event['decision'].upper()}{guard} {who}: {reasons}"
    if kind == "passage":
        what = "passed" if event.get("passed") else "did not pass"
        ref = "no grant open" if event.get("ref") is None else "after a grant"
        return f"{head} {what} ({ref})"
    if kind == "alarm":
        return f"{head} {event['alarm'].upper()}: {event.get('detail', '')}"
    if kind == "mode":
        if event.get("detail"):
            return f"{head} {event['detail']} ({event.get('by')}); mode {event['mode']}"
        return f"{head} {event.get('previous')} -> {event['mode']} by {event.get('by')}"
    if kind in ("guard_on", "guard_off"):
        why = f" ({event['detail']})" if event.get("detail") else ""
        return f"{head} guard {event.get('guard')}{why}"
    if kind == "ack":
        alarm = str(event.get("alarm") or "alarm").upper()
        return f"{head} {alarm} acknowledged by {event.get('guard')}"
    if kind == "revoke":
        thing = str(event.get("what"))
        ref = str(event.get("ref") or "?")
        named = str(mask_uid(ref)) if thing == "card" else ref[:8] if thing == "pass" else ref
        return f"{head} {thing} {named} revoked by {event.get('by')}"
    if kind == "purge":
        return f"{head} {event.get('events', 0)} events before {event.get('before')} purged"
    if kind == "device":
        state = "ok" if event.get("ok") else "FAILED"
        return f"{head} {event.get('device')} {state} {event.get('detail', '')}".rstrip()
    return head
