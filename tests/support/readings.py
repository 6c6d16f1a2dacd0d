"""The readings a driver emits, taken by the test as they come, with a deadline."""

from __future__ import annotations

import queue
import time
from collections.abc import Callable

from drivers.common.base import Reading

DEADLINE_S = 10.0


class Readings:
    """An emit callback that queues readings; ``wait`` takes them until one matches."""

    def __init__(self) -> None:
        self.q: queue.Queue[Reading] = queue.Queue()
        self.seen: list[Reading] = []

    def __call__(self, reading: Reading) -> None:
        self.q.put(reading)

    def wait(self, pred: Callable[[Reading], bool], what: str = "a reading") -> Reading:
        deadline = time.monotonic() + DEADLINE_S
        while (left := deadline - time.monotonic()) > 0:
            try:
                r = self.q.get(timeout=left)
            except queue.Empty:
                break
            self.seen.append(r)
            if pred(r):
                return r
        raise AssertionError(f"no {what} within {DEADLINE_S} s; saw {self.seen}")

    def wait_health(self, ok: bool) -> Reading:
        return self.wait(
            lambda r: r.kind == "device" and r.value.ok is ok, f"device health ok={ok}"
        )

    def drain(self) -> list[Reading]:
        out = []
        while True:
            try:
                out.append(self.q.get_nowait())
            except queue.Empty:
                self.seen += out
                return out


def next_reading(readings: queue.Queue[Reading], kind: str, timeout: float = 10.0) -> Reading:
    """The next reading of ``kind`` from ``readings`` (others are dropped); ``queue.Empty``
    after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        r = readings.get(timeout=max(0.0, deadline - time.monotonic()))
        if r.kind == kind:
            return r
