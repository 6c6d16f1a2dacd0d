"""One person at the gate: the session state machine of docs/contracts.md §4a.

A session opens at the first input, gathers the temperature (first) and the
credentials, and is ready for a verdict when both are in, or when it has made no
progress for ``session_timeout_s``. Time is passed in (monotonic seconds); the
machine does no I/O and says which prompts to play.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from gated.config import PolicyConfig

CREDENTIAL_KINDS = ("card", "qr")


@dataclass
class Session:
    """What has been gathered about the person in front of the gate."""

    opened: float
    last_progress: float
    direction: str
    motion: bool = False
    readings: list[float] = field(default_factory=list)
    invalid_readings: list[float] = field(default_factory=list)
    remeasures: int = 0
    temp_settled: bool = False
    card: str | None = None
    qr: str | None = None
    timed_out: bool = False

    @property
    def temperature(self) -> float | None:
        """The session's temperature: its last valid reading."""
        return self.readings[-1] if self.readings else None

    @property
    def only_motion(self) -> bool:
        """Nothing but motion was seen: a passer-by, not a person to decide on."""
        return not (self.readings or self.invalid_readings or self.card or self.qr)


@dataclass
class Step:
    """What one input did: prompts to play, and a session ready for its verdict."""

    prompts: list[str] = field(default_factory=list)
    ready: Session | None = None


class SessionMachine:
    """Feeds inputs into the open session; at most one session is open at a time."""

    def __init__(self, policy: PolicyConfig, direction: str = "in"):
        self.policy = policy
        self.direction = direction
        self.current: Session | None = None
        self.motion_only_timeouts = 0

    def _credentials_complete(self, s: Session) -> bool:
        mode = self.policy.credentials
        if mode == "card":
            return s.card is not None
        if mode == "qr":
            return s.qr is not None
        if mode == "card_and_qr":
            return s.card is not None and s.qr is not None
        return s.card is not None or s.qr is not None

    def _missing_prompt(self, s: Session) -> str:
        if self.policy.require_temperature and not s.temp_settled:
            return "measure_temp"
        return "show_pass"

    def feed(self, kind: str, value: Any, now: float, *, checks_off: bool = False) -> Step:
        """Take one input (``motion``, ``temp``, ``card``, ``qr``) at monotonic ``now``.

        ``checks_off``: the gate is locked, free or released for fire, so the first
        temperature or credential settles the session at once.
        """
        step = Step()
        s = self.current
        if s is None:
            s = self.current = Session(opened=now, last_progress=now, direction=self.direction)
            if kind == "motion":
                step.prompts.append("welcome")
                step.prompts.append(self._missing_prompt(s))
        if kind == "motion":
            s.motion = True
            return step
        s.last_progress = now
        if kind == "temp":
            self._temperature(s, float(value), step)
        elif kind in CREDENTIAL_KINDS:
            setattr(s, kind, value)
            if not self._credentials_complete(s) and self.policy.credentials == "card_and_qr":
                step.prompts.append("show_pass")
            elif self.policy.require_temperature and not s.temp_settled:
                step.prompts.append("measure_temp")
        else:
            raise ValueError(f"not a session input: {kind}")
        temp_done = s.temp_settled or not self.policy.require_temperature
        if (checks_off and kind in ("temp", *CREDENTIAL_KINDS)) or (
            temp_done and self._credentials_complete(s)
        ):
            self.current = None
            step.ready = s
        return step

    def _temperature(self, s: Session, value: float, step: Step) -> None:
        if s.temp_settled:
            return  # the temperature is taken; later readings do not change it
        low, high = self.policy.valid_temp_c
        if not low <= value <= high:
            s.invalid_readings.append(value)
            step.prompts.append("remeasure")
            return
        s.readings.append(value)
        if value >= self.policy.fever_c and s.remeasures < self.policy.remeasure:
            s.remeasures += 1
            step.prompts.append("remeasure")
            return
        s.temp_settled = True
        # A fever is announced with the verdict; until then the pass is still asked
        # for, so the fever alarm names the person.
        if not self._credentials_complete(s):
            step.prompts.append("show_pass")

    def expire(self, now: float) -> Session | None:
        """Close the open session if it made no progress for ``session_timeout_s``.

        Returns the session if it needs a verdict; a motion-only session is dropped
        and counted in ``motion_only_timeouts``.
        """
        s = self.current
        if s is None or now - s.last_progress < self.policy.session_timeout_s:
            return None
        self.current = None
        if s.only_motion:
            self.motion_only_timeouts += 1
            return None
        s.timed_out = True
        return s

    def deadline(self) -> float | None:
        """Monotonic time at which the open session times out, if one is open."""
        s = self.current
        return None if s is None else s.last_progress + self.policy.session_timeout_s
