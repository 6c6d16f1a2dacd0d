"""The ledger as a test reads it back: from the SQLite file, through a connection of its own."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tests.support.waiting import wait_until


def ledger_events(path: str | Path) -> list[dict[str, Any]]:
    """Every committed event in ``seq`` order; [] while the file does not exist yet."""
    if not Path(path).exists():
        return []
    conn = sqlite3.connect(path)
    try:
        return [json.loads(b) for (b,) in conn.execute("SELECT body FROM events ORDER BY seq")]
    finally:
        conn.close()


def wait_for_event(
    path: str | Path, match: Callable[[dict[str, Any]], bool], what: str
) -> dict[str, Any]:
    """The first committed event that ``match`` accepts, waited for with a deadline."""
    found: dict[str, Any] = wait_until(
        lambda: next((e for e in ledger_events(path) if match(e)), None), what=what
    )
    return found
