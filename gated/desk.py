"""The guard desk: every operator action on the gate, and every rule that binds one.

The status screen, the central side (``cmd/open``, ``cmd/mode``) and the demo act on the
gate only here: set the mode, open once, start and end a shift, answer a ``needs_guard``
verdict, re-check a fever denial with a clinical reading, acknowledge an alarm. The
controller hands the desk what waits for a guard (:meth:`GuardDesk.hold`,
:meth:`GuardDesk.offer_recheck`) and lets it close what ran out of time
(:meth:`GuardDesk.expire`).

Like the controller it belongs to, the desk runs only on the controller's thread (other
threads go through ``Controller.submit``): the ledger keeps one writer, ``seq`` stays
gap-free, and a verdict is committed before the turnstile moves. A refusal raises
before anything is recorded: ``KeyError`` (nothing waits under that id),
``ValueError`` (a rule refuses it), ``PermissionError`` (the gate is locked).
"""

from __future__ import annotations

import contextlib
import logging
import sqlite3
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Literal

from gated.events import MODES, Ack, Decision, GuardShift, Mode
from gated.ledger import Effects
from gated.mqtt import registry_sync
from gated.policy import Facts, decide
from gated.session import Session
from gated.storage_watch import CommitFailed

if TYPE_CHECKING:
    from gated.controller import Controller

log = logging.getLogger(__name__)

#: Reasons that say the gate has no valid temperature of its own.
TEMP_REASONS = frozenset({"temp_missing", "temp_invalid"})


@dataclass
class PendingGuard:
    """A ``needs_guard`` verdict waiting for the guard until ``deadline`` (monotonic)."""

    decision: Decision
    deadline: float
    effects: Effects

    @property
    def event(self) -> dict[str, Any]:
        """The verdict's body, as the screen shows it."""
        return self.decision.body()


@dataclass
class FeverCheck(PendingGuard):
    """A fever denial a guard may re-check with a clinical reading until ``deadline``."""

    session: Session


def needs_reading(event: dict[str, Any]) -> bool:
    """Whether granting this pending verdict needs a clinical temperature reading (the gate
    has no valid one of its own). A fever is never pending: it is a denial that a guard may
    re-check with a clinical reading (:attr:`GuardDesk.fever_checks`)."""
    return bool(TEMP_REASONS & set(event.get("reasons") or []))


class GuardDesk:
    """The operator side of one gate's controller; every method runs on its thread.

    The desk is a part of the controller, split off so that each operator rule has one
    place: it records and acts through the controller's own steps (``_record``,
    ``_alarm``, ``_open``, ``_play``), so what it records is committed before it acts."""

    def __init__(self, controller: Controller):
        self.controller = controller
        self.policy = controller.policy
        self.clock = controller.clock
        self.guards_on_duty: set[str] = set()
        self.pending: dict[str, PendingGuard] = {}
        self.fever_checks: dict[str, FeverCheck] = {}
        # Here, before any operator action can run: no login of this run is taken for a
        # shift the last run left open.
        try:
            self.end_stale_shifts()
        except (sqlite3.Error, CommitFailed) as exc:
            # The gate runs on; the screen shows who logs in next.
            log.error("could not end the shifts left open by the last run: %s", exc)

    # -- the rules ---------------------------------------------------------------------

    def is_fever(self, reading_c: float) -> bool:
        """Whether a clinical reading is a fever: at or above ``fever_c``."""
        return reading_c >= self.policy.fever_c

    def question(self, event_id: str) -> Literal["pending", "recheck"] | None:
        """What waits for the guard under ``event_id``: ``"pending"`` (a ``needs_guard``
        verdict), ``"recheck"`` (a fever denial open to a clinical reading) or None."""
        if event_id in self.fever_checks:
            return "recheck"
        return "pending" if event_id in self.pending else None

    # -- from the controller: what waits for a guard -----------------------------------

    def hold(self, event: Decision, effects: Effects) -> None:
        """A ``needs_guard`` verdict: it waits for a guard until ``guard_timeout_s``."""
        c = self.controller
        deadline = self.clock.monotonic() + self.policy.guard_timeout_s
        self.pending[str(event.id)] = PendingGuard(event, deadline, effects)
        c.turnstile.signal("guard")
        if not self.guards_on_duty:
            with contextlib.suppress(CommitFailed):
                c._alarm(
                    "unattended",
                    "a guard decision is needed and no guard is on duty",
                    ref=event.id,
                )

    def offer_recheck(self, event: Decision, s: Session, facts: Facts, effects: Effects) -> None:
        """A fever denial: a guard may re-check it with a clinical reading for a while."""
        # Only when nothing but the fever denied: at a normal temperature the verdict would
        # be a grant or a guard's call, so a clinical reading can decide it.
        normal = replace(facts, temperature=self.policy.valid_temp_c[0])
        if decide(normal, self.policy).decision == "denied":
            return
        deadline = self.clock.monotonic() + self.policy.guard_timeout_s
        self.fever_checks[str(event.id)] = FeverCheck(event, deadline, effects, s)

    def deadlines(self) -> list[float]:
        """When the pending verdicts run out (monotonic); the controller wakes for them."""
        return [p.deadline for p in self.pending.values()]

    def expire(self, now: float) -> None:
        """A pending verdict nobody answered in time is denied; a re-check not made in
        time lets the fever denial stand."""
        c = self.controller
        for event_id, p in list(self.pending.items()):
            if now >= p.deadline:
                del self.pending[event_id]
                c._record(Decision.follow_up(p.decision, "denied", None, ("guard_timeout",)))
                c.turnstile.signal("denied")
                c._play("denied")
        for event_id, f in list(self.fever_checks.items()):
            if now >= f.deadline:
                del self.fever_checks[event_id]  # no re-check in time: the denial stands

    # -- operator actions --------------------------------------------------------------

    def set_mode(self, mode: str, by: str) -> dict[str, Any]:
        """Change the gate mode; recorded as a ``mode`` event by ``by``."""
        c = self.controller
        if mode not in MODES:
            raise ValueError(f"unknown mode {mode!r}; one of {', '.join(MODES)}")
        previous = c.mode
        event = c._record(Mode.change(mode, previous, by), Effects(mode=mode))
        c.mode = mode  # only once committed: a mode the ledger does not know is no mode
        c.turnstile.free(c._free())
        return event.body()

    def open_once(self, by: str, guard: str | None = None) -> dict[str, Any]:
        """A remote open (MQTT ``cmd/open``): a ``granted`` decision whose credential is
        ``{"kind": "remote", "ref": by}``, then the usual open window and ``passage``.
        From the status screen ``guard`` is the guard's id, recorded in ``guard``."""
        c = self.controller
        if c.mode == "locked":
            raise PermissionError("the gate is locked")
        event = c._record(Decision.remote_open(c.config.gate.direction, by, guard))
        c._open(event)
        c._play("granted")
        return event.body()

    def guard_on(self, guard: str) -> dict[str, Any]:
        """A guard starts a shift at this gate."""
        self.guards_on_duty.add(guard)
        return self.controller._record(GuardShift.on(guard)).body()

    def log_in(self, guard: str) -> dict[str, Any] | None:
        """A guard logged in: a shift starts, unless the guard is on duty already (a second
        screen of the same guard starts no new shift)."""
        return None if guard in self.guards_on_duty else self.guard_on(guard)

    def guard_off(self, guard: str) -> dict[str, Any]:
        """A guard ends a shift at this gate."""
        self.guards_on_duty.discard(guard)
        return self.controller._record(GuardShift.off(guard)).body()

    def end_stale_shifts(self) -> list[dict[str, Any]]:
        """At start: a guard whose last shift event is ``guard_on`` goes off duty (logins
        live in memory, so a restart ended the shift; the guard logs in again)."""
        return [
            self.controller._record(GuardShift.off(guard, detail="restart")).body()
            for guard in self.controller.ledger.open_shifts()
        ]

    def decide(
        self, event_id: str, grant: bool, guard: str, confirm_temp_c: float | None = None
    ) -> dict[str, Any]:
        """The guard's answer to a pending ``needs_guard`` verdict, or to a fever denial
        with a clinical reading: below ``fever_c`` it grants, at or above it denies.

        A pending verdict with no valid temperature of the gate's own is granted only
        with a clinical reading below ``fever_c``; a clinical reading at or above it never
        grants. Refused (``ValueError``), nothing is recorded and the question stays open."""
        c = self.controller
        check = self.fever_checks.get(event_id)
        if check is not None:
            grant = self._recheck(check, grant, confirm_temp_c)
            del self.fever_checks[event_id]  # once per fever denial
        elif event_id not in self.pending:
            raise KeyError(f"no pending decision {event_id}")
        elif grant:
            if confirm_temp_c is None and needs_reading(self.pending[event_id].event):
                raise ValueError("a clinical reading (confirm_temp_c) is needed to grant")
            if confirm_temp_c is not None and self.is_fever(confirm_temp_c):
                raise ValueError("the clinical reading is a fever: it cannot be granted")
        p = check or self.pending.pop(event_id)
        decision = "guard_granted" if grant else "guard_denied"
        event = Decision.follow_up(p.decision, decision, guard, confirm_temp_c=confirm_temp_c)
        event = c._record(event, p.effects if grant else None)
        if grant:
            c._open(event)
        else:
            c.turnstile.signal("denied")
        c._play("granted" if grant else "denied")
        return event.body()

    def _recheck(self, check: FeverCheck, grant: bool, reading: float | None) -> bool:
        """Whether a guard's clinical reading lets the person of a fever denial through."""
        if reading is not None and self.is_fever(reading):
            return False  # the fever is confirmed
        if not grant:
            return False
        if reading is None:
            raise ValueError("a clinical reading (confirm_temp_c) is needed to grant after a fever")
        # Looked up again: since the denial the pass may have been used, the card revoked,
        # the quota spent or the person let through the other way.
        now = replace(self.controller.facts(check.session), temperature=reading)
        verdict = decide(now, self.policy)
        if verdict.decision == "denied":
            raise ValueError(f"still denied: {', '.join(verdict.reasons)}")
        return True

    def acknowledge(self, alarm_id: str, alarm: str, guard: str | None) -> dict[str, Any]:
        """A guard acknowledged an alarm: an ``ack`` event referring to it."""
        return self.controller._record(Ack.of(alarm_id, alarm, guard)).body()

    # -- what the screen and the status topic show --------------------------------------

    def snapshot(self) -> dict[str, Any]:
        """The gate's state for the screen and the status topic (``T/status``)."""
        c = self.controller
        return {
            "mode": c.mode,
            "fire": c.fire,
            "clock_synced": c.ledger.clock_synced(),
            "guards_on_duty": sorted(self.guards_on_duty),
            "pending": [p.event for p in self.pending.values()],
            "pending_left_s": {
                i: max(0.0, p.deadline - self.clock.monotonic())
                for i, p in {**self.pending, **self.fever_checks}.items()
            },
            "fever_checks": [f.event for f in self.fever_checks.values()],
            "devices": {
                n: {"ok": h.ok, "detail": h.detail} for n, h in c.device_watch.health.items()
            },
            "last_verdict": c.last_verdict,
            "peers": c.peers.status() if c.peers is not None else {},
            "registry_version": registry_sync.applied_version(c.ledger.conn),
            "counters": {
                "decisions": dict(c.counters.decisions),
                "reasons": dict(c.counters.reasons),
                "motion_only": c.counters.motion_only,
                "events": c.counters.events,
                "rejected": c.counters.rejected,
                "errors": c.counters.errors,
                "not_committed": c.counters.not_committed,
            },
        }
