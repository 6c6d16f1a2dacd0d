"""The controller: one thread takes every input in order, decides, commits, then acts.

Drivers put :class:`~drivers.common.base.Reading` objects on ``queue``; other threads (the
status screen, MQTT commands) submit callables that run on this thread, so the
ledger has exactly one writer and a verdict is always committed before the
turnstile moves. What waits for a guard, and every operator action, is the
controller's :class:`~gated.desk.GuardDesk` (``desk``), on this same thread.
"""

from __future__ import annotations

import contextlib
import logging
import math
import queue
import sqlite3
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

from drivers.common.base import Prompter, Reading, Turnstile
from gated.clock import Clock
from gated.desk import GuardDesk
from gated.device_watch import DeviceWatch
from gated.events import (
    Alarm,
    Credential,
    Decision,
    Event,
    Mode,
    Passage,
)
from gated.facts import FactFinder
from gated.ledger import Effects, Ledger
from gated.passes import PassVerifier
from gated.policy import Facts, Verdict, decide
from gated.prompts import prompt_for
from gated.registry import Registry
from gated.session import Session, SessionMachine
from gated.storage_watch import CommitFailed, StorageWatch, is_storage_failure

if TYPE_CHECKING:
    from gated.config import Config
    from gated.site.peers import PeerBook

log = logging.getLogger(__name__)

T = TypeVar("T")

#: Observers get each committed event's body (the JSON object the ledger stored).
Observer = Callable[[dict[str, Any]], None]
E = TypeVar("E", bound=Event)


@dataclass
class OpenGrant:
    """A granted person the turnstile is open for, until ``deadline`` (monotonic)."""

    decision: Decision
    deadline: float


@dataclass
class Counters:
    """Counts the screen and metrics show; reset only by a restart."""

    decisions: dict[str, int] = field(default_factory=dict)
    reasons: dict[str, int] = field(default_factory=dict)
    motion_only: int = 0
    events: int = 0
    rejected: int = 0
    errors: int = 0
    #: Events that could not be committed (and so were not acted on).
    not_committed: int = 0


class Controller:
    """Decides for one gate; every method but :meth:`submit` runs on its own thread."""

    def __init__(
        self,
        config: Config,
        ledger: Ledger,
        registry: Registry,
        verifier: PassVerifier,
        turnstile: Turnstile,
        prompter: Prompter | None,
        clock: Clock,
    ):
        self.config = config
        self.policy = config.policy
        self.ledger = ledger
        self.registry = registry
        self.verifier = verifier
        self.turnstile = turnstile
        self.prompter = prompter
        self.clock = clock
        self.queue: queue.Queue[Reading | Callable[[], None]] = queue.Queue()
        self.sessions = SessionMachine(self.policy, config.gate.direction)
        self.finder = FactFinder(
            self.policy,
            config.gate.id,
            config.gate.timezone,
            ledger,
            registry,
            verifier,
            clock,
        )
        self.open_s = config.turnstile.open_s
        self.mode = ledger.get_meta("mode", "normal")
        self.fire = False
        self.grants: list[OpenGrant] = []
        #: Every device's health (the screen and ``T/status.devices``), tampers active now.
        self.device_watch = DeviceWatch(self._record, self._alarm)
        #: Whether events can be committed: ``storage`` in the health map.
        self.storage = StorageWatch(clock, self.device_watch.health)
        self.counters = Counters()
        self.observers: list[Observer] = []
        self.waiting_done: set[str] = set()
        self.last_verdict: dict[str, Any] | None = None
        #: Called once per loop turn (at least every 0.2 s): the systemd watchdog ping.
        self.heartbeat: Callable[[], None] | None = None
        #: Called when the state changes with no event to tell of it (storage fails).
        self.state_watchers: list[Callable[[], None]] = []
        #: With ``[site] share``: what this gate knows of its peers (gated/site/peers.py).
        self.peers: PeerBook | None = None
        #: The guard's side: pending verdicts, fever re-checks, shifts, operator actions.
        self.desk = GuardDesk(self)

    # -- from other threads ------------------------------------------------------------

    def put(self, reading: Reading) -> None:
        """Hand a driver's reading to the controller (thread-safe; drivers' ``emit``)."""
        self.queue.put(reading)

    def submit(self, fn: Callable[[], T]) -> Future[T]:
        """Run ``fn`` on the controller thread; the future holds its result."""
        fut: Future[T] = Future()

        def run() -> None:
            try:
                fut.set_result(fn())
            except Exception as exc:  # handed to the caller, who reports it
                fut.set_exception(exc)

        self.queue.put(run)
        return fut

    # -- the loop ----------------------------------------------------------------------

    def run(self, stop: threading.Event, exit_when_done: bool = False) -> None:
        """Take inputs until ``stop`` is set (or, with ``exit_when_done``, all is settled)."""
        while not stop.is_set():
            try:
                item = self.queue.get(timeout=self._wait())
            except queue.Empty:
                item = None
            try:
                if item is not None:
                    self.handle(item)
                self.tick()
            except CommitFailed:
                pass  # nothing acted on it; the storage watch counts and logs it
            except Exception:
                # Nothing was acted on without its commit; log, count and keep the gate alive.
                self.counters.errors += 1
                log.exception("controller step failed")
            if self.heartbeat is not None:
                self.heartbeat()
            if exit_when_done and self.settled():
                return

    def _wait(self) -> float:
        deadlines = [g.deadline for g in self.grants]
        deadlines += self.desk.deadlines()
        d = self.sessions.deadline()
        if d is not None:
            deadlines.append(d)
        if not deadlines:
            return 0.2
        return min(0.2, max(0.0, min(deadlines) - self.clock.monotonic()))

    def settled(self) -> bool:
        """No scripted input left to play and nothing open: a session, a grant, a guard."""
        return (
            not self.waiting_done
            and self.queue.empty()
            and self.sessions.current is None
            and not self.grants
            and not self.desk.pending
        )

    def handle(self, item: Reading | Callable[[], None]) -> None:
        """Process one reading or submitted callable."""
        if not isinstance(item, Reading):
            item()
            return
        kind = item.kind
        if kind in ("motion", "temp", "card", "qr"):
            self._session_input(item)
        elif kind == "passage":
            if item.value:
                self._passage()
        elif kind == "fire":
            self._fire(bool(item.value), item.source)
        elif kind == "tamper":
            self.device_watch.tamper(bool(item.value), item.source)
        elif kind == "device":
            self.device_watch.report(item.source, item.value)
        elif kind == "done":
            self.waiting_done.discard(item.source)
        else:
            log.warning("ignored a reading of unknown kind %r from %s", kind, item.source)

    def tick(self) -> None:
        """Close what has run out of time: sessions, guard waits, open turnstiles."""
        now = self.clock.monotonic()
        expired = self.sessions.expire(now)
        if expired is not None:
            self._conclude(expired)
        if self.sessions.motion_only_timeouts != self.counters.motion_only:
            self.counters.motion_only = self.sessions.motion_only_timeouts
        self.desk.expire(now)
        for g in list(self.grants):
            if now >= g.deadline:
                self.grants.remove(g)
                self._record(Passage.of_grant(g.decision, passed=False))
                if not self.grants and not self._free():
                    self.turnstile.lock()

    # -- sessions and verdicts ---------------------------------------------------------

    def _session_input(self, r: Reading) -> None:
        value = r.value
        if r.kind in ("card", "qr") and (not isinstance(value, str) or not value.strip()):
            self.counters.rejected += 1
            log.warning("ignored an empty %s reading from %s", r.kind, r.source)
            return
        if r.kind == "temp" and (
            isinstance(value, bool)
            or not isinstance(value, (int, float))
            or not math.isfinite(value)
        ):
            self.counters.rejected += 1
            log.warning("ignored a temperature that is not a number from %s", r.source)
            return
        checks_off = self.fire or self.mode in ("locked", "free")
        step = self.sessions.feed(r.kind, value, self.clock.monotonic(), checks_off=checks_off)
        for prompt in step.prompts:
            self._play(prompt)
        if step.ready is not None:
            self._conclude(step.ready)

    def facts(self, s: Session) -> Facts:
        """Look up everything the policy needs for session ``s``."""
        return self.finder.facts(s, self.mode, self.fire)

    def _conclude(self, s: Session) -> None:
        started = time.perf_counter()
        facts = self.facts(s)
        verdict = decide(facts, self.policy)
        decide_ms = (time.perf_counter() - started) * 1000
        event = self._decision_event(s, facts, verdict, decide_ms)
        effects = self._effects(facts, verdict, event)
        event = self._record(event, effects if verdict.decision == "granted" else None)
        if verdict.alarm:
            # The decision is committed: it is acted on even if its alarm cannot be.
            with contextlib.suppress(CommitFailed):
                self._alarm(
                    verdict.alarm,
                    f"session ended {verdict.decision}",
                    ref=event.id,
                    person=event.person,
                    temperature_c=event.temperature_c,
                )
        self._act(event, verdict, effects)
        if verdict.decision == "denied" and "fever" in verdict.reasons:
            self.desk.offer_recheck(event, s, facts, effects)

    @staticmethod
    def _decision_event(s: Session, facts: Facts, v: Verdict, decide_ms: float) -> Decision:
        credential = None
        otp = facts.qr is not None and facts.qr.otp  # peers learn its use (SPEC §4b)
        if facts.card is not None:
            credential = Credential.card(
                facts.card.uid, v.color, facts.qr.jti if facts.qr is not None else None, otp
            )
        elif facts.qr is not None:
            credential = Credential.qr(facts.qr.jti, v.color, otp)
        return Decision.verdict(
            direction=s.direction,
            decision=v.decision,
            reasons=v.reasons,
            person=v.person.as_event() if v.person else None,
            credential=credential,
            temperature_c=s.temperature,
            readings_c=list(s.readings) + list(s.invalid_readings),
            decide_ms=decide_ms,
            # Told so that the gate's peers count this grant exactly as it counts here
            # (no quota, no presence: see _effects).
            free=v.granted and (facts.fire or facts.mode == "free"),
            relied_on=facts.history.relied_on,
        )

    def _effects(self, facts: Facts, v: Verdict, event: Decision) -> Effects:
        person = v.person
        jti = facts.qr.jti if facts.qr is not None and facts.qr.otp else None
        if person is None or facts.fire or facts.mode == "free":
            # Nobody was checked: an evacuation or a free gate uses up no quota and
            # leaves anti-passback as it was.
            return Effects(pass_use_jti=jti)
        return Effects(
            quota_household=person.household or None,
            quota_direction=event.direction,
            presence_person=person.id,
            presence_direction=event.direction,
            pass_use_jti=jti,
        )

    def _act(self, event: Decision, v: Verdict, effects: Effects) -> None:
        if v.decision == "granted":
            self._open(event)
        elif v.decision == "needs_guard":
            self.desk.hold(event, effects)
        else:
            self.turnstile.signal("denied")
        self._play(prompt_for(v.decision, v.reasons))

    def _open(self, event: Decision) -> None:
        self.grants.append(OpenGrant(event, self.clock.monotonic() + self.open_s))
        self.turnstile.signal("granted")
        if not self._free():
            self.turnstile.open(self.open_s)

    # -- turnstile inputs --------------------------------------------------------------

    def _free(self) -> bool:
        return self.fire or self.mode == "free"

    def _passage(self) -> None:
        if self.grants:
            g = self.grants.pop(0)
            self._record(Passage.of_grant(g.decision, passed=True))
            if not self.grants and not self._free():
                self.turnstile.lock()
            return
        event = self._record(Passage.without_grant(self.config.gate.direction))
        if not self._free():
            self._alarm("tailgate", "passage with no grant open", ref=event.id)

    def _fire(self, active: bool, source: str) -> None:
        if active == self.fire:
            return
        self.fire = active
        self.turnstile.free(active or self.mode == "free")
        if active:
            self._alarm("fire", f"fire input active ({source}): passage is free")
        else:
            self._record(Mode.fire_cleared(self.mode, by=source))

    # -- recording and acting (the desk records and acts through these too) -------------

    def _alarm(self, alarm: str, detail: str, **fields: Any) -> Alarm:
        return self._record(Alarm.raised(alarm, detail, **fields))

    def _record(self, event: E, effects: Effects | None = None) -> E:
        """Commit ``event``, count it and tell the observers its body; the stamped event."""
        try:
            event = self.ledger.append(event, effects)
        except sqlite3.Error as exc:
            if not is_storage_failure(exc):
                raise
            self._not_committed(event, exc)
            raise CommitFailed(f"event not committed: {exc}") from exc
        self.counters.events += 1
        body = event.body()
        if isinstance(event, Decision):
            d = event.decision
            self.counters.decisions[d] = self.counters.decisions.get(d, 0) + 1
            for r in event.reasons:
                self.counters.reasons[r] = self.counters.reasons.get(r, 0) + 1
            self.last_verdict = body
        for observe in self.observers:
            try:
                observe(body)
            except Exception:  # an observer must never stop the gate
                log.exception("event observer failed")
        if self.storage.failing:
            self.storage.works_again(self._alarm, self._record)
        return event

    def _not_committed(self, event: Event, exc: sqlite3.Error) -> None:
        """Fail secure on an event that is not in the ledger: nothing acts on it, the
        turnstile locks unless a committed grant is open, the person waits for the guard."""
        self.counters.not_committed += 1
        first = self.storage.failed(exc)
        if not self.grants and not self._free():
            self.turnstile.lock()
        if isinstance(event, Decision):
            self.turnstile.signal("guard")
            self._play("wait_guard")
        if first:
            self.notify_state_watchers()

    def notify_state_watchers(self) -> None:
        """Tell the state watchers the state moved with no event (controller thread)."""
        for watch in self.state_watchers:
            try:
                watch()
            except Exception:  # a watcher must never stop the gate
                log.exception("state watcher failed")

    def _play(self, prompt: str | None) -> None:
        if prompt and self.prompter is not None:
            try:
                self.prompter.play(prompt)
            except Exception as exc:  # a mute prompter must not stop the gate
                log.warning("prompt %s not played: %s", prompt, exc)
