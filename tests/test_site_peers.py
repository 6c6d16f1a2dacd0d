"""A gate hearing its peers on a real mosquitto: taken once, gaps replayed, junk refused."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from gated.clock import iso_utc
from gated.mqtt.link import Backoff
from gated.mqtt.publisher import Publisher
from gated.site.peers import THROUGH_EVERY_S, PeerBook
from tests.support.events import event
from tests.support.mosquitto import Collector, Door, Mosquitto
from tests.support.rig import Rig
from tests.support.waiting import wait_until

SITE = "gated/s1"


def peer_body(seq: int, gate: str = "g2", site: str = "s1", **fields: Any) -> dict[str, Any]:
    """An event as peer ``gate`` publishes it: built by the types, stamped by a ledger."""
    ev = event("device", device="card", ok=seq % 2 == 0)
    stamped = ev.stamped(
        id=f"{gate}-{seq}",
        ts=iso_utc(1_770_000_000 + seq),
        site=site,
        gate=gate,
        clock_synced=True,
        boot=1,
        seq=seq,
    )
    return {**stamped.body(), **fields}


class PeerClient:
    """One MQTT connection the test publishes peer messages on, each waited for."""

    def __init__(self, port: int):
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="peer-sender")
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()

    def send(self, topic: str, payload: Any, retain: bool = False) -> None:
        data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        self.client.publish(topic, data, qos=1, retain=retain).wait_for_publish(30)

    def events(self, *seqs: int, gate: str = "g2") -> None:
        for seq in seqs:
            self.send(f"{SITE}/{gate}/event", peer_body(seq, gate))

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


class SiteGate:
    """Gate g1 of site s1 with sharing on: controller thread, publisher, broker, listeners."""

    def __init__(self, tmp_path: Path, via_door: bool = False, **site: Any):
        self.broker = Mosquitto(tmp_path).start()
        self.door = Door(self.broker.port) if via_door else None
        url = self.door.url if self.door else self.broker.url
        self.rig = Rig(tmp_path, mqtt={"urls": [url]}, site={"reorder_s": 2.0, **site})
        self.ctl = self.rig.controller
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.ctl.run, args=(self.stop,), daemon=True)
        self.thread.start()
        self.col = Collector(self.broker.port, [f"{SITE}/+/cmd/replay", f"{SITE}/g1/status"])
        self.publisher = Publisher.for_controller(
            self.rig.config, self.ctl, backoff=Backoff(0.05, 0.5)
        )
        assert self.publisher.commands is not None and self.publisher.site is not None
        self.commands = self.publisher.commands
        self.feed = self.publisher.site
        assert self.ctl.peers is not None
        self.book: PeerBook = self.ctl.peers
        self.publisher.start()
        assert self.publisher.connected.wait(30)
        wait_until(lambda: self.book.checks > 0, "the first gap check")  # subscribed by then
        self.peer = PeerClient(self.broker.port)

    def peers(self) -> dict[str, Any]:
        return dict(self.ctl.submit(self.book.status).result(10))

    def taken(self, n: int) -> None:
        wait_until(lambda: self.book.taken + self.book.duplicates >= n, f"{n} peer events")

    def advance(self, seconds: float) -> None:
        """Move the gate's clock, then let two gap checks run on it."""
        self.ctl.submit(lambda: self.rig.clock.advance(seconds)).result(10)
        checks = self.book.checks
        wait_until(lambda: self.book.checks >= checks + 2, "two gap checks")

    def asks(self, peer: str = "g2") -> list[dict[str, Any]]:
        with self.col.cond:
            return [
                json.loads(p) for t, p, _ in self.col.messages if t == f"{SITE}/{peer}/cmd/replay"
            ]

    def statuses(self) -> list[dict[str, Any]]:
        with self.col.cond:
            return [json.loads(p) for t, p, _ in self.col.messages if t.endswith("/g1/status")]

    def answer(self, peer: str, req: str, **fields: Any) -> None:
        body = {"req": req, "ok": True, "error": None, "sent": 0, "purged": None, **fields}
        self.peer.send(f"{SITE}/{peer}/cmd_result", body)

    def close(self) -> None:
        self.peer.close()
        self.publisher.stop()
        self.stop.set()
        self.thread.join(10)
        self.col.close()
        if self.door:
            self.door.close()
        self.broker.kill()
        self.rig.conn.close()


@pytest.fixture
def gate(tmp_path: Path) -> Iterator[SiteGate]:
    g = SiteGate(tmp_path)
    yield g
    g.close()


def test_peer_events_are_taken_once_and_never_enter_the_ledger(gate: SiteGate) -> None:
    own = gate.rig.ledger.last_seq()
    gate.peer.events(1, 2, 3, 4, 5)
    gate.peer.events(3, 1, 5)  # duplicates, as a replay would send them again
    gate.taken(8)
    assert (gate.book.taken, gate.book.duplicates) == (5, 3)
    assert gate.peers() == {"g2": {"through": 5, "missing": 0, "online": True}}
    # never in the gate's own ledger or outbox, never published again
    assert gate.rig.ledger.last_seq() == own
    rows = gate.rig.conn.execute("SELECT COUNT(*) FROM events WHERE body LIKE '%g2-%'")
    assert rows.fetchone()[0] == 0
    stored = gate.rig.conn.execute("SELECT gate, through, highest, received FROM site_peers")
    assert stored.fetchall() == [("g2", 5, 5, 5)]
    # T/status says so (a new peer makes a new status within a second)
    gate.col.wait_for(lambda m: any(s.get("peers", {}).get("g2") for s in gate.statuses()))
    status = [s for s in gate.statuses() if s.get("peers", {}).get("g2")][-1]
    assert status["peers"]["g2"]["missing"] == 0 and status["last_seq"] == own


def test_a_through_that_moves_alone_is_in_the_status_within_a_second(gate: SiteGate) -> None:
    """No gap and no new peer: only ``through`` moves. The status shows it once a second
    of the gate's clock has passed, not at the next 30 s status."""

    def shown() -> int:
        told = [s["peers"]["g2"]["through"] for s in gate.statuses() if "g2" in s.get("peers", {})]
        return told[-1] if told else 0

    gate.peer.events(1)
    gate.taken(1)
    wait_until(lambda: shown() == 1, "through 1 in the status")
    gate.peer.events(2, 3)
    gate.taken(3)
    gate.advance(THROUGH_EVERY_S + 0.5)
    wait_until(lambda: shown() == 3, "through 3 in the status", timeout=10)


def test_a_kind_a_newer_peer_added_is_taken_and_teaches_nothing(gate: SiteGate) -> None:
    """A gate of a newer version may publish a kind this one does not know: its seq is
    known (no gap, no replay asked for ever after), it is not refused, it teaches nothing."""
    gate.peer.events(1)
    newer = {k: v for k, v in peer_body(2).items() if k not in ("device", "ok", "detail")}
    gate.peer.send(f"{SITE}/g2/event", {**newer, "kind": "visit", "visitor": {"id": "V1"}})
    gate.peer.events(3)
    gate.taken(3)
    assert gate.peers()["g2"] == {"through": 3, "missing": 0, "online": True}
    refused = {k: v for k, v in gate.commands.refusal_counts().items() if k.startswith("peer_")}
    assert refused == {}


def test_a_burst_of_1000_is_a_few_submits(gate: SiteGate) -> None:
    payloads = [json.dumps(peer_body(s)).encode() for s in range(1, 1001)]
    infos = [gate.peer.client.publish(f"{SITE}/g2/event", p, qos=1) for p in payloads]
    for info in infos:
        info.wait_for_publish(30)
    gate.taken(1000)
    assert gate.peers()["g2"] == {"through": 1000, "missing": 0, "online": True}
    assert gate.feed.submits < 100, gate.feed.submits


def test_a_gap_asks_one_replay_after_reorder_s(gate: SiteGate) -> None:
    gate.peer.events(1, 2, 5)
    gate.taken(3)
    assert gate.peers()["g2"] == {"through": 2, "missing": 2, "online": True}
    gate.advance(1.0)
    assert gate.asks() == []  # the gap may still be a late message
    gate.advance(1.5)
    gate.col.wait_for(lambda m: gate.asks() != [])
    ask = gate.asks()[0]
    assert (ask["from"], ask["to"], ask["by"]) == (3, 4, "g1")
    assert isinstance(ask["ts"], float) and ask["req"]
    gate.advance(5.0)  # not asked again before its answer (or its timeout)
    assert len(gate.asks()) == 1
    # the replayed events come, then the answer: nothing missing, nothing asked again
    gate.peer.events(3, 4)
    gate.answer("g2", ask["req"], sent=2, last_seq=5)
    wait_until(lambda: gate.peers()["g2"]["missing"] == 0, "the gap filled")
    gate.advance(120.0)  # past the timeout too
    assert len(gate.asks()) == 1
    # no status and nothing heard for 120 s: not online any more
    assert gate.peers()["g2"] == {"through": 5, "missing": 0, "online": False}


def test_a_late_message_fills_the_gap_without_a_replay(gate: SiteGate) -> None:
    gate.peer.events(1, 3)
    gate.peer.events(2)
    gate.taken(3)
    gate.advance(3.0)
    # a gap at another peer is asked for: had g2's been, it would have gone first
    gate.peer.events(2, gate="g3")
    wait_until(lambda: "g3" in gate.peers(), "g3 heard")
    gate.advance(3.0)
    gate.col.wait_for(lambda m: gate.asks("g3") != [])
    assert gate.asks("g2") == []
    assert gate.asks("g3")[0]["from"] == 1 and gate.asks("g3")[0]["to"] == 1


def test_a_purged_part_counts_as_known_and_a_status_shows_the_tail(gate: SiteGate) -> None:
    # a peer heard of only by its retained status: everything up to its last_seq is missing
    status = {"state": "online", "last_seq": 30, "backlog": 4}
    gate.peer.send(f"{SITE}/g3/status", status, retain=True)
    wait_until(lambda: gate.peers().get("g3", {}).get("missing") == 26, "g3's tail")
    gate.advance(2.5)
    gate.col.wait_for(lambda m: gate.asks("g3") != [])
    ask = gate.asks("g3")[0]
    assert (ask["from"], ask["to"]) == (1, 26)
    gate.peer.events(*range(21, 27), gate="g3")
    gate.answer("g3", ask["req"], sent=6, purged=[1, 20], last_seq=30)
    wait_until(lambda: gate.peers()["g3"]["through"] == 26, "the purged part known")
    # the four in its outbox then arrive live
    gate.peer.events(27, 28, 29, 30, gate="g3")
    wait_until(lambda: gate.peers()["g3"] == {"through": 30, "missing": 0, "online": True}, "g3")
    gate.peer.send(f"{SITE}/g3/status", {"state": "offline", "ts": None}, retain=True)
    wait_until(lambda: gate.peers()["g3"]["online"] is False, "g3 offline")


def test_a_long_gap_is_split_newest_first_with_two_asks_open(tmp_path: Path) -> None:
    gate = SiteGate(tmp_path, replay_max=100)
    try:
        gate.peer.events(1000)
        gate.taken(1)
        gate.advance(2.5)
        gate.col.wait_for(lambda m: len(gate.asks()) >= 2)
        gate.advance(1.0)
        asks = gate.asks()
        assert [(a["from"], a["to"]) for a in asks] == [(900, 999), (800, 899)]
        gate.answer("g2", asks[0]["req"], purged=[900, 999], last_seq=1000)
        gate.answer("g2", asks[1]["req"], purged=[800, 899], last_seq=1000)
        wait_until(lambda: gate.peers()["g2"]["missing"] == 0, "everything below known")
    finally:
        gate.close()


def test_hostile_messages_are_refused_counted_and_the_session_survives(gate: SiteGate) -> None:
    deep = b"[" * 50_000  # 50,000 levels (closing them would pass the size limit first)
    big_number = json.dumps(peer_body(1)).replace('"seq": 1', '"seq": ' + "9" * 400).encode()
    huge = b'{"kind": "device", "pad": "' + b"x" * 10_000_000 + b'"}'  # 10 MB
    no_seq = {k: v for k, v in peer_body(1).items() if k != "seq"}
    cases: list[tuple[str, Any, bool, str]] = [
        ("g2/event", deep, False, "peer_depth"),
        ("g2/event", big_number, False, "peer_number"),
        ("g2/event", huge, False, "peer_size"),
        ("g2/event", peer_body(1), True, "peer_retained"),
        ("g2/event", peer_body(1, site="s2"), False, "peer_site"),
        ("g2/event", peer_body(1, gate="g3"), False, "peer_gate"),
        ("g2/event", no_seq, False, "peer_event"),
        ("g2/event", {**peer_body(1), "seq": None}, False, "peer_header"),
        # A field this version does not know is a newer gate's (left out, not refused);
        # a known one of the wrong type is refused.
        ("g2/event", {**peer_body(1), "boot": "one"}, False, "peer_event"),
        ("g2/event", b"\xff\xfe", False, "peer_utf8"),
        ("g2/event", b"not json", False, "peer_json"),
        ("g2/alarm", peer_body(1), False, "peer_topic"),
        ("g2/status", {"state": "maybe"}, False, "peer_status"),
        ("g2/status", {"state": "online", "last_seq": -3}, False, "peer_status"),
        ("g2/cmd_result", b"[1, 2]", False, "peer_answer"),
    ]
    for leaf, payload, retain, _ in cases:
        gate.peer.send(f"{SITE}/{leaf}", payload, retain=retain)
    gate.peer.send(f"{SITE}/g2/event", b"", retain=True)  # clear the retained one
    gate.peer.send(f"{SITE}/g1/event", peer_body(7, gate="g1"))  # its own: skipped silently
    gate.peer.events(1)  # and a good one after all that
    gate.taken(1)
    expected: dict[str, int] = {}
    for *_, code in cases:
        expected[code] = expected.get(code, 0) + 1
    counts = {k: v for k, v in gate.commands.refusal_counts().items() if k.startswith("peer_")}
    assert counts == expected
    assert gate.publisher.sessions == 1 and gate.publisher.connected.is_set()
    assert gate.peers() == {"g2": {"through": 1, "missing": 0, "online": True}}


def test_events_queued_while_the_gate_was_away_arrive_on_reconnect(tmp_path: Path) -> None:
    gate = SiteGate(tmp_path, via_door=True, session_expiry_s=3600)
    try:
        gate.peer.events(1)
        gate.taken(1)
        assert gate.door is not None
        gate.door.shut()
        wait_until(lambda: not gate.publisher.connected.is_set(), "the gate cut off")
        gate.peer.events(2, 3, 4)  # the broker queues them in the gate's session
        gate.door.open()
        wait_until(lambda: gate.publisher.sessions >= 2, "a new session")
        gate.taken(4)
        assert gate.peers()["g2"] == {"through": 4, "missing": 0, "online": True}
        assert gate.asks() == []
    finally:
        gate.close()


def test_share_needs_a_broker(tmp_path: Path) -> None:
    from gated.errors import ConfigError

    with pytest.raises(ConfigError, match=r"site\.share: true needs a broker"):
        Rig(tmp_path, site={"share": True})
    assert Rig(tmp_path / "b").config.site.share is False


def test_after_its_own_outage_the_gate_asks_for_what_it_missed(tmp_path: Path) -> None:
    """A clean session (the default): the peer's retained status shows what went by."""
    gate = SiteGate(tmp_path, via_door=True)
    try:
        gate.peer.events(1)
        gate.taken(1)
        assert gate.door is not None
        gate.door.shut()
        wait_until(lambda: not gate.publisher.connected.is_set(), "the gate cut off")
        gate.peer.events(2, 3, 4)  # nobody keeps these for the gate
        gate.peer.send(f"{SITE}/g2/status", {"state": "online", "last_seq": 4, "backlog": 0}, True)
        gate.door.open()
        wait_until(lambda: gate.peers()["g2"]["missing"] == 3, "the tail seen in the status")
        gate.advance(2.5)
        gate.col.wait_for(lambda m: gate.asks() != [])
        assert [(a["from"], a["to"]) for a in gate.asks()] == [(2, 4)]
    finally:
        gate.close()


def test_the_screen_s_state_and_metrics_show_the_peers(tmp_path: Path) -> None:
    from tests.support.status_gate import Gate

    broker = Mosquitto(tmp_path).start()
    gate = Gate(tmp_path, mqtt={"urls": [broker.url]})
    peer = PeerClient(broker.port)
    try:
        wait_until(lambda: gate.app.publisher.connected.is_set(), "connected")
        pub = gate.app.publisher
        assert pub.site is not None
        wait_until(lambda: gate.app.controller.peers is not None and pub.site.book.checks, "on")
        peer.events(1, 2, 4)
        wait_until(lambda: "g2" in gate.state()["peers"], "the peer on the screen")
        wait_until(lambda: gate.state()["peers"]["g2"]["missing"] == 1, "its gap")
        assert gate.state()["peers"]["g2"] == {"through": 2, "missing": 1, "online": True}
        status, _, body = gate.get("/metrics")
        assert status == 200
        text = body.decode()
        assert 'gated_peer_missing{peer="g2"} 1.0' in text
        assert 'gated_peer_through{peer="g2"} 2.0' in text
        assert 'gated_peer_online{peer="g2"} 1.0' in text
    finally:
        peer.close()
        gate.stop()
        broker.kill()


def test_what_is_known_of_a_peer_survives_a_restart(tmp_path: Path) -> None:
    from gated.events import parse_event

    rig = Rig(tmp_path, mqtt={"urls": ["mqtt://127.0.0.1:1"]})
    book = PeerBook(rig.conn, rig.config, rig.clock)
    book.take([parse_event(peer_body(s)) for s in (1, 2, 3, 6)])
    assert book.status()["g2"] == {"through": 3, "missing": 2, "online": True}
    again = PeerBook(rig.conn, rig.config, rig.clock)  # the next start, same file
    assert again.status()["g2"] == {"through": 3, "missing": 2, "online": False}
    again.take([parse_event(peer_body(s)) for s in (2, 6, 4)])
    assert (again.taken, again.duplicates) == (1, 2)
    assert again.status()["g2"] == {"through": 4, "missing": 1, "online": True}
    rig.clock.advance(2.5)  # the gap from before the restart is asked for, once ripe
    assert [(a.peer, a.first, a.last) for a in again.due()] == [("g2", 5, 5)]
    assert again.due() == []
    rig.conn.close()
