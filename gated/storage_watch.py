"""Whether events can be committed: the ``storage`` device in the controller's health map.

A commit that fails (a full or read-only SD card, an I/O error, a damaged file) must
not become a traceback per session. The controller acts on nothing it could not
commit; this watch turns the failures into one health entry, a log line at most once
a minute with the count, and, once a commit works again, the outage that the
controller records as one ``device`` alarm (from when to when, how many events lost).
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass

from drivers.common.base import DeviceHealth
from gated.clock import Clock, iso_utc
from gated.errors import StorageError
from gated.events import Alarm, Device, Event

log = logging.getLogger(__name__)

#: The device name of the database in health, ``/api/state``, ``T/status`` and ``/metrics``.
STORAGE = "storage"
#: Seconds between two log lines while commits keep failing.
LOG_EVERY_S = 60.0


class CommitFailed(StorageError):
    """An event could not be committed: nothing may act on it."""


#: SQLite's primary result codes that say the file takes no commit now: BUSY, LOCKED,
#: NOMEM, READONLY, IOERR, CORRUPT, FULL, CANTOPEN, PROTOCOL, NOTADB.
STORAGE_CODES = frozenset({5, 6, 7, 8, 10, 11, 13, 14, 15, 26})


def is_storage_failure(exc: BaseException) -> bool:
    """Whether a SQLite error says the database takes no commit now (full, read-only,
    I/O error, busy, damaged) rather than that the statement itself is wrong."""
    code = getattr(exc, "sqlite_errorcode", None)
    return isinstance(exc, sqlite3.Error) and isinstance(code, int) and code & 0xFF in STORAGE_CODES


def _error_text(exc: BaseException) -> str:
    # One line, printable: it goes to the journal, the screen and the alarm.
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text.encode("ascii", "backslashreplace").decode()[:200]


@dataclass
class Outage:
    """Commits failing since ``since`` (unix time): how many, the last error."""

    since: float
    failures: int
    error: str
    logged_at: float  # monotonic time of the last log line


Record = Callable[["Event"], "Event"]


class StorageWatch:
    """Follows commit failures and successes on the controller thread; keeps the
    ``storage`` entry of ``board`` (the controller's health map) up to date."""

    def __init__(self, clock: Clock, board: dict[str, DeviceHealth] | None = None):
        self.clock = clock
        self.outage: Outage | None = None
        self.board = board if board is not None else {}
        self.board[STORAGE] = self.health()

    @property
    def failing(self) -> bool:
        """Whether the last commit failed."""
        return self.outage is not None

    def health(self) -> DeviceHealth:
        """The ``storage`` entry of the health map."""
        o = self.outage
        if o is None:
            return DeviceHealth(True, "")
        return DeviceHealth(
            False, f"no event can be committed: {o.error} ({o.failures} not written)"
        )

    def failed(self, exc: BaseException) -> bool:
        """Count one failed commit; True for the first of an outage."""
        now = self.clock.monotonic()
        error = _error_text(exc)
        o = self.outage
        if o is None:
            self.outage = Outage(self.clock.time(), 1, error, now)
            self.board[STORAGE] = self.health()
            log.error(
                "storage: an event could not be committed (%s); the gate stays locked and"
                " asks people to wait for the guard until a commit works again",
                error,
            )
            return True
        o.failures += 1
        o.error = error
        self.board[STORAGE] = self.health()
        if now - o.logged_at >= LOG_EVERY_S:
            o.logged_at = now
            log.error(
                "storage: still failing (%s): %d events not committed so far", error, o.failures
            )
        return False

    def ended(self) -> Outage | None:
        """A commit worked: the outage it ends, if there was one (the watch is clear again)."""
        o, self.outage = self.outage, None
        self.board[STORAGE] = self.health()
        if o is not None:
            log.warning(
                "storage works again: %d events could not be committed (%s)", o.failures, o.error
            )
        return o

    def resume(self, outage: Outage) -> None:
        """The outage's alarm could not be committed: it goes on, with the new failures."""
        new = self.outage
        if new is not None:
            outage.failures += new.failures
            outage.error = new.error
        self.outage = outage
        self.board[STORAGE] = self.health()

    def works_again(self, alarm: Callable[..., Alarm], record: Record) -> None:
        """A commit worked: the outage it ends (if any) is recorded with ``alarm`` and
        ``record`` (the controller's) as one ``device`` alarm and the ``device`` event that
        closes it; should that fail, the outage goes on (one alarm for all of it)."""
        outage = self.ended()
        if outage is None:
            return
        try:
            alarm_event = alarm(
                "device",
                f"storage: no event could be committed from {iso_utc(outage.since)} to"
                f" {iso_utc(self.clock.time())}, {outage.failures} not written: {outage.error}",
                device=STORAGE,
                since=iso_utc(outage.since),
                not_written=outage.failures,
            )
            record(Device.health(STORAGE, True, "storage works again", ref=alarm_event.id))
        except CommitFailed:
            self.resume(outage)  # failing again: one alarm for the whole outage
