"""RDM6300 125 kHz EM4100 card readers on a UART (9600 8N1).

A frame is ``0x02``, 10 ASCII hex digits (2 version + 8 tag), 2 ASCII hex digits of
checksum (the XOR of the 5 data bytes) and ``0x03``; the uid is the 10 digits in
uppercase. While a card is held the reader repeats its frame every ~50 ms: one
presentation counts once, so a uid is reported again only after ``debounce_s``
seconds in which it was not seen at all.

:class:`Rdm6300Framer` is pure (bytes in, uids out, clock injectable);
:class:`Rdm6300CardReader` reads it from a port through :class:`SerialReader`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any, Literal

from pydantic import Field

from drivers.common.base import Reading
from drivers.common.debounce import Debouncer
from drivers.common.options import CARD_DRIVER, SerialConfig, SerialPort
from drivers.common.serialport import SerialDriver

log = logging.getLogger(__name__)

STX = 0x02
ETX = 0x03
#: Bytes in one frame: STX, 10 data digits, 2 checksum digits, ETX.
FRAME_LEN = 14
_HEX = frozenset(b"0123456789ABCDEFabcdef")
#: Uids remembered for debouncing before the old ones are pruned.
_MAX_REMEMBERED = 256


class Rdm6300CardConfig(SerialConfig):
    """An RDM6300 125 kHz EM4100 reader on a UART (9600 8N1)."""

    driver: Literal["rdm6300"] = Field(default="rdm6300", description=CARD_DRIVER)
    port: SerialPort = Field(description="Serial port the reader's TX is wired to.")
    baud: int = Field(
        default=9600, gt=0, description="Serial speed in baud (the RDM6300 sends 9600)."
    )
    debounce_s: float = Field(
        default=1.0,
        ge=0,
        description="Seconds within which the same card read again counts as one presentation.",
    )


def encode_frame(uid: str) -> bytes:
    """The frame a reader sends for the 10-hex-digit ``uid`` (for tests and benches)."""
    data = bytes.fromhex(uid)
    if len(data) != 5:
        raise ValueError("an RDM6300 uid is 10 hex digits")
    check = 0
    for b in data:
        check ^= b
    return bytes([STX]) + uid.upper().encode() + f"{check:02X}".encode() + bytes([ETX])


class Rdm6300Framer:
    """Turns the reader's bytes into uids: checked, resynchronised and debounced.

    ``stats``: ``frames`` (well-formed with a good checksum), ``cards`` (reported),
    ``repeats`` (a held card's frames, not reported), ``bad_checksum`` and
    ``bad_framing`` (dropped: a frame without its ETX or with a non-hex digit, or
    bytes outside any frame). ``bad_framing`` counts resyncs, not bytes: a bad frame
    and the bytes skipped after it up to the next STX count once, however the
    bytes were split into reads.
    """

    DROPS: tuple[str, ...] = ("bad_checksum", "bad_framing")

    def __init__(self, debounce_s: float = 1.0, clock: Callable[[], float] = time.monotonic):
        self.debouncer = Debouncer(debounce_s, _MAX_REMEMBERED)
        self.clock = clock
        self.stats: dict[str, int] = {
            "frames": 0,
            "cards": 0,
            "repeats": 0,
            "bad_checksum": 0,
            "bad_framing": 0,
        }
        self._buf = bytearray()
        self._skipping = False  # dropping bytes up to the next STX, already counted

    def reset(self) -> None:
        """Forget a partial frame (the debounce memory is kept)."""
        self._buf.clear()
        self._skipping = False

    def _bad_framing(self) -> None:
        if not self._skipping:
            self.stats["bad_framing"] += 1
            self._skipping = True

    def feed(self, data: bytes) -> list[str]:
        """Take the next bytes; the uids of the new presentations they complete."""
        self._buf += data
        uids: list[str] = []
        while True:
            start = self._buf.find(STX)
            if start < 0:
                if self._buf:
                    self._bad_framing()
                    self._buf.clear()
                break
            if start > 0:
                self._bad_framing()
                del self._buf[:start]
            self._skipping = False  # an STX: a new frame may begin here
            if len(self._buf) < FRAME_LEN:
                break
            frame = bytes(self._buf[:FRAME_LEN])
            body = frame[1:13]
            if frame[13] != ETX or not _HEX.issuperset(body):
                # Resynchronise on the next STX, which may start inside this window;
                # the bytes skipped on the way are part of this one bad frame.
                self._bad_framing()
                del self._buf[:1]
                continue
            del self._buf[:FRAME_LEN]
            uid = self._checked(body)
            if uid is not None and self._fresh(uid):
                uids.append(uid)
        return uids

    def _checked(self, body: bytes) -> str | None:
        data = bytes.fromhex(body[:10].decode("ascii"))
        check = 0
        for b in data:
            check ^= b
        if check != int(body[10:12], 16):
            self.stats["bad_checksum"] += 1
            return None
        self.stats["frames"] += 1
        return body[:10].decode("ascii").upper()

    def _fresh(self, uid: str) -> bool:
        if not self.debouncer.accept(uid, self.clock()):
            self.stats["repeats"] += 1
            return False
        self.stats["cards"] += 1
        return True


class Rdm6300CardReader(SerialDriver):
    """An RDM6300 on a serial port: emits one ``card`` reading per presentation.

    Config: :class:`Rdm6300CardConfig` (``[card] driver = "rdm6300"``).
    """

    config_model = Rdm6300CardConfig
    config: Rdm6300CardConfig

    def make_framer(self) -> Rdm6300Framer:
        """The RDM6300 framer with the configured debounce."""
        return Rdm6300Framer(self.config.debounce_s)

    def on_item(self, item: Any) -> None:
        """Emit the uid of a new presentation."""
        self.emit(Reading("card", item, self.name))
