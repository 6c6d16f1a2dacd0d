"""Clocks: the system's, and a fake one tests move by hand.

The policy and the session machine never read time themselves; they are given a
clock, so a test can step through a 15 s timeout in microseconds.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import functools
import logging
import os
import threading
import time
from datetime import UTC, datetime
from typing import Any, Literal, Protocol

log = logging.getLogger(__name__)


class Clock(Protocol):
    """Where time comes from: ``monotonic()`` for durations, ``time()`` for stamps."""

    def monotonic(self) -> float:
        """Seconds on a clock that never goes back."""
        ...

    def time(self) -> float:
        """Unix time in seconds (UTC)."""
        ...


class SystemClock:
    """The machine's clocks."""

    def monotonic(self) -> float:
        """Seconds on the system's monotonic clock."""
        return time.monotonic()

    def time(self) -> float:
        """Unix time from the system clock."""
        return time.time()


class FakeClock:
    """A clock that moves only when told to; both readings move together."""

    def __init__(self, start: float = 1_770_000_000.0):
        self._wall = start
        self._mono = 1000.0
        self._lock = threading.Lock()

    def monotonic(self) -> float:
        """The fake monotonic reading."""
        with self._lock:
            return self._mono

    def time(self) -> float:
        """The fake unix time."""
        with self._lock:
            return self._wall

    def advance(self, seconds: float) -> None:
        """Move both clocks forward by ``seconds``."""
        with self._lock:
            self._mono += seconds
            self._wall += seconds


def iso_utc(ts: float) -> str:
    """Unix seconds as ``2026-02-28T18:05:11.204Z``: the one form of a stamp stored or sent.

    Milliseconds (cut, not rounded) and ``Z``, as the events' ``ts`` (docs/contracts.md §4); the
    registry's ``activated_at``/``revoked_at`` and the status screen's ``now`` too. The
    fixed width keeps the stamps in time order when SQLite compares them as text.
    """
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def parse_iso_utc(text: str) -> datetime:
    """An ISO 8601 date or date-time as an aware ``datetime``; without an offset it is UTC.

    Reads :func:`iso_utc`'s stamps and what a person types (``2026-03-01``,
    ``2026-03-01T08:00+08:00``); ``ValueError`` if it is neither.
    """
    when = datetime.fromisoformat(text.replace("Z", "+00:00"))
    return when if when.tzinfo is not None else when.replace(tzinfo=UTC)


class _Timex(ctypes.Structure):
    # struct timex from <sys/timex.h>; only the leading fields are read, the
    # padding covers the rest of the kernel structure on 32 and 64 bit.
    _fields_ = [
        ("modes", ctypes.c_uint),
        ("offset", ctypes.c_long),
        ("freq", ctypes.c_long),
        ("maxerror", ctypes.c_long),
        ("esterror", ctypes.c_long),
        ("status", ctypes.c_int),
        ("constant", ctypes.c_long),
        ("precision", ctypes.c_long),
        ("tolerance", ctypes.c_long),
        ("time_sec", ctypes.c_long),
        ("time_usec", ctypes.c_long),
        ("tick", ctypes.c_long),
        ("ppsfreq", ctypes.c_long),
        ("jitter", ctypes.c_long),
        ("shift", ctypes.c_int),
        ("stabil", ctypes.c_long),
        ("jitcnt", ctypes.c_long),
        ("calcnt", ctypes.c_long),
        ("errcnt", ctypes.c_long),
        ("stbcnt", ctypes.c_long),
        ("tai", ctypes.c_int),
        ("_pad", ctypes.c_int * 11),
    ]


_TIME_ERROR = 5  # adjtimex() result when the clock is not synchronised


@functools.cache
def _libc() -> Any:
    # find_library runs ldconfig: once per process, never on the decision path.
    libname = ctypes.util.find_library("c")
    if not libname:
        return None
    try:
        return ctypes.CDLL(libname, use_errno=True)
    except OSError:
        return None


ClockStatus = Literal["synced", "unsynced", "unknown"]
"""What the kernel says of the system clock; ``unknown`` when it cannot be asked."""

_refusal_said = threading.Event()


def clock_status() -> ClockStatus:
    """Whether the kernel says the system clock is synchronised (NTP, GPS, RTC).

    A Pi has no battery clock: until NTP has run, the date may be 1970 or the last
    shutdown. The kernel's ``adjtimex`` status is what chrony and timesyncd set.
    ``unknown``: the call is not there or is refused, typically EPERM from a
    seccomp filter that removes ``@clock`` (said once in the log).
    """
    libc = _libc()
    if libc is None:
        return "unknown"
    tx = _Timex()  # modes = 0: a read, allowed without CAP_SYS_TIME
    try:
        result = libc.adjtimex(ctypes.byref(tx))
    except (OSError, AttributeError):
        return "unknown"
    if result < 0:
        _say_refused(ctypes.get_errno())
        return "unknown"
    return "unsynced" if result == _TIME_ERROR else "synced"


def clock_synced() -> bool:
    """True only when the kernel says the clock is synchronised.

    An ``unknown`` status counts as not synchronised: events are then stamped
    ``clock_synced=false`` and retention purges nothing, which is safe, and the
    reason is in the log.
    """
    return clock_status() == "synced"


def _say_refused(err: int) -> None:
    if _refusal_said.is_set():
        return
    _refusal_said.set()
    name = errno.errorcode.get(err, str(err))
    if err == errno.EPERM:
        log.warning(
            "cannot read the clock's synchronisation status: adjtimex() is refused (EPERM),"
            " most likely by a system-call filter (systemd/gated.service needs"
            " SystemCallFilter=adjtimex clock_adjtime clock_adjtime64 after ~@privileged);"
            " events are stamped clock_synced=false and retention purges nothing"
        )
    else:
        log.warning(
            "cannot read the clock's synchronisation status: adjtimex() failed (%s: %s);"
            " events are stamped clock_synced=false and retention purges nothing",
            name,
            os.strerror(err),
        )
