"""Talking to systemd: ``sd_notify`` (READY, STATUS, WATCHDOG, STOPPING) and journald levels.

No dependency: the notify protocol is one datagram per message on the unix socket
named by ``NOTIFY_SOCKET`` (``@name`` is the abstract namespace). Outside systemd
every method does nothing, so the daemon runs the same in a terminal.
"""

from __future__ import annotations

import logging
import os
import socket
import sys
import threading
import time
from collections.abc import Callable, Mapping

log = logging.getLogger(__name__)


class Notifier:
    """Sends state changes to the service manager; a no-op without ``NOTIFY_SOCKET``.

    ``watchdog()`` may be called as often as wanted (the controller calls it every
    loop turn): it sends ``WATCHDOG=1`` at most once per half of ``WATCHDOG_USEC``.
    """

    def __init__(
        self,
        env: Mapping[str, str] | None = None,
        monotonic: Callable[[], float] = time.monotonic,
    ):
        env = os.environ if env is None else env
        self.address = _address(env.get("NOTIFY_SOCKET", ""))
        self.watchdog_interval_s = _watchdog_interval(env)
        self._monotonic = monotonic
        self._last_ping: float | None = None
        self._lock = threading.Lock()
        self._sock: socket.socket | None = None
        self.failures = 0
        self.pings = 0
        if self.address is not None:
            self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)

    @property
    def enabled(self) -> bool:
        """Whether a service manager is listening."""
        return self._sock is not None

    @property
    def watchdog_enabled(self) -> bool:
        """Whether the service manager expects watchdog pings."""
        return self.enabled and self.watchdog_interval_s is not None

    def send(self, *fields: str) -> bool:
        """Send ``KEY=value`` lines as one message; False (counted, logged once) on failure."""
        if self._sock is None or self.address is None:
            return False
        message = "\n".join(fields).encode("utf-8", "replace")
        try:
            with self._lock:
                self._sock.sendto(message, self.address)
        except OSError as exc:
            self.failures += 1
            if self.failures == 1:
                log.warning("cannot notify the service manager: %s", exc)
            return False
        return True

    def ready(self, status: str = "") -> bool:
        """``READY=1``: storage, devices and services are up."""
        fields = ["READY=1"] + ([f"STATUS={_one_line(status)}"] if status else [])
        return self.send(*fields)

    def status(self, text: str) -> bool:
        """``STATUS=...``: the one line ``systemctl status`` shows."""
        return self.send(f"STATUS={_one_line(text)}")

    def stopping(self, status: str = "") -> bool:
        """``STOPPING=1``: the daemon is shutting down on purpose."""
        fields = ["STOPPING=1"] + ([f"STATUS={_one_line(status)}"] if status else [])
        return self.send(*fields)

    def watchdog(self) -> None:
        """``WATCHDOG=1``, at most once per half the watchdog interval (the heartbeat)."""
        if self.watchdog_interval_s is None or self._sock is None:
            return
        now = self._monotonic()
        if self._last_ping is not None and now - self._last_ping < self.watchdog_interval_s / 2:
            return
        self._last_ping = now
        if self.send("WATCHDOG=1"):
            self.pings += 1

    def close(self) -> None:
        """Close the socket; later calls do nothing."""
        if self._sock is not None:
            self._sock.close()
            self._sock = None


def _address(value: str) -> str | bytes | None:
    if not value:
        return None
    if value.startswith("@"):
        return b"\0" + value[1:].encode()
    if value.startswith("/"):
        return value
    return None  # vsock and other forms: not on a gate


def _watchdog_interval(env: Mapping[str, str]) -> float | None:
    usec = env.get("WATCHDOG_USEC", "")
    pid = env.get("WATCHDOG_PID", "")
    if pid and pid != str(os.getpid()):
        return None  # meant for another process (a parent that exec'd us keeps it)
    try:
        value = int(usec)
    except ValueError:
        return None
    return value / 1_000_000 if value > 0 else None


def _one_line(text: str) -> str:
    return " ".join(text.split())[:200]


# -- journald ------------------------------------------------------------------------

#: syslog priorities of Python's levels (``<3>`` err ... ``<7>`` debug).
PRIORITIES = {
    logging.CRITICAL: 2,
    logging.ERROR: 3,
    logging.WARNING: 4,
    logging.INFO: 6,
    logging.DEBUG: 7,
}


def stderr_is_journal(env: Mapping[str, str] | None = None, fd: int | None = None) -> bool:
    """Whether stderr is connected to journald (``JOURNAL_STREAM`` names its device:inode)."""
    env = os.environ if env is None else env
    stream = env.get("JOURNAL_STREAM", "")
    if not stream:
        return False
    try:
        st = os.fstat(sys.stderr.fileno() if fd is None else fd)
    except (OSError, ValueError, AttributeError):
        return False
    return stream == f"{st.st_dev}:{st.st_ino}"


def priority(levelno: int) -> int:
    """The syslog priority of a logging level."""
    for level in sorted(PRIORITIES, reverse=True):
        if levelno >= level:
            return PRIORITIES[level]
    return 7


_ESCAPES = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def escape_controls(text: str) -> str:
    """``text`` with newlines and every other unprintable character escaped (``\\n``, ``\\x1b``).

    What a log line says may come from outside (an MQTT ``req``, a topic, a registry
    field): a newline in it would start a line of its own in the journal, one that
    looks like the gate's. CJK and other printable text stays as it is.
    """
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else _ESCAPES.get(c) or ascii(c)[1:-1] for c in text)


class LogFormatter(logging.Formatter):
    """A formatter whose message is always one line: control characters are escaped.

    The traceback of ``log.exception`` still follows on lines of its own.
    """

    def formatMessage(self, record: logging.LogRecord) -> str:
        """The formatted line, with :func:`escape_controls` applied to the message."""
        record.message = escape_controls(record.message)
        return super().formatMessage(record)


class JournalFormatter(LogFormatter):
    """``<3>ERROR name: message``: journald reads the ``<N>`` prefix as the priority.

    Every line of a multi-line record (a traceback) gets the prefix, since journald
    stores each line as an entry of its own. No timestamp: journald stamps entries.
    """

    def __init__(self, fmt: str = "%(levelname)s %(name)s: %(message)s"):
        super().__init__(fmt)

    def format(self, record: logging.LogRecord) -> str:
        """The record, each of its lines prefixed with its syslog priority."""
        prefix = f"<{priority(record.levelno)}>"
        return "\n".join(prefix + line for line in super().format(record).splitlines())
