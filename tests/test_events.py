"""The event vocabulary: every kind the gate writes goes body -> type -> body unchanged,
and what is not an event is refused with an EventError that says why, never a crash."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from drivers.common.base import DeviceHealth, Reading
from gated.cli.data import CSV_FIELDS
from gated.errors import EventError
from gated.events import (
    HEADER,
    KINDS,
    TEMPERATURE_FIELDS,
    TYPES,
    Ack,
    Alarm,
    Credential,
    Decision,
    Device,
    Event,
    GuardShift,
    Mode,
    Passage,
    Person,
    Revoke,
    fields_of,
    parse_event,
)
from gated.privacy import reduce_event
from gated.retention import PurgePlan
from gated.status.view import _SHOWN, _SHOWN_PERSON
from tests.support.rig import Rig


def a_day_at_the_gate(rig: Rig) -> None:
    """Every kind of event, through the controller as the gate makes them."""
    c = rig.controller
    desk = c.desk
    desk.guard_on("G1")
    rig.feed("temp", 36.6)
    rig.feed("card", "0A1B2C3D4E")  # granted
    rig.feed("passage", True)  # through
    rig.feed("temp", 36.5)
    rig.feed("card", "0A1B2C3D4E")  # granted (antipassback is off), the window runs out
    rig.wait(10)
    rig.feed("passage", True)  # a tailgate: passage with no grant, and its alarm
    rig.feed("temp", 38.2)
    rig.feed("temp", 38.1)
    rig.feed("card", "0A1B2C3D4E")  # a fever denial, its alarm, a re-check offered
    (fever,) = [e for e in rig.decisions() if e["reasons"] == ["fever"]]
    desk.decide(fever["id"], True, "G1", confirm_temp_c=36.7)  # confirm_temp_c
    rig.feed("passage", True)
    rig.feed("temp", 37)  # an int stays an int
    rig.feed("qr", rig.issue())  # a pass alone
    rig.wait(10)
    desk.set_mode("guard_only", "test")
    rig.feed("temp", 36.6)
    rig.feed("card", "1122334455")  # needs_guard
    (pending,) = desk.pending
    desk.decide(pending, False, "G1")
    rig.feed("temp", 36.6)
    rig.feed("card", "1122334455")  # needs_guard again; no answer: guard_timeout
    rig.wait(c.policy.guard_timeout_s + 1)
    desk.set_mode("free", "test")
    rig.feed("card", "0A1B2C3D4E")  # granted with passage free: "free": true
    rig.feed("passage", True)
    desk.set_mode("normal", "test")
    rig.feed("temp", 36.6)
    rig.feed("qr", rig.issue(sub="V1", hh="H9", otp=True))  # a one-time pass: "otp": true
    rig.feed("passage", True)
    desk.open_once("cmd", None)  # remote open
    rig.wait(10)
    rig.controller.handle(Reading("fire", True, "fire"))
    rig.controller.handle(Reading("fire", False, "fire"))  # mode: fire input cleared
    rig.controller.handle(Reading("tamper", True, "turnstile"))
    rig.controller.handle(Reading("tamper", False, "turnstile"))  # device with ref
    rig.controller.handle(Reading("device", DeviceHealth(False, "no reply"), "card"))
    rig.controller.handle(Reading("device", DeviceHealth(True, ""), "card"))
    alarm = next(e for e in rig.events if e["kind"] == "alarm")
    desk.acknowledge(alarm["id"], alarm["alarm"], "G1")
    desk.guard_off("G1")
    desk.guard_on("G2")
    desk.end_stale_shifts()  # guard_off with detail "restart"
    c._record(PurgePlan(0.0, "2026-01-01T00:00:00.000Z", 3, events=3).event(30))
    c._record(Alarm.raised("device", "storage: 2 undelivered events purged", ref=None))
    c._record(Revoke.of("card", "0A1B2C3D4E", "P1", "mqtt:central"))  # what cmd/revoke records


@pytest.fixture
def stored(tmp_path: Path) -> list[str]:
    rig = Rig(tmp_path, policy={"colors": {"green": "allow", "yellow": "guard"}})
    a_day_at_the_gate(rig)
    return [body for (body,) in rig.conn.execute("SELECT body FROM events ORDER BY seq")]


def test_every_kind_the_gate_writes_round_trips_byte_for_byte(stored: list[str]) -> None:
    assert {json.loads(b)["kind"] for b in stored} == set(KINDS) == set(TYPES)
    decisions = [json.loads(b) for b in stored if json.loads(b)["kind"] == "decision"]
    assert any(d.get("free") for d in decisions)  # the fields peers count by (contracts §4b)
    assert any((d["credential"] or {}).get("otp") for d in decisions)
    for body in stored:
        event = parse_event(body)
        assert event.to_json() == body
        assert parse_event(json.loads(body)).body() == json.loads(body)
        assert type(event) is TYPES[event.kind]


def test_the_body_keys_are_the_kinds_fields_in_order(stored: list[str]) -> None:
    for body in stored:
        data = json.loads(body)
        keys = list(data)
        assert keys[0] == "kind" and keys[-len(HEADER) :] == list(HEADER)
        order = fields_of(data["kind"])
        assert keys[1:] == sorted(keys[1:], key=order.index)


@pytest.mark.parametrize("pii", ["masked", "none"])
def test_what_the_broker_carries_parses_too(stored: list[str], pii: str) -> None:
    for body in stored:
        published = reduce_event(json.loads(body), pii)
        text = json.dumps(published, ensure_ascii=False, separators=(",", ":"))
        assert parse_event(text.encode()).to_json() == text


def test_the_constructors_write_what_the_gate_always_wrote() -> None:
    base = parse_event(
        {
            "kind": "decision",
            "direction": "in",
            "decision": "needs_guard",
            "reasons": ["color_guard"],
            "person": {"id": "P2", "household": "H2"},
            "credential": {"kind": "card", "ref": "1122334455", "color": "yellow"},
            "temperature_c": 36.6,
            "readings_c": [36.6],
            "ref": None,
            "guard": None,
            "latency_ms": {"decide": 0.2},
            "id": "d1",
        },
        stamped=False,
    )
    assert isinstance(base, Decision)
    assert Decision.follow_up(base, "guard_denied", "G1").body() == {
        "kind": "decision",
        "direction": "in",
        "decision": "guard_denied",
        "reasons": ["color_guard"],
        "person": {"id": "P2", "household": "H2"},
        "credential": {"kind": "card", "ref": "1122334455", "color": "yellow"},
        "temperature_c": 36.6,
        "readings_c": [36.6],
        "ref": "d1",
        "guard": "G1",
    }
    assert Passage.of_grant(base, passed=False).body() == {
        "kind": "passage",
        "ref": "d1",
        "passed": False,
        "direction": "in",
    }
    assert GuardShift.off("G1").body() == {"kind": "guard_off", "guard": "G1"}
    assert Alarm.raised("tailgate", "x", ref="p1").body() == {
        "kind": "alarm",
        "alarm": "tailgate",
        "detail": "x",
        "ref": "p1",
    }


def test_the_readers_name_fields_of_the_vocabulary() -> None:
    every = {f for kind in KINDS for f in fields_of(kind)} | {"kind"}
    assert set(_SHOWN) <= every
    assert set(_SHOWN_PERSON) <= set(Person.model_fields)
    assert set(TEMPERATURE_FIELDS) == {f for f in every if f.endswith("_c")}
    nested = {"person": set(Person.model_fields), "credential": {"kind", "ref", "color"}}
    for _, path in CSV_FIELDS:
        top, _, inner = path.partition(".")
        assert top in every and (not inner or inner in nested[top]), path


def test_a_decision_names_the_peer_event_it_relied_on() -> None:
    body = {
        "kind": "decision",
        "direction": "in",
        "decision": "granted",
        "reasons": [],
        "person": {"id": "P1", "household": "H1"},
        "credential": {"kind": "qr", "ref": "j1", "color": "green", "otp": True},
        "temperature_c": 36.6,
        "readings_c": [36.6],
        "ref": None,
        "guard": None,
        "relied_on": {"gate": "north-2", "seq": 12, "id": "e9"},
        **STAMP,
    }
    event = parse_event(body)
    assert isinstance(event, Decision) and event.relied_on is not None
    assert event.body() == body and event.relied_on.seq == 12
    follow = Decision.follow_up(event, "guard_granted", "G1")
    assert follow.body()["relied_on"] == body["relied_on"]
    with pytest.raises(EventError, match=r"relied_on\.seq: Input should be greater than"):
        parse_event({**body, "relied_on": {"gate": "n", "seq": 0, "id": "e"}})
    with pytest.raises(EventError, match=r"credential\.otp: Input should be a valid bool"):
        parse_event({**body, "credential": {**body["credential"], "otp": "yes"}})


STAMP = {
    "id": "e1",
    "ts": "2026-02-28T18:05:11.204Z",
    "site": "s1",
    "gate": "g1",
    "clock_synced": True,
    "boot": 1,
    "seq": 7,
}
ACK = {"kind": "ack", "ref": "a1", "alarm": "fever", "guard": "G1", **STAMP}


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"", r"^event: not JSON"),
        (b"{", r"^event: not JSON"),
        (b"[" * 50_000 + b"]" * 50_000, r"^event: not JSON: recursion limit"),
        ("[1, 2]", r"^event: not a JSON object but list$"),
        ("37.5", r"^event: not a JSON object but float$"),
        ({}, r"^event: no kind$"),
        ({"kind": "party"}, r"^event: unknown kind 'party'; one of decision, passage, "),
        ({"kind": 3}, r"^event: unknown kind 3;"),
        ({"kind": "x" * 500}, r"^event: unknown kind 'xxxxx.*\.\.\.; one of"),
        ({**ACK, "alarm": "flood"}, r"^ack event: alarm: Input should be 'fever', "),
        ({**ACK, "guard": 7}, r"^ack event: guard: Input should be a valid string"),
        ({**ACK, "seq": "7"}, r"^ack event: seq: Input should be a valid integer"),
        ({**ACK, "seq": 10**400}, r"^ack event: seq: Input should be less than or equal to"),
        ({**ACK, "seq": 0}, r"^ack event: seq: Input should be greater than or equal to 1"),
        ({**ACK, "clock_synced": 1}, r"^ack event: clock_synced: Input should be a valid bool"),
        ({**ACK, "ts": "yesterday"}, r"^ack event: ts: String should match pattern"),
        ({**ACK, "rogue": 1}, r"^ack event: rogue: Extra inputs are not permitted$"),
        ({k: v for k, v in ACK.items() if k != "ref"}, r"^ack event: ref: Field required$"),
        ({k: v for k, v in ACK.items() if k != "seq"}, r"^ack event: no seq \(not stamped"),
        (
            '{"kind":"alarm","alarm":"fever","detail":"x","temperature_c":NaN}',
            r"^alarm event: temperature_c",
        ),
        (
            {"kind": "passage", "ref": None, "passed": "yes", "direction": "sideways", **STAMP},
            r"^passage event: passed: Input should be a valid boolean; direction: Input should",
        ),
    ],
)
def test_what_is_not_an_event_is_refused_saying_why(body: Any, message: str) -> None:
    with pytest.raises(EventError, match=message):
        parse_event(body)


JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False)
    | st.text(max_size=20)
    | st.sampled_from(KINDS),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=12), inner),
    max_leaves=30,
)


@settings(max_examples=300, deadline=None)
@given(JSON)
def test_arbitrary_json_is_an_event_or_an_event_error(value: Any) -> None:
    for body in (value, json.dumps(value)):
        with contextlib.suppress(EventError):
            assert isinstance(parse_event(body), Event)


def samples() -> dict[str, dict[str, Any]]:
    """A whole stamped body of every kind."""
    card = Credential.card("0A1B2C3D4E", "green")
    grant = Decision.verdict(
        direction="in",
        decision="granted",
        reasons=[],
        person={"id": "P1", "name": "Zhang Wei", "household": "H1"},
        credential=card,
        temperature_c=36.6,
        readings_c=[36.6],
        decide_ms=0.4,
    ).stamped(**STAMP)
    events: list[Event] = [
        grant,
        Passage.of_grant(grant, passed=True),
        Alarm.raised("fever", "session ended denied", ref="d1", temperature_c=38.1),
        Mode.change("locked", "normal", "G1"),
        GuardShift.on("G1"),
        GuardShift.off("G1", detail="restart"),
        Device.health("card", False, "no reply", ref="a1", saved={"events": 3}),
        PurgePlan(0.0, "2026-01-01T00:00:00.000Z", 3, events=3).event(30),
        Ack.of("a1", "fever", "G1"),
        Revoke.of("card", "0A1B2C3D4E", "P1", "mqtt:central"),
    ]
    return {e.kind: e.stamped(**STAMP).body() for e in events}


SAMPLES = samples()


@settings(max_examples=400, deadline=None)
@given(
    kind=st.sampled_from(KINDS),
    pick=st.integers(0, 30),
    key=st.text(max_size=15),
    value=JSON,
    stamped=st.booleans(),
)
def test_a_whole_event_with_one_field_changed_is_an_event_or_an_event_error(
    kind: str, pick: int, key: str, value: Any, stamped: bool
) -> None:
    body = dict(SAMPLES[kind])
    assert parse_event(json.dumps(body)).body() == body
    keys = list(body)
    body[keys[pick] if pick < len(keys) else key] = value
    with contextlib.suppress(EventError):
        assert isinstance(parse_event(json.dumps(body), stamped=stamped), Event)
    with contextlib.suppress(EventError):
        assert isinstance(parse_event(json.dumps(body), stamped=stamped, newer=True), Event)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=64))
def test_arbitrary_bytes_are_an_event_or_an_event_error(data: bytes) -> None:
    with contextlib.suppress(EventError):
        parse_event(data)


@pytest.mark.parametrize("kind", KINDS)
def test_a_newer_gates_fields_are_left_out_not_refused(kind: str) -> None:
    """A peer gate of a newer version adds optional fields; this one still reads its events
    (``newer=True``), keeps what it knows, and still checks that as strictly."""
    body = {**SAMPLES[kind], "added_later": {"x": 1}}
    if "person" in body and body["person"] is not None:
        body["person"] = {**body["person"], "photo_ref": "p1"}
    with pytest.raises(EventError, match="added_later: Extra inputs are not permitted"):
        parse_event(body)
    assert parse_event(body, newer=True).body() == SAMPLES[kind]
    with pytest.raises(EventError, match="seq: Input should be a valid integer"):
        parse_event({**body, "seq": "5"}, newer=True)


def test_a_kind_a_newer_gate_added_is_its_header_alone() -> None:
    body = {**SAMPLES["ack"], "kind": "visit", "visitor": {"id": "V1"}}
    with pytest.raises(EventError, match="unknown kind 'visit'"):
        parse_event(body)
    header = parse_event(body, newer=True)
    assert type(header) is Event and header.kind == "visit"
    assert header.body() == {"kind": "visit", **{k: SAMPLES["ack"][k] for k in HEADER}}
    for kind in ("Visit!", "x" * 40, 5, None):  # not a kind's name: refused still
        with pytest.raises(EventError, match="kind"):
            parse_event({**body, "kind": kind}, newer=True)
