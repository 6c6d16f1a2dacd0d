"""The hub's counters since it started, shared by the ingest (writes) and /metrics (reads)."""

from __future__ import annotations

import threading
from collections import Counter


class HubStats:
    """Thread-safe counters: events stored, duplicates, refusals by code, replay traffic."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: Counter[str] = Counter()
        self._refused: Counter[str] = Counter()
        #: Whether the broker connection is up (for /healthz and the page).
        self.connected = False
        #: Unix time the hub's last transaction committed, or None.
        self.last_commit: float | None = None

    def add(self, name: str, n: int = 1) -> None:
        """``stored``, ``duplicates``, ``statuses``, ``replay_requests``, ``replay_answers``,
        ``acked``, ``commits``."""
        with self._lock:
            self._counts[name] += n

    def refused(self, code: str) -> None:
        with self._lock:
            self._refused[code] += 1

    def snapshot(self) -> tuple[dict[str, int], dict[str, int]]:
        """(counters, refusals by code), copied."""
        with self._lock:
            return dict(self._counts), dict(self._refused)

    def get(self, name: str) -> int:
        with self._lock:
            return self._counts[name]
