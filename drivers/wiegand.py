"""Wiegand 26/34 card readers on two GPIO inputs (D0 and D1, active low).

A reader sends a frame as pulses: a low pulse on D0 is a 0 bit, on D1 a 1 bit,
each ~50-100 us long and ~1-2 ms apart; the frame ends with silence longer than the
20 ms the standard allows between pulses (``gap_ms``, default 25). The first bit is
even parity over the first half of the data bits, the last bit odd parity over the
second half. The uid is the data bits without parity, as uppercase hex (26 bits: 6
digits, 34 bits: 8 digits).

:class:`WiegandDecoder` is pure: fed ``(bit, timestamp)`` it returns finished
frames. :class:`WiegandCardReader` captures the edge times in the GPIO callbacks and
decodes on its own thread once a gap of silence has passed.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import Field

from drivers.common.base import DeviceHealth, Driver, Reading
from drivers.common.gpio import GpioError, HealthTracker, close_quietly, describe, pin_factory
from drivers.common.options import CARD_DRIVER, Pin, StrictModel

log = logging.getLogger(__name__)

#: Frame lengths in bits that are decoded; every other length is dropped and counted.
LENGTHS = (26, 34)
#: Bits kept of one frame; noise beyond this is still one (dropped) frame.
MAX_BITS = 128
#: Seconds a line may stay low before it counts as stuck (no reader pulses that long).
STUCK_S = 1.0


class WiegandCardConfig(StrictModel):
    """A Wiegand 26/34 reader on two GPIO inputs."""

    driver: Literal["wiegand"] = Field(default="wiegand", description=CARD_DRIVER)
    d0_pin: Pin = Field(description="GPIO input of the reader's D0 line (active low).")
    d1_pin: Pin = Field(description="GPIO input of the reader's D1 line (active low).")
    gap_ms: float = Field(default=25, gt=0, description="Milliseconds of silence that end a frame.")


@dataclass(frozen=True)
class WiegandFrame:
    """One finished frame: ``uid`` when it decoded, else ``problem`` says why not."""

    length: int
    uid: str | None = None
    problem: str | None = None


def decode_bits(bits: Sequence[int]) -> WiegandFrame:
    """Decode one frame of bits (first received first) into a uid or a problem.

    ``problem`` is ``"length"`` (not 26 or 34 bits) or ``"parity"``.
    """
    n = len(bits)
    if n not in LENGTHS:
        return WiegandFrame(n, problem="length")
    data = bits[1:-1]
    half = len(data) // 2
    if (bits[0] + sum(data[:half])) % 2 != 0 or (sum(data[half:]) + bits[-1]) % 2 != 1:
        return WiegandFrame(n, problem="parity")
    value = 0
    for b in data:
        value = (value << 1) | b
    return WiegandFrame(n, uid=f"{value:0{len(data) // 4}X}")


def encode_bits(uid: int, length: int = 26) -> list[int]:
    """The frame a reader sends for data value ``uid`` (for tests and benches)."""
    n = length - 2
    data = [(uid >> (n - 1 - i)) & 1 for i in range(n)]
    half = n // 2
    even = sum(data[:half]) % 2
    odd = 1 - sum(data[half:]) % 2
    return [even, *data, odd]


class WiegandDecoder:
    """Turns ``(bit, timestamp)`` pairs into frames; a gap longer than ``gap_s`` ends one.

    Timestamps are seconds on any monotonic clock. Counts finished frames in
    ``counts``: ``codes``, ``length`` and ``parity`` (the last two dropped).
    """

    def __init__(self, gap_s: float = 0.025):
        self.gap_s = gap_s
        self.counts: dict[str, int] = {"codes": 0, "length": 0, "parity": 0}
        self._bits: list[int] = []
        self._length = 0
        self._last = 0.0

    def feed(self, bit: int, t: float) -> WiegandFrame | None:
        """Take one bit received at ``t``; the previous frame if this bit begins a new one."""
        frame = None
        if self._length and t - self._last > self.gap_s:
            frame = self._finish()
        if self._length < MAX_BITS:
            self._bits.append(1 if bit else 0)
        self._length += 1
        self._last = t
        return frame

    def flush(self, now: float) -> WiegandFrame | None:
        """The frame in progress, if ``gap_s`` of silence has passed by ``now``."""
        if self._length and now - self._last > self.gap_s:
            return self._finish()
        return None

    def deadline(self) -> float | None:
        """When the frame in progress ends if no bit comes; None when idle."""
        return self._last + self.gap_s if self._length else None

    def _finish(self) -> WiegandFrame:
        frame = decode_bits(self._bits) if self._length <= MAX_BITS else None
        if frame is None:
            frame = WiegandFrame(self._length, problem="length")
        self._bits = []
        self._length = 0
        self.counts["codes" if frame.uid is not None else str(frame.problem)] += 1
        return frame


class WiegandCardReader(Driver):
    """A Wiegand 26/34 reader on GPIO: emits ``card`` readings with the uid in hex.

    Config: :class:`WiegandCardConfig` (``[card] driver = "wiegand"``): D0 and D1 are
    inputs with the Pi's pull-up, active low.
    """

    config_model = WiegandCardConfig
    config: WiegandCardConfig

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.decoder = WiegandDecoder(self.config.gap_ms / 1000.0)
        self.health_tracker = HealthTracker(self.name, self.emit)
        self._cond = threading.Condition()
        self._edges: list[tuple[int, float]] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lines: list[Any] = []
        self._low_since: list[float | None] = [None, None]

    def start(self) -> None:
        """Open D0 and D1 and start the decoding thread."""
        factory = pin_factory(self.ctx.pin_factory)
        from gpiozero import DigitalInputDevice

        for bit, pin in ((0, self.config.d0_pin), (1, self.config.d1_pin)):
            try:
                line = DigitalInputDevice(pin, pull_up=True, pin_factory=factory)
            except Exception as exc:  # gpiozero raises many kinds
                for opened in self._lines:
                    close_quietly(opened)
                self._lines = []
                raise GpioError(f"Wiegand D{bit} on GPIO {pin}: {describe(exc)}") from exc
            line.when_activated = self._bit0 if bit == 0 else self._bit1
            self._lines.append(line)
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name=f"wiegand-{self.name}", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop decoding and release the pins."""
        self._stop.set()
        with self._cond:
            self._cond.notify_all()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=2)
        self._thread = None
        for line in self._lines:
            close_quietly(line)
        self._lines = []

    def health(self) -> DeviceHealth:
        """Healthy unless a data line is stuck low."""
        return self.health_tracker.current()

    # Called on gpiozero's callback thread: only stamp the edge and hand it over.
    def _bit0(self) -> None:
        self._edge(0)

    def _bit1(self) -> None:
        self._edge(1)

    def _edge(self, bit: int) -> None:
        with self._cond:
            # Stamped under the lock: an edge not yet handed over is newer than any
            # "now" the decoding thread has read, so a gap is never judged too early.
            self._edges.append((bit, time.monotonic()))
            self._cond.notify()

    def _run(self) -> None:
        while not self._stop.is_set():
            with self._cond:
                if not self._edges:
                    deadline = self.decoder.deadline()
                    wait = STUCK_S / 2
                    if deadline is not None:
                        wait = min(wait, max(0.0, deadline - time.monotonic()) + 0.001)
                    self._cond.wait(wait)
                batch, self._edges = self._edges, []
                now = time.monotonic()
            for bit, t in batch:
                self._handle(self.decoder.feed(bit, t))
            self._handle(self.decoder.flush(now))
            self._check_lines(now)

    def _handle(self, frame: WiegandFrame | None) -> None:
        if frame is None:
            return
        if frame.uid is None:
            log.warning(
                "%s: dropped a Wiegand frame of %d bits (%s); dropped so far: %d",
                self.name,
                frame.length,
                frame.problem,
                self.decoder.counts["length"] + self.decoder.counts["parity"],
            )
            return
        self.emit(Reading("card", frame.uid, self.name))

    def _check_lines(self, now: float) -> None:
        for bit, line in enumerate(self._lines):
            try:
                low = bool(line.is_active)
            except Exception as exc:  # a pin that cannot be read is a failure too
                self.health_tracker.set(f"D{bit}", describe(exc))
                continue
            if not low:
                self._low_since[bit] = None
                self.health_tracker.set(f"D{bit}", None)
                continue
            since = self._low_since[bit]
            if since is None:
                self._low_since[bit] = now
            elif now - since >= STUCK_S:
                self.health_tracker.set(
                    f"D{bit}", "held low (reader unpowered, or the line shorted to ground?)"
                )
