"""Card readers that type the card number like a USB keyboard (HID), read through evdev.

The reader "types" the uid's digits, then Enter. The device is grabbed, so the
digits reach this driver only and never a console or a login prompt. A reader that
is unplugged is reported unhealthy and re-opened by its path (a
``/dev/input/by-id/...`` name survives re-plugging) as soon as it is back.

:class:`HidDecoder` is pure: key events in, uids out. evdev is imported in
``start()``, so this module imports on any machine; it is not installed with gated
(it builds from source on a Pi): ``.venv/bin/pip install evdev`` where a HID reader
is used.
"""

from __future__ import annotations

import logging
import select
import time
from collections.abc import Mapping
from typing import Any

from drivers.base import DriverContext, Emit, Reading
from drivers.serialport import ReaderDriver, ReconnectingReader, with_dropped

log = logging.getLogger(__name__)

#: evdev event type of keys.
EV_KEY = 1
#: Key event values: released, pressed, auto-repeated.
KEY_UP, KEY_DOWN, KEY_REPEAT = 0, 1, 2
#: Linux key codes a reader types, and the character each stands for.
KEYS: dict[int, str] = {
    **{code: str((i + 1) % 10) for i, code in enumerate(range(2, 12))},  # KEY_1..KEY_0
    82: "0", 79: "1", 80: "2", 81: "3", 75: "4", 76: "5", 77: "6", 71: "7", 72: "8", 73: "9",
    30: "A", 48: "B", 46: "C", 32: "D", 18: "E", 33: "F",  # hex readers
}  # fmt: skip
#: KEY_ENTER and KEY_KPENTER end a uid.
ENTER = frozenset({28, 96})
#: Shift, Ctrl, Alt, Caps Lock, Num Lock: some readers press them; they change nothing.
MODIFIERS = frozenset({42, 54, 29, 97, 56, 100, 58, 69})
#: Longest uid accepted, in characters.
MAX_UID_LEN = 32
#: Seconds between two keys of one uid; a longer pause starts over (a reader types fast).
GAP_S = 0.5


class HidDecoder:
    """Turns key events into uids: the characters typed before Enter.

    ``stats``: ``uids`` (reported), ``bad_key`` (a key no reader types: the uid is
    dropped), ``too_long`` (over ``max_len``: dropped), ``partial`` (keys followed by a
    pause longer than ``gap_s``: dropped), ``empty`` (Enter alone: ignored).
    """

    DROPS: tuple[str, ...] = ("bad_key", "too_long", "partial")

    def __init__(self, max_len: int = MAX_UID_LEN, gap_s: float = GAP_S):
        self.max_len = max_len
        self.gap_s = gap_s
        self.stats: dict[str, int] = {
            "uids": 0,
            "bad_key": 0,
            "too_long": 0,
            "partial": 0,
            "empty": 0,
        }
        self._chars: list[str] = []
        self._bad = False
        self._long = False
        self._last = 0.0

    def reset(self) -> None:
        """Forget the uid being typed."""
        self._chars = []
        self._bad = False
        self._long = False

    def feed(self, code: int, value: int, t: float) -> str | None:
        """Take one key event (``value`` 1 = pressed) at ``t`` seconds; a uid on Enter."""
        if value != KEY_DOWN:
            return None
        if (self._chars or self._bad or self._long) and t - self._last > self.gap_s:
            self.stats["partial"] += 1
            self.reset()
        self._last = t
        if code in ENTER:
            return self._finish()
        if code in MODIFIERS:
            return None
        char = KEYS.get(code)
        if char is None:
            self._bad = True
        elif len(self._chars) >= self.max_len:
            self._long = True
        else:
            self._chars.append(char)
        return None

    def _finish(self) -> str | None:
        uid = "".join(self._chars)
        bad, long = self._bad, self._long
        self.reset()
        if bad:
            self.stats["bad_key"] += 1
        elif long:
            self.stats["too_long"] += 1
        elif not uid:
            self.stats["empty"] += 1
        else:
            self.stats["uids"] += 1
            return uid
        return None


class HidReader(ReconnectingReader):
    """Reads one evdev device (grabbed) into a :class:`HidDecoder`."""

    def __init__(self, name: str, emit: Emit, device: str, grab: bool, decoder: HidDecoder):
        super().__init__(name, emit, device)
        self.device = device
        self.grab = grab
        self.decoder = decoder
        self._dev: Any = None

    def open(self) -> None:
        """Open the device by its path and grab it."""
        import evdev

        dev = evdev.InputDevice(self.device)
        if self.grab:
            try:
                dev.grab()
            except OSError:
                dev.close()
                raise
        self.decoder.reset()
        self._dev = dev

    def read_once(self) -> None:
        """Wait up to 0.1 s for events and decode the key presses."""
        dev = self._dev
        ready, _, _ = select.select([dev.fd], [], [], 0.1)
        if not ready:
            return
        try:
            events = list(dev.read())
        except BlockingIOError:
            return
        for ev in events:
            if ev.type != EV_KEY:
                continue
            uid = self.decoder.feed(ev.code, ev.value, time.monotonic())
            if uid is not None:
                self.emit(Reading("card", uid, self.name))
        self.log_drops(self.decoder.stats, self.decoder.DROPS)

    def close(self) -> None:
        """Release the grab and close the device, ignoring errors (it may be gone)."""
        dev, self._dev = self._dev, None
        if dev is None:
            return
        for step in (dev.ungrab, dev.close) if self.grab else (dev.close,):
            try:
                step()
            except Exception as exc:  # a vanished device cannot be released; nothing to do
                log.debug("%s: %s failed: %s", self.name, step.__name__, exc)


class HidCardReader(ReaderDriver):
    """A keyboard-like card reader: emits a ``card`` reading with the digits typed.

    Options (``[card] driver = "hid"``): ``device`` (evdev path), ``grab`` (true).
    """

    reader: HidReader

    def __init__(
        self,
        name: str,
        emit: Emit,
        options: Mapping[str, Any] | None = None,
        ctx: DriverContext | None = None,
    ):
        super().__init__(name, emit, options, ctx)
        self.decoder = HidDecoder()
        self.reader = HidReader(
            self.name,
            self.emit,
            str(self.options.get("device", "")),
            bool(self.options.get("grab", True)),
            self.decoder,
        )

    @property
    def stats(self) -> dict[str, int]:
        """Counters for ``/metrics``: the decoder's, the reader's and ``dropped`` (their sum)."""
        return with_dropped(self.decoder.stats, self.decoder.DROPS, self.reader)

    def start(self) -> None:
        """Start reading; a device missing now is retried until it appears."""
        try:
            import evdev  # noqa: F401
        except ImportError as exc:
            raise ImportError(
                "the HID card reader needs evdev: .venv/bin/pip install evdev"
            ) from exc
        if not self.reader.device:
            raise ValueError(f"{self.name}: no evdev device configured")
        self.reader.start()
