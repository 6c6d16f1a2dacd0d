"""Commands over a real mosquitto: each answered on cmd_result, refusals change nothing."""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from drivers.common.base import DeviceHealth, Reading
from gated.mqtt.commands import REMEMBER_S
from tests.support.mosquitto import Collector, publish
from tests.support.remote import ROOT, Remote
from tests.support.waiting import wait_until


@pytest.fixture
def remote(tmp_path: Path) -> Iterator[Remote]:
    r = Remote(tmp_path)
    yield r
    r.close()


def test_open_records_a_remote_grant_and_opens(remote: Remote) -> None:
    result = remote.send("open", {"req": "r1", "by": "ops", "ts": remote.now()})
    assert result["req"] == "r1" and result["ok"] is True and result["error"] is None
    grant = next(e for e in remote.rig.stored() if e["id"] == result["event"])
    assert grant["decision"] == "granted"
    assert grant["credential"] == {"kind": "remote", "ref": "mqtt:ops", "color": None}
    assert "open" in remote.rig.turnstile.history


def test_mode_changes_and_a_bad_mode_changes_nothing(remote: Remote) -> None:
    ok = remote.send("mode", {"req": "m1", "mode": "locked"})
    assert ok["ok"] is True
    assert remote.rig.controller.mode == "locked"
    bad = remote.send("mode", {"req": "m2", "mode": "party"})
    assert bad["ok"] is False and "mode" in bad["error"]
    assert remote.rig.controller.mode == "locked"
    # a remote open is refused while locked: no grant recorded
    before = len(remote.rig.stored())
    refused = remote.send("open", {"req": "o1", "ts": remote.now()})
    assert refused["ok"] is False and "locked" in refused["error"]
    assert len(remote.rig.stored()) == before


@pytest.mark.parametrize(
    ("name", "payload", "reason"),
    [
        ("ping", b"{not json", "not valid JSON"),
        ("ping", b"[1, 2]", "not a JSON object"),
        ("ping", {"nothing": 1}, "req"),
        ("reboot", {"req": "x1"}, "unknown command"),
        ("open", {"req": "x2", "ts": 1_000.0}, "stale"),
        ("revoke", {"req": "x3"}, "exactly one"),
        ("revoke", {"req": "x4", "card": "FFFFFFFFFF"}, "no active card"),
        ("registry", {"req": "x5", "type": "snapshot", "version": 3}, "delta"),
    ],
)
def test_refused_with_a_reason(remote: Remote, name: str, payload: Any, reason: str) -> None:
    before = len(remote.rig.stored())
    result = remote.send(name, payload)
    assert result["ok"] is False
    assert reason in result["error"]
    assert len(remote.rig.stored()) == before
    assert remote.commands.refused >= 1


def test_a_replayed_req_is_refused(remote: Remote) -> None:
    assert remote.send("ping", {"req": "p1"})["ok"] is True
    again = remote.send("ping", {"req": "p1"})
    assert again["ok"] is False and "duplicate" in again["error"]


def test_ping_and_revoke(remote: Remote) -> None:
    pong = remote.send("ping", {"req": "p"})
    assert pong["ok"] is True and pong["mode"] == "normal" and "last_seq" in pong
    assert remote.send("revoke", {"req": "c", "card": "0a1b2c3d4e"})["ok"] is True
    assert remote.rig.registry.card("0A1B2C3D4E").revoked
    assert remote.send("revoke", {"req": "j", "jti": "pass-1"})["ok"] is True
    assert remote.rig.registry.pass_revoked("pass-1")


def test_a_revoke_is_recorded_and_published_with_the_uid_masked(tmp_path: Path) -> None:
    """Each revocation is a ``revoke`` event, so the gate's peers learn it (contracts §4b)."""
    remote = Remote(tmp_path, pii="masked")
    try:
        refused = remote.send("revoke", {"req": "x", "card": "FFFFFFFFFF"})
        assert refused["ok"] is False
        assert [e for e in remote.rig.stored() if e["kind"] == "revoke"] == []
        card = remote.send("revoke", {"req": "c", "card": "0a1b 2c3d4e", "by": "ops"})
        jti = remote.send("revoke", {"req": "j", "jti": "pass-1"})
        person = remote.send("revoke", {"req": "p", "person": "P2"})
        stored = [e for e in remote.rig.stored() if e["kind"] == "revoke"]
        assert [e["id"] for e in stored] == [card["event"], jti["event"], person["event"]]
        fields = [(e["what"], e["ref"], e["person"], e["by"]) for e in stored]
        assert fields == [
            ("card", "0A1B2C3D4E", {"id": "P1"}, "mqtt:ops"),
            ("pass", "pass-1", None, "mqtt:central"),
            ("person", "P2", {"id": "P2"}, "mqtt:central"),
        ]

        def published() -> list[dict[str, Any]]:
            with remote.col.cond:
                bodies = [json.loads(p) for t, p, _ in remote.col.messages if t == f"{ROOT}/event"]
            return [b for b in bodies if b["kind"] == "revoke"]

        remote.col.wait_for(lambda m: len(published()) == 3, timeout=30)
        sent = [(e["what"], e["ref"]) for e in published()]
        assert sent == [("card", "******3D4E"), ("pass", "pass-1"), ("person", "P2")]
    finally:
        remote.close()


def test_a_retained_command_is_refused_after_a_restart(remote: Remote) -> None:
    """A retained cmd/open runs once, live; the copy the broker keeps never opens again."""
    first = remote.send("open", {"req": "kept", "by": "ops", "ts": remote.now()}, retain=True)
    assert first["ok"] is True
    opens = remote.rig.turnstile.history.count("open")
    stored = len(remote.rig.stored())
    before = len(remote.results())
    remote.restart()  # the broker hands the retained copy to the new session
    remote.col.wait_for(lambda m: len(remote.results()) > before, timeout=30)
    again = remote.results()[before]
    assert again["req"] == "kept" and again["ok"] is False
    assert "retained" in again["error"]
    assert remote.rig.turnstile.history.count("open") == opens
    assert len(remote.rig.stored()) == stored
    assert remote.commands.refused == 1


def test_a_retained_command_is_refused_with_a_reason(remote: Remote) -> None:
    result = remote.send("mode", {"req": "r1", "mode": "locked"}, retain=True)
    assert result["ok"] is True  # live delivery: the broker clears the retain flag
    remote.restart()
    remote.col.wait_for(lambda m: len(remote.results()) >= 2, timeout=30)
    refused = remote.results()[1]
    assert refused == {
        "req": "r1",
        "ok": False,
        "error": "retained command refused: publish commands without retain"
        " (clear this one with an empty retained message)",
    }
    # clearing it (an empty retained message) is neither executed nor answered
    publish(remote.broker.port, f"{ROOT}/cmd/mode", b"", retain=True)
    assert remote.send("ping", {"req": "p"})["ok"] is True
    assert len(remote.results()) == 3


def test_status_follows_a_mode_command_and_a_device_failure(remote: Remote) -> None:
    """The retained status changes within seconds, not at the next 30 s status."""
    assert remote.publisher.status_interval_s >= 30
    assert remote.send("mode", {"req": "m", "mode": "locked"})["ok"] is True
    remote.col.wait_for(lambda m: any(s.get("mode") == "locked" for s in remote.statuses()), 10)
    remote.rig.controller.put(Reading("device", DeviceHealth(False, "unplugged"), "qr"))

    def qr_failed(m: Any) -> bool:
        return any(s.get("devices", {}).get("qr", {}).get("ok") is False for s in remote.statuses())

    remote.col.wait_for(qr_failed, 10)
    late = Collector(remote.broker.port, [f"{ROOT}/status"], client_id="late")
    try:
        late.wait_for(lambda m: any(r for _, _, r in m))
        retained = json.loads(next(p for _, p, r in late.messages if r))
        assert retained["mode"] == "locked" and retained["devices"]["qr"]["ok"] is False
        assert retained["turnstile"] == "locked" and retained["protocol"] == "5.0"
    finally:
        late.close()


def test_revoking_a_person_voids_their_cards_and_passes_a_card_only_itself(
    remote: Remote,
) -> None:
    rig = remote.rig

    def verdict(kind: str, value: str) -> dict[str, Any]:
        before = len(rig.decisions())
        rig.controller.put(Reading("temp", 36.6, "temp"))
        rig.controller.put(Reading(kind, value, kind))
        wait_until(lambda: len(rig.decisions()) > before, what=f"a verdict on the {kind}")
        rig.controller.submit(lambda: rig.clock.advance(10)).result(10)  # past the open window
        return rig.decisions()[before]

    p1_pass, p2_pass = rig.issue(sub="P1"), rig.issue(sub="P2", hh="H2")
    # a lost card: only that card is refused, the owner's pass still lets them in
    assert remote.send("revoke", {"req": "c", "card": "1122334455"})["ok"] is True
    assert verdict("card", "1122334455")["reasons"] == ["card_revoked"]
    assert verdict("qr", p2_pass)["decision"] == "granted"
    # the person: every card of theirs and every pass issued to them, whatever its jti
    result = remote.send("revoke", {"req": "p", "person": "P1"})
    assert result["ok"] is True and result["cards"] == 1
    assert verdict("card", "0A1B2C3D4E")["reasons"] == ["card_revoked"]
    assert verdict("qr", p1_pass)["reasons"] == ["pass_revoked"]
    assert verdict("qr", rig.issue(sub="P1"))["reasons"] == ["pass_revoked"]
    assert verdict("qr", p2_pass)["decision"] == "granted"
    # a visitor (no registry entry) can be revoked the same way: their passes
    visitor = rig.issue(sub="V9", hh="H9")
    assert remote.send("revoke", {"req": "v", "person": "V9"})["cards"] == 0
    assert verdict("qr", visitor)["reasons"] == ["pass_revoked"]
    both = remote.send("revoke", {"req": "b", "person": "P2", "card": "1122334455"})
    assert both["ok"] is False and "exactly one of card, jti or person" in both["error"]
    assert not rig.registry.person_revoked("P2")


def test_an_open_needs_a_finite_ts_close_to_the_gates_clock(remote: Remote) -> None:
    """NaN and a ts 115 days ahead once opened the gate; an open without ts could replay."""
    now = remote.now()
    refused = [
        (b'{"req": "n1", "ts": NaN}', "NaN is not a JSON number"),
        (b'{"req": "n2", "ts": -Infinity}', "-Infinity is not a JSON number"),
        (b'{"req": "n3", "ts": 1e400}', "number out of range"),
        ({"req": "n4", "ts": now + 115 * 86400}, "ahead of the gate's clock"),
        ({"req": "n5", "ts": now + 301}, "301 s ahead of the gate's clock"),
        ({"req": "n6", "ts": now - 301}, "stale command (301 s old)"),
        ({"req": "n7"}, "open needs ts (unix seconds)"),
        ({"req": "n8", "ts": "now"}, "ts is not unix seconds"),
        ({"req": "n9", "ts": True}, "ts is not unix seconds"),
    ]
    for payload, reason in refused:
        result = remote.send("open", payload)
        assert result["ok"] is False and reason in result["error"], (payload, result)
    assert "open" not in remote.rig.turnstile.history
    assert not [e for e in remote.rig.stored() if e["kind"] == "decision"]
    assert remote.commands.refusals["ts"] == 6 and remote.commands.refusals["number"] == 3
    # inside the window, either side of the gate's clock: taken
    assert remote.send("open", {"req": "w1", "ts": now - 299})["ok"] is True
    assert remote.send("open", {"req": "w2", "ts": now + 299})["ok"] is True
    assert remote.rig.turnstile.history.count("open") >= 1


def test_other_commands_may_go_without_ts_but_not_with_a_bad_one(remote: Remote) -> None:
    assert remote.send("ping", {"req": "p1"})["ok"] is True
    assert remote.send("mode", {"req": "m1", "mode": "locked"})["ok"] is True
    stale = remote.send("mode", {"req": "m2", "mode": "free", "ts": remote.now() - 3600})
    assert stale["ok"] is False and "stale" in stale["error"]
    future = remote.send("mode", {"req": "m3", "mode": "free", "ts": remote.now() + 3600})
    assert future["ok"] is False and "ahead" in future["error"]
    assert remote.rig.controller.mode == "locked"


def test_with_the_clock_not_synchronised_any_finite_ts_is_taken(remote: Remote) -> None:
    """A Pi without network may be years off: the window applies only to a synced clock."""
    remote.rig.synced = False
    far = remote.now() + 115 * 86400
    assert remote.send("open", {"req": "u1", "ts": far})["ok"] is True
    assert remote.send("open", {"req": "u2", "ts": 1_000.0})["ok"] is True
    # never without ts, never NaN
    assert "open needs ts" in remote.send("open", {"req": "u3"})["error"]
    assert "NaN" in remote.send("open", b'{"req": "u4", "ts": NaN}')["error"]


def test_a_req_with_control_characters_is_refused(remote: Remote) -> None:
    """A newline in a req once put a forged line into the journal."""
    bad = ["a\nINFO gated: #7 granted", "b\rc", "tab\there", "esc\x1b[2J", "nul\x00", "ls\u2028x"]
    for req in bad:
        result = remote.send("ping", {"req": req})
        assert result == {
            "req": None,
            "ok": False,
            "error": "req holds a control character (newline, tab, ...)",
        }
    by = remote.send("open", {"req": "o1", "by": "ops\nINFO gated: x", "ts": remote.now()})
    assert by["req"] == "o1" and by["ok"] is False and "by holds a control" in by["error"]
    assert "open" not in remote.rig.turnstile.history
    assert remote.commands.refusals["req"] == len(bad)
    # printable text of any script is a valid req
    assert remote.send("ping", {"req": "巡检-1 ok"})["ok"] is True


def test_a_handled_req_is_refused_after_the_gate_restarts(tmp_path: Path) -> None:
    """Handled reqs are in the database: a new controller on the same file knows them."""
    first = Remote(tmp_path)
    broker = first.broker
    try:
        opened = first.send("open", {"req": "o-1", "by": "ops", "ts": first.now()})
        assert opened["ok"] is True
        assert first.send("ping", {"req": "p-1"})["ok"] is True
    finally:
        first.close(keep_broker=True)
    second = Remote(tmp_path, broker=broker)  # a new controller, publisher and connection
    try:
        assert second.rig.ledger.boot == 2
        again = second.send("open", {"req": "o-1", "by": "ops", "ts": second.now()})
        assert again == {"req": "o-1", "ok": False, "error": "duplicate req (already handled)"}
        assert second.send("ping", {"req": "p-1"})["error"] == "duplicate req (already handled)"
        assert "open" not in second.rig.turnstile.history
        assert second.send("ping", {"req": "p-2"})["ok"] is True
    finally:
        second.close()


def test_a_req_is_remembered_past_a_thousand_newer_ones(remote: Remote) -> None:
    assert remote.send("ping", {"req": "first"})["ok"] is True
    publish_many(remote.broker.port, f"{ROOT}/cmd/ping", [{"req": f"n{i}"} for i in range(1000)])
    remote.col.wait_for(lambda m: len(remote.results()) >= 1001, timeout=120)
    assert all(r["ok"] for r in remote.results())
    again = remote.send("ping", {"req": "first"})
    assert again["ok"] is False and "duplicate" in again["error"]


def test_remembered_reqs_are_pruned_only_on_a_synchronised_clock(remote: Remote) -> None:
    """Kept 30 days: far past the 300 s window that refuses a replayed ts anyway."""
    assert remote.send("ping", {"req": "old"})["ok"] is True
    remote.rig.clock.advance(REMEMBER_S + 60)
    remote.rig.synced = False  # the gate's time cannot be trusted: nothing is forgotten
    assert remote.send("ping", {"req": "old"})["error"] == "duplicate req (already handled)"
    remote.rig.synced = True
    assert remote.send("ping", {"req": "old"})["ok"] is True  # forgotten after 30 days
    conn = sqlite3.connect(remote.rig.config.storage.path)
    try:
        kept = [r for (r,) in conn.execute("SELECT req FROM command_reqs ORDER BY ts")]
    finally:
        conn.close()
    assert kept == ["old"]


def publish_many(port: int, topic: str, payloads: list[Any]) -> None:
    """Publish many messages (QoS 1) on one connection, in order."""
    c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"many-{time.monotonic_ns()}")
    c.max_inflight_messages_set(100)
    c.connect("127.0.0.1", port)
    c.loop_start()
    try:
        infos = [c.publish(topic, json.dumps(p).encode(), qos=1) for p in payloads]
        for info in infos:
            info.wait_for_publish(timeout=30)
    finally:
        c.loop_stop()
        c.disconnect()
