"""``gated hub run`` on a real mosquitto with real ``gated run`` gates: every event once."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.hub import HubProcess
from tests.support.mosquitto import Mosquitto
from tests.support.site import WANG_CARD, ZHANG_CARD, Site


@pytest.fixture
def site(tmp_path: Path) -> Iterator[Site]:
    broker = Mosquitto(tmp_path / "broker", persistent=True).start()
    s = Site(tmp_path, {"in": "in", "out": "out"}, broker=broker)
    try:
        yield s
    finally:
        for g in s.gates.values():
            g.close()
        s.watch.close()
        broker.stop()


@pytest.fixture
def hub(tmp_path: Path, site: Site) -> Iterator[HubProcess]:
    h = HubProcess(tmp_path / "hub", site.broker.port)
    try:
        yield h
    finally:
        h.close()


def ledger_ids(site: Site, gate: str) -> list[tuple[int, str]]:
    return [(e["seq"], e["id"]) for e in site[gate].ledger()]


def test_every_event_of_every_gate_is_stored_once(site: Site, hub: HubProcess) -> None:
    hub.start()
    site.start()
    site.arrive("in", card=ZHANG_CARD)
    site.arrive("out", card=WANG_CARD)
    site.arrive("in", card="DEADBEEF00")  # an unknown card: denied, an event all the same
    for gate in ("in", "out"):
        want = ledger_ids(site, gate)
        row = hub.wait_through("s1", gate, want[-1][0])
        assert hub.rows("s1", gate)[: len(want)] == want
        assert row["missing"] == 0 and row["duplicates"] >= 0
        assert row["state"] == "online"
    # The hub's own retained status comes back on {prefix}/+/+/status: not a gate's, no refusal.
    assert hub.query("SELECT topic, code FROM hub_rejects") == []


def test_events_the_hub_never_had_are_asked_for_and_stored(site: Site, hub: HubProcess) -> None:
    # The gates run before the hub ever subscribed: the broker queued nothing for it.
    site.start()
    site.arrive("in", card=ZHANG_CARD)
    site.arrive("in", card=WANG_CARD)
    want = ledger_ids(site, "in")
    hub.start()
    row = hub.wait_through("s1", "in", want[-1][0], timeout=40)
    assert hub.rows("s1", "in")[: len(want)] == want
    assert row["missing"] == 0
    asked = hub.query("SELECT gate, first, ok FROM hub_replays WHERE gate = 'in'")
    assert asked and asked[0][1] == 1, asked


def test_a_hub_killed_and_a_broker_restarted_lose_nothing(site: Site, hub: HubProcess) -> None:
    hub.start()
    site.start()
    site.arrive("in", card=ZHANG_CARD)
    hub.wait_through("s1", "in", ledger_ids(site, "in")[-1][0])
    hub.kill()
    # While the hub is dead, the gate goes on; the broker queues for the hub's session.
    site.arrive("in", card=WANG_CARD)
    site.arrive("out", card=WANG_CARD)
    site.broker.stop()
    site.broker.start()
    site.arrive("in", card=ZHANG_CARD)
    hub.start()
    for gate in ("in", "out"):
        want = ledger_ids(site, gate)
        row = hub.wait_through("s1", gate, want[-1][0], timeout=40)
        got = hub.rows("s1", gate)
        assert got[: len(want)] == want
        assert len({s for s, _ in got}) == len(got)  # once each
        assert row["missing"] == 0
