"""What the screen's guard actions leave in the ledger, and what a restart keeps of them.

A fever denial re-checked with a clinical reading, alarm acknowledgements as ``ack``
events (open alarms rebuilt from the ledger at start), shifts a restart ended, and the
screen's short-lived snapshot cache. Real HTTP against a gate on sim drivers in this
process (``tests/test_status_api.py``), real SQLite files.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

from gated.clock import FakeClock
from gated.ledger import Ledger
from gated.status.server import SNAPSHOT_TIMEOUT_S
from gated.status.view import MAX_ALARMS, ScreenHistory
from gated.storage import connect
from tests.support.events import event
from tests.support.status_gate import Gate
from tests.support.waiting import wait_until

DECIDE = "/api/guard/decide"


def feverish(gate: Gate, card: str = "0A1B2C3D4E") -> dict[str, Any]:
    """A person with a fever at the gate; their denial as the ledger has it."""
    seen = {e["id"] for e in gate.ledger()}
    gate.arrive(38.4, None)
    gate.put("temp", 38.3)  # the re-measure the policy asks for
    gate.put("card", card)
    return gate.wait_event(
        lambda e: e["id"] not in seen and e.get("decision") == "denied", "the fever denial"
    )


def recheck_offered(gate: Gate, event_id: str) -> dict[str, Any]:
    """Wait until the screen offers a clinical re-check of ``event_id``; the pending item."""
    found: dict[str, Any] = wait_until(
        lambda: next((p for p in gate.state()["pending"] if p["id"] == event_id), None),
        what="the re-check on the screen",
    )
    return found


def test_a_normal_clinical_reading_lets_a_feverish_person_through_once(tmp_path: Path) -> None:
    gate = Gate(tmp_path)
    try:
        cookie, csrf = gate.login()
        denial = feverish(gate)
        assert denial["reasons"] == ["fever"] and denial["temperature_c"] == 38.3
        alarm = gate.wait_event(lambda e: e.get("alarm") == "fever", "the fever alarm")
        assert alarm["ref"] == denial["id"]
        item = recheck_offered(gate, denial["id"])
        assert item["recheck"] is True and item["decision"] == "denied"
        assert 0 < item["left_s"] <= 120
        # A grant needs the reading; the reading must be a temperature a person can have.
        assert gate.post(DECIDE, {"event": denial["id"], "grant": True}, cookie, csrf)[0] == 422
        body = {"event": denial["id"], "grant": True, "confirm_temp_c": 99}
        assert gate.post(DECIDE, body, cookie, csrf)[0] == 400
        body["confirm_temp_c"] = 36.8
        status, answer = gate.post(DECIDE, body, cookie, csrf)
        assert status == 200, answer
        assert answer["event"]["decision"] == "guard_granted"
        granted = gate.wait_event(lambda e: e.get("decision") == "guard_granted", "the grant")
        assert granted["ref"] == denial["id"] and granted["guard"] == "G01"
        assert granted["confirm_temp_c"] == 36.8 and granted["temperature_c"] == 38.3
        # The usual grant: the turnstile opens and the passage refers to the grant.
        gate.put("passage")
        passage = gate.wait_event(lambda e: e["kind"] == "passage", "the passage")
        assert passage["ref"] == granted["id"] and passage["passed"] is True
        # Once per fever denial.
        assert gate.post(DECIDE, body, cookie, csrf)[0] == 404
        state = wait_until(
            lambda: (s := gate.state())["today"]["in"] == 1 and s, what="the day's counts"
        )
        assert state["pending"] == []
        assert (state["today"]["denied"], state["today"]["fever"]) == (1, 1)
        assert state["today"]["overrides"] == 1
    finally:
        gate.stop()


def test_a_feverish_clinical_reading_confirms_the_denial(tmp_path: Path) -> None:
    gate = Gate(tmp_path)
    try:
        cookie, csrf = gate.login()
        denial = feverish(gate)
        recheck_offered(gate, denial["id"])
        body = {"event": denial["id"], "grant": True, "confirm_temp_c": 37.9}
        status, answer = gate.post(DECIDE, body, cookie, csrf)
        assert status == 200 and answer["event"]["decision"] == "guard_denied"
        confirmed = gate.wait_event(lambda e: e.get("decision") == "guard_denied", "the denial")
        assert confirmed["ref"] == denial["id"] and confirmed["confirm_temp_c"] == 37.9
        assert confirmed["guard"] == "G01"
        assert gate.post(DECIDE, body, cookie, csrf)[0] == 404
        state = wait_until(
            lambda: (s := gate.state())["today"]["overrides"] == 1 and s, what="the counts"
        )
        assert state["today"]["denied"] == 1  # one person denied, not two
        assert not [e for e in gate.ledger() if e["kind"] == "passage"]
    finally:
        gate.stop()


def test_no_recheck_when_more_than_the_fever_denies(tmp_path: Path) -> None:
    gate = Gate(tmp_path)
    try:
        cookie, csrf = gate.login()
        unknown = feverish(gate, card="FF00FF00FF")  # not in the registry
        assert set(unknown["reasons"]) == {"fever", "unknown_card"}
        known = feverish(gate)
        recheck_offered(gate, known["id"])
        assert [p["id"] for p in gate.state()["pending"]] == [known["id"]]
        body = {"event": unknown["id"], "grant": True, "confirm_temp_c": 36.5}
        assert gate.post(DECIDE, body, cookie, csrf)[0] == 404
    finally:
        gate.stop()


def test_a_recheck_is_offered_only_for_guard_timeout_s(tmp_path: Path) -> None:
    gate = Gate(tmp_path, policy={"guard_timeout_s": 1})
    try:
        cookie, csrf = gate.login()
        denial = feverish(gate)
        recheck_offered(gate, denial["id"])
        wait_until(lambda: gate.state()["pending"] == [], what="the re-check to run out")
        body = {"event": denial["id"], "grant": True, "confirm_temp_c": 36.6}
        assert gate.post(DECIDE, body, cookie, csrf)[0] == 404
        decisions = [e for e in gate.ledger() if e["kind"] == "decision"]
        assert [d["decision"] for d in decisions] == ["denied"]  # the denial stands
    finally:
        gate.stop()


def test_acks_are_ledger_events_and_open_alarms_survive_a_restart(tmp_path: Path) -> None:
    gate = Gate(tmp_path)
    try:
        cookie, csrf = gate.login()
        gate.put("passage")  # nobody was granted: tailgating, twice
        gate.put("passage")
        state = wait_until(
            lambda: len((s := gate.state())["alarms"]) == 2 and s, what="two open alarms"
        )
        first, second = (a["id"] for a in state["alarms"])
        assert gate.post("/api/alarm/ack", {"event": first}, cookie, csrf)[0] == 200
        ack = gate.wait_event(lambda e: e["kind"] == "ack", "the ack")
        assert (ack["ref"], ack["guard"], ack["alarm"]) == (first, "G01", "tailgate")
        assert [a["id"] for a in gate.state()["alarms"]] == [second]
    finally:
        gate.stop()
    gate = Gate(tmp_path, port=gate.port)
    try:
        assert [a["id"] for a in gate.state()["alarms"]] == [second]
        cookie, csrf = gate.login()
        assert gate.post("/api/alarm/ack", {"event": first}, cookie, csrf)[0] == 404
        assert gate.post("/api/alarm/ack", {"event": second}, cookie, csrf)[0] == 200
    finally:
        gate.stop()
    gate = Gate(tmp_path, port=gate.port)
    try:
        assert gate.state()["alarms"] == []
        acks = [e for e in gate.ledger() if e["kind"] == "ack"]
        assert [a["ref"] for a in acks] == [first, second]
    finally:
        gate.stop()


def test_a_restart_ends_the_shifts_it_cut_short(tmp_path: Path) -> None:
    gate = Gate(tmp_path)
    try:
        gate.login()  # G01, still on duty when the daemon stops
        cookie, csrf = gate.login("G07", "2468")
        assert gate.post("/api/guard/logout", {}, cookie, csrf)[0] == 200
        gate.wait_event(lambda e: e["kind"] == "guard_off", "G07 off duty")
        boot = gate.ledger()[-1]["boot"]
    finally:
        gate.stop()
    gate = Gate(tmp_path, port=gate.port)
    try:
        ended = wait_until(
            lambda: [e for e in gate.ledger() if e.get("detail") == "restart"],
            what="the shift the restart ended",
        )
        assert [(e["kind"], e["guard"]) for e in ended] == [("guard_off", "G01")]
        assert ended[0]["boot"] == boot + 1
        assert gate.state()["guards_on_duty"] == []
        events = wait_until(
            lambda: [e for e in gate.state()["events"] if e["kind"] == "guard_off"],
            what="the screen to show it",
        )
        assert events[0]["guard"] == "G01"
    finally:
        gate.stop()
    gate = Gate(tmp_path, port=gate.port)  # nobody on duty now: nothing more to end
    try:
        wait_until(lambda: gate.get("/healthz")[0] == 200, what="the third start")
        restarts = [e for e in gate.ledger() if e.get("detail") == "restart"]
        assert len(restarts) == 1
    finally:
        gate.stop()


def test_state_and_metrics_answer_from_a_recent_snapshot(tmp_path: Path) -> None:
    gate = Gate(tmp_path)
    server: Any = next(s for s in gate.app.services if type(s).__name__ == "StatusServer")
    server.snapshot_max_age_s = 600.0  # long enough that only an event can end the reuse
    release = threading.Event()
    busy = threading.Event()
    try:
        assert gate.state()["current"] is None
        gate.app.controller.submit(lambda: (busy.set(), release.wait(60)))
        assert busy.wait(20)
        # The controller is busy: both answer at once from the snapshot just taken (asking
        # the controller, each would wait SNAPSHOT_TIMEOUT_S for it).
        started = time.monotonic()
        assert gate.state()["mode"] == "normal"
        assert "gated_mode" in gate.get("/metrics")[2].decode()
        assert time.monotonic() - started < SNAPSHOT_TIMEOUT_S / 2
        release.set()
        gate.arrive(36.5, "0A1B2C3D4E")
        granted = gate.wait_event(lambda e: e.get("decision") == "granted", "the grant")
        # An event makes the next request ask the controller again.
        wait_until(
            lambda: (gate.state()["current"] or {}).get("id") == granted["id"],
            what="a fresh snapshot after the event",
        )
    finally:
        release.set()
        gate.stop()


def test_open_alarms_are_rebuilt_from_the_last_day_of_the_ledger(tmp_path: Path) -> None:
    from zoneinfo import ZoneInfo

    conn = connect(tmp_path / "gated.db")
    clock = FakeClock()
    ledger = Ledger(conn, site="s1", gate="g1", clock=clock)
    ledger.start_boot()
    old = ledger.append(event("alarm", alarm="device", detail="card: gone")).body()
    clock.advance(2 * 86400)
    acked = ledger.append(event("alarm", alarm="tailgate", detail="x")).body()
    ledger.append(event("ack", ref=acked["id"], alarm="tailgate", guard="G01"))
    ledger.start_boot()  # a restart in between: the alarm stays open
    still = ledger.append(event("alarm", alarm="fire", detail="fire input active")).body()
    from datetime import UTC, datetime

    history = ScreenHistory(ZoneInfo("Asia/Shanghai"), boot=ledger.boot)
    history.load(conn, datetime.fromtimestamp(clock.time(), UTC))
    assert list(history.alarms) == [still["id"]]
    assert old["id"] not in history.alarms
    # However many come, the screen keeps the newest MAX_ALARMS open.
    for i in range(MAX_ALARMS + 5):
        history.add({"id": f"a{i}", "seq": 100 + i, "kind": "alarm", "alarm": "tailgate"})
    assert len(history.alarms) == MAX_ALARMS
    assert f"a{MAX_ALARMS + 4}" in history.alarms and still["id"] not in history.alarms
    conn.close()
