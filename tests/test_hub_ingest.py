"""``gated hub run`` on a real mosquitto with real ``gated run`` gates: every event once."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from gated.clock import iso_utc
from gated.events import Device
from gated.retention import DAY_S, Retention, purge_now
from tests.support.gate_process import COLUMNS
from tests.support.hub import HubProcess
from tests.support.mosquitto import Mosquitto, publish
from tests.support.notify import NotifySocket
from tests.support.replay_gate import Gate
from tests.support.site import SITE_PEOPLE, WANG_CARD, ZHANG_CARD, Site
from tests.support.waiting import wait_until


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


def test_a_part_the_gate_purged_is_counted_purged_not_missing(tmp_path: Path) -> None:
    gate = Gate(tmp_path / "gate")
    hub = HubProcess(tmp_path / "hub", gate.broker.port)
    try:
        rig = gate.rig
        for _ in range(10):  # ten days, four events a day
            gate.record(4)
            gate.ctl.submit(lambda: rig.clock.advance(DAY_S)).result(10)
        gate.delivered()  # an event the broker never had would be kept, not purged
        retention = Retention(rig.conn, rig.clock, retention_days=5)
        plan = gate.ctl.submit(lambda: purge_now(retention, gate.ctl._record)).result(30)
        assert plan is not None and plan.upto_seq == 20
        last = gate.last_seq()
        gate.delivered()
        # The hub starts after all that: 1..20 are gone at the gate, 21..last are there.
        # (The gate's fake clock is months behind the hub's: as if never synchronised, so
        # the hub's replay requests are not refused as from the future.)
        rig.synced = False
        hub.start()
        row = hub.wait_through("s1", "g1", last, timeout=40)
        assert (row["purged"], row["missing"], row["received"]) == (20, 0, last - 20)
        assert [s for s, _ in hub.rows("s1", "g1")] == list(range(21, last + 1))
        assert hub.query("SELECT first, last FROM hub_purged") == [(1, 20)]
    finally:
        hub.close()
        gate.close()


def stamped(seq: int, site: str = "s1", gate: str = "g1") -> dict[str, Any]:
    event = Device.health("card", True, "reader answers").stamped(
        id=str(uuid.uuid4()),
        seq=seq,
        ts=iso_utc(time.time()),
        site=site,
        gate=gate,
        clock_synced=True,
        boot=1,
    )
    return event.body()


def test_hostile_messages_are_kept_aside_and_the_stream_goes_on(tmp_path: Path) -> None:
    broker = Mosquitto(tmp_path / "broker").start()
    hub = HubProcess(tmp_path / "hub", broker.port)
    try:
        hub.start()
        base = "gated/s1/g1"
        publish(broker.port, f"{base}/event", stamped(1))
        publish(broker.port, f"{base}/event", b"[" * 50_000)  # nested past any parser
        publish(broker.port, f"{base}/event", b"\xff\xfe not UTF-8")
        publish(broker.port, f"{base}/event", b"9" * 400)  # a 400-digit number
        publish(broker.port, f"{base}/event", stamped(2, site="s2"))  # another site's body
        publish(broker.port, f"{base}/event", {"kind": "decision", "seq": 3})  # no header
        alarm = stamped(3) | {"kind": "alarm", "alarm": "fever", "detail": "38.2"}
        publish(broker.port, f"{base}/event", alarm)  # an alarm on the event topic
        publish(broker.port, f"{base}/status", {"state": "online", "last_seq": -4})
        publish(broker.port, f"{base}/event", stamped(2))
        hub.wait_through("s1", "g1", 2)
        codes = sorted(c for (c,) in hub.query("SELECT code FROM hub_rejects"))
        assert codes == sorted(
            ["depth", "utf8", "number", "site_gate", "event", "topic", "status"]
        ), codes
        assert hub.rows("s1", "g1")[-1][0] == 2
        assert hub.daemon is not None and hub.daemon.proc.poll() is None
    finally:
        hub.close()
        broker.stop()


def test_a_gate_cut_off_from_the_broker_catches_up_at_the_hub(site: Site, hub: HubProcess) -> None:
    hub.start()
    site.start()
    site.arrive("in", card=ZHANG_CARD)
    hub.wait_through("s1", "in", ledger_ids(site, "in")[-1][0])
    site.doors["in"].shut()
    # Offline, the gate decides all the same; its outbox keeps what the hub has not had.
    site.arrive("in", card=WANG_CARD)
    site.arrive("in", card=ZHANG_CARD)
    assert hub.gate("s1", "in")["through"] < ledger_ids(site, "in")[-1][0]  # type: ignore[index]
    site.doors["in"].open()
    want = ledger_ids(site, "in")
    row = hub.wait_through("s1", "in", want[-1][0], timeout=40)
    assert hub.rows("s1", "in")[: len(want)] == want
    assert row["missing"] == 0


@pytest.mark.parametrize("group", ["hub", ""])
def test_two_hub_instances_on_one_database_store_each_event_once(
    tmp_path: Path, site: Site, group: str
) -> None:
    """With a share group the broker hands each event to one of them; with plain
    subscriptions both take every event, and the store keeps it once."""
    db = tmp_path / "shared" / "hub.db"
    db.parent.mkdir()
    hubs = [
        HubProcess(
            tmp_path / name,
            site.broker.port,
            hub_id=name,
            hub={"database": f"sqlite:///{db}", "share_group": group},
        )
        for name in ("h1", "h2")
    ]
    try:
        for h in hubs:
            h.start()
        site.start()
        for card in (ZHANG_CARD, WANG_CARD, ZHANG_CARD, WANG_CARD):
            site.arrive("in", card=card)
        site.arrive("out", card=WANG_CARD)
        for gate in ("in", "out"):
            want = ledger_ids(site, gate)
            row = hubs[0].wait_through("s1", gate, want[-1][0], timeout=40)
            assert row["missing"] == 0
            got = hubs[0].rows("s1", gate)
            assert got[: len(want)] == want
    finally:
        for h in hubs:
            h.close()


def test_the_hubs_daily_report_gives_each_gate_its_own_figures(site: Site, hub: HubProcess) -> None:
    hub.start()
    site.start()
    site.arrive("in", card=ZHANG_CARD)
    site.arrive("in", card="DEADBEEF00")  # not registered
    site.arrive("in", card=WANG_CARD, temp=38.4)  # fever
    site.arrive("out", card=WANG_CARD)
    for gate in ("in", "out"):
        site[gate].stop()  # its ledger complete (a grant's passage comes after open_s)
        hub.wait_through("s1", gate, ledger_ids(site, gate)[-1][0])
    day = hub.query("SELECT max(ts) FROM hub_events")[0][0]
    local = datetime.fromisoformat(day.replace("Z", "+00:00")).astimezone(ZoneInfo("Asia/Shanghai"))
    when = local.date().isoformat()
    cli = [sys.executable, "-m", "gated.cli"]
    out = subprocess.run(
        [*cli, "hub", "report", "daily", "-c", str(hub.config), "--date", when, "--format", "json"],
        capture_output=True,
        text=True,
        check=True,
    )
    report = json.loads(out.stdout)
    by_gate = {g["gate"]: g for g in report["gates"]}
    for gate in ("in", "out"):
        own = subprocess.run(
            [
                *cli,
                "report",
                "daily",
                "-c",
                str(site[gate].config),
                "--date",
                when,
                "--format",
                "json",
            ],
            capture_output=True,
            text=True,
            check=True,
        )
        mine = json.loads(own.stdout)
        # Every figure of the gate's own report, as the gate computed it from its ledger.
        assert {k: v for k, v in by_gate[gate].items() if k in mine} == mine, gate
        assert by_gate[gate]["missing"] == 0
    assert report["sites"]["s1"]["fever_alarms"] == 1


def test_a_seq_held_with_another_id_is_kept_aside_not_dropped(tmp_path: Path) -> None:
    """A gate whose ledger started again from 1 (a new SD card) sends seq 1 again with
    a new id: not a duplicate to drop silently, but a conflict the hub shows."""
    broker = Mosquitto(tmp_path / "broker").start()
    hub = HubProcess(tmp_path / "hub", broker.port)
    try:
        hub.start()
        first = stamped(1)
        publish(broker.port, "gated/s1/g1/event", first)
        hub.wait_through("s1", "g1", 1)
        publish(broker.port, "gated/s1/g1/event", first)  # at least once: a duplicate
        publish(broker.port, "gated/s1/g1/event", stamped(1))  # seq 1 again, another id
        publish(broker.port, "gated/s1/g1/event", stamped(2))
        row = hub.wait_through("s1", "g1", 2)
        assert hub.rows("s1", "g1")[0] == (1, first["id"])
        assert (row["duplicates"], row["conflicts"]) == (1, 1)
        # Kept whole beside the stored one, for the operator to look at.
        kept = hub.query("SELECT seq, id, body FROM hub_conflicts")
        assert [(q, i) for q, i, _ in kept] == [(1, json.loads(kept[0][2])["id"])]
        assert kept[0][1] != first["id"]
        assert hub.query("SELECT count(*) FROM hub_rejects") == [(0,)]
    finally:
        hub.close()
        broker.stop()


def hub_cli(hub: HubProcess, *args: str) -> subprocess.CompletedProcess[str]:
    cli = [sys.executable, "-m", "gated.cli", "hub", *args, "-c", str(hub.config)]
    return subprocess.run(cli, capture_output=True, text=True, timeout=60)


def test_a_registry_from_the_running_hub_reaches_every_gate_and_the_fleet_shows_it(
    tmp_path: Path, site: Site, hub: HubProcess
) -> None:
    hub.start()
    site.start()
    csv = tmp_path / "registry.csv"
    csv.write_text("".join(line + "\n" for line in (COLUMNS, *SITE_PEOPLE)), encoding="utf-8")
    published = hub_cli(hub, "registry", "publish", str(csv), "--site", "s1")
    assert published.returncode == 0, published.stderr
    version = int(re.findall(r"\d+", published.stdout)[0])

    def versions() -> dict[str, int | None]:
        rows = json.loads(hub_cli(hub, "gates", "--format", "json").stdout)
        return {r["gate"]: r["registry_version"] for r in rows}

    wait_until(lambda: versions() == {"in": version, "out": version}, "both gates applied it")
    site["out"].stop()
    revoked = hub_cli(hub, "revoke", "--site", "s1", "--card", WANG_CARD)
    assert revoked.returncode == 0, revoked.stderr
    wait_until(lambda: versions()["in"] == version + 1, "the online gate applied the revoke")
    assert versions()["out"] == version  # behind, and the fleet view says so
    assert "card_revoked" in site.arrive("in", card=WANG_CARD)["reasons"]
    site.start("out")
    wait_until(lambda: versions()["out"] == version + 1, "the gate back applied it")
    assert "card_revoked" in site.arrive("out", card=WANG_CARD)["reasons"]


def test_a_forged_last_seq_is_brought_down_by_the_gates_own_answer(tmp_path: Path) -> None:
    """A status claiming seq 2**53-1 leaves no gap that nothing can fill: the gate's
    replay answer says where its ledger really ends."""
    gate = Gate(tmp_path / "gate")
    hub = HubProcess(tmp_path / "hub", gate.broker.port)
    try:
        gate.rig.synced = False  # its fake clock is months off the hub's
        gate.record(3)
        gate.delivered()
        hub.start()
        hub.wait_through("s1", "g1", 3)
        # (the hub started after those three: its request for them answered first)
        wait_until(
            lambda: hub.query("SELECT 1 FROM hub_replays WHERE answered_at IS NOT NULL"),
            "the first replay's answer",
        )
        forged = {"state": "online", "ts": iso_utc(time.time()), "last_seq": 2**53 - 1}
        publish(gate.broker.port, "gated/s1/g1/status", forged)
        wait_until(lambda: (r := hub.gate("s1", "g1")) and r["highest"] > 10**15, "the claim")
        row = wait_until(
            lambda: (r := hub.gate("s1", "g1")) and r["highest"] == 3 and r, "the gate's answer"
        )
        assert (row["through"], row["missing"]) == (3, 0)
        asked = hub.query("SELECT first, last, ok, sent FROM hub_replays WHERE first > 3")
        assert asked[0] == (4, 4 + 10_000 - 1, 1, 0)  # at most 10,000 numbers, none there
    finally:
        hub.close()
        gate.close()


def test_the_hub_tells_systemd_it_is_ready_alive_and_stopping(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    broker = Mosquitto(tmp_path / "broker").start()
    manager = NotifySocket(tmp_path / "notify.sock")
    monkeypatch.setenv("NOTIFY_SOCKET", str(manager.path))
    monkeypatch.setenv("WATCHDOG_USEC", "400000")
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    hub = HubProcess(tmp_path / "hub", broker.port)
    try:
        hub.start()
        assert manager.wait_for(lambda m: m.startswith("READY=1")).startswith("READY=1\nSTATUS=hub")
        for _ in range(2):
            manager.wait_for(lambda m: m == "WATCHDOG=1")
        hub.stop()
        manager.wait_for(lambda m: m.startswith("STOPPING=1"))
    finally:
        hub.close()
        manager.close()
        broker.stop()
