"""``cmd/replay`` over a real mosquitto: the same events again, purged parts named, live first."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from gated.mqtt.link import Backoff
from gated.mqtt.publisher import Publisher
from gated.mqtt.replay import MAX_NUMBERS, MAX_OPEN, Replayer, ReplayRefused
from gated.retention import DAY_S, Retention, purge_now
from tests.support.events import event
from tests.support.mosquitto import publish
from tests.support.replay_gate import Gate

ROOT = "gated/s1/g1"


@pytest.fixture
def gate(tmp_path: Path) -> Iterator[Gate]:
    g = Gate(tmp_path)
    yield g
    g.close()


def event_messages(messages: list[tuple[str, bytes]]) -> list[tuple[str, bytes]]:
    return [(t, p) for t, p in messages if t.endswith(("/event", "/alarm"))]


@pytest.mark.parametrize("pii", ["masked", "none", "full"])
def test_a_range_comes_again_as_it_came_live(tmp_path: Path, pii: str) -> None:
    """Same topic, same bytes: id, seq and the body under the gate's pii setting."""
    gate = Gate(tmp_path, pii=pii)
    try:
        gate.arrive("0A1B2C3D4E", 36.6)  # granted: a decision and a passage
        gate.arrive("1122334455", 38.5, 38.6)  # fever (measured again): a denial, an alarm
        gate.arrive("1122334455", 36.7)  # a yellow card: needs the guard
        gate.record(3)
        gate.delivered()
        live = event_messages(gate.messages())
        by_seq = {json.loads(p)["seq"]: (t, p) for t, p in live}
        last = gate.last_seq()
        assert sorted(by_seq) == list(range(1, last + 1))
        assert any(t == f"{ROOT}/alarm" for t, _ in live)
        seen = len(gate.messages())

        answer = gate.send({"req": "r1", "from": 2, "to": last - 1})

        assert answer == {
            "req": "r1",
            "ok": True,
            "error": None,
            "sent": last - 2,
            "purged": None,
            "last_seq": last,
        }
        again = event_messages(gate.messages()[seen:])
        assert again == [by_seq[s] for s in range(2, last)]  # in seq order, byte for byte
        fever = next(json.loads(p) for t, p in again if t.endswith("/alarm"))
        if pii == "none":
            assert fever["temperature_c"] is None and "name" not in fever["person"]
            assert fever["person"]["household"] == "H2"
        elif pii == "masked":
            assert fever["person"]["id_number"] == "3206**********2345"
        else:
            assert fever["person"]["name"] == "Li Na" and fever["temperature_c"] == 38.6
        # a replay is no outbox row: nothing was deleted for it, nothing waits
        assert gate.publisher.delivered == last and gate.rig.ledger.backlog() == 0
        # the answer comes after the last replayed event
        assert gate.messages()[-1][0] == f"{ROOT}/cmd_result"
    finally:
        gate.close()


def test_the_purged_part_is_named_and_the_rest_sent(gate: Gate) -> None:
    rig = gate.rig
    for _ in range(10):  # ten days, four events a day: seq 4d+1 .. 4d+4 on day d
        gate.record(4)
        gate.ctl.submit(lambda: rig.clock.advance(DAY_S)).result(10)
    gate.delivered()
    retention = Retention(rig.conn, rig.clock, retention_days=5)
    plan = gate.ctl.submit(lambda: purge_now(retention, gate.ctl._record)).result(30)
    assert plan is not None and plan.upto_seq == 20 and plan.events == 20
    last = gate.last_seq()
    assert last == 41  # the purge event
    gate.delivered()

    answer = gate.send({"req": "p1", "from": 15, "to": 30})
    assert (answer["ok"], answer["sent"], answer["purged"]) == (True, 10, [15, 20])
    seen = len(gate.messages())
    all_gone = gate.send({"req": "p2", "from": 1, "to": 20})
    assert (all_gone["sent"], all_gone["purged"]) == (0, [1, 20])
    assert event_messages(gate.messages()[seen:]) == []
    # numbers beyond the last seq are not handed out yet: neither sent nor purged
    beyond = gate.send({"req": "p3", "from": 40, "to": 60})
    assert (beyond["sent"], beyond["purged"], beyond["last_seq"]) == (2, None, 41)
    later = gate.send({"req": "p4", "from": 100, "to": 200})
    assert (later["sent"], later["purged"], later["last_seq"]) == (0, None, 41)
    whole = gate.send({"req": "p5", "from": 1, "to": MAX_NUMBERS})  # the largest range
    assert (whole["sent"], whole["purged"]) == (21, [1, 20])


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        ({"from": 1, "to": MAX_NUMBERS + 1}, "from 1 to 10001 is 10001 numbers: at most 10000"),
        ({"from": 9, "to": 3}, "from 9 is after to 3"),
        ({"from": 1.5, "to": 3}, "from is not a whole number (a ledger seq): '1.5'"),
        ({"from": 1, "to": "3"}, "to is not a whole number (a ledger seq): '3'"),
        ({"from": True, "to": 3}, "from is not a whole number"),
        ({"from": -4, "to": 3}, "from is -4: a ledger seq starts at 1"),
        ({"from": 0, "to": 3}, "from is 0: a ledger seq starts at 1"),
        ({"to": 3}, "replay needs from (a ledger seq, a whole number from 1)"),
        ({"from": 3}, "replay needs to (a ledger seq, a whole number from 1)"),
        ({"from": None, "to": 3}, "from is not a whole number"),
    ],
)
def test_a_bad_range_is_refused_with_a_reason(gate: Gate, payload: Any, reason: str) -> None:
    gate.record(3)
    gate.delivered()
    seen = len(gate.messages())
    answer = gate.send({"req": "bad", **payload})
    assert answer["req"] == "bad" and answer["ok"] is False
    assert reason in answer["error"], answer
    assert gate.commands.refusals["range"] == 1
    assert event_messages(gate.messages()[seen:]) == []


def test_a_replay_follows_the_rules_of_every_command(gate: Gate) -> None:
    """Refused when retained, with a stale ts, or with a req already handled."""
    gate.record(2)
    gate.delivered()
    assert gate.send({"req": "once", "from": 1, "to": 2})["sent"] == 2
    again = gate.send({"req": "once", "from": 1, "to": 2})
    assert again == {"req": "once", "ok": False, "error": "duplicate req (already handled)"}
    stale = gate.send({"req": "old", "from": 1, "to": 2, "ts": gate.rig.clock.time() - 3600})
    assert stale["ok"] is False and "stale" in stale["error"]
    seen = len(gate.messages())
    retained = json.dumps({"req": "ret", "from": 1, "to": 2}).encode()
    publish(gate.broker.port, f"{ROOT}/cmd/replay", retained, retain=True)
    gate.col.wait_for(lambda m: any(r.get("req") == "ret" for r in gate.results()), 30)
    # live delivery clears the retain flag: only a reconnect shows it retained
    assert next(r for r in gate.results() if r.get("req") == "ret")["ok"] is True
    gate.publisher.stop()
    gate.ctl.observers.remove(gate.publisher.observe)
    gate.publisher = Publisher.for_controller(gate.rig.config, gate.ctl, backoff=Backoff(0.05, 0.5))
    gate.publisher.start()
    gate.col.wait_for(lambda m: sum(r.get("req") == "ret" for r in gate.results()) == 2, 30)
    refused = [r for r in gate.results() if r.get("req") == "ret"][1]
    assert refused["ok"] is False and "retained" in refused["error"]
    assert len(event_messages(gate.messages()[seen:])) == 2  # the live one only
    publish(gate.broker.port, f"{ROOT}/cmd/replay", b"", retain=True)


def test_a_replay_during_live_traffic_keeps_the_live_stream_whole(gate: Gate) -> None:
    """Live events go first between batches, in order; their outbox rows go on PUBACK."""
    n = 5_000
    gate.record(n)
    gate.delivered()
    assert gate.publisher.delivered == n
    seen = len(gate.messages())
    answered = threading.Event()
    live: list[int] = []

    def traffic() -> None:
        while not answered.is_set() or len(live) < 20:
            ev = gate.ctl.submit(
                lambda: gate.ctl._record(event("device", device="qr", ok=True))
            ).result(10)
            live.append(int(ev.seq or 0))
            answered.wait(0.002)

    feeder = threading.Thread(target=traffic, daemon=True)
    feeder.start()
    publish(gate.broker.port, f"{ROOT}/cmd/replay", {"req": "big", "from": 1, "to": n})
    gate.col.wait_for(lambda m: any(r.get("req") == "big" for r in gate.results()), 60)
    answered.set()
    feeder.join(30)
    gate.delivered()

    after = gate.messages()[seen:]
    answer = next(json.loads(p) for t, p in after if t.endswith("/cmd_result"))
    assert (answer["ok"], answer["sent"], answer["purged"]) == (True, n, None)
    seqs = [json.loads(p)["seq"] for t, p in event_messages(after)]
    replayed = [s for s in seqs if s <= n]
    arrived_live = [s for s in seqs if s > n]
    assert replayed == list(range(1, n + 1))
    assert arrived_live == live  # every live event, once, in seq order
    # live events were not held back until the replay ended: some came between its events
    kinds = ["live" if s > n else "replayed" for s in seqs]
    first, last = kinds.index("replayed"), len(kinds) - 1 - kinds[::-1].index("replayed")
    assert "live" in kinds[first:last]
    assert gate.publisher.delivered == n + len(live) and gate.rig.ledger.backlog() == 0


def test_replays_queue_one_after_another(gate: Gate) -> None:
    gate.record(300)
    gate.delivered()
    seen = len(gate.messages())
    for i in range(3):
        publish(gate.broker.port, f"{ROOT}/cmd/replay", {"req": f"q{i}", "from": 1, "to": 300})
    gate.col.wait_for(lambda m: len(gate.results()) >= 3, 60)
    assert [(r["req"], r["sent"]) for r in gate.results()] == [(f"q{i}", 300) for i in range(3)]
    seqs = [json.loads(p)["seq"] for t, p in event_messages(gate.messages()[seen:])]
    assert seqs == list(range(1, 301)) * 3  # one at a time, never mixed


def test_at_most_eight_requests_are_open() -> None:
    replayer = Replayer("gated/s1/g1", 1, lambda body: body.encode(), lambda: None)
    answers = [replayer.request(f"r{i}", 1, 10) for i in range(MAX_OPEN)]
    with pytest.raises(ReplayRefused, match="replay busy: 8 requests already open"):
        replayer.request("one-more", 1, 10)
    replayer.abandon("the gate is stopping")
    assert all("interrupted: the gate is stopping" in str(a.exception()) for a in answers)
    replayer.request("now-there-is-room", 1, 10)


def test_a_stop_during_a_replay_answers_it_before_going_offline(gate: Gate) -> None:
    n = 5_000
    gate.record(n)
    gate.delivered()
    seen = len(gate.messages())
    publish(gate.broker.port, f"{ROOT}/cmd/replay", {"req": "cut", "from": 1, "to": n})
    gate.col.wait_for(lambda m: len(event_messages(gate.messages()[seen:])) >= 100, 30)
    gate.publisher.stop()
    gate.col.wait_for(lambda m: any(r.get("req") == "cut" for r in gate.results()), 30)
    answer = next(r for r in gate.results() if r.get("req") == "cut")
    assert answer == {
        "req": "cut",
        "ok": False,
        "error": "replay interrupted: the gate is stopping; ask again",
    }
    after = gate.messages()[seen:]
    replayed = len(event_messages(after))
    assert 100 <= replayed < n
    answer_at = next(i for i, (t, _) in enumerate(after) if t.endswith("/cmd_result"))
    offline_at = next(
        i for i, (t, p) in enumerate(after) if t.endswith("/status") and b'"offline"' in p
    )
    assert answer_at < offline_at
    assert gate.commands.refusals["interrupted"] == 1
