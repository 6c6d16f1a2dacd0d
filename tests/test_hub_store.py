"""The hub's store on a real SQLite file: a batch with events held already stores the rest."""

from __future__ import annotations

from pathlib import Path

from gated.hub.store import EventRow, HubStore


def row(gate: str, seq: int, at: float = 100.0, boot: int = 1) -> EventRow:
    return EventRow(
        site="s1",
        gate=gate,
        seq=seq,
        id=f"{gate}-{seq}",
        kind="decision",
        ts="2026-03-01T08:00:00.000Z",
        boot=boot,
        clock_synced=True,
        received_at=at,
        body=f'{{"seq":{seq}}}',
    )


def add(store: HubStore, rows: list[EventRow]) -> tuple[int, int]:
    store.begin()
    result = store.add_events(rows)
    store.commit()
    return result.stored, result.duplicates


def test_a_batch_with_events_held_already_stores_each_new_one_once(tmp_path: Path) -> None:
    store = HubStore(tmp_path / "hub.db")
    assert add(store, [row("a", 1), row("a", 2), row("b", 1)]) == (3, 0)
    # The broker hands a batch over again, with new events, one of them twice in the batch.
    again = [row("a", 2, 105.0), row("a", 3), row("b", 1), row("b", 2), row("b", 2), row("c", 1)]
    assert add(store, again) == (3, 3)
    rows = {(r["gate"]): r for r in store.gate_rows()}
    assert {g: (r["through"], r["highest"], r["received"]) for g, r in rows.items()} == {
        "a": (3, 3, 3),
        "b": (2, 2, 2),
        "c": (1, 1, 1),
    }
    assert {g: r["duplicates"] for g, r in rows.items()} == {"a": 1, "b": 2, "c": 0}
    assert rows["a"]["last_seen"] == 105.0
    assert [e["seq"] for e in store.events(gate="b")] == [1, 2]
    assert store.counts()["hub_events"] == 6


def test_through_stops_at_a_gap_and_moves_once_it_is_filled(tmp_path: Path) -> None:
    store = HubStore(tmp_path / "hub.db")
    add(store, [row("a", 1), row("a", 3), row("a", 4)])
    (r,) = store.gate_rows()
    assert (r["through"], r["highest"], r["missing"]) == (1, 4, 1)
    add(store, [row("a", 2), row("a", 1)])
    (r,) = store.gate_rows()
    assert (r["through"], r["highest"], r["missing"], r["duplicates"]) == (4, 4, 0, 1)
    add(store, [row("b", 3), row("b", 1), row("b", 2), row("b", 5)])  # out of order, one gap
    b = next(r for r in store.gate_rows() if r["gate"] == "b")
    assert (b["through"], b["highest"], b["missing"]) == (3, 5, 1)


def test_an_older_event_does_not_replace_the_gates_last_one(tmp_path: Path) -> None:
    store = HubStore(tmp_path / "hub.db")
    add(store, [row("a", 5, boot=2)])
    add(store, [row("a", 4, boot=1)])  # a replayed older event
    (r,) = store.gate_rows()
    assert (r["boot"], r["received"], r["through"], r["highest"]) == (2, 2, 0, 5)


def card_row(seq: int, card: str, ts: str, at: float) -> EventRow:
    body = (
        f'{{"kind":"decision","seq":{seq},"ts":"{ts}",'
        f'"credential":{{"kind":"card","ref":"{card}"}}}}'
    )
    return EventRow("s1", "a", seq, f"a-{seq}", "decision", ts, 1, True, at, body)


def test_a_cards_first_use_outlives_the_purge_of_its_events(tmp_path: Path) -> None:
    """The reports tell a card used last year from a new one after that year's events went."""
    store = HubStore(tmp_path / "hub.db")
    add(store, [card_row(2, "******3D4E", "2026-03-02T08:00:00.000Z", 100.0)])
    add(store, [card_row(1, "******3D4E", "2026-03-01T08:00:00.000Z", 100.0)])  # replayed late
    add(store, [card_row(3, "******9999", "2026-03-03T08:00:00.000Z", 200.0)])
    store.begin()
    assert store.purge(150.0) == 2  # what the hub received before 150
    store.commit()
    assert sorted(store.card_uses("s1")) == [
        ("a", "******3D4E", 1, "2026-03-01T08:00:00.000Z"),
        ("a", "******9999", 3, "2026-03-03T08:00:00.000Z"),
    ]


def test_the_purge_takes_refused_messages_too(tmp_path: Path) -> None:
    store = HubStore(tmp_path / "hub.db")
    store.begin()
    store.reject("gated/s1/a/event", "event", "no header", b'{"name":"Zhang Wei"}', 100.0)
    store.reject("gated/s1/a/event", "event", "no header", b'{"name":"Li Na"}', 200.0)
    store.purge(150.0)
    store.commit()
    assert [r["payload"] for r in store.rejects()] == [b'{"name":"Li Na"}']


def test_a_restart_is_counted_once_however_many_of_its_events_come(tmp_path: Path) -> None:
    store = HubStore(tmp_path / "hub.db")
    add(store, [row("a", 1, boot=1)])
    add(store, [row("a", s, boot=2) for s in range(2, 52)])
    (r,) = store.gate_rows()
    assert (r["boot"], r["boots"]) == (2, 1)


def test_the_purge_leaves_what_is_held_above_a_gap(tmp_path: Path) -> None:
    store = HubStore(tmp_path / "hub.db")
    add(store, [row("a", 1), row("a", 2), row("a", 4)])
    store.begin()
    assert store.purge(1000.0) == 2  # 1 and 2: below through
    store.commit()
    (r,) = store.gate_rows()
    assert (r["through"], r["missing"]) == (2, 1)  # still 3 alone, not 3 and 4
    assert [e["seq"] for e in store.events()] == [4]
