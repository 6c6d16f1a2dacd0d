"""``gated demo --hub``: a broker, two simulated gates of one site and a hub, on this machine.

Every part is a child process (:mod:`gated.cli.children`): a mosquitto of its own
(persistence off, on a free loopback port), ``gated demo`` for each gate (the demo's registry,
scenario and guard, with the broker and a screen given by an overlay file), and ``gated hub
run``. A signal reaches this process alone, which stops them in order: the gates first (their
outboxes drain to the broker while the hub still takes them), then the hub, then the broker.
Should this process die, even by ``kill -9``, they end too. It runs no thread of its own (the
broker is polled from this one), which is what makes that safe.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import sqlite3
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

from gated.cli.children import STOP_S, Part, pick_port
from gated.errors import GatedError

SITE = "north"
#: (gate id, direction, the screen's port when free).
GATES = (("north-in", "in", 8080), ("north-out", "out", 8081))
HUB_ID = "demo-hub"
HUB_PORT = 8090
MOSQUITTO_FALLBACK = "/usr/sbin/mosquitto"
#: How long a part may take to come up (a loaded Raspberry Pi imports slowly).
START_S = 60.0
#: How long the hub may take, once the gates are done, to hold everything they published.
SETTLE_S = 30.0
POLL_S = 0.1


def find_mosquitto(
    search_path: str | None = None, fallback: str = MOSQUITTO_FALLBACK
) -> str | None:
    """The mosquitto binary: on ``PATH`` (or ``search_path``), else ``fallback`` if it exists."""
    found = shutil.which("mosquitto", path=search_path)
    if found:
        return found
    return fallback if fallback and os.access(fallback, os.X_OK) else None


def mosquitto_or_error(search_path: str | None = None, fallback: str = MOSQUITTO_FALLBACK) -> str:
    """:func:`find_mosquitto`, or a GatedError that says how to install it."""
    found = find_mosquitto(search_path, fallback)
    if found is None:
        raise GatedError(
            f"--hub needs the mosquitto broker, found neither on PATH nor at {fallback}:"
            " apt-get install mosquitto"
        )
    return found


def toml_text(sections: dict[str, dict[str, Any]]) -> str:
    """A TOML document of one level of tables (strings, numbers, booleans, lists of those)."""

    def value(v: Any) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, list):
            return "[" + ", ".join(value(x) for x in v) + "]"
        if isinstance(v, (int, float)):
            return repr(v)
        return json.dumps(str(v))  # a JSON string is a TOML basic string

    lines = []
    for name, table in sections.items():
        lines.append(f"[{name}]")
        lines += [f"{k} = {value(v)}" for k, v in table.items()]
        lines.append("")
    return "\n".join(lines)


@dataclass
class Gate:
    """A simulated gate of the demo: where it lives and where its screen is."""

    id: str
    direction: str
    port: int
    dir: Path
    part: Part | None = None

    @property
    def database(self) -> Path:
        return self.dir / "demo.db"

    def last_seq(self) -> int:
        """The highest ``seq`` in the gate's ledger (0 when it holds none)."""
        conn = sqlite3.connect(f"file:{self.database}?mode=ro", uri=True, timeout=10)
        try:
            (seq,) = conn.execute("SELECT coalesce(max(seq), 0) FROM events").fetchone()
        finally:
            conn.close()
        return int(seq)


@dataclass
class HubDemo:
    """The whole demo: start the parts, watch them, stop them."""

    work: Path
    speed: float
    exit_when_done: bool
    scenario: str | None
    mosquitto: str
    stopping: list[str] = field(default_factory=list)
    parts: list[Part] = field(default_factory=list)
    gates: list[Gate] = field(default_factory=list)
    hub: Part | None = None
    #: With ``exit_when_done``: the last line, printed once everything has stopped.
    summary: str = ""

    # -- signals ----------------------------------------------------------------------

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        self.stopping.append(signal.Signals(signum).name)

    @contextlib.contextmanager
    def signals(self) -> Iterator[None]:
        """SIGINT, SIGTERM and SIGHUP ask the demo to stop (checked between its steps)."""
        names = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
        old = {s: signal.signal(s, self._on_signal) for s in names}
        try:
            yield
        finally:
            for s, handler in old.items():
                signal.signal(s, handler)

    # -- starting ---------------------------------------------------------------------

    def spawn(self, name: str, argv: list[str], stop_s: float = STOP_S, **kwargs: Any) -> Part:
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        part = Part.spawn(name, argv, stop_s, env=env, **kwargs)
        self.parts.append(part)
        return part

    def wait(self, what: str, done: Callable[[], bool], parts: list[Part]) -> bool:
        """Until ``done()``; False if asked to stop; GatedError if a part exits or time is up."""
        deadline = time.monotonic() + START_S
        while not done():
            if self.stopping:
                return False
            for part in parts:
                if (code := part.exited()) is not None:
                    raise GatedError(f"{part.name} exited with code {code} before {what}")
            if time.monotonic() > deadline:
                raise GatedError(f"gave up waiting {START_S:g} s for {what}")
            time.sleep(POLL_S)
        return True

    def start_broker(self) -> int:
        broker = self.work / "broker"
        broker.mkdir(parents=True, exist_ok=True)
        port = pick_port(0, set())
        lines = [
            "persistence false",
            f"log_dest file {broker / 'mosquitto.log'}",
            "log_type error",
            "log_type warning",
            f"listener {port} 127.0.0.1",
            "allow_anonymous true",
        ]
        if os.geteuid() == 0:
            lines.append("user root")  # else it drops to "mosquitto", who cannot write the log
        conf = broker / "mosquitto.conf"
        conf.write_text("\n".join(lines) + "\n", encoding="utf-8")
        with open(broker / "stderr.log", "wb") as err:
            argv = [self.mosquitto, "-c", str(conf)]
            part = self.spawn("the broker", argv, 5.0, stdout=err, stderr=err)

        def listening() -> bool:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                    return True
            except OSError:
                return False

        try:
            self.wait(f"mosquitto to listen on port {port}", listening, [part])
        except GatedError as exc:
            said = ""
            for log in (broker / "stderr.log", broker / "mosquitto.log"):
                if log.exists() and (text := log.read_text(errors="replace").strip()):
                    said = "; it said: " + text.splitlines()[-1]
            raise GatedError(f"{exc}{said}") from None
        return port

    def start_hub(self, broker_port: int, web_port: int, timezone: str) -> None:
        hub = self.work / "hub"
        hub.mkdir(parents=True, exist_ok=True)
        config = hub / "hub.toml"
        config.write_text(
            toml_text(
                {
                    "hub": {"id": HUB_ID, "database": "sqlite:///hub.db"},
                    "mqtt": {"urls": [f"mqtt://127.0.0.1:{broker_port}"]},
                    "web": {"listen": f"127.0.0.1:{web_port}", "language": "en"},
                    "report": {"timezone": timezone},
                }
            ),
            encoding="utf-8",
        )
        argv = [sys.executable, "-m", "gated.cli", "hub", "run", "-c", str(config)]
        self.hub = self.spawn("the hub", argv, 15.0)
        # The gates' first events must find the hub's subscription at the broker (it keeps
        # nothing for a subscriber it has never seen): the hub publishes its retained
        # "online" status right after subscribing, on the same connection, so once the
        # broker holds it the subscription is in place.
        with _retained(broker_port, f"gated/_hub/{HUB_ID}/status") as latest:
            self.wait(
                "the hub to subscribe at the broker",
                lambda: (latest() or {}).get("state") == "online",
                [*self.parts],
            )

    def start_gates(self, broker_port: int) -> None:
        for gate in self.gates:
            gate.dir.mkdir(parents=True, exist_ok=True)
            overlay = gate.dir / "overlay.toml"
            overlay.write_text(
                toml_text(
                    {
                        "gate": {"id": gate.id, "site": SITE, "direction": gate.direction},
                        "mqtt": {"urls": [f"mqtt://127.0.0.1:{broker_port}"]},
                        "status": {"listen": f"127.0.0.1:{gate.port}"},
                    }
                ),
                encoding="utf-8",
            )
            argv = [sys.executable, "-m", "gated.cli", "demo", "--overlay", str(overlay)]
            argv += ["--workdir", str(gate.dir), "--speed", repr(self.speed)]
            if self.scenario:
                argv += ["--scenario", str(Path(self.scenario).resolve())]
            if self.exit_when_done:
                argv.append("--exit-when-done")
            gate.part = self.spawn(f"gate {gate.id}", argv)

    # -- running ----------------------------------------------------------------------

    def run(self) -> int:
        from gated.cli.demo import DEMO_CONFIG, DEMO_PIN
        from gated.config import load_config

        taken: set[int] = set()
        for gate_id, direction, preferred in GATES:
            self.gates.append(
                Gate(gate_id, direction, pick_port(preferred, taken), self.work / gate_id)
            )
        web_port = pick_port(HUB_PORT, taken)
        broker_port = self.start_broker()
        if self.stopping:
            return 0
        self.start_hub(broker_port, web_port, load_config(DEMO_CONFIG).gate.timezone)
        if self.stopping:
            return 0
        self.start_gates(broker_port)
        lines = [
            f"gated demo --hub: broker mqtt://127.0.0.1:{broker_port}, two simulated gates"
            f" and a hub (files in {self.work})",
            f"  fleet page            http://127.0.0.1:{web_port}",
            *(f"  {g.id + ' screen':<21} http://127.0.0.1:{g.port}" for g in self.gates),
            f"  guard PIN on the screens: {DEMO_PIN}",
        ]
        if not self.exit_when_done:
            lines.append("Ctrl-C stops everything")
        print("\n".join(lines), file=sys.stderr, flush=True)
        return self.watch()

    def watch(self) -> int:
        """Until a signal, a part's failure, or (``exit_when_done``) the hub holding everything."""
        done: set[str] = set()
        while not self.stopping:
            for part in self.parts:
                code = part.exited()
                if code is None or part.name in done:
                    continue
                gate = next((g for g in self.gates if g.part is part), None)
                if gate is not None and code == 0 and self.exit_when_done:
                    done.add(part.name)
                    continue
                raise GatedError(f"{part.name} exited with code {code} (its lines are above)")
            if self.exit_when_done and len(done) == len(self.gates):
                return self.settle()
            time.sleep(POLL_S)
        return 0

    def settle(self) -> int:
        """The gates are done: until the hub holds all they logged; then the summary."""
        from gated.hub.store import HubStore

        last = {g.id: g.last_seq() for g in self.gates}
        store = HubStore(self.work / "hub" / "hub.db")
        try:

            def through() -> dict[str, int]:
                rows = {
                    r["gate"]: int(r["through"]) for r in store.gate_rows() if r["site"] == SITE
                }
                return {g: rows.get(g, 0) for g in last}

            deadline = time.monotonic() + SETTLE_S
            while (held := through()) != last:
                if self.stopping:
                    return 0
                if self.hub is not None and (code := self.hub.exited()) is not None:
                    raise GatedError(f"the hub exited with code {code}")
                if time.monotonic() > deadline:
                    lacking = ", ".join(
                        f"{SITE}/{g} through {held[g]} of {n}"
                        for g, n in last.items()
                        if held[g] != n
                    )
                    raise GatedError(
                        f"the hub did not get every event within {SETTLE_S:g} s: {lacking}"
                    )
                time.sleep(POLL_S)
            stored = {g: sum(1 for _ in store.events(site=SITE, gate=g)) for g in last}
        finally:
            store.close()
        counts = ", ".join(f"{SITE}/{g} {n}" for g, n in stored.items())
        self.summary = f"gated demo --hub: the hub holds every event of both gates: {counts}"
        return 0

    def stop(self) -> None:
        """The gates, then the hub, then the broker; every child reaped."""
        order = [g.part for g in self.gates if g.part is not None]
        order += [p for p in reversed(self.parts) if p not in order]
        for part in order:
            part.stop()


@contextlib.contextmanager
def _retained(port: int, topic: str) -> Iterator[Callable[[], dict[str, Any] | None]]:
    """A subscriber to one topic on this thread (no network thread); ``latest()`` polls it."""
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    got: list[dict[str, Any]] = []
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"gated-demo-{os.getpid()}")

    def on_message(c: Any, u: Any, msg: mqtt.MQTTMessage) -> None:
        with contextlib.suppress(ValueError):
            got.append(json.loads(msg.payload))

    client.on_message = on_message
    client.connect("127.0.0.1", port)
    client.subscribe(topic, qos=1)

    def latest() -> dict[str, Any] | None:
        client.loop(timeout=0.05)
        return got[-1] if got else None

    try:
        yield latest
    finally:
        with contextlib.suppress(OSError):
            client.disconnect()


def run_hub_demo(
    scenario: str | None = None,
    exit_when_done: bool = False,
    speed: float = 1.0,
    workdir: str | None = None,
) -> int:
    """``gated demo --hub``; returns the exit code."""
    if speed <= 0:
        raise GatedError("--speed must be greater than 0")
    mosquitto = mosquitto_or_error()
    tmp = None
    if workdir is None:
        tmp = tempfile.TemporaryDirectory(prefix="gated-demo-hub-")
        workdir = tmp.name
    work = Path(workdir).resolve()
    work.mkdir(parents=True, exist_ok=True)
    demo = HubDemo(work, speed, exit_when_done, scenario, mosquitto)
    try:
        with demo.signals():
            try:
                code = demo.run()
            finally:
                demo.stop()
        if demo.stopping:
            print(f"gated demo --hub: stopped on {demo.stopping[0]}", file=sys.stderr)
        elif demo.summary:
            print(demo.summary, flush=True)
        return code
    finally:
        if tmp is not None:
            tmp.cleanup()
