"""The ledger on a real SQLite file: gap-free seq, outbox in the same transaction, look-backs."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from gated.clock import FakeClock, iso_utc
from gated.ledger import Effects, Ledger, iter_events
from gated.storage import connect
from tests.support.events import event

HOUR = 3600.0


class Gate:
    """A ledger on ``tmp_path/gated.db`` that can be closed and opened again, like a restart."""

    def __init__(self, tmp_path: Path):
        self.path = tmp_path / "gated.db"
        self.clock = FakeClock()
        self.conn = connect(self.path)
        self.ledger = Ledger(self.conn, site="s1", gate="g1", clock=self.clock)

    def reopen(self) -> Ledger:
        self.conn.close()
        self.conn = connect(self.path)
        self.ledger = Ledger(self.conn, site="s1", gate="g1", clock=self.clock)
        return self.ledger

    def append(self, kind: str = "decision", effects: Effects | None = None, **fields: Any) -> Any:
        return self.ledger.append(event(kind, **fields), effects).body()

    def rows(self, sql: str) -> list[Any]:
        """Query the file through a connection of its own: only what is committed."""
        conn = sqlite3.connect(self.path)
        try:
            return conn.execute(sql).fetchall()
        finally:
            conn.close()


@pytest.fixture
def gate(tmp_path: Path) -> Iterator[Gate]:
    g = Gate(tmp_path)
    yield g
    g.conn.close()


def test_seq_starts_at_1_and_has_no_gaps(gate: Gate) -> None:
    assert gate.ledger.last_seq() == 0
    seqs = [gate.append()["seq"] for _ in range(5)]
    assert seqs == [1, 2, 3, 4, 5]
    assert gate.ledger.last_seq() == 5
    assert gate.rows("SELECT seq FROM events ORDER BY seq") == [(s,) for s in seqs]


def test_event_is_stamped_and_stored_as_returned(gate: Gate) -> None:
    event = gate.append(person={"id": "P1", "household": "H1"})
    assert event["ts"] == iso_utc(gate.clock.time())
    assert event["ts"].endswith("Z") and len(event["ts"]) == len("2026-02-28T18:05:11.204Z")
    assert (event["site"], event["gate"], event["clock_synced"]) == ("s1", "g1", True)
    ((body, person_id, decision),) = gate.rows("SELECT body, person_id, decision FROM events")
    assert json.loads(body) == event
    assert (person_id, decision) == ("P1", "granted")


def test_unsynced_clock_is_recorded(tmp_path: Path) -> None:
    conn = connect(tmp_path / "gated.db")
    try:
        ledger = Ledger(conn, site="s1", gate="g1", clock=FakeClock(), clock_synced=lambda: False)
        assert ledger.append(event("device")).body()["clock_synced"] is False
    finally:
        conn.close()


def test_seq_continues_after_a_restart(gate: Gate) -> None:
    gate.append()
    gate.append()
    first_ids = [r[0] for r in gate.rows("SELECT id FROM events ORDER BY seq")]
    ledger = gate.reopen()
    assert ledger.last_seq() == 2
    assert gate.append()["seq"] == 3
    ids = [r[0] for r in gate.rows("SELECT id FROM events ORDER BY seq")]
    assert ids[:2] == first_ids and len(set(ids)) == 3


def test_seq_does_not_restart_when_old_events_are_purged(gate: Gate) -> None:
    for _ in range(3):
        gate.append()
    with gate.conn:
        gate.conn.execute("DELETE FROM outbox")
        gate.conn.execute("DELETE FROM events")
    gate.reopen()
    assert gate.append()["seq"] == 4


def test_boot_counts_daemon_starts(gate: Gate) -> None:
    assert gate.ledger.start_boot() == 1
    assert gate.append()["boot"] == 1
    assert gate.ledger.start_boot() == 2
    assert gate.append()["boot"] == 2
    ledger = gate.reopen()
    assert ledger.boot == 2, "a new Ledger reads the count, it does not bump it"
    assert ledger.start_boot() == 3
    assert gate.append()["boot"] == 3


def test_every_event_has_its_outbox_row_on_the_right_topic(gate: Gate) -> None:
    gate.append("decision")
    gate.append("alarm", alarm="fever", detail="37.9")
    gate.append("passage", ref=None, passed=True)
    gate.append("mode", mode="locked")
    gate.append("device", device="card", ok=False)
    assert gate.rows("SELECT seq, topic FROM outbox ORDER BY seq") == [
        (1, "event"),
        (2, "alarm"),
        (3, "event"),
        (4, "event"),
        (5, "event"),
    ]
    assert gate.ledger.backlog() == 5


def test_with_no_broker_events_get_no_outbox_row_and_old_rows_can_be_dropped(gate: Gate) -> None:
    gate.append("decision")  # written while a broker was configured
    gate.append("alarm", alarm="fever", detail="37.9")
    gate.ledger = Ledger(gate.conn, site="s1", gate="g1", clock=gate.clock, outbox=False)
    assert gate.ledger.drop_outbox() == 2
    gate.append("decision")
    assert gate.rows("SELECT seq FROM events ORDER BY seq") == [(1,), (2,), (3,)]
    assert gate.rows("SELECT COUNT(*) FROM outbox") == [(0,)]
    assert gate.ledger.backlog() == 0
    assert gate.ledger.drop_outbox() == 0


def test_failed_event_leaves_no_row_no_outbox_and_no_seq_gap(gate: Gate) -> None:
    first = gate.append()
    gate.append("alarm", alarm="tailgate")

    with pytest.raises(sqlite3.IntegrityError):
        gate.append(id=first["id"])

    assert gate.rows("SELECT seq FROM events ORDER BY seq") == [(1,), (2,)]
    assert gate.rows("SELECT seq FROM outbox ORDER BY seq") == [(1,), (2,)]
    assert gate.ledger.last_seq() == 2
    assert gate.append()["seq"] == 3, "the next event takes the next seq"
    assert gate.rows("SELECT COUNT(*) FROM outbox") == [(3,)]


def test_failure_after_both_rows_are_written_rolls_both_back(gate: Gate) -> None:
    gate.append()
    # The state an event changes is written last, after its event and outbox rows.
    gate.conn.execute(
        "CREATE TEMP TRIGGER quota_fails BEFORE INSERT ON quota_use"
        " BEGIN SELECT RAISE(ABORT, 'disk I/O error'); END"
    )
    with pytest.raises(sqlite3.IntegrityError, match="disk I/O error"):
        gate.append(effects=Effects(quota_household="H1", quota_direction="in"))
    gate.conn.execute("DROP TRIGGER quota_fails")

    assert gate.rows("SELECT seq FROM events") == [(1,)]
    assert gate.rows("SELECT seq FROM outbox") == [(1,)]
    assert gate.rows("SELECT COUNT(*) FROM quota_use") == [(0,)]
    gate.reopen()
    assert gate.append()["seq"] == 2


def test_connection_is_wal_with_full_sync(gate: Gate) -> None:
    assert gate.conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert gate.conn.execute("PRAGMA synchronous").fetchone()[0] == 2
    # WAL is a property of the file: any other reader sees it too.
    assert gate.rows("PRAGMA journal_mode") == [("wal",)]


def test_iter_events_in_seq_order_since_a_time(gate: Gate) -> None:
    early = gate.append()
    gate.clock.advance(HOUR)
    cut = iso_utc(gate.clock.time())
    at_cut = gate.append("alarm", alarm="fever")
    gate.clock.advance(HOUR)
    late = gate.append()

    assert [e["seq"] for e in iter_events(gate.conn)] == [1, 2, 3]
    assert [e["id"] for e in iter_events(gate.conn, since=cut)] == [at_cut["id"], late["id"]]
    assert list(iter_events(gate.conn, since=iso_utc(gate.clock.time() + 1))) == []
    assert [e["id"] for e in iter_events(gate.conn, after_seq=2)] == [late["id"]]
    assert next(iter_events(gate.conn)) == early


def test_quota_counts_a_households_grants_in_the_window_and_direction(gate: Gate) -> None:
    def grant(household: str, direction: str) -> None:
        gate.append(effects=Effects(quota_household=household, quota_direction=direction))

    grant("H1", "out")  # 80 h before the end: outside a 72 h window
    gate.clock.advance(8 * HOUR)
    window_start = gate.clock.time()
    grant("H1", "out")  # exactly at the window's start: counted
    gate.clock.advance(HOUR)
    grant("H1", "in")
    grant("H2", "out")
    gate.append()  # a decision without quota effects is not a use
    gate.clock.advance(71 * HOUR)

    since = gate.clock.time() - 72 * HOUR
    assert since == window_start
    assert gate.ledger.quota_used("H1", since, "out") == 1
    assert gate.ledger.quota_used("H1", since, "in") == 1
    assert gate.ledger.quota_used("H1", since, "both") == 2
    assert gate.ledger.quota_used("H1", since, None) == 2
    assert gate.ledger.quota_used("H1", since + 1, "out") == 0, "a second later it falls out"
    assert gate.ledger.quota_used("H1", since - 8 * HOUR, "out") == 2, "an 80 h window"
    assert gate.ledger.quota_used("H2", since, "out") == 1
    assert gate.ledger.quota_used("H3", since, None) == 0


def test_last_direction_follows_the_latest_grant(gate: Gate) -> None:
    assert gate.ledger.last_direction("P1") is None
    gate.append(effects=Effects(presence_person="P1", presence_direction="in"))
    assert gate.ledger.last_direction("P1") == "in"
    gate.append(effects=Effects(presence_person="P1", presence_direction="out"))
    assert gate.ledger.last_direction("P1") == "out"
    assert gate.ledger.last_direction("P2") is None
    assert gate.reopen().last_direction("P1") == "out"


def test_pass_used_survives_a_restart(gate: Gate) -> None:
    assert not gate.ledger.pass_used("jti-1")
    gate.append(effects=Effects(pass_use_jti="jti-1"))
    assert gate.ledger.pass_used("jti-1")
    assert not gate.ledger.pass_used("jti-2")
    assert gate.reopen().pass_used("jti-1")


def test_mode_change_is_remembered_across_restarts(gate: Gate) -> None:
    assert gate.ledger.get_meta("mode", "normal") == "normal"
    gate.append("mode", effects=Effects(mode="locked"), mode="locked")
    assert gate.reopen().get_meta("mode", "normal") == "locked"


def card(uid: str | None) -> dict[str, Any]:
    return {"kind": "card", "ref": uid, "color": "green"}


def test_a_cards_first_use_is_kept_from_its_first_decision(gate: Gate) -> None:
    first = gate.append(credential=card("0A1B2C3D4E"))
    gate.clock.advance(HOUR)
    gate.append(credential=card("0A1B2C3D4E"), decision="denied")
    gate.append(credential={"kind": "qr", "ref": "jti-1", "color": "green"})
    gate.append(credential=card(None))
    gate.append("passage", ref=first["id"], passed=True)
    second = gate.append(credential=card("1122334455"), decision="needs_guard")
    assert gate.rows("SELECT uid, ts, seq FROM card_first_use ORDER BY seq") == [
        ("0A1B2C3D4E", first["ts"], first["seq"]),
        ("1122334455", second["ts"], second["seq"]),
    ]


def test_the_first_use_is_committed_with_its_decision_or_not_at_all(gate: Gate) -> None:
    gate.conn.execute(
        "CREATE TEMP TRIGGER quota_fails BEFORE INSERT ON quota_use"
        " BEGIN SELECT RAISE(ABORT, 'disk I/O error'); END"
    )
    with pytest.raises(sqlite3.IntegrityError, match="disk I/O error"):
        gate.append(
            credential=card("0A1B2C3D4E"),
            effects=Effects(quota_household="H1", quota_direction="in"),
        )
    gate.conn.execute("DROP TRIGGER quota_fails")
    assert gate.rows("SELECT COUNT(*) FROM card_first_use") == [(0,)]
    assert gate.rows("SELECT COUNT(*) FROM events") == [(0,)]
    event = gate.append(credential=card("0A1B2C3D4E"))
    assert gate.rows("SELECT uid, seq FROM card_first_use") == [("0A1B2C3D4E", event["seq"])]


def test_a_database_from_before_gets_the_first_uses_its_ledger_still_holds(gate: Gate) -> None:
    a1 = gate.append(credential=card("AAAAAAAAAA"))
    b1 = gate.append(credential=card("BBBBBBBBBB"))
    gate.append(credential=card("AAAAAAAAAA"))
    gate.append("alarm", alarm="tailgate")
    # What a file written by the previous version looks like: no such table.
    gate.conn.execute("DROP TABLE card_first_use")
    gate.reopen()
    assert gate.rows("SELECT uid, ts, seq FROM card_first_use ORDER BY seq") == [
        ("AAAAAAAAAA", a1["ts"], a1["seq"]),
        ("BBBBBBBBBB", b1["ts"], b1["seq"]),
    ]
    # Filled once: a later start leaves the table as it is.
    gate.conn.execute("DELETE FROM card_first_use WHERE uid = 'BBBBBBBBBB'")
    gate.reopen()
    assert gate.rows("SELECT uid FROM card_first_use") == [("AAAAAAAAAA",)]
