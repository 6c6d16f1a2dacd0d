"""A reconnecting device reader thread, its serial flavour and the line framing it feeds.

The pattern is pyserial's ``threaded.ReaderThread``: reading kept apart from framing.
:class:`ReconnectingReader` opens a device, reads it until it fails, then reports the
device unhealthy, waits (:class:`~drivers.common.backoff.Backoff` doubling from 50 ms,
capped at 0.5 s, so a port that comes back is open again well within 2 s) and opens
it again, by the same path: a udev rule's stable name (``/dev/serial/by-id/...``,
``/dev/rdm6300``) survives a re-plug. :class:`SerialReader` hands every chunk of bytes
to a pure framing object (``feed(bytes) -> list[item]``, ``reset()``) and every item
to a callback. :class:`SerialDriver` is the base of the serial device drivers.

Ports are opened with pyserial's ``serial_for_url``: a device path, or a URL such as
``loop://`` (what is written is read back: a device in a test) or
``spy:///dev/ttyUSB0`` (the traffic logged, for finding a wiring fault).

pyserial is imported in ``open``, so this module imports on any machine.
"""

from __future__ import annotations

import errno
import logging
import re
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from typing import Any, Protocol

from pydantic import BaseModel

from drivers.common.backoff import Backoff
from drivers.common.base import DeviceHealth, Driver, DriverContext, Emit, Reading, describe
from drivers.common.options import SerialConfig

log = logging.getLogger(__name__)

#: First wait after a failed open, in seconds; it doubles on each failure in a row.
BACKOFF_FIRST_S = 0.05
#: Longest wait between two opens, in seconds: a re-plugged port is back within it.
BACKOFF_MAX_S = 0.5
#: Seconds one serial read blocks at most, so ``stop()`` is answered promptly.
READ_TIMEOUT_S = 0.1
#: Seconds ``stop()`` waits for the reading thread.
STOP_TIMEOUT_S = 1.0
#: Seconds between two warnings about dropped input from one device.
DROP_LOG_INTERVAL_S = 10.0


class Framer(Protocol):
    """A pure framing object: bytes in, finished items out."""

    @property
    def stats(self) -> dict[str, int]:
        """Counters; the keys in ``DROPS`` (when the framer has it) count dropped input."""
        ...

    def feed(self, data: bytes) -> list[Any]:
        """Take the next bytes; the items they finish."""
        ...

    def reset(self) -> None:
        """Forget a partial frame (the device was re-opened)."""
        ...


def with_dropped(
    stats: Mapping[str, int], drops: tuple[str, ...], reader: ReconnectingReader
) -> dict[str, int]:
    """A framer's counters, its reader's, and ``dropped``: the sum of the ``drops`` keys."""
    return {**stats, **reader.stats, "dropped": sum(stats.get(k, 0) for k in drops)}


class ReconnectingReader(ABC):
    """A thread that opens a device, reads it, and on failure reports, waits and re-opens.

    Health goes to ``emit`` as ``Reading("device", DeviceHealth(...), name)`` only when
    it changes between working and failing, so a port that stays away raises one
    alarm, not one per retry. ``stats`` counts ``opens``, ``reconnects`` (opens after
    the first) and ``failures`` (failed opens and lost devices). Failed opens in a row
    wait ``backoff`` (no jitter: one local device has no crowd to spread).
    """

    def __init__(self, name: str, emit: Emit, what: str):
        self.name = name
        self.emit = emit
        self.what = what
        self.stats: dict[str, int] = {"opens": 0, "reconnects": 0, "failures": 0, "errors": 0}
        self._health = DeviceHealth(False, f"{what} not opened yet")
        self._reported: bool | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._drops_logged = 0
        self._drops_logged_at = float("-inf")
        self.backoff = Backoff(BACKOFF_FIRST_S, BACKOFF_MAX_S, jitter=0)

    @abstractmethod
    def open(self) -> None:
        """Open the device; raise OSError (or ImportError, ValueError) when it cannot be."""

    @abstractmethod
    def read_once(self) -> None:
        """Read what is there (blocking at most ~0.1 s); raise OSError when the device is gone."""

    @abstractmethod
    def close(self) -> None:
        """Release the device; must not raise."""

    def start(self) -> None:
        """Start the reading thread; the first open happens on it."""
        if self._thread is not None:
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name=f"reader-{self.name}", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop reading and release the device; joins the thread within ~1 s."""
        self._stop.set()
        thread, self._thread = self._thread, None
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=STOP_TIMEOUT_S)

    def health(self) -> DeviceHealth:
        """The device's health as of now."""
        with self._lock:
            return self._health

    def log_drops(self, stats: Mapping[str, int], keys: tuple[str, ...]) -> None:
        """Warn that input was dropped, with the counts of ``keys``; once per 10 s at most."""
        # Garbage on a line can come by the thousand: one warning per interval at most.
        drops = sum(stats.get(k, 0) for k in keys)
        now = time.monotonic()
        if drops == self._drops_logged or now - self._drops_logged_at < DROP_LOG_INTERVAL_S:
            return
        counts = ", ".join(f"{k} {stats.get(k, 0)}" for k in keys)
        log.warning("%s: dropped bad input (so far: %s)", self.name, counts)
        self._drops_logged = drops
        self._drops_logged_at = now

    def _set_health(self, ok: bool, detail: str) -> None:
        with self._lock:
            self._health = DeviceHealth(ok, detail)
            changed = self._reported != ok
            self._reported = ok
        if not changed:
            return
        if ok:
            log.info("%s: %s", self.name, detail)
        else:
            log.warning("%s unhealthy: %s", self.name, detail)
        self.emit(Reading("device", DeviceHealth(ok, detail), self.name))

    def _run(self) -> None:
        try:
            self._loop()
        except Exception as exc:  # only a bug gets here (emit failed?): say so, do not hide it
            log.exception("%s: reader stopped", self.name)
            with self._lock:
                self._health = DeviceHealth(False, f"reader stopped: {describe(exc)}")

    def _loop(self) -> None:
        self.backoff.reset()
        while not self._stop.is_set():
            try:
                self.open()
            except Exception as exc:  # OSError, SerialException, ImportError, ValueError...
                self.stats["failures"] += 1
                self._set_health(False, f"{self.what}: {describe(exc)}")
                delay = self.backoff.next()
                log.debug("%s: open failed, next try in %.2f s", self.name, delay)
                if self._stop.wait(delay):
                    break
                continue
            self.stats["opens"] += 1
            if self.stats["opens"] > 1:
                self.stats["reconnects"] += 1
            self._set_health(True, f"{self.what} open")
            self.backoff.reset()
            try:
                while not self._stop.is_set():
                    self.read_once()
            except Exception as exc:  # the device went away (or a bug): re-open it
                if not isinstance(exc, OSError):
                    self.stats["errors"] += 1
                    log.exception("%s: reading failed", self.name)
                self.stats["failures"] += 1
                self._set_health(False, f"{self.what}: {describe(exc)}")
            finally:
                self.close()
            self._stop.wait(self.backoff.low)


class SerialReader(ReconnectingReader):
    """Reads a serial port (8N1) into ``framer`` and hands each finished item to ``on_item``.

    On every (re-)open the kernel's input buffer and the framer's partial frame are
    dropped: bytes from before a gap are never glued to bytes after it. ``stats``
    adds ``bytes`` read and ``errors`` (exceptions from the framer, which must not
    raise, or from ``on_item``; counted and logged, the reader goes on).
    """

    def __init__(
        self,
        name: str,
        emit: Emit,
        port: str,
        baud: int,
        framer: Framer,
        on_item: Callable[[Any], None],
    ):
        super().__init__(name, emit, port)
        self.port = port
        self.baud = baud
        self.framer = framer
        self.on_item = on_item
        self.stats["bytes"] = 0
        self._serial: Any = None

    def open(self) -> None:
        """Open the port by its path (or URL) and drop whatever was waiting in it."""
        port = open_serial(self.port, self.baud, timeout=READ_TIMEOUT_S)
        try:
            port.reset_input_buffer()
        except Exception:
            port.close()
            raise
        self.framer.reset()
        self._serial = port

    def read_once(self) -> None:
        """Read what is waiting (or wait up to 0.1 s for one byte) and frame it."""
        port = self._serial
        try:
            data = port.read(port.in_waiting or 1)
        except OSError as exc:
            if exc.errno is None and "returned no data" in str(exc):
                # pyserial's words for a pty or USB adapter whose other end is gone
                raise OSError(errno.ENODEV, "device disconnected") from None
            raise
        if not data:
            return
        self.stats["bytes"] += len(data)
        try:
            items = self.framer.feed(data)
        except Exception:  # a framer must not raise; if one does, resynchronise
            self.stats["errors"] += 1
            log.exception("%s: framing failed; partial frame dropped", self.name)
            self.framer.reset()
            return
        for item in items:
            try:
                self.on_item(item)
            except Exception:  # one bad item must not stop the reader
                self.stats["errors"] += 1
                log.exception("%s: handling a frame failed", self.name)
        self.log_drops(self.framer.stats, getattr(self.framer, "DROPS", ()))

    def close(self) -> None:
        """Close the port, ignoring errors (it may be gone already)."""
        port, self._serial = self._serial, None
        if port is None:
            return
        try:
            port.close()
        except Exception as exc:  # closing a vanished port may fail; nothing to do
            log.debug("%s: close failed: %s", self.name, exc)


def open_serial(port: str, baud: int, exclusive: bool = True, **kwargs: Any) -> Any:
    """The serial port ``port`` (a path or a pyserial URL such as ``loop://``), opened.

    ``exclusive``: a second reader of the same port (a selftest while the daemon runs)
    would take half the bytes of every frame; it is refused (EBUSY) instead.
    ``kwargs`` go to pyserial (``timeout``, ``write_timeout``).
    """
    import serial

    try:
        return serial.serial_for_url(port, baud, exclusive=exclusive, **kwargs)
    except OSError as exc:
        if "exclusively lock" in str(exc):
            raise OSError(errno.EBUSY, "in use by another process") from None
        raise


_LINE_END = re.compile(rb"[\r\n]")


class LineFramer:
    """Splits bytes into lines ended by CR, LF or both; empty lines are skipped.

    A line longer than ``max_len`` bytes is dropped whole (``too_long``), its tail
    included. With ``max_age_s``, a line whose first byte came more than that many
    seconds before its end is dropped as ``stale`` (the start of a reading glued to a
    later one). Items are the lines' bytes without the ending.
    """

    DROPS: tuple[str, ...] = ("too_long", "stale")

    def __init__(
        self,
        max_len: int = 4096,
        max_age_s: float | None = None,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.max_len = max_len
        self.max_age_s = max_age_s
        self.clock = clock
        self.stats: dict[str, int] = {"lines": 0, "too_long": 0, "stale": 0}
        self._buf = bytearray()
        self._overflow = False
        self._started = 0.0

    def reset(self) -> None:
        """Forget the line in progress."""
        self._buf.clear()
        self._overflow = False

    def feed(self, data: bytes) -> list[bytes]:
        """Take the next bytes; the complete, non-empty lines they end."""
        pieces = _LINE_END.split(data)
        lines: list[bytes] = []
        for i, piece in enumerate(pieces):
            if piece and not self._buf and not self._overflow:
                self._started = self.clock()
            if not self._overflow:
                if len(self._buf) + len(piece) > self.max_len:
                    self._overflow = True
                    self._buf.clear()
                else:
                    self._buf += piece
            if i == len(pieces) - 1:
                break  # the last piece has no ending yet
            line = self._end_line()
            if line is not None:
                lines.append(line)
        return lines

    def _end_line(self) -> bytes | None:
        if self._overflow:
            self._overflow = False
            self.stats["too_long"] += 1
            return None
        if not self._buf:
            return None
        line = bytes(self._buf)
        self._buf.clear()
        if self.max_age_s is not None and self.clock() - self._started > self.max_age_s:
            self.stats["stale"] += 1
            return None
        self.stats["lines"] += 1
        return line


class ReaderDriver(Driver):
    """A driver whose device is read by a :class:`ReconnectingReader` in ``self.reader``."""

    reader: ReconnectingReader

    def stop(self) -> None:
        """Stop reading and release the device; safe to call twice."""
        self.reader.stop()

    def health(self) -> DeviceHealth:
        """Healthy while the device is open and reading."""
        return self.reader.health()


class SerialDriver(ReaderDriver):
    """A device on a serial port: ``make_framer`` frames its bytes, ``on_item`` emits.

    Its config derives from :class:`~drivers.common.options.SerialConfig`: ``port``
    (a path, a stable udev name survives re-plugging, or a pyserial URL) and ``baud``.
    ``stats`` merges the framer's counters with the reader's (``opens``,
    ``reconnects``, ``failures``, ``bytes``, ``errors``) and ``dropped``, the sum of
    the framer's counters of dropped input.
    """

    reader: SerialReader
    config: SerialConfig

    def __init__(
        self,
        name: str,
        emit: Emit,
        config: BaseModel | Mapping[str, Any] | None = None,
        ctx: DriverContext | None = None,
    ):
        super().__init__(name, emit, config, ctx)
        self.framer = self.make_framer()
        self.reader = SerialReader(
            self.name, self.emit, self.config.port, self.config.baud, self.framer, self.on_item
        )

    @abstractmethod
    def make_framer(self) -> Framer:
        """The pure framing object for this device's wire protocol."""

    @abstractmethod
    def on_item(self, item: Any) -> None:
        """Turn one framed item into a reading (or drop it)."""

    @property
    def stats(self) -> dict[str, int]:
        """Counters for ``/metrics``: the framer's, the reader's and ``dropped`` (their sum)."""
        return with_dropped(self.framer.stats, getattr(self.framer, "DROPS", ()), self.reader)

    def start(self) -> None:
        """Start reading; a port that is missing now is retried until it appears."""
        import serial  # noqa: F401  (fail here, clearly, if pyserial is missing)

        if not self.reader.port:
            raise ValueError(f"{self.name}: no serial port configured")
        self.reader.start()
