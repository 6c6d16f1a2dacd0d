"""Registry sync: snapshots and deltas with a monotonic version, applied whole or not at all."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from gated import registry_sync
from gated.registry import Registry
from gated.registry_sync import RegistryMessageError, applied_version, apply, parse
from gated.storage import connect
from tests.mosquitto import publish
from tests.test_commands import Remote
from tests.waiting import wait_until

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
