"""Retention: old ledger rows purged daily, undelivered ones kept, the file kept small."""

from __future__ import annotations

import logging
import sqlite3
import threading
from pathlib import Path

import pytest

from gated.app import App
from gated.clock import FakeClock
from gated.events import KINDS, topic_for
from gated.ledger import Ledger
from gated.retention import DAY_S, Retention, RetentionService, purge_now
from gated.storage import connect
from tests.support.events import event
from tests.support.rig import Rig, make_config
from tests.support.waiting import wait_until


def deliver(conn: sqlite3.Connection, upto_seq: int) -> None:
    """What the publisher does once the broker has an event: its outbox row goes."""
    conn.execute("DELETE FROM outbox WHERE seq <= ?", (upto_seq,))


def seqs(conn: sqlite3.Connection) -> list[int]:
    return [s for (s,) in conn.execute("SELECT seq FROM events ORDER BY seq")]


def one_arrival(rig: Rig) -> None:
    rig.feed("temp", 36.5)
    rig.feed("card", "0A1B2C3D4E")
    rig.feed("passage", True, after=1.0)


def test_old_delivered_events_are_purged_and_the_purge_is_an_event(rig: Rig) -> None:
    # 40 days, one arrival a day: a decision and a passage each (seq 2d-1, 2d).
    for _ in range(40):
        one_arrival(rig)
        rig.wait(DAY_S)
    rig.wait(DAY_S / 2)
    assert rig.ledger.last_seq() == 80
    deliver(rig.conn, 70)  # the broker had everything up to seq 70
    before_quota = rig.conn.execute("SELECT COUNT(*) FROM quota_use").fetchone()[0]
    assert before_quota == 40

    retention = Retention(rig.conn, rig.clock, retention_days=30, batch_rows=7)
    plan = purge_now(retention, rig.controller._record)

    # Now is day 40.5: the cutoff is day 10.5, so days 0..10 (seq 1..22) go.
    assert plan is not None and plan.upto_seq == 22
    assert plan.events == 22 and plan.kept_undelivered == 0
    assert plan.quota_use == 11  # no quota window configured: retention decides
    assert plan.pass_uses == 0
    remaining = seqs(rig.conn)
    assert remaining[0] == 23 and remaining[-1] == 81
    purge = rig.events[-1]
    assert purge["kind"] == "purge" and purge["seq"] == 81
    assert (purge["events"], purge["upto_seq"], purge["retention_days"]) == (22, 22, 30)
    assert rig.conn.execute("SELECT topic FROM outbox WHERE seq = 81").fetchone() == ("event",)
    # seq goes on without a gap after a purge.
    one_arrival(rig)
    assert rig.events[-1]["seq"] == 83

    # A second purge the same day finds nothing and records nothing.
    assert purge_now(retention, rig.controller._record).events == 0  # type: ignore[union-attr]
    assert rig.events[-1]["seq"] == 83


def test_undelivered_events_are_kept_until_delivered(rig: Rig) -> None:
    for day in range(5):
        rig.wait(DAY_S if day else 0)
        one_arrival(rig)
    rig.wait(DAY_S / 2)  # day 4.5: days 0..3 (seq 1..8) are older than a day
    deliver(rig.conn, 4)  # seq 5..10 never reached the broker
    retention = Retention(rig.conn, rig.clock, retention_days=1)
    plan = purge_now(retention, rig.controller._record)
    assert plan is not None and plan.upto_seq == 8
    assert plan.events == 4 and plan.kept_undelivered == 4
    assert seqs(rig.conn) == [5, 6, 7, 8, 9, 10, 11]
    deliver(rig.conn, 10)
    plan = purge_now(retention, rig.controller._record)
    assert plan is not None and plan.events == 4
    assert seqs(rig.conn) == [9, 10, 11, 12]


def test_nothing_is_purged_on_an_unsynchronised_clock(rig: Rig) -> None:
    for _ in range(3):
        one_arrival(rig)
        rig.wait(10 * DAY_S)
    deliver(rig.conn, 100)
    retention = Retention(rig.conn, rig.clock, retention_days=1, clock_synced=lambda: False)
    assert purge_now(retention, rig.controller._record) is None
    assert len(seqs(rig.conn)) == 6


def test_events_stamped_by_an_unsynchronised_clock_go_by_their_place_in_seq(
    tmp_path: Path,
) -> None:
    conn = connect(tmp_path / "gated.db")
    now = 1_770_000_000.0
    synced = FakeClock(now - 40 * DAY_S)
    booted_1970 = FakeClock(1000.0)  # a Pi without network: the clock starts at 1970

    def ledger(clock: FakeClock, ok: bool) -> Ledger:
        return Ledger(conn, site="s1", gate="g1", clock=clock, clock_synced=lambda: ok)

    for _ in range(3):
        ledger(synced, True).append(event("guard_on", guard="G1"))  # seq 1..3, 40 days ago
    for _ in range(2):
        ledger(booted_1970, False).append(event("guard_on", guard="G1"))  # 4, 5: "1970"
    synced.advance(30 * DAY_S)
    for _ in range(2):
        ledger(synced, True).append(event("guard_on", guard="G1"))  # 6, 7: 10 days ago
    deliver(conn, 100)

    events: list[dict[str, object]] = []
    today = FakeClock(now)
    plan = purge_now(Retention(conn, today, retention_days=30), lambda e: events.append(e.body()))
    # 4 and 5 claim 1970 but came after 3 and may be recent: they stay.
    assert plan is not None and plan.upto_seq == 3 and plan.events == 3
    assert seqs(conn) == [4, 5, 6, 7]
    today.advance(25 * DAY_S)
    plan = purge_now(Retention(conn, today, retention_days=30), lambda e: events.append(e.body()))
    assert plan is not None and plan.upto_seq == 7 and plan.events == 4
    assert seqs(conn) == []
    assert [e["events"] for e in events] == [3, 4]
    conn.close()


def test_quota_rows_are_kept_for_the_quota_window_and_pass_uses_for_a_year(rig: Rig) -> None:
    c = rig.conn
    now = rig.clock.time()
    for age_days in (1, 5, 40, 400):
        c.execute(
            "INSERT INTO quota_use(household, direction, ts, seq) VALUES ('H1', 'out', ?, 0)",
            (now - age_days * DAY_S,),
        )
        c.execute(
            "INSERT INTO pass_uses(jti, seq, ts) VALUES (?, 0, ?)",
            (f"j{age_days}", now - age_days * DAY_S),
        )
    plan = purge_now(Retention(c, rig.clock, retention_days=2, quota_window_h=72), print)
    assert plan is not None
    # The quota window (3 days) is longer than retention (2 days): it decides.
    assert [d for (d,) in c.execute("SELECT ts FROM quota_use ORDER BY ts DESC")] == [now - DAY_S]
    assert plan.quota_use == 3 and plan.pass_uses == 1
    assert {j for (j,) in c.execute("SELECT jti FROM pass_uses")} == {"j1", "j5", "j40"}


def test_the_database_stays_small(tmp_path: Path) -> None:
    path = tmp_path / "gated.db"
    conn = connect(path)
    assert conn.execute("PRAGMA auto_vacuum").fetchone() == (2,)  # INCREMENTAL, new files
    conn.execute("PRAGMA synchronous=OFF")  # only to fill the file fast
    clock = FakeClock()
    ledger = Ledger(conn, site="s1", gate="g1", clock=clock)
    for _ in range(60):
        for _ in range(50):
            ledger.append(event("device", device="camera", ok=True, detail="x" * 800))
        clock.advance(DAY_S)
    deliver(conn, 10**9)

    def pages() -> int:
        return int(conn.execute("PRAGMA page_count").fetchone()[0])

    full = pages()
    plan = purge_now(Retention(conn, clock, retention_days=30, vacuum_pages=100), print)
    assert plan is not None and plan.events == 30 * 50
    assert conn.execute("PRAGMA freelist_count").fetchone() == (0,)
    assert plan.pages_freed > 0
    # About half the events are gone, and so is about half the file.
    assert pages() < full * 0.6
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    assert path.stat().st_size == pages() * conn.execute("PRAGMA page_size").fetchone()[0]
    conn.close()


def test_the_service_purges_on_the_controller_thread_at_start(rig: Rig) -> None:
    for day in range(3):
        rig.wait(DAY_S if day else 0)
        one_arrival(rig)
    rig.wait(DAY_S / 2)  # days 0 and 1 (seq 1..4) are older than a day
    deliver(rig.conn, 100)
    stop = threading.Event()
    loop = threading.Thread(target=rig.controller.run, args=(stop,), daemon=True)
    loop.start()
    threads: list[str] = []
    rig.controller.observers.append(lambda e: threads.append(threading.current_thread().name))
    service = RetentionService(rig.controller, Retention(rig.conn, rig.clock, retention_days=1))
    try:
        service.start()
        wait_until(lambda: service.runs >= 1)
        assert service.last is not None and service.last.events == 4
        assert rig.events[-1]["kind"] == "purge"
        assert threads == [loop.name]  # recorded by the controller, not the timer
    finally:
        service.stop()
        stop.set()
        loop.join(timeout=10)
    assert not loop.is_alive()
    service.stop()  # twice is fine


def test_the_service_tries_again_soon_while_the_clock_is_unsynchronised(rig: Rig) -> None:
    rig.wait(3 * DAY_S)
    one_arrival(rig)
    rig.wait(3 * DAY_S)
    deliver(rig.conn, 100)
    answers = iter([False, False, False])
    retention = Retention(
        rig.conn, rig.clock, retention_days=1, clock_synced=lambda: next(answers, True)
    )
    stop = threading.Event()
    loop = threading.Thread(target=rig.controller.run, args=(stop,), daemon=True)
    loop.start()
    service = RetentionService(rig.controller, retention, unsynced_retry_s=0.01)
    try:
        service.start()
        wait_until(lambda: service.runs >= 4)  # three skipped, then the purge
        assert service.last is not None and service.last.events == 2
        assert service.runs == 4  # and then not again before a day has passed
    finally:
        service.stop()
        stop.set()
        loop.join(timeout=10)


def test_the_service_stops_while_the_controller_is_stalled(rig: Rig) -> None:
    # Nobody runs the controller loop: the first step never runs; stop must not hang.
    service = RetentionService(rig.controller, Retention(rig.conn, rig.clock, retention_days=1))
    service.start()
    wait_until(lambda: not rig.controller.queue.empty())
    service.stop()
    assert service.runs == 0 and service.failures == 0


def test_the_daemon_runs_the_retention_service(tmp_path: Path) -> None:
    config = make_config(tmp_path, status={"listen": ""}, storage={"retention_days": 7})
    app = App(config, clock=FakeClock())
    try:
        (service,) = [s for s in app.services if isinstance(s, RetentionService)]
        assert service.retention.retention_days == 7
        assert service.controller is app.controller
    finally:
        app.close()


def test_purge_event_is_a_known_kind() -> None:
    assert "purge" in KINDS and topic_for("purge") == "event"


def test_registered_cards_first_uses_outlive_the_purge_and_strangers_do_not(rig: Rig) -> None:
    one_arrival(rig)
    rig.feed("temp", 36.5)
    rig.feed("card", "DEADBEEF00")  # nobody's card: its uid must not outlive retention
    rig.wait(40 * DAY_S)
    rig.feed("temp", 36.5)
    rig.feed("card", "C0FFEE0000")  # a stranger's card of today stays with today's events
    deliver(rig.conn, 100)
    plan = purge_now(Retention(rig.conn, rig.clock, retention_days=30), rig.controller._record)
    assert plan is not None and plan.events == 3 and plan.card_first_use == 1
    rows = rig.conn.execute("SELECT uid, seq FROM card_first_use ORDER BY seq").fetchall()
    assert rows == [("0A1B2C3D4E", 1), ("C0FFEE0000", 4)]
    assert rig.events[-1]["kind"] == "purge" and rig.events[-1]["card_first_use"] == 1


# ---- undelivered events: no broker, and a broker never reached -----------------------


def outbox_rows(conn: sqlite3.Connection) -> int:
    return int(conn.execute("SELECT COUNT(*) FROM outbox").fetchone()[0])


def test_with_no_broker_no_event_waits_and_retention_purges_them(tmp_path: Path) -> None:
    # What the App builds for [mqtt] urls = []: a ledger that writes no outbox row.
    conn = connect(tmp_path / "gated.db")
    clock = FakeClock()
    ledger = Ledger(conn, site="s1", gate="g1", clock=clock, outbox=False)
    for _ in range(40):  # one a day, days 0..39, nobody ever delivers anything
        ledger.append(event("guard_on", guard="G1"))
        clock.advance(DAY_S)
    assert outbox_rows(conn) == 0
    events: list[dict[str, object]] = []
    plan = purge_now(Retention(conn, clock, retention_days=30), lambda e: events.append(e.body()))
    # Day 40: days 0..9 are past retention, and nothing keeps them.
    assert plan is not None and plan.events == 10 and plan.kept_undelivered == 0
    assert seqs(conn) == list(range(11, 41))
    assert [e["kind"] for e in events] == ["purge"]  # no undelivered ones: no alarm
    assert events[0]["undelivered_purged"] == 0
    conn.close()


def test_with_a_broker_never_reached_undelivered_events_go_after_undelivered_max_days(
    rig: Rig,
) -> None:
    # rig.ledger writes outbox rows (a broker configured); nothing is ever delivered.
    for day in range(100):
        rig.wait(DAY_S if day else 0)
        one_arrival(rig)  # seq 2d+1, 2d+2 on day d
    rig.wait(DAY_S / 2)  # day 99.5
    assert outbox_rows(rig.conn) == 200
    retention = Retention(rig.conn, rig.clock, retention_days=30, undelivered_max_days=90)

    plan = purge_now(retention, rig.controller._record)

    # The 90-day cutoff is day 9.5: days 0..9 (seq 1..20) go, undelivered as they are;
    # days 10..69 are past retention but kept for the broker.
    assert plan is not None and plan.undelivered_upto_seq == 20 and plan.upto_seq == 140
    assert plan.events == 20 and plan.undelivered_purged == 20
    assert plan.kept_undelivered == 120
    assert seqs(rig.conn)[0] == 21
    assert rig.conn.execute("SELECT MIN(seq) FROM outbox").fetchone() == (21,)
    purge, alarm = rig.events[-2:]
    assert purge["kind"] == "purge" and purge["undelivered_purged"] == 20
    assert (purge["events"], purge["kept_undelivered"]) == (20, 120)
    assert alarm["kind"] == "alarm" and alarm["alarm"] == "device"
    assert alarm["ref"] == purge["id"]
    assert "20 undelivered events purged" in alarm["detail"] and "90 days" in alarm["detail"]
    # Both are committed, and wait for the broker like any event.
    assert rig.conn.execute(
        "SELECT topic FROM outbox WHERE seq IN (?, ?) ORDER BY seq", (purge["seq"], alarm["seq"])
    ).fetchall() == [("event",), ("alarm",)]

    # The same day again: nothing more to purge, no second alarm.
    recorded = len(rig.events)
    again = purge_now(retention, rig.controller._record)
    assert again is not None and again.events == 0 and len(rig.events) == recorded

    # A day later the next day's undelivered pair goes, with one alarm again.
    rig.wait(DAY_S)
    plan = purge_now(retention, rig.controller._record)
    assert plan is not None and plan.events == 2 and plan.undelivered_purged == 2
    assert [e["kind"] for e in rig.events[recorded:]] == ["purge", "alarm"]
    assert "2 undelivered events purged" in rig.events[-1]["detail"]


def test_a_delivered_event_never_outlives_an_undelivered_one(rig: Rig) -> None:
    # undelivered_max_days below retention_days (the config refuses it) counts as equal.
    for day in range(5):
        rig.wait(DAY_S if day else 0)
        one_arrival(rig)
    rig.wait(DAY_S / 2)  # day 4.5
    retention = Retention(rig.conn, rig.clock, retention_days=3, undelivered_max_days=1)
    plan = purge_now(retention, rig.controller._record)
    assert plan is not None and plan.upto_seq == plan.undelivered_upto_seq == 4
    assert plan.events == plan.undelivered_purged == 4


def test_the_start_drops_the_outbox_when_no_broker_is_configured(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # A gate that had a broker: three events wait in its outbox.
    with_broker = make_config(
        tmp_path, status={"listen": ""}, mqtt={"urls": ["mqtt://127.0.0.1:9"]}
    )
    app = App(with_broker, clock=FakeClock())
    try:
        for _ in range(3):  # shifts that end: nothing is left open for the next start
            app.ledger.append(event("guard_off", guard="G1"))
        assert outbox_rows(app.conn) == 3
    finally:
        app.close()
    # Started again with a broker: they still wait.
    app = App(with_broker, clock=FakeClock())
    try:
        assert outbox_rows(app.conn) == 3
    finally:
        app.close()

    # Started with [mqtt] urls = []: nobody will deliver them, they go, said once.
    no_broker = make_config(tmp_path, status={"listen": ""})
    with caplog.at_level(logging.INFO, logger="gated.app"):
        app = App(no_broker, clock=FakeClock())
    try:
        assert outbox_rows(app.conn) == 0
        said = [r.getMessage() for r in caplog.records if "outbox" in r.getMessage()]
        assert len(said) == 1 and "dropped 3 undelivered events" in said[0]
        assert len(seqs(app.conn)) == 3  # the events stay in the ledger
        app.ledger.append(event("guard_on", guard="G1"))  # and no new row is written
        assert outbox_rows(app.conn) == 0
    finally:
        app.close()
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="gated.app"):
        App(no_broker, clock=FakeClock()).close()
    assert not [r for r in caplog.records if "outbox" in r.getMessage()]  # nothing to say


def test_the_daemon_passes_undelivered_max_days_to_retention(tmp_path: Path) -> None:
    config = make_config(
        tmp_path, status={"listen": ""}, storage={"retention_days": 7, "undelivered_max_days": 20}
    )
    app = App(config, clock=FakeClock())
    try:
        (service,) = [s for s in app.services if isinstance(s, RetentionService)]
        assert service.retention.undelivered_max_days == 20
    finally:
        app.close()
