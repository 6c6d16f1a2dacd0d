"""The look-ups behind a verdict: the registry, the pass check and the site's history.

The history is the site's: quota uses, presence and one-time pass uses at this gate
and at its peers (what they taught, gated/site/learn.py; SPEC §4b).

The policy is pure; :class:`FactFinder` is what gathers, for one session, every fact
it decides on. It reads and never writes, so it runs on the controller's thread
between two commits.
"""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING
from zoneinfo import ZoneInfo

from gated.clock import Clock
from gated.events import PeerRef
from gated.ledger import Ledger
from gated.passes import PassVerifier
from gated.policy import Facts, PassageHistory, PassFacts, identify
from gated.registry import Registry
from gated.session import Session

if TYPE_CHECKING:
    from gated.config import PolicyConfig


#: Seconds a peer's stamp may be ahead of this gate's clock and still lift an
#: anti-passback refusal (the passes' default ``max_clock_skew_s``).
PEER_CLOCK_SKEW_S = 120.0
_OPPOSITE = {"in": "out", "out": "in"}


class FactFinder:
    """Gathers the :class:`Facts` of a session for the gate ``gate_id``."""

    def __init__(
        self,
        policy: PolicyConfig,
        gate_id: str,
        timezone: str,
        ledger: Ledger,
        registry: Registry,
        verifier: PassVerifier,
        clock: Clock,
    ):
        self.policy = policy
        self.gate_id = gate_id
        self.tz = ZoneInfo(timezone)
        self.ledger = ledger
        self.registry = registry
        self.verifier = verifier
        self.clock = clock

    def pass_facts(self, text: str) -> PassFacts:
        """A QR text verified offline, then checked against revocations and past uses."""
        check = self.verifier.verify(text, self.clock.time(), self.gate_id)
        if not check.ok:
            return PassFacts(problem=check.reason, jti=check.jti)
        c = check.claims
        jti = str(c["jti"])
        otp = bool(c.get("otp", False))
        sub = str(c["sub"])
        problem = None
        if self.registry.pass_revoked(jti) or self.registry.person_revoked(sub):
            problem = "pass_revoked"  # by its id, or every pass issued to a revoked person
        elif otp and self.ledger.pass_used(jti):
            problem = "pass_replayed"
        holder = self.registry.person(sub)
        return PassFacts(problem, jti, sub, str(c["hh"]), str(c["col"]), otp, holder)

    def last_direction(self, person_id: str, direction: str) -> tuple[str | None, PeerRef | None]:
        """The person's last granted direction at any gate of the site, for a passage
        towards ``direction``, and the peer event it rests on when that lifts a refusal.

        The newer of the gate's own presence and its peers' wins (by ``ts``). A peer's
        passage can only add a constraint, except an exit (the opposite direction) after the
        person's last passage here towards ``direction``: that lifts the refusal (they went
        in here and out at the out-gate), and the grant names the peer's event. A peer's
        stamp further ahead of this gate's clock than :data:`PEER_CLOCK_SKEW_S` lifts nothing.
        """
        own = self.ledger.presence(person_id)
        peer = self.ledger.site_presence(person_id)
        if peer is None or (own is not None and peer.ts <= own.ts):
            return (own.direction if own is not None else None), None
        if own is None or own.direction != direction or peer.direction == direction:
            return peer.direction, None  # the same verdict as own, or a refusal added
        if (
            peer.direction != _OPPOSITE.get(direction)
            or peer.ts > self.clock.time() + PEER_CLOCK_SKEW_S
        ):
            return own.direction, None  # only a recorded exit lifts, and none from the future
        return peer.direction, peer.peer

    def facts(self, s: Session, mode: str, fire: bool) -> Facts:
        """Everything the policy needs for session ``s`` in gate ``mode``."""
        card = self.registry.card(s.card) if s.card else None
        qr = self.pass_facts(s.qr) if s.qr else None
        # The same person the policy will decide on, so quota and anti-passback are
        # counted under the household that the grant is recorded under.
        person = identify(Facts(card=card, qr=qr))
        history = PassageHistory()
        quota = self.policy.household_quota
        if quota is not None and person is not None and person.household:
            since = self.clock.time() - quota.window_h * 3600
            direction = None if quota.direction == "both" else quota.direction
            used = self.ledger.quota_used(person.household, since, direction)
            history = PassageHistory(household_grants=used)
        if person is not None and self.policy.antipassback != "off":
            last, relied_on = self.last_direction(person.id, s.direction)
            history = PassageHistory(history.household_grants, last, relied_on)
        return Facts(
            mode=mode,
            fire=fire,
            direction=s.direction,
            local_time=datetime.fromtimestamp(self.clock.time(), self.tz),
            temperature=s.temperature,
            readings=tuple(s.readings),
            temp_invalid_seen=bool(s.invalid_readings),
            card=card,
            qr=qr,
            history=history,
        )
