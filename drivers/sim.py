"""Simulated devices that play a scenario file (docs/contracts.md §3 ``[sim]``), and a live feed.

A scenario is JSON Lines, one input per line with ``t`` in seconds from the start:
``{"t": 0.3, "temp": 36.6}``. Each simulated driver plays the keys of its own device
on its own thread against one shared start time, and emits ``done`` after its last.

The feed (``[sim] input``) is a file followed as ``tail -F`` follows one, or a FIFO:
each line is played when it arrives, ``t`` (optional) seconds after it is read, so a
test or a demo can present a person at the moment it chooses (after another gate
granted, say), which a scenario timed from the start cannot express.
"""

from __future__ import annotations

import json
import logging
import math
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field

from drivers.common.base import (
    Driver,
    DriverContext,
    Emit,
    Prompter,
    Reading,
    Turnstile,
)
from drivers.common.options import (
    CARD_DRIVER,
    NIGHT,
    NIGHT_DEFAULT,
    OFFSET_C,
    OPEN_S,
    PROMPTER_DRIVER,
    QR_DRIVER,
    THERMOMETER_DRIVER,
    TURNSTILE_DRIVER,
    HhMm,
    StrictModel,
)

log = logging.getLogger(__name__)

#: scenario key -> (reading kind, the value's type check)
INPUT_KEYS: dict[str, tuple[str, tuple[type, ...]]] = {
    "motion": ("motion", (bool,)),
    "temp": ("temp", (int, float)),
    "card": ("card", (str,)),
    "qr": ("qr", (str,)),
    "passage": ("passage", (bool,)),
    "fire": ("fire", (bool,)),
    "tamper": ("tamper", (bool,)),
}


class ScenarioError(ValueError):
    """A scenario line is malformed; the message names the file and line."""


@dataclass(frozen=True)
class ScenarioStep:
    """One scripted input."""

    t: float
    key: str
    value: Any
    extra: dict[str, Any] = field(default_factory=dict)


def parse_scenario(
    text: str, name: str = "<scenario>", default_t: float | None = None, first_line: int = 1
) -> list[ScenarioStep]:
    """Parse JSON Lines into steps ordered by ``t``; blank lines and ``#`` lines skipped.

    ``default_t`` is the ``t`` of a line without one (None: ``t`` is required);
    ``first_line`` numbers the first line of ``text`` in messages.
    """
    steps: list[ScenarioStep] = []
    for lineno, line in enumerate(text.splitlines(), first_line):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ScenarioError(f"{name}:{lineno}: not JSON: {exc.msg}") from None
        if not isinstance(obj, dict):
            raise ScenarioError(f"{name}:{lineno}: expected a JSON object")
        t = obj.pop("t", default_t)
        if isinstance(t, bool) or not isinstance(t, (int, float)) or not math.isfinite(t) or t < 0:
            raise ScenarioError(f"{name}:{lineno}: t: expected seconds >= 0")
        keys = [k for k in obj if k in INPUT_KEYS]
        if len(keys) != 1:
            raise ScenarioError(f"{name}:{lineno}: expected exactly one of {', '.join(INPUT_KEYS)}")
        key = keys[0]
        value = obj.pop(key)
        types = INPUT_KEYS[key][1]
        if (isinstance(value, bool) and bool not in types) or not isinstance(value, types):
            raise ScenarioError(f"{name}:{lineno}: {key}: wrong type {type(value).__name__}")
        steps.append(ScenarioStep(float(t), key, value, obj))
    steps.sort(key=lambda s: s.t)
    return steps


class Feed:
    """Inputs that arrive while the gate runs: the lines appended to ``path``, played in turn.

    The file is read from its beginning (it need not exist yet), then followed: a line
    is played ``t`` seconds (default 0, divided by ``speed``) after it is read, never
    before the line before it, by the sim driver of its key. A FIFO works too (written
    by any number of writers in turn). A file that shrinks is read again from its start.
    A malformed line, or one no sim driver plays, is logged by its number and counted
    in ``refused``, never played.
    """

    #: How often an idle file is looked at again, in seconds.
    POLL_S = 0.01
    #: A line longer than this is refused (a file that never ends a line).
    MAX_LINE = 65536

    def __init__(self, path: Path, speed: float = 1.0):
        self.path = Path(path)
        self.speed = speed
        self.refused = 0
        self.played = 0
        self._devices: dict[str, _SimDevice] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def attach(self, device: _SimDevice) -> None:
        """Play the keys of ``device`` to it; the first device attached starts the reading."""
        with self._lock:
            for key in device.KEYS:
                self._devices[key] = device
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="sim-input", daemon=True)
                self._thread.start()

    def detach(self, device: _SimDevice) -> None:
        """Stop playing to ``device``; the last one detached ends the reading."""
        with self._lock:
            for key in device.KEYS:
                if self._devices.get(key) is device:
                    del self._devices[key]
            thread = self._thread if not self._devices else None
            if thread is not None:
                self._stop.set()
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=2)

    def _run(self) -> None:
        fd: int | None = None
        pos = 0
        buf = b""
        lineno = 0
        due = 0.0
        try:
            while not self._stop.is_set():
                if fd is None:
                    try:
                        fd = os.open(self.path, os.O_RDONLY | os.O_NONBLOCK)
                    except FileNotFoundError:
                        self._stop.wait(self.POLL_S)
                        continue
                try:
                    chunk = os.read(fd, 65536)
                except BlockingIOError:  # a FIFO with a writer and nothing written yet
                    chunk = b""
                if not chunk:
                    if os.path.isfile(self.path) and os.fstat(fd).st_size < pos:
                        os.lseek(fd, 0, os.SEEK_SET)  # truncated: its new lines from the top
                        pos, buf = 0, b""
                    self._stop.wait(self.POLL_S)
                    continue
                pos += len(chunk)
                buf += chunk
                *lines, buf = buf.split(b"\n")
                if len(buf) > self.MAX_LINE:
                    lineno += 1
                    self._refuse(f"{self.path}:{lineno}: longer than {self.MAX_LINE} bytes")
                    buf = b""
                for raw in lines:
                    lineno += 1
                    due = self._line(raw, lineno, due)
        finally:
            if fd is not None:
                os.close(fd)

    def _line(self, raw: bytes, lineno: int, due: float) -> float:
        """Play one line at its time; the time it was played (``due`` if not played)."""
        try:
            text = raw.decode("utf-8")
            steps = parse_scenario(text, str(self.path), default_t=0.0, first_line=lineno)
        except UnicodeDecodeError:
            self._refuse(f"{self.path}:{lineno}: not UTF-8")
            return due
        except ScenarioError as exc:
            self._refuse(str(exc))
            return due
        for step in steps:  # zero (a blank or # line) or one
            with self._lock:
                device = self._devices.get(step.key)
            if device is None:
                self._refuse(f"{self.path}:{lineno}: no sim driver plays {step.key!r}")
                continue
            due = max(due, time.monotonic() + step.t / self.speed)
            delay = due - time.monotonic()
            if delay > 0 and self._stop.wait(delay):
                return due
            device.on_step(step)
            device.emit(Reading(INPUT_KEYS[step.key][0], step.value, device.name))
            self.played += 1
        return due

    def _refuse(self, why: str) -> None:
        self.refused += 1
        log.warning("sim.input: refused %s", why)


class Scenario:
    """Steps shared by the simulated drivers, with one start time for all of them.

    ``feed``: the live inputs of ``[sim] input``, played besides the steps.
    """

    def __init__(self, steps: list[ScenarioStep], speed: float = 1.0, feed: Feed | None = None):
        self.steps = steps
        self.speed = speed
        self.feed = feed
        self._t0: float | None = None
        self._lock = threading.Lock()

    @classmethod
    def from_file(cls, path: Path, speed: float = 1.0, feed: Feed | None = None) -> Scenario:
        """Load a scenario file."""
        return cls(parse_scenario(Path(path).read_text(encoding="utf-8"), str(path)), speed, feed)

    def start_time(self) -> float:
        """The monotonic time of ``t = 0``, fixed by the first driver that asks."""
        with self._lock:
            if self._t0 is None:
                self._t0 = time.monotonic()
            return self._t0

    def steps_for(self, keys: tuple[str, ...]) -> list[ScenarioStep]:
        """The steps a driver of these keys plays."""
        return [s for s in self.steps if s.key in keys]


class _Player:
    """Plays a list of steps on a thread; stops early when asked."""

    def __init__(self, driver: _SimDevice, keys: tuple[str, ...]):
        self.driver = driver
        self.keys = keys
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        scenario = self.driver.ctx.scenario
        steps = scenario.steps_for(self.keys) if scenario is not None else []
        speed = scenario.speed if scenario is not None else 1.0
        t0 = scenario.start_time() if scenario is not None else time.monotonic()
        self._thread = threading.Thread(
            target=self._play,
            args=(steps, t0, speed),
            name=f"sim-{self.driver.name}",
            daemon=True,
        )
        self._thread.start()

    def _play(self, steps: list[ScenarioStep], t0: float, speed: float) -> None:
        for step in steps:
            delay = t0 + step.t / speed - time.monotonic()
            if delay > 0 and self._stop.wait(delay):
                return
            if self._stop.is_set():
                return
            kind = INPUT_KEYS[step.key][0]
            self.driver.on_step(step)
            self.driver.emit(Reading(kind, step.value, self.driver.name))
        if not self._stop.is_set():
            self.driver.emit(Reading("done", None, self.driver.name))

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=2)


class SimCardConfig(StrictModel):
    """Cards come from the [sim] scenario."""

    driver: Literal["sim"] = Field(default="sim", description=CARD_DRIVER)


class SimQrConfig(StrictModel):
    """QR codes come from the [sim] scenario."""

    driver: Literal["sim"] = Field(default="sim", description=QR_DRIVER)


class SimThermometerConfig(StrictModel):
    """Temperatures come from the [sim] scenario."""

    driver: Literal["sim"] = Field(default="sim", description=THERMOMETER_DRIVER)
    offset_c: float = Field(default=0.0, ge=-10, le=10, description=OFFSET_C)


class SimTurnstileConfig(StrictModel):
    """A simulated turnstile; passages come from the [sim] scenario."""

    driver: Literal["sim"] = Field(default="sim", description=TURNSTILE_DRIVER)
    open_s: float = Field(default=5.0, gt=0, le=300, description=OPEN_S)


class SimPrompterConfig(StrictModel):
    """Prompts are logged, motion comes from the [sim] scenario."""

    driver: Literal["sim"] = Field(default="sim", description=PROMPTER_DRIVER)
    night: tuple[HhMm, HhMm] = Field(default=NIGHT_DEFAULT, description=NIGHT)


class _SimDevice(Driver):
    KEYS: tuple[str, ...] = ()

    def __init__(
        self,
        name: str,
        emit: Emit,
        config: BaseModel | dict[str, Any] | None = None,
        ctx: DriverContext | None = None,
    ):
        super().__init__(name, emit, config, ctx)
        self._player = _Player(self, self.KEYS)

    def start(self) -> None:
        """Begin playing this device's part of the scenario (and of the feed)."""
        self._player.start()
        scenario = self.ctx.scenario
        if scenario is not None and scenario.feed is not None:
            scenario.feed.attach(self)

    def stop(self) -> None:
        """Stop playing."""
        scenario = self.ctx.scenario
        if scenario is not None and scenario.feed is not None:
            scenario.feed.detach(self)
        self._player.stop()

    def on_step(self, step: ScenarioStep) -> None:
        """Hook before a step is emitted (the thermometer applies its offset)."""


class SimCardReader(_SimDevice):
    """A card reader that presents the scenario's ``card`` uids."""

    KEYS = ("card",)
    config_model = SimCardConfig


class SimQrScanner(_SimDevice):
    """A QR scanner that reads the scenario's ``qr`` texts."""

    KEYS = ("qr",)
    config_model = SimQrConfig


class SimThermometer(_SimDevice):
    """A thermometer that measures the scenario's ``temp`` values (plus ``offset_c``)."""

    KEYS = ("temp",)
    config_model = SimThermometerConfig
    config: SimThermometerConfig

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        offset = self.config.offset_c
        inner = self.emit

        def emit(r: Reading) -> None:
            if r.kind == "temp":
                r = Reading("temp", round(float(r.value) + offset, 2), r.source, r.t)
            inner(r)

        self.emit = emit


class SimTurnstile(_SimDevice, Turnstile):
    """A turnstile that records its state and reports the scenario's passages, fire, tamper.

    ``{"t": 12, "tamper": true}`` is its enclosure opened, ``false`` closed again.
    """

    KEYS = ("passage", "fire", "tamper")
    config_model = SimTurnstileConfig

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.state = "locked"
        self.history: list[str] = []
        self.signals: list[str] = []
        self._free = False
        self._lock = threading.Lock()

    def _set(self, state: str) -> None:
        with self._lock:
            self.state = state
            self.history.append(state)

    def open(self, seconds: float) -> None:
        """Release the barrier (the controller locks it again)."""
        if not self._free:
            self._set("open")

    def lock(self) -> None:
        """Lock the barrier."""
        if not self._free:
            self._set("locked")

    def free(self, active: bool) -> None:
        """Hold the barrier open, or return it to locked."""
        self._free = active
        self._set("free" if active else "locked")

    def stop(self) -> None:
        """Stop playing and lock (de-energised)."""
        super().stop()
        self._free = False
        self._set("locked")

    def signal(self, verdict: str) -> None:
        """Remember what the LEDs would show."""
        self.signals.append(verdict)


class SimPrompter(_SimDevice, Prompter):
    """A prompter that records what it would say and reports the scenario's motion."""

    KEYS = ("motion",)
    config_model = SimPrompterConfig

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.played: list[str] = []

    def play(self, prompt: str) -> None:
        """Remember the prompt."""
        if prompt not in self.PROMPTS:
            raise ValueError(f"unknown prompt {prompt!r}")
        self.played.append(prompt)
