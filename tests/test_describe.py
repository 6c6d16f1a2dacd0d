"""What leaves the gate and what the log says: personal data reduced, every kind readable."""

from __future__ import annotations

from gated.describe import describe_event
from gated.privacy import reduce_event

GUARD_GRANT = {
    "seq": 7,
    "ts": "2026-02-02T03:00:00.000Z",
    "kind": "decision",
    "decision": "guard_granted",
    "reasons": ["fever"],
    "person": {"id": "P1", "name": "Zhang Wei", "id_number": "320623199001011234"},
    "temperature_c": 37.6,
    "readings_c": [37.6],
    "confirm_temp_c": 36.8,
    "guard": "G1",
}


def test_pii_none_drops_the_clinical_reading_too() -> None:
    out = reduce_event(GUARD_GRANT, "none")
    assert out["temperature_c"] is None and out["readings_c"] is None
    assert out["confirm_temp_c"] is None
    assert "name" not in out["person"] and "id_number" not in out["person"]
    assert reduce_event(GUARD_GRANT, "full")["confirm_temp_c"] == 36.8


def test_acks_purges_and_restart_shift_ends_read_as_lines() -> None:
    ack = {"seq": 9, "ts": "2026-02-02T03:01:00Z", "kind": "ack", "alarm": "fever", "guard": "G1"}
    assert describe_event(ack) == "#9 03:01:00 ack FEVER acknowledged by G1"
    purge = {"seq": 10, "ts": "2026-02-02T04:00:00Z", "kind": "purge", "events": 120}
    purge["before"] = "2026-01-03T04:00:00Z"
    assert describe_event(purge).endswith("120 events before 2026-01-03T04:00:00Z purged")
    off = {"seq": 1, "ts": "2026-02-02T05:00:00Z", "kind": "guard_off", "guard": "G1"}
    assert describe_event({**off, "detail": "restart"}).endswith("guard G1 (restart)")


def test_a_decision_line_masks_the_name_and_shows_no_temperature() -> None:
    line = describe_event(GUARD_GRANT)
    assert "GUARD_GRANTED by guard G1" in line
    assert "Zhang Wei" not in line and "37.6" not in line and "36.8" not in line


def test_a_revoke_reads_as_a_line_with_the_card_uid_masked() -> None:
    head = {"seq": 11, "ts": "2026-02-02T06:00:00Z", "kind": "revoke", "by": "mqtt:central"}
    card = {**head, "what": "card", "ref": "0A1B2C3D4E", "person": {"id": "P1"}}
    assert describe_event(card) == "#11 06:00:00 revoke card ******3D4E revoked by mqtt:central"
    person = {**head, "what": "person", "ref": "P1", "person": {"id": "P1"}}
    assert describe_event(person).endswith("revoke person P1 revoked by mqtt:central")
