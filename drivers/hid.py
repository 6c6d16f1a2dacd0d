"""Card readers that type the card number like a USB keyboard (HID), read from evdev.

The reader "types" the uid's digits, then Enter. The device is grabbed, so the
digits reach this driver only and never a console or a login prompt. A reader that
is unplugged is reported unhealthy and re-opened by its path (a
``/dev/input/by-id/...`` name survives re-plugging) as soon as it is back.

:class:`HidDecoder` is pure: key events in, uids out. :class:`HidReader` reads the
kernel's input events from the device node directly (``struct input_event``, the
``EVIOCGRAB`` ioctl), so no library beyond Python's own is needed.

Why not python-evdev's ``InputDevice`` for reading: it opens only a real evdev node
(it asks the kernel for the device's name and capabilities first) and its ``read``
drops the rest of a record split across two reads. The reader here takes any file
that carries ``struct input_event`` records, so its decoding, unplug and re-open run
in the tests on a FIFO on every machine, where a real node needs ``/dev/uinput``
(rarely there in CI or a container). python-evdev is what the tests use, where
``/dev/uinput`` is, to make a real virtual reader, and to check ``KEYS`` against
the kernel's key codes.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import select
import struct
import time
from collections.abc import Mapping
from typing import Any, Literal

from pydantic import BaseModel, Field

from drivers.common.base import DriverContext, Emit, Reading
from drivers.common.options import CARD_DRIVER, StrictModel
from drivers.common.serialport import ReaderDriver, ReconnectingReader, with_dropped

log = logging.getLogger(__name__)

#: ``struct input_event`` of <linux/input.h>: a timeval (two C longs), type, code, value.
EVENT = struct.Struct("@llHHi")
#: ``EVIOCGRAB`` = ``_IOW('E', 0x90, int)``: exclusive access, so the digits reach no console.
EVIOCGRAB = 0x40044590
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


class HidCardConfig(StrictModel):
    """A reader that types the card number like a keyboard (evdev)."""

    driver: Literal["hid"] = Field(default="hid", description=CARD_DRIVER)
    device: str = Field(
        min_length=1,
        description="evdev device of the reader; a /dev/input/by-id/ path survives re-plugging.",
    )
    grab: bool = Field(
        default=True, description="Grab the device so its digits reach nothing else."
    )


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
    """Reads one input device (``/dev/input/event*``), grabbed, into a :class:`HidDecoder`.

    It reads the kernel's ``struct input_event`` records itself (see the module for why
    not python-evdev), joining a record split across two reads. A device that goes away
    answers the read with an error (ENODEV) or an end of file: the reader reports it
    unhealthy and re-opens it by its path.
    """

    def __init__(self, name: str, emit: Emit, device: str, grab: bool, decoder: HidDecoder):
        super().__init__(name, emit, device)
        self.device = device
        self.grab = grab
        self.decoder = decoder
        self._fd: int | None = None
        self._partial = b""

    def open(self) -> None:
        """Open the device by its path and grab it."""
        fd = os.open(self.device, os.O_RDONLY | os.O_NONBLOCK)
        if self.grab:
            try:
                fcntl.ioctl(fd, EVIOCGRAB, 1)
            except OSError:
                os.close(fd)
                raise
        self.decoder.reset()
        self._partial = b""
        self._fd = fd

    def read_once(self) -> None:
        """Wait up to 0.1 s for events and decode the key presses."""
        fd = self._fd
        if fd is None:
            raise OSError(errno.EBADF, "device not open")
        ready, _, _ = select.select([fd], [], [], 0.1)
        if not ready:
            return
        try:
            data = os.read(fd, EVENT.size * 64)
        except BlockingIOError:
            return
        if not data:
            raise OSError(errno.ENODEV, "device gone")
        buf = self._partial + data
        whole = len(buf) - len(buf) % EVENT.size
        self._partial = buf[whole:]
        now = time.monotonic()
        for _sec, _usec, type_, code, value in EVENT.iter_unpack(buf[:whole]):
            if type_ != EV_KEY:
                continue
            uid = self.decoder.feed(code, value, now)
            if uid is not None:
                self.emit(Reading("card", uid, self.name))
        self.log_drops(self.decoder.stats, self.decoder.DROPS)

    def close(self) -> None:
        """Release the grab and close the device, ignoring errors (it may be gone)."""
        fd, self._fd = self._fd, None
        if fd is None:
            return
        if self.grab:
            try:
                fcntl.ioctl(fd, EVIOCGRAB, 0)
            except OSError as exc:  # a vanished device cannot be released; nothing to do
                log.debug("%s: ungrab failed: %s", self.name, exc)
        try:
            os.close(fd)
        except OSError as exc:
            log.debug("%s: close failed: %s", self.name, exc)


class HidCardReader(ReaderDriver):
    """A keyboard-like card reader: emits a ``card`` reading with the digits typed.

    Config: :class:`HidCardConfig` (``[card] driver = "hid"``).
    """

    config_model = HidCardConfig
    config: HidCardConfig
    reader: HidReader

    def __init__(
        self,
        name: str,
        emit: Emit,
        config: BaseModel | Mapping[str, Any] | None = None,
        ctx: DriverContext | None = None,
    ):
        super().__init__(name, emit, config, ctx)
        self.decoder = HidDecoder()
        self.reader = HidReader(
            self.name, self.emit, self.config.device, self.config.grab, self.decoder
        )

    @property
    def stats(self) -> dict[str, int]:
        """Counters for ``/metrics``: the decoder's, the reader's and ``dropped`` (their sum)."""
        return with_dropped(self.decoder.stats, self.decoder.DROPS, self.reader)

    def start(self) -> None:
        """Start reading; a device missing now is retried until it appears."""
        if not self.reader.device:
            raise ValueError(f"{self.name}: no input device configured")
        self.reader.start()
