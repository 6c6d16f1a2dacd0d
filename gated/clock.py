"""Clocks: the system's, and a fake one tests move by hand.

The policy and the session machine never read time themselves; they are given a
clock, so a test can step through a 15 s timeout in microseconds.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import threading
import time
from typing import Any, Protocol


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


def clock_synced() -> bool:
    """Whether the kernel says the system clock is synchronised (NTP, GPS, RTC).

    A Pi has no battery clock: until NTP has run, the date may be 1970 or the last
    shutdown. The kernel's ``adjtimex`` status is what chrony and timesyncd set.
    """
    libc = _libc()
    if libc is None:
        return False
    tx = _Timex()
    try:
        result = libc.adjtimex(ctypes.byref(tx))
    except (OSError, AttributeError):
        return False
    return bool(result >= 0 and result != _TIME_ERROR)
