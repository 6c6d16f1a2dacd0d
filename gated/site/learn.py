"""What a peer's event teaches the gate: replaced by the rules."""

from __future__ import annotations

import sqlite3

from gated.events import Event


def learn(conn: sqlite3.Connection, event: Event) -> None:
    """replaced by the rules"""
