"""A gate rig: the controller on a real SQLite file, the simulated turnstile and prompter,
a fake clock; the config the tests start from, and the people and cards in its registry."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from drivers.common.base import Reading
from drivers.sim import SimPrompter, SimTurnstile
from gated.clock import FakeClock
from gated.config import Config, config_from_dict
from gated.controller import Controller
from gated.ledger import Ledger
from gated.passes import PassVerifier, generate_keypair, issue_pass
from gated.registry import Person, Registry
from gated.storage import connect
from tests.support.gate_config import deep_merge
from tests.support.ledger_file import ledger_events


def make_config(tmp_path: Path, **sections: Any) -> Config:
    """A minimal valid config in ``tmp_path`` with ``sections`` merged over it."""
    base: dict[str, Any] = {
        "gate": {"id": "g1", "site": "s1", "direction": "in", "timezone": "Asia/Shanghai"},
        "storage": {"path": str(tmp_path / "gated.db")},
        "turnstile": {"driver": "sim", "open_s": 5.0},
        "prompter": {"driver": "sim"},
    }
    return config_from_dict(deep_merge(base, sections), tmp_path / "gated.toml")


ZHANG = Person("P1", "Zhang Wei", "320623199001011234", "1-101", "H1", "resident", "green")
LI = Person("P2", "Li Na", "320623198502022345", "1-102", "H2", "resident", "yellow")
CARDS = {"0A1B2C3D4E": "P1", "1122334455": "P2"}


class Rig:
    """A controller wired to a real database, the simulated turnstile and prompter."""

    def __init__(self, tmp_path: Path, **sections: Any):
        self.tmp_path = tmp_path
        self.key_dir = tmp_path / "keys"
        if not (self.key_dir / "k1.key").exists():
            generate_keypair(self.key_dir, "k1")
        sections = deep_merge(
            {"passes": {"public_keys": {"k1": str(self.key_dir / "k1.pub")}}}, sections
        )
        self.config = make_config(tmp_path, **sections)
        self.clock = FakeClock()
        #: What the ledger (and the commands) take for the kernel's clock_synced().
        self.synced = True
        self.conn = connect(self.config.storage.path)
        self.ledger = Ledger(
            self.conn,
            site=self.config.gate.site,
            gate=self.config.gate.id,
            clock=self.clock,
            clock_synced=lambda: self.synced,
        )
        self.ledger.start_boot()
        self.registry = Registry(self.conn)
        self.registry.apply([ZHANG, LI], CARDS, "2026-01-01T00:00:00Z")
        self.turnstile = SimTurnstile("turnstile", lambda r: None)
        self.prompter = SimPrompter("prompter", lambda r: None)
        verifier = PassVerifier(self.config.passes.public_keys, self.config.passes.max_clock_skew_s)
        self.controller = Controller(
            self.config,
            self.ledger,
            self.registry,
            verifier,
            self.turnstile,
            self.prompter,
            self.clock,
        )
        self.events: list[dict[str, Any]] = []
        self.controller.observers.append(self.events.append)

    def feed(self, kind: str, value: Any = True, after: float = 0.1) -> None:
        """Advance the clock by ``after`` seconds, then hand in one reading."""
        self.clock.advance(after)
        self.controller.handle(Reading(kind, value, kind))
        self.controller.tick()

    def wait(self, seconds: float) -> None:
        """Let ``seconds`` pass on the fake clock."""
        self.clock.advance(seconds)
        self.controller.tick()

    def issue(self, **claims: Any) -> str:
        """A pass signed with the rig's key, valid from the fake clock's now."""
        claims.setdefault("sub", "P1")
        claims.setdefault("hh", "H1")
        claims.setdefault("col", "green")
        return issue_pass(self.key_dir / "k1.key", kid="k1", now=self.clock.time(), **claims)

    def decisions(self) -> list[dict[str, Any]]:
        return [e for e in self.events if e["kind"] == "decision"]

    def stored(self) -> list[dict[str, Any]]:
        """Every event as committed in the ledger file (read through a new connection)."""
        return ledger_events(self.config.storage.path)
