"""The event vocabulary of docs/contracts.md §4: one type per kind, its JSON body, and back.

Every ledger event is one of the types below (:data:`TYPES`, one per kind of
:data:`KINDS`). Each type lists the fields its kind carries, in the order of its
JSON body; a type's classmethods are the ways the gate makes one. The gate builds
events with them, :meth:`Event.body` is the one way to the JSON object the ledger
stores and the broker carries, and :func:`parse_event` the one way back, validated,
for what comes from the broker (the hub and the peer gates read these same types).

A body holds the fields an event was made or read with, nothing filled in: a
field that is absent stays absent (``latency_ms`` of a guard's answer, ``ref`` of
an alarm about nothing in particular), one that is ``null`` stays ``null``, so
body -> type -> body gives the same JSON. The header (``id``, ``ts``, ``site``,
``gate``, ``clock_synced``, ``boot``, ``seq``) is what :meth:`Ledger.append
<gated.ledger.Ledger.append>` stamps; it comes last in a body, as the ledger has
always written it.

The types are strict: a number is not a string, a flag is not a number, no field
is unknown, no float is NaN; anything else is an :class:`~gated.errors.EventError`
that names the field.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Mapping
from typing import Any, Literal, Self, TypeGuard, get_args

import pydantic_core
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from gated.errors import EventError

#: Every kind of event (each has its type in :data:`TYPES`).
KINDS = (
    "decision",
    "passage",
    "alarm",
    "mode",
    "guard_on",
    "guard_off",
    "device",
    "purge",
    "ack",
    "revoke",
)
#: What a kind a newer gate added may be called (``newer`` parsing takes its header).
_KIND = re.compile(r"[a-z][a-z0-9_]{0,31}")
#: The fields the ledger stamps, in the order they close a body.
HEADER = ("id", "ts", "site", "gate", "clock_synced", "boot", "seq")
#: Fields that hold a body temperature (``mqtt.pii = "none"`` clears them).
TEMPERATURE_FIELDS = ("temperature_c", "readings_c", "confirm_temp_c")

#: The words of the vocabulary; the tuples below are the same words, for iterating.
Decided = Literal["granted", "denied", "needs_guard", "guard_granted", "guard_denied"]
Reason = Literal[
    "fever",
    "temp_missing",
    "temp_invalid",
    "credential_missing",
    "unknown_card",
    "card_revoked",
    "pass_invalid",
    "pass_expired",
    "pass_not_yet_valid",
    "pass_revoked",
    "pass_replayed",
    "pass_wrong_gate",
    "person_mismatch",
    "color_guard",
    "color_denied",
    "quota_exceeded",
    "antipassback",
    "outside_schedule",
    "gate_locked",
    "guard_only",
    "guard_timeout",
    "fire_release",
]
AlarmName = Literal["fever", "tailgate", "device", "unattended", "fire", "tamper"]
ModeName = Literal["normal", "locked", "free", "guard_only"]

DECISIONS: tuple[str, ...] = get_args(Decided)
REASONS: tuple[str, ...] = get_args(Reason)
ALARMS: tuple[str, ...] = get_args(AlarmName)
MODES: tuple[str, ...] = get_args(ModeName)

Direction = Literal["in", "out", "both"]
#: A JSON number as written: an int stays an int (``37`` is not ``37.0``).
Number = int | float

_SEQ_MAX = 2**63 - 1  # SQLite's INTEGER
_TS = r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{1,6})?Z$"


class _Strict(BaseModel):
    model_config = ConfigDict(
        strict=True,
        frozen=True,
        extra="forbid",
        allow_inf_nan=False,
        populate_by_name=True,
    )


class Person(_Strict):
    """The ``person`` of an event; under ``mqtt.pii`` some fields are masked or left out."""

    id: str | None = None
    name: str | None = None
    id_number: str | None = None
    unit: str | None = None
    household: str | None = None
    category: str | None = None
    color: str | None = None


class Credential(_Strict):
    """What a person showed: a card uid, a pass's jti, or who opened remotely."""

    kind: Literal["card", "qr", "remote"]
    ref: str | None
    color: str | None
    #: With ``card_and_qr``: the jti of the pass shown with the card.
    pass_jti: str | None = Field(default=None, alias="pass")
    #: The pass (``ref`` of a ``qr``, ``pass`` of a card) is one-time: present only when
    #: true, so the gate's peers learn its use (docs/contracts.md §4b).
    otp: bool = False

    @classmethod
    def card(
        cls, uid: str, color: str | None, pass_jti: str | None = None, otp: bool = False
    ) -> Credential:
        """A card (and, with ``card_and_qr``, the pass shown with it)."""
        fields: dict[str, Any] = {"kind": "card", "ref": uid, "color": color}
        if pass_jti is not None:
            fields["pass"] = pass_jti
            if otp:
                fields["otp"] = True
        return cls.model_validate(fields)

    @classmethod
    def qr(cls, jti: str | None, color: str | None, otp: bool = False) -> Credential:
        """A QR pass alone (``otp``: a one-time pass)."""
        if otp and jti is not None:
            return cls(kind="qr", ref=jti, color=color, otp=True)
        return cls(kind="qr", ref=jti, color=color)

    def one_time_jti(self) -> str | None:
        """The jti of the one-time pass this credential names, if any."""
        if not self.otp:
            return None
        return self.ref if self.kind == "qr" else self.pass_jti if self.kind == "card" else None

    @classmethod
    def remote(cls, by: str) -> Credential:
        """A remote open by ``by`` (the command's sender, or the screen)."""
        return cls(kind="remote", ref=by, color=None)


class PeerRef(_Strict):
    """A peer gate's event a decision relied on (contracts §4b): its gate, ``seq`` and ``id``."""

    gate: str
    seq: int = Field(ge=1, le=_SEQ_MAX)
    id: str


class Event(_Strict):
    """What every event has: its ``kind`` and the header the ledger stamps."""

    kind: str
    id: str | None = None
    ts: str | None = Field(default=None, pattern=_TS)
    site: str | None = None
    gate: str | None = None
    clock_synced: bool | None = None
    boot: int | None = Field(default=None, ge=0, le=_SEQ_MAX)
    seq: int | None = Field(default=None, ge=1, le=_SEQ_MAX)

    def body(self) -> dict[str, Any]:
        """The JSON object of this event: its fields, then the header (docs/contracts.md §4)."""
        d = self.model_dump(mode="json", by_alias=True, exclude_unset=True, exclude={"kind"})
        header = {k: d.pop(k) for k in HEADER if k in d}
        return {"kind": self.kind, **d, **header}

    def to_json(self) -> str:
        """:meth:`body` as the compact JSON text the ledger stores."""
        return json.dumps(self.body(), ensure_ascii=False, separators=(",", ":"))

    def stamped(self, **header: Any) -> Self:
        """This event with its header fields set (what :class:`~gated.ledger.Ledger` does)."""
        unknown = set(header) - set(HEADER)
        if unknown:
            raise ValueError(f"not header fields: {', '.join(sorted(unknown))}")
        return self.model_copy(update=header)


class Decision(Event):
    """A session ended in a verdict, or a guard answered one (``ref``, ``guard``)."""

    kind: Literal["decision"] = "decision"
    direction: Direction | None
    decision: Decided
    reasons: list[Reason]
    person: Person | None
    credential: Credential | None
    temperature_c: Number | None
    readings_c: list[Number] | None
    ref: str | None
    guard: str | None
    latency_ms: dict[str, Number] | None = None
    #: The guard's clinical reading, when a guard answered with one.
    confirm_temp_c: Number | None = None
    #: Present (true) only on a grant while passage was free (``free`` mode or the fire
    #: input): nobody was checked, so it uses no quota and leaves anti-passback as it was,
    #: here and at the gate's peers (docs/contracts.md §4b).
    free: bool = False
    #: The peer's recorded exit that lifted an anti-passback refusal (docs/contracts.md §4b).
    relied_on: PeerRef | None = None

    @classmethod
    def verdict(
        cls,
        *,
        direction: str,
        decision: str,
        reasons: list[str] | tuple[str, ...],
        person: Mapping[str, Any] | None,
        credential: Credential | None,
        temperature_c: float | None,
        readings_c: list[float],
        decide_ms: float,
        free: bool = False,
        relied_on: PeerRef | None = None,
    ) -> Decision:
        """The verdict of a session, with the time the policy took (``free``: granted with
        passage free; ``relied_on``: the peer event that lifted anti-passback)."""
        fields: dict[str, Any] = {
            "direction": direction,
            "decision": decision,
            "reasons": list(reasons),
            "person": person,
            "credential": credential,
            "temperature_c": temperature_c,
            "readings_c": readings_c,
            "ref": None,
            "guard": None,
            "latency_ms": {"decide": round(decide_ms, 3)},
        }
        if free:
            fields["free"] = True
        if relied_on is not None:
            fields["relied_on"] = relied_on
        return cls.model_validate(fields)

    @classmethod
    def remote_open(cls, direction: str, by: str, guard: str | None) -> Decision:
        """A remote open (``cmd/open``, or the screen's guard): granted, nobody checked."""
        return cls.model_validate(
            {
                "direction": direction,
                "decision": "granted",
                "reasons": [],
                "person": None,
                "credential": Credential.remote(by),
                "temperature_c": None,
                "readings_c": [],
                "ref": None,
                "guard": guard,
            }
        )

    @classmethod
    def follow_up(
        cls,
        base: Decision,
        decision: str,
        guard: str | None,
        reasons: list[str] | tuple[str, ...] | None = None,
        confirm_temp_c: float | None = None,
    ) -> Decision:
        """The answer to ``base`` (a ``needs_guard`` verdict or a fever denial): the same
        person, credential and readings, ``ref`` to it, by ``guard`` (None: the timeout)."""
        fields: dict[str, Any] = {
            "direction": base.direction,
            "decision": decision,
            "reasons": list(base.reasons if reasons is None else reasons),
            "person": base.person,
            "credential": base.credential,
            "temperature_c": base.temperature_c,
            "readings_c": base.readings_c,
            "ref": base.id,
            "guard": guard,
        }
        if confirm_temp_c is not None:
            fields["confirm_temp_c"] = confirm_temp_c
        if base.free:
            fields["free"] = True
        if base.relied_on is not None:
            fields["relied_on"] = base.relied_on
        return cls.model_validate(fields)

    def card_ref(self) -> str | None:
        """The card uid this decision's credential names, if a card."""
        cred = self.credential
        return cred.ref if cred is not None and cred.kind == "card" and cred.ref else None


class Passage(Event):
    """The turnstile let someone through (``passed``) or the open window ran out."""

    kind: Literal["passage"] = "passage"
    ref: str | None
    passed: bool
    direction: Direction | None

    @classmethod
    def of_grant(cls, grant: Decision, passed: bool) -> Passage:
        """What came of an open turnstile: through, or the window ran out."""
        return cls(ref=grant.id, passed=passed, direction=grant.direction)

    @classmethod
    def without_grant(cls, direction: str) -> Passage:
        """Someone went through with no grant open (a ``tailgate``, unless free)."""
        return cls.model_validate({"ref": None, "passed": True, "direction": direction})


class Alarm(Event):
    """Published on ``T/alarm``; open on the screen until an ``ack`` refers to it."""

    kind: Literal["alarm"] = "alarm"
    alarm: AlarmName
    detail: str
    #: The event it is about (a decision, a passage, a device event, a purge).
    ref: str | None = None
    person: Person | None = None
    temperature_c: Number | None = None
    #: The device a ``tamper`` or a storage ``device`` alarm names.
    device: str | None = None
    #: A storage outage: since when no event could be committed, and how many were not.
    since: str | None = None
    not_written: int | None = None

    @classmethod
    def raised(cls, alarm: str, detail: str, **fields: Any) -> Alarm:
        """An alarm; ``fields`` (``ref``, ``person``, ...) are written as given."""
        return cls.model_validate({"alarm": alarm, "detail": detail, **fields})


class Mode(Event):
    """The gate mode changed (or the fire input cleared: ``detail``), by whom."""

    kind: Literal["mode"] = "mode"
    mode: ModeName
    previous: ModeName
    by: str
    detail: str | None = None

    @classmethod
    def change(cls, mode: str, previous: str, by: str) -> Mode:
        """An operator set the mode."""
        return cls.model_validate({"mode": mode, "previous": previous, "by": by})

    @classmethod
    def fire_cleared(cls, mode: str, by: str) -> Mode:
        """The fire input cleared: passage is back to ``mode``."""
        return cls.model_validate(
            {"mode": mode, "previous": mode, "by": by, "detail": "fire input cleared"}
        )


class GuardShift(Event):
    """A guard's shift starts (``guard_on``) or ends (``guard_off``) at this gate."""

    kind: Literal["guard_on", "guard_off"]
    guard: str
    detail: str | None = None

    @classmethod
    def on(cls, guard: str) -> GuardShift:
        """A guard logs in."""
        return cls(kind="guard_on", guard=guard)

    @classmethod
    def off(cls, guard: str, detail: str | None = None) -> GuardShift:
        """A guard logs out (``detail``: why, when not the guard: ``restart``)."""
        if detail is None:
            return cls(kind="guard_off", guard=guard)
        return cls(kind="guard_off", guard=guard, detail=detail)


class Device(Event):
    """A device failed or recovered; ``ref`` to the alarm or tamper it ends."""

    kind: Literal["device"] = "device"
    device: str
    ok: bool
    detail: str
    ref: str | None = None
    #: A recovered database: rows saved and left out by table, the damaged file.
    saved: dict[str, int] | None = None
    dropped: dict[str, int] | None = None
    damaged_file: str | None = None

    @classmethod
    def health(cls, device: str, ok: bool, detail: str, **fields: Any) -> Device:
        """A device's health as reported; ``fields`` (``ref``, ...) are written as given."""
        return cls.model_validate({"device": device, "ok": ok, "detail": detail, **fields})


class Purge(Event):
    """Retention removed events and state (counts of each), up to ``upto_seq``."""

    kind: Literal["purge"] = "purge"
    before: str
    upto_seq: int
    retention_days: int
    events: int
    quota_use: int
    pass_uses: int
    card_first_use: int
    kept_undelivered: int
    undelivered_before: str
    undelivered_purged: int
    #: What was learned from the site's peers (docs/contracts.md §4b), present when any was purged.
    site_quota_use: int | None = None
    site_pass_uses: int | None = None


class Ack(Event):
    """A guard acknowledged the alarm ``ref``."""

    kind: Literal["ack"] = "ack"
    ref: str
    alarm: AlarmName
    guard: str | None

    @classmethod
    def of(cls, alarm_id: str, alarm: str, guard: str | None) -> Ack:
        """``guard`` (None: not logged in) acknowledged ``alarm_id``."""
        return cls.model_validate({"ref": alarm_id, "alarm": alarm, "guard": guard})


class Revoke(Event):
    """A card, a pass or a person was revoked at this gate (``cmd/revoke``), by whom; the
    gate's peers revoke the same (docs/contracts.md §4b)."""

    kind: Literal["revoke"] = "revoke"
    what: Literal["card", "pass", "person"]
    #: The card uid (masked on the way out, as a credential's), the pass's jti, the person id.
    ref: str = Field(min_length=1)
    #: The card's owner (when known) or the person revoked; null for a pass.
    person: Person | None
    by: str

    @classmethod
    def of(cls, what: str, ref: str, person_id: str | None, by: str) -> Revoke:
        """``by`` revoked the ``what`` named ``ref`` (of ``person_id``, when known)."""
        person = None if person_id is None else {"id": person_id}
        return cls.model_validate({"what": what, "ref": ref, "person": person, "by": by})


#: The type of each kind.
TYPES: dict[str, type[Event]] = {
    "decision": Decision,
    "passage": Passage,
    "alarm": Alarm,
    "mode": Mode,
    "guard_on": GuardShift,
    "guard_off": GuardShift,
    "device": Device,
    "purge": Purge,
    "ack": Ack,
    "revoke": Revoke,
}


def fields_of(kind: str) -> tuple[str, ...]:
    """The body fields of ``kind`` after ``kind``, in body order (header last)."""
    names = [f.alias or n for n, f in TYPES[kind].model_fields.items() if n != "kind"]
    return tuple(n for n in names if n not in HEADER) + HEADER


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _problems(exc: ValidationError) -> str:
    errors = exc.errors(include_url=False, include_input=False)
    parts = [f"{'.'.join(str(p) for p in e['loc']) or 'body'}: {e['msg']}" for e in errors[:3]]
    if len(errors) > 3:
        parts.append(f"and {len(errors) - 3} more")
    return "; ".join(parts)


@functools.cache
def _plan(model: type[BaseModel]) -> tuple[tuple[str, type[BaseModel] | None], ...]:
    """Each field's key of ``model`` and the model its value is, if one (worked out once:
    the hub reads thousands of events a second through :func:`_known`)."""
    plan = []
    for name, info in model.model_fields.items():
        models = [a for a in (info.annotation, *get_args(info.annotation)) if _is_model(a)]
        plan.append((info.alias or name, models[0] if models else None))
    return tuple(plan)


def _known(model: type[BaseModel], data: Mapping[str, Any]) -> dict[str, Any]:
    """``data`` without the keys ``model`` does not know, at every level of its models."""
    out: dict[str, Any] = {}
    for key, sub in _plan(model):
        if key not in data:
            continue
        value = data[key]
        if sub is not None and isinstance(value, Mapping):
            value = _known(sub, value)
        out[key] = value
    return out


def _is_model(t: Any) -> TypeGuard[type[BaseModel]]:
    return isinstance(t, type) and issubclass(t, BaseModel)


def parse_event(
    body: bytes | str | Mapping[str, Any], *, stamped: bool = True, newer: bool = False
) -> Event:
    """The event a JSON body (text, bytes, or already decoded) is, validated.

    ``stamped`` (the default) asks for the whole header, as every event from the
    ledger or the broker has it. Anything that is not such an event raises
    :class:`~gated.errors.EventError` saying what is wrong, and nothing else.

    ``newer`` is for what another gate sent: a gate of a newer version may add fields
    (every field added to a kind is optional) and kinds, and its events must still be read
    by the older ones of its site, so fields this version does not know are left out
    instead of refused, and an event of a kind it does not know is its header alone (a
    plain :class:`Event`: its ``seq`` is known, it teaches nothing). What it does know is
    checked as strictly as ever.
    """
    data: Any = body
    if isinstance(body, (bytes, bytearray, str)):
        try:
            data = pydantic_core.from_json(body)
        except ValueError as exc:
            raise EventError(f"event: not JSON: {exc}") from None
    if not isinstance(data, Mapping):
        raise EventError(f"event: not a JSON object but {type(data).__name__}")
    kind = data.get("kind")
    if "kind" not in data:
        raise EventError("event: no kind")
    added = newer and isinstance(kind, str) and _KIND.fullmatch(kind) is not None
    if (not isinstance(kind, str) or kind not in TYPES) and not added:
        raise EventError(f"event: unknown kind {_short(kind)}; one of {', '.join(KINDS)}")
    model = TYPES.get(str(kind), Event)  # a kind a newer gate added: its header, nothing more
    try:
        event = model.model_validate(_known(model, data) if newer else data)
    except ValidationError as exc:
        raise EventError(f"{kind} event: {_problems(exc)}") from None
    except (ValueError, TypeError, RecursionError) as exc:  # a Mapping that misbehaves
        raise EventError(f"{kind} event: unreadable: {_short(exc)}") from None
    if stamped:
        missing = [k for k in HEADER if k not in event.model_fields_set]
        if missing:
            raise EventError(f"{kind} event: no {', '.join(missing)} (not stamped by a ledger)")
    return event


def topic_for(kind: str) -> str:
    """The topic suffix an event of ``kind`` is published on (``alarm`` or ``event``)."""
    return "alarm" if kind == "alarm" else "event"


def card_ref(event: Mapping[str, Any]) -> str | None:
    """The card uid a stored event's credential names (as stored: masked only on the way out)."""
    cred = event.get("credential")
    if isinstance(cred, Mapping) and cred.get("kind") == "card" and cred.get("ref"):
        return str(cred["ref"])
    return None
