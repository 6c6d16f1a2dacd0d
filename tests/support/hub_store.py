"""A hub's store filled from real gates' ledgers, as the ingest would store what they publish."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Container
from pathlib import Path

from gated.events import parse_event
from gated.hub.store import EventRow, HubStore
from gated.mqtt.publisher import event_payload


def copy_ledger(
    store: HubStore,
    db_path: str | Path,
    *,
    pii: str = "masked",
    skip: Container[int] = (),
    received_at: float = 0.0,
) -> int:
    """Store every event of a gate's ledger file, published with ``pii``; ``skip``: seqs lost.

    Each payload is the one the gate's publisher sends and is read back as a typed event
    (as the hub's ingest reads it); returns how many were stored.
    """
    conn = sqlite3.connect(db_path)
    try:
        bodies = [b for (b,) in conn.execute("SELECT body FROM events ORDER BY seq")]
    finally:
        conn.close()
    rows = []
    for body in bodies:
        payload = event_payload(body, pii)
        e = parse_event(payload, newer=True)
        assert e.site and e.gate and e.seq and e.id and e.ts
        if e.seq in skip:
            continue
        rows.append(
            EventRow(
                site=e.site,
                gate=e.gate,
                seq=e.seq,
                id=e.id,
                kind=e.kind,
                ts=e.ts,
                boot=e.boot,
                clock_synced=e.clock_synced,
                received_at=received_at,
                body=payload.decode(),
            )
        )
    store.begin()
    stored = store.add_events(rows)
    store.commit()
    return stored.stored


def add_registry(
    store: HubStore, site: str, version: int, persons: list[dict[str, object]]
) -> None:
    """A registry snapshot of ``site`` as the hub keeps it once published (``hub_registry``)."""
    body = {"type": "snapshot", "version": version, "persons": persons}
    text = json.dumps(body, ensure_ascii=False)
    cards = sum(len(p.get("cards", [])) for p in persons)  # type: ignore[arg-type]
    store.begin()
    store.registry_add(site, version, text, len(persons), cards, "-", 0.0)
    store.registry_sent(site, version, 0.0, None)  # as if the broker confirmed it
    store.commit()
