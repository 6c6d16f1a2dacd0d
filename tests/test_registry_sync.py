"""Registry sync: snapshots and deltas with a monotonic version, applied whole or not at all."""

from __future__ import annotations

import json
import logging
import re
import subprocess
import sys
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import pytest

from drivers.common.base import Reading
from gated import registry_build
from gated.clock import iso_utc
from gated.mqtt import registry_sync
from gated.mqtt.registry_sync import RegistryMessageError, applied_version, apply, parse
from gated.registry import Registry
from gated.registry_build import SnapshotBuild, Snapshots
from gated.storage import connect
from tests.support.mosquitto import Collector, Mosquitto, publish
from tests.support.remote import Remote
from tests.support.rig import Rig
from tests.support.status_gate import Gate
from tests.support.waiting import wait_until

WHEN = "2026-03-01T00:00:00+00:00"


def snapshot(version: int, *persons: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"type": "snapshot", "version": version, "persons": list(persons), **extra}


def person(pid: str, *cards: str, **fields: Any) -> dict[str, Any]:
    return {"id": pid, "name": f"Person {pid}", "household": "H9", "cards": list(cards), **fields}


@pytest.fixture
def db(tmp_path: Path) -> Any:
    conn = connect(tmp_path / "gated.db")
    yield conn
    conn.close()


def test_snapshot_replaces_and_deltas_follow_in_order(db: Any) -> None:
    reg = Registry(db)
    apply(db, parse(snapshot(3, person("A", "AA01"), person("B", "BB01"))), WHEN)
    assert applied_version(db) == 3
    assert reg.card("aa01").known and reg.card("BB01").known
    # a newer snapshot without B: B inactive, B's card gone
    apply(db, parse(snapshot(4, person("A", "AA01"))), WHEN)
    assert reg.person("B").active is False  # type: ignore[union-attr]
    assert reg.card("BB01").person is None
    delta = {"type": "delta", "version": 5, "persons": [person("C", "CC01")]}
    apply(db, parse({**delta, "revoked_cards": ["AA01"]}), WHEN)
    assert reg.card("CC01").known and reg.card("AA01").revoked
    assert applied_version(db) == 5


@pytest.mark.parametrize(
    ("msg", "reason"),
    [
        ({"type": "delta", "version": 2}, "stale"),
        ({"type": "delta", "version": 5}, "gap"),
        (snapshot(1), "stale snapshot"),
        ({"type": "delta", "version": 3, "persons": [{"id": "Z", "cards": ["AA01"]}, 7]}, "not an"),
        ({"type": "delta", "version": 3, "persons": [{"id": "Z", "colour": "red"}]}, "unknown"),
        ({"type": "delta", "version": 3, "persons": [{"id": "Z"}, {"id": "Z"}]}, "twice"),
        ({"type": "delta", "version": 3, "remove_cards": "AA01"}, "not a list"),
        ({"type": "delta", "version": "3"}, "version"),
        ({"type": "full", "version": 3}, "type"),
    ],
)
def test_refused_messages_change_nothing(db: Any, msg: dict[str, Any], reason: str) -> None:
    apply(db, parse(snapshot(2, person("A", "AA01"))), WHEN)
    before = db.execute("SELECT * FROM persons ORDER BY id").fetchall()
    with pytest.raises(RegistryMessageError, match=reason):
        apply(db, parse(msg), WHEN)
    assert db.execute("SELECT * FROM persons ORDER BY id").fetchall() == before
    assert applied_version(db) == 2


def test_a_failing_change_is_rolled_back_whole(db: Any) -> None:
    apply(db, parse(snapshot(2, person("A", "AA01"))), WHEN)
    # the first person is fine, the card of the second points nowhere after the upsert:
    # simulate a constraint failure in the middle by a card on a person id that the
    # foreign key rejects (persons are upserted first, so force it through raw parse)
    change = parse({"type": "delta", "version": 3, "persons": [person("N", "NN01")]})
    change.cards["XX99"] = "nobody"
    with pytest.raises(RegistryMessageError, match="inconsistent"):
        apply(db, change, WHEN)
    assert Registry(db).person("N") is None
    assert applied_version(db) == 2


def test_retained_snapshot_and_delta_commands_over_mqtt(tmp_path: Path) -> None:
    remote = Remote(tmp_path)
    try:
        port = remote.broker.port
        publish(port, "gated/s1/registry", snapshot(10, person("R1", "AB12")), retain=True)
        reader = connect(remote.rig.config.storage.path)
        remote.col.wait_for(lambda m: applied_version(reader) == 10, timeout=30)
        reader.close()
        assert remote.rig.registry.card("AB12").known
        ok = remote.send(
            "registry", {"req": "d11", "type": "delta", "version": 11, "remove_persons": ["R1"]}
        )
        assert ok["ok"] is True and ok["version"] == 11
        assert not remote.rig.registry.card("AB12").known
        stale = remote.send("registry", {"req": "d10", "type": "delta", "version": 11})
        assert stale["ok"] is False and "stale" in stale["error"]
        gap = remote.send("registry", {"req": "d13", "type": "delta", "version": 13})
        assert gap["ok"] is False and "gap" in gap["error"]
        assert registry_sync.applied_version(remote.rig.conn) == 11
        status = [json.loads(p) for t, p, _ in remote.col.messages if t.endswith("/status")]
        assert status and status[0]["state"] == "online"
    finally:
        remote.close()


def test_a_gate_that_was_offline_catches_up_on_reconnect(tmp_path: Path) -> None:
    """A newer retained snapshot published while the gate is away is applied when it is back."""
    remote = Remote(tmp_path, door=True)
    assert remote.door is not None
    try:
        port = remote.broker.port
        reader = connect(remote.rig.config.storage.path)
        publish(port, "gated/s1/registry", snapshot(20, person("A", "AA01")), retain=True)
        wait_until(lambda: applied_version(reader) == 20, "snapshot 20 applied")
        remote.door.shut()
        wait_until(lambda: not remote.publisher.connected.is_set(), "the gate is cut off")
        sessions = remote.publisher.sessions
        publish(port, "gated/s1/registry", snapshot(21, person("B", "BB01")), retain=True)
        assert applied_version(reader) == 20  # it cannot have heard of it
        remote.door.open()
        wait_until(lambda: applied_version(reader) == 21, "snapshot 21 applied after reconnect")
        assert remote.publisher.sessions > sessions
        assert remote.rig.registry.card("BB01").known
        assert remote.rig.registry.card("AA01").person is None  # the snapshot replaced it
        reader.close()
    finally:
        remote.close()


# -- versions: integers from 1 to 2^53 - 1 ------------------------------------------------


@pytest.mark.parametrize(
    ("version", "reason"),
    [
        (10**20, "not from 1 to 2^53-1"),
        (2**53, "not from 1 to 2^53-1"),
        (0, "not from 1 to 2^53-1"),
        (-4, "not from 1 to 2^53-1"),
        (True, "not an integer"),
        (1.5, "not an integer"),
        (1e20, "not an integer"),
        ("7", "not an integer"),
        (None, "not an integer"),
    ],
)
def test_a_version_out_of_range_is_refused(version: Any, reason: str) -> None:
    with pytest.raises(RegistryMessageError, match=re.escape(f"version is {reason}")):
        parse(snapshot(version))  # type: ignore[arg-type]


def test_the_largest_version_is_taken(db: Any) -> None:
    apply(db, parse(snapshot(2**53 - 1, person("A", "AA01"))), WHEN)
    assert applied_version(db) == 2**53 - 1


def test_a_frozen_version_stored_earlier_no_longer_blocks_sync(db: Any, caplog: Any) -> None:
    db.execute("INSERT INTO meta(key, value) VALUES ('registry_version', ?)", (str(10**20),))
    with caplog.at_level(logging.WARNING, "gated.mqtt.registry_sync"):
        apply(db, parse(snapshot(5, person("A", "AA01"))), WHEN)
    assert applied_version(db) == 5
    assert "out of range" in caplog.text
    assert Registry(db).card("AA01").known


def test_a_huge_version_over_mqtt_is_refused_and_sync_goes_on(tmp_path: Path, caplog: Any) -> None:
    """Refused with a logged, counted reason; a later valid snapshot still applies, and the
    applied version shows in /api/state and T/status."""
    broker = Mosquitto(tmp_path).start()
    gate = Gate(tmp_path, mqtt={"urls": [broker.url]})
    try:
        wait_until(lambda: gate.state()["broker"]["connected"] is True, what="connected")
        assert gate.state()["registry_version"] == 0
        commands = gate.app.publisher.commands  # type: ignore[union-attr]
        with caplog.at_level(logging.WARNING, "gated.mqtt.publisher"):
            huge = b'{"type": "snapshot", "version": 100000000000000000000, "persons": []}'
            publish(broker.port, "gated/s1/registry", huge, retain=True)
            wait_until(lambda: commands.refused >= 1, what="the huge version refused")
        # the input guard stops it before the registry's own rule (versions 1 to 2^53-1)
        assert "registry message refused: integer out of range" in caplog.text
        assert commands.refusals["number"] == 1
        metrics = gate.get("/metrics")[2].decode()
        assert 'gated_mqtt_refused_total{code="number"} 1.0' in metrics
        assert applied_version(gate.app.conn) == 0
        publish(broker.port, "gated/s1/registry", snapshot(7, person("N", "AB12")), retain=True)
        wait_until(lambda: gate.state()["registry_version"] == 7, what="snapshot 7 on the screen")
        col = Collector(broker.port, ["gated/s1/g1/status"])
        try:
            col.wait_for(
                lambda m: any(json.loads(p).get("registry_version") == 7 for _, p, _ in m),
                timeout=30,
            )
        finally:
            col.close()
        assert gate.app.registry.card("AB12").known
    finally:
        gate.stop()
        broker.stop()


# -- a snapshot in steps -------------------------------------------------------------------


def build_all(conn: Any, msg: dict[str, Any], chunk: int = 2) -> str:
    build = SnapshotBuild(conn, parse(msg), WHEN, chunk=chunk)
    while (done := build.step()) is None:
        pass
    return done


def registry_rows(conn: Any) -> tuple[list[Any], list[Any]]:
    persons = conn.execute("SELECT * FROM persons ORDER BY id").fetchall()
    cards = conn.execute("SELECT uid, person, revoked_at FROM cards ORDER BY uid").fetchall()
    return persons, cards


def test_a_snapshot_in_steps_ends_as_one_applied_at_once(tmp_path: Path) -> None:
    """Chunked or whole, the same registry: absent persons inactive, absent cards gone, a
    card moved, a revoked card still revoked, revocations added, the version set."""
    first = snapshot(3, person("A", "AA01"), person("B", "BB01", "BB02"), person("C"))
    second = snapshot(
        4,
        person("A", "AA01", "BB02", unit="2-202"),
        person("D", "DD01", active=False),
        person("E"),
        revoked_cards=["AA01"],
        revoked_passes=["j1", "j2"],
        revoked_persons=["E"],
    )
    results = []
    for name, chunked in (("whole", False), ("steps", True)):
        conn = connect(tmp_path / f"{name}.db")
        apply(conn, parse(first), WHEN)
        Registry(conn).revoke_card("BB02", WHEN)
        if chunked:
            assert build_all(conn, second).startswith("snapshot 4 applied")
        else:
            apply(conn, parse(second), WHEN)
        passes = conn.execute("SELECT jti FROM revoked_passes ORDER BY jti").fetchall()
        revoked = [p for p in "ABCDE" if Registry(conn).person_revoked(p)]
        results.append((registry_rows(conn), passes + revoked, applied_version(conn)))
        conn.close()
    assert results[0] == results[1]
    (persons, cards), passes, version = results[1]
    assert version == 4 and passes == [("j1",), ("j2",), "E"]
    assert [(p[0], p[-1]) for p in persons] == [("A", 1), ("B", 0), ("C", 0), ("D", 0), ("E", 1)]
    assert [(c[0], c[1], c[2] is not None) for c in cards] == [
        ("AA01", "A", True),
        ("BB02", "A", True),  # moved to A, still revoked
        ("DD01", "D", False),
    ]


def test_until_the_swap_every_look_up_sees_the_old_registry(db: Any) -> None:
    apply(db, parse(snapshot(1, person("A", "AA01"))), WHEN)
    reg = Registry(db)
    build = SnapshotBuild(
        db, parse(snapshot(2, *(person(f"N{i}", f"C{i:03}") for i in range(50)))), WHEN, chunk=5
    )
    seen = []
    while build.step() is None:
        old = reg.card("AA01").known and reg.card("C007").person is None
        new = not reg.card("AA01").known and reg.card("C007").known
        assert old != new  # never half of each
        assert applied_version(db) == (1 if old else 2)
        seen.append(old)
    assert seen.count(True) > 20  # it did run in many steps before the swap
    assert seen == sorted(seen, reverse=True)  # old until the swap, then new
    assert not reg.card("AA01").known and reg.card("C007").known
    assert applied_version(db) == 2
    tables = {r[0] for r in db.execute("SELECT name FROM temp.sqlite_master")}
    assert not tables & set(registry_build._SIDE)  # side tables dropped


def test_a_delta_between_steps_is_compared_again_before_the_swap(db: Any) -> None:
    apply(db, parse(snapshot(1, person("A", "AA01"), person("B", "BB01"))), WHEN)
    build = SnapshotBuild(
        db, parse(snapshot(3, person("A", "AA01"), person("B", "BB01"))), WHEN, chunk=1
    )
    for _ in range(6):  # staged, partly compared
        assert build.step() is None
    # the delta makes B inactive and gives AA01 to B: the snapshot, newer, sets both back
    apply(
        db,
        parse({"type": "delta", "version": 2, "persons": [person("B", "AA01", active=False)]}),
        WHEN,
    )
    while build.step() is None:
        pass
    reg = Registry(db)
    assert reg.card("AA01").person.id == "A"  # type: ignore[union-attr]
    assert reg.person("B").active  # type: ignore[union-attr]
    assert applied_version(db) == 3


def drain(rig: Rig) -> None:
    """Run what waits in the controller's queue, as its loop would."""
    while not rig.controller.queue.empty():
        rig.controller.handle(rig.controller.queue.get_nowait())


def test_verdicts_are_decided_between_the_steps_and_the_newest_snapshot_wins(
    tmp_path: Path,
) -> None:
    rig = Rig(tmp_path)
    snaps = Snapshots(rig.controller.submit, rig.conn, lambda: WHEN)
    big = snapshot(5, *(person(f"N{i}", f"C{i:04}") for i in range(3000)))
    older: Future[dict[str, Any]] = snaps.apply(parse(big))
    rig.controller.handle(rig.controller.queue.get_nowait())  # begin: the first step
    assert snaps.building() == 5
    # a card shown now is decided on the old registry, before the build is through
    rig.clock.advance(0.1)
    rig.controller.put(Reading("temp", 36.6, "temp"))
    rig.controller.put(Reading("card", "0A1B2C3D4E", "card"))
    for _ in range(3):
        rig.controller.handle(rig.controller.queue.get_nowait())
    assert [d["decision"] for d in rig.decisions()] == ["granted"]
    assert applied_version(rig.conn) == 0 and snaps.building() == 5
    newer = snaps.apply(parse(snapshot(6, person("Z", "ZZ01"))))
    drain(rig)
    with pytest.raises(RegistryMessageError, match="abandoned for snapshot 6"):
        older.result(0)
    assert newer.result(0) == {"version": 6}
    assert rig.registry.card("ZZ01").known and rig.registry.card("C0007").person is None
    stale = snaps.apply(parse(snapshot(5)))
    drain(rig)
    with pytest.raises(RegistryMessageError, match="stale snapshot 5"):
        stale.result(0)


CRASH = """
import sys, time
from gated.registry_build import SnapshotBuild
from gated.mqtt.registry_sync import apply, parse
from gated.storage import connect
conn = connect(sys.argv[1])
apply(conn, parse({"type": "snapshot", "version": 1,
                   "persons": [{"id": "OLD", "cards": ["0001"]}]}), "t")
persons = [{"id": f"N{i}", "cards": [f"C{i:05}"]} for i in range(2000)]
build = SnapshotBuild(conn, parse({"type": "snapshot", "version": 2, "persons": persons}), "t",
                      chunk=50)
for _ in range(60):
    build.step()
print("mid-build", flush=True)
time.sleep(60)
"""


def test_a_crash_mid_build_leaves_the_old_registry(tmp_path: Path) -> None:
    path = tmp_path / "gated.db"
    proc = subprocess.Popen(
        [sys.executable, "-c", CRASH, str(path)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "mid-build"
    finally:
        proc.kill()
        proc.wait(10)
    conn = connect(path)
    try:
        assert applied_version(conn) == 1
        assert Registry(conn).card("0001").known and Registry(conn).card("C00007").person is None
        assert conn.execute("SELECT COUNT(*) FROM persons").fetchone()[0] == 1
        tables = conn.execute("SELECT name FROM sqlite_master WHERE name LIKE 'sync%'").fetchall()
        assert tables == []
        build_all(conn, snapshot(2, person("NEW", "0002")))
        assert Registry(conn).card("0002").known and applied_version(conn) == 2
    finally:
        conn.close()


STAMP = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z")


def test_every_path_stores_its_stamps_as_the_ledgers_ts(tmp_path: Path) -> None:
    """A snapshot, a delta (``cmd/registry``) and ``cmd/revoke`` stamp the same way."""
    remote = Remote(tmp_path)
    try:
        port = remote.broker.port
        people = [person("R1", "AB12"), person("R2", "CD34"), person("R3", "EF56")]
        publish(port, "gated/s1/registry", snapshot(10, *people, revoked_passes=["snap"]))
        reader = connect(remote.rig.config.storage.path)
        remote.col.wait_for(lambda m: applied_version(reader) == 10, timeout=30)
        reader.close()
        delta = {"req": "d11", "type": "delta", "version": 11, "revoked_cards": ["CD34"]}
        assert remote.send("registry", {**delta, "revoked_persons": ["R3"]})["ok"] is True
        assert remote.send("revoke", {"req": "c", "card": "AB12"})["ok"] is True
        assert remote.send("revoke", {"req": "j", "jti": "cmd"})["ok"] is True
        assert remote.send("revoke", {"req": "p", "person": "R9"})["ok"] is True
        conn = remote.rig.conn
        revoked = dict(conn.execute("SELECT uid, revoked_at FROM cards").fetchall())
        revoked |= dict(conn.execute("SELECT jti, revoked_at FROM revoked_passes").fetchall())
        revoked |= dict(conn.execute("SELECT person, revoked_at FROM revoked_persons").fetchall())
        assert sorted(revoked) == ["AB12", "CD34", "EF56", "R3", "R9", "cmd", "snap"]
        activated = [r[0] for r in conn.execute("SELECT activated_at FROM cards")]
        stamps = [*revoked.values(), *activated]
        assert all(STAMP.fullmatch(s) for s in stamps), stamps
        assert set(stamps) == {iso_utc(remote.now())}  # the gate's clock stands still
    finally:
        remote.close()
