"""``gated demo``: the daemon on simulated hardware, playing a scripted stream of arrivals.

The built-in scenario is written at start, because its QR passes are signed with a
key made for the run. It shows every kind of verdict; a simulated guard on duty
answers the first two ``needs_guard`` verdicts and then goes off duty.
"""

from __future__ import annotations

import json
import logging
import sys
import tempfile
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gated.describe import describe_event
from gated.errors import GatedError
from gated.passes import generate_keypair, issue_pass
from gated.registry import Person

if TYPE_CHECKING:
    from gated.controller import Controller

log = logging.getLogger(__name__)

DEMO_CONFIG = Path(__file__).resolve().parents[2] / "config" / "demo.toml"

PERSONS = [
    (
        Person("P1001", "张伟", "320623199001011234", "1-101", "H101", "resident", "green", True),
        "0A1B2C3D4E",
    ),
    (
        Person("P1002", "李娜", "320623198502022345", "1-102", "H102", "resident", "yellow"),
        "1122334455",
    ),
    (
        Person("P1003", "Wang Fang", "110105197803033456", "2-201", "H201", "resident", "blue"),
        "AABBCCDDEE",
    ),
]
UNKNOWN_CARD = "FF00FF00FF"
GUARD = "G01"
DEMO_PIN = "2468"  # config/demo.toml holds its scrypt hash


def demo_scenario(private_key: Path, kid: str, gate: str) -> list[dict[str, Any]]:
    """The built-in scenario: one arrival of each kind, about 50 s at speed 1."""
    visitor = issue_pass(
        private_key,
        kid=kid,
        sub="V9001",
        hh="H101",
        col="green",
        valid_s=3600,
        otp=True,
        gates=[gate],
    )
    return [
        # A resident: temperature, card, through.
        {"t": 0.0, "motion": True},
        {"t": 0.5, "temp": 36.5},
        {"t": 1.0, "card": "0A1B2C3D4E"},
        {"t": 2.0, "passage": True},
        # A fever, re-measured and confirmed: denied whatever the card says, and an alarm.
        {"t": 4.0, "temp": 38.2},
        {"t": 5.0, "temp": 38.0},
        {"t": 5.5, "card": "AABBCCDDEE"},
        # A visitor with a one-time pass, then the same pass again.
        {"t": 8.0, "temp": 36.7},
        {"t": 8.5, "qr": visitor},
        {"t": 9.5, "passage": True},
        {"t": 11.0, "temp": 36.4},
        {"t": 11.5, "qr": visitor},
        # A card nobody registered.
        {"t": 13.0, "temp": 36.6},
        {"t": 13.5, "card": UNKNOWN_CARD},
        # A yellow code: the guard on duty approves.
        {"t": 15.0, "temp": 36.8},
        {"t": 15.5, "card": "1122334455"},
        {"t": 18.5, "passage": True},
        # Not a pass at all.
        {"t": 20.0, "temp": 36.5},
        {"t": 20.5, "qr": "https://example.com/free-entry"},
        # Somebody slips through with no grant.
        {"t": 22.0, "passage": True},
        # The yellow code again: this time the guard refuses.
        {"t": 24.0, "temp": 36.5},
        {"t": 24.5, "card": "1122334455"},
        # A temperature and no pass: the session times out.
        {"t": 29.0, "temp": 36.6},
        # Fire: free passage, no checks.
        {"t": 37.0, "fire": True},
        {"t": 38.0, "card": "0A1B2C3D4E"},
        {"t": 38.5, "passage": True},
        {"t": 40.0, "fire": False},
        # The guard has gone off duty: the yellow code waits, nobody answers.
        {"t": 42.0, "temp": 36.6},
        {"t": 42.5, "card": "1122334455"},
    ]


class DemoGuard:
    """A simulated guard: approves the first ``needs_guard``, refuses the second, then leaves."""

    def __init__(self, controller: Controller, delay_s: float):
        self.controller = controller
        self.delay_s = delay_s
        self.answered = 0

    def __call__(self, event: dict[str, Any]) -> None:
        if event["kind"] != "decision" or event["decision"] != "needs_guard":
            return
        if self.answered >= 2:
            return
        grant = self.answered == 0
        self.answered += 1
        last = self.answered == 2

        desk = self.controller.desk

        def answer() -> None:
            desk.decide(event["id"], grant, GUARD)
            if last:
                desk.guard_off(GUARD)

        timer = threading.Timer(self.delay_s, lambda: self.controller.submit(answer))
        timer.daemon = True
        timer.start()


def run_demo(
    scenario: str | None = None,
    exit_when_done: bool = False,
    speed: float = 1.0,
    workdir: str | None = None,
    overlay: str | None = None,
) -> int:
    """Run the demo; returns the exit code.

    ``overlay``: a TOML file merged over config/demo.toml (``gated demo --hub`` gives each of
    its gates one: who it is, the broker, its screen); its event lines then start with the
    gate's id, and the banner is left to ``--hub``.
    """
    from gated.app import App
    from gated.config import load_config, read_toml

    if speed <= 0:
        raise GatedError("--speed must be greater than 0")
    if not DEMO_CONFIG.exists():
        raise GatedError(f"demo config not found at {DEMO_CONFIG}")
    tmp = None
    if workdir is None:
        tmp = tempfile.TemporaryDirectory(prefix="gated-demo-")
        workdir = tmp.name
    work = Path(workdir)
    work.mkdir(parents=True, exist_ok=True)
    try:
        key_dir = work / "keys"
        kid = "demo"
        if not (key_dir / f"{kid}.key").exists():
            generate_keypair(key_dir, kid)
        layer = read_toml(Path(overlay)) if overlay else {}
        base = load_config(DEMO_CONFIG, layer)
        scenario_path = Path(scenario) if scenario else work / "scenario.jsonl"
        if scenario is None:
            lines = demo_scenario(key_dir / f"{kid}.key", kid, base.gate.id)
            scenario_path.write_text("".join(json.dumps(s) + "\n" for s in lines))
        # The overlay's sections (gate, mqtt, status) are not the demo's own below.
        config = load_config(
            DEMO_CONFIG,
            {
                **layer,
                "storage": {"path": str(work / "demo.db")},
                "passes": {"public_keys": {kid: str(key_dir / f"{kid}.pub")}},
                "policy": {
                    "session_timeout_s": base.policy.session_timeout_s / speed,
                    "guard_timeout_s": base.policy.guard_timeout_s / speed,
                },
                "sim": {
                    "scenario": str(scenario_path.resolve()),
                    "exit_when_done": exit_when_done,
                    "speed": speed,
                },
            },
        )
        app = App(config)
        app.registry.apply(
            [p for p, _ in PERSONS], {uid: p.id for p, uid in PERSONS}, "2026-01-01T00:00:00Z"
        )
        app.install_signal_handlers()

        label = f"{config.gate.id:<10} " if overlay else ""

        def show(event: dict[str, Any]) -> None:
            print(label + describe_event(event), flush=True)

        app.controller.observers.append(show)
        app.controller.observers.append(DemoGuard(app.controller, 1.5 / speed))
        screen = ""
        if config.status.listen:
            screen = f"; screen on http://{config.status.listen} (guard PIN {DEMO_PIN})"
        if not overlay:
            print(
                f"gated demo: gate {config.gate.site}/{config.gate.id}, simulated hardware, "
                f"scenario {scenario_path.name}{screen}; Ctrl-C stops",
                file=sys.stderr,
                flush=True,
            )
        # The first thing the controller's loop runs: the desk ended the shifts of the last
        # run when it was made, so this one stands.
        desk = app.controller.desk
        app.controller.submit(lambda: desk.guard_on(GUARD))
        return app.run()
    finally:
        if tmp is not None:
            tmp.cleanup()
