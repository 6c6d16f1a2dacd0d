"""The waits between two tries of something that failed: exponential, capped, jittered.

Both sides of the tree retry: the device readers re-open a lost port or camera
(:class:`drivers.common.serialport.ReconnectingReader`), the MQTT link walks its
brokers again (``gated.mqtt.link``). The one :class:`Backoff` lives here, in
``drivers/common``, because ``gated`` may import ``drivers`` but ``drivers`` never
imports ``gated``.
"""

from __future__ import annotations

import random


class Backoff:
    """Delays from ``low`` doubling up to ``high`` seconds, with jitter.

    ``next()`` is random in ``[current * (1 - jitter), current]`` (``jitter = 0.5``:
    between half and all of it, so gates that lost their broker together do not come
    back in step), then ``current`` doubles, up to ``high``. ``jitter = 0`` gives the
    plain sequence, for a local device that has no crowd to spread. ``reset()`` goes
    back to ``low`` once the thing retried has proved good.
    """

    def __init__(self, low: float = 0.5, high: float = 15.0, jitter: float = 0.5):
        if not 0 <= jitter <= 1:
            raise ValueError("jitter is a share of the delay, 0 to 1")
        self.low = low
        self.high = high
        self.jitter = jitter
        self.current = low

    def next(self) -> float:
        """The next delay in seconds; doubles ``current`` (capped at ``high``)."""
        delay = self.current
        if self.jitter:
            delay = random.uniform(self.current * (1 - self.jitter), self.current)
        self.current = min(self.high, self.current * 2)
        return delay

    def reset(self) -> None:
        """Back to the shortest delay."""
        self.current = self.low
