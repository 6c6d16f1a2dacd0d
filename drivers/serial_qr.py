"""Serial QR scanner modules (GM65-style, UART 9600 or 115200).

The scanner sends each decoded text ended by CR and/or LF. A line over 4096 bytes,
or one that is not UTF-8, is dropped and counted; empty lines are skipped. In
continuous mode a scanner sends a code held in front of it again and again: one
presentation counts once, so the same text is handed on again only after
``DEBOUNCE_S`` seconds without being seen (as the camera does). The text is only
handed on (the controller verifies it as a pass), never logged.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, Literal

from pydantic import Field

from drivers.common.base import Reading
from drivers.common.debounce import Debouncer
from drivers.common.options import QR_DRIVER, SerialConfig, SerialPort
from drivers.common.serialport import LineFramer, SerialDriver

#: Longest text accepted, in bytes; a signed pass is a few hundred.
MAX_TEXT_BYTES = 4096
#: Seconds the same text is held back after its last sighting (a held code).
DEBOUNCE_S = 2.0
#: Texts remembered for debouncing before the old ones are pruned.
_MAX_REMEMBERED = 64


class SerialQrConfig(SerialConfig):
    """A serial QR scanner (GM65-style) that sends each decoded text ended by CR/LF."""

    driver: Literal["serial"] = Field(default="serial", description=QR_DRIVER)
    port: SerialPort = Field(description="Serial port of the scanner.")
    baud: int = Field(
        default=9600, gt=0, description="Serial speed in baud (9600 or 115200 mostly)."
    )


class QrFramer:
    """Turns a scanner's bytes into decoded texts.

    ``stats``: ``texts`` (handed on), ``too_long`` and ``undecodable`` (dropped),
    ``blank`` (only spaces; skipped), ``repeats`` (a held code, held back), plus the
    line framer's ``lines``.
    """

    DROPS: tuple[str, ...] = ("too_long", "undecodable")

    def __init__(
        self,
        max_bytes: int = MAX_TEXT_BYTES,
        debounce_s: float = DEBOUNCE_S,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.lines = LineFramer(max_len=max_bytes)
        self.debouncer = Debouncer(debounce_s, _MAX_REMEMBERED)
        self.clock = clock
        self._stats: dict[str, int] = {"texts": 0, "undecodable": 0, "blank": 0, "repeats": 0}

    @property
    def stats(self) -> dict[str, int]:
        """Counters of texts handed on and dropped."""
        return {**self.lines.stats, **self._stats}

    def reset(self) -> None:
        """Forget a partial line."""
        self.lines.reset()

    def feed(self, data: bytes) -> list[str]:
        """Take the next bytes; the texts of the lines they end."""
        texts: list[str] = []
        for line in self.lines.feed(data):
            try:
                text = line.decode("utf-8").strip()
            except UnicodeDecodeError:
                self._stats["undecodable"] += 1
                continue
            if not text:
                self._stats["blank"] += 1
                continue
            if not self.debouncer.accept(text, self.clock()):
                self._stats["repeats"] += 1
                continue
            self._stats["texts"] += 1
            texts.append(text)
        return texts


class SerialQrScanner(SerialDriver):
    """A QR scanner module on a serial port: emits a ``qr`` reading per scanned text.

    Config: :class:`SerialQrConfig` (``[qr] driver = "serial"``).
    """

    config_model = SerialQrConfig
    config: SerialQrConfig

    def make_framer(self) -> QrFramer:
        """The CR/LF line framer with UTF-8 decoding."""
        return QrFramer()

    def on_item(self, item: Any) -> None:
        """Emit one scanned text."""
        self.emit(Reading("qr", item, self.name))
