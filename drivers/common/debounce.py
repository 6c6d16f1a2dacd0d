"""One presentation counts once: the debouncer of every reader that repeats itself.

A card held on an RDM6300 is sent every ~50 ms, a QR code held in front of a serial
scanner or a camera is read again and again. :class:`Debouncer` lets a key (a uid,
a decoded text) through once while it stays in view.
"""

from __future__ import annotations

import hashlib


class Debouncer:
    """Lets a key through once while it keeps being seen.

    A key seen again less than ``window_s`` after its last sighting is held back, and
    each sighting extends the window, so a pass held up for a minute counts once;
    shown again after ``window_s`` away, it counts again.

    The edge: a sighting exactly ``window_s`` after the last one is a new presentation
    (the window is ``[last, last + window_s)``). So ``window_s = 0`` turns debouncing
    off, every sighting counts even two at the same clock reading (the benches and the
    framing tests rely on it), and ``debounce_s = 1`` means what it says: seen again
    within less than a second.

    Keys are remembered by their SHA-256 digest, not as given: a pass is personal data
    and may be 4 KB. Past ``max_remembered`` keys, those whose window has ended are
    forgotten (a gate sees few at once).
    """

    def __init__(self, window_s: float, max_remembered: int = 64):
        self.window_s = window_s
        self.max_remembered = max_remembered
        self._seen: dict[bytes, float] = {}

    def __len__(self) -> int:
        """How many keys are remembered now."""
        return len(self._seen)

    def accept(self, key: str, now: float) -> bool:
        """Whether ``key`` seen at monotonic ``now`` (seconds) is a new presentation."""
        digest = hashlib.sha256(key.encode("utf-8", "surrogatepass")).digest()
        last = self._seen.get(digest)
        self._seen[digest] = now
        if len(self._seen) > self.max_remembered:
            self._seen = {k: t for k, t in self._seen.items() if now - t < self.window_s}
        return last is None or now - last >= self.window_s
