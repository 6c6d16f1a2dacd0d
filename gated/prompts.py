"""Which prompt announces which verdict (docs/contracts.md §6 prompts)."""

from __future__ import annotations

from collections.abc import Sequence


def prompt_for(decision: str, reasons: Sequence[str]) -> str:
    """The prompt that announces a verdict."""
    if decision in ("granted", "guard_granted"):
        return "granted"
    if decision == "needs_guard":
        return "wait_guard"
    if "fever" in reasons:
        return "fever"
    if "unknown_card" in reasons:
        return "not_registered"
    if "credential_missing" in reasons:
        return "show_pass"
    return "denied"
