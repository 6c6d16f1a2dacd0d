"""Thermometers that send one reading per line over a UART.

Each line is matched with the configured ``line_regex`` (searched, one capturing
group: degrees Celsius); ``offset_c`` is added. What is never emitted as a reading:
a line the regex does not match or whose group is not a number (``no_match``), a
line the device flags as an error (``flagged``: ERR, FAIL, FAULT, INVALID, Lo, Hi,
OL, NaN, or dashes in place of digits), a value outside what a sensor can
physically report (``implausible``: below -20 or above 80 degrees Celsius, a sensor
fault) and a line whose first byte came more than 1 s before its end (``stale``:
the start of an old reading glued to a new one). The controller then applies
``policy.valid_temp_c`` to what is left.
"""

from __future__ import annotations

import math
import re
from typing import Any, Literal

from pydantic import Field, field_validator

from drivers.common.base import Reading
from drivers.common.options import OFFSET_C, THERMOMETER_DRIVER, SerialConfig, SerialPort
from drivers.common.serialport import LineFramer, SerialDriver

#: The regex used when none is configured: the first number on the line.
DEFAULT_LINE_REGEX = r"(-?\d+(?:\.\d+)?)"
#: Degrees Celsius a working sensor can report; anything outside is a sensor fault.
PLAUSIBLE_C = (-20.0, 80.0)
#: Longest line accepted, in bytes.
MAX_LINE_BYTES = 256
#: Seconds a line may take from its first byte to its end before it is stale.
MAX_LINE_AGE_S = 1.0
#: Words (or dashes) a thermometer sends instead of a value when it has none.
FLAGGED = re.compile(r"\b(?:err(?:or)?|fail\w*|fault|invalid|lo|hi|ol|nan|inf)\b|--", re.I)


class SerialThermometerConfig(SerialConfig):
    """A thermometer that sends one reading per line over a UART."""

    driver: Literal["serial"] = Field(default="serial", description=THERMOMETER_DRIVER)
    port: SerialPort = Field(description="Serial port of the thermometer.")
    baud: int = Field(default=9600, gt=0, description="Serial speed in baud.")
    line_regex: str = Field(
        default=DEFAULT_LINE_REGEX,
        description="Regular expression whose one group captures degrees Celsius from a line.",
    )
    offset_c: float = Field(default=0.0, ge=-10, le=10, description=OFFSET_C)

    @field_validator("line_regex")
    @classmethod
    def _one_group(cls, value: str) -> str:
        try:
            groups = re.compile(value).groups
        except re.error as exc:
            raise ValueError(f"not a regular expression: {exc}") from None
        if groups != 1:
            raise ValueError(f"needs exactly one capturing group, has {groups}")
        return value


class ThermometerFramer:
    """Turns a thermometer's bytes into readings in degrees Celsius (offset applied).

    ``stats``: ``readings`` (handed on), ``no_match``, ``flagged``, ``implausible``,
    ``undecodable`` (dropped), plus the line framer's ``lines``, ``too_long`` and
    ``stale``.
    """

    DROPS: tuple[str, ...] = (
        "no_match",
        "flagged",
        "implausible",
        "undecodable",
        "too_long",
        "stale",
    )

    def __init__(self, line_regex: str = DEFAULT_LINE_REGEX, offset_c: float = 0.0, **kw: Any):
        self.regex = re.compile(line_regex)
        if self.regex.groups != 1:
            raise ValueError(f"line_regex needs exactly one group, has {self.regex.groups}")
        self.offset_c = offset_c
        self.lines = LineFramer(max_len=MAX_LINE_BYTES, max_age_s=MAX_LINE_AGE_S, **kw)
        self._stats: dict[str, int] = {
            "readings": 0,
            "no_match": 0,
            "flagged": 0,
            "implausible": 0,
            "undecodable": 0,
        }

    @property
    def stats(self) -> dict[str, int]:
        """Counters of readings handed on and lines dropped."""
        return {**self.lines.stats, **self._stats}

    def reset(self) -> None:
        """Forget a partial line."""
        self.lines.reset()

    def feed(self, data: bytes) -> list[float]:
        """Take the next bytes; the readings of the lines they end."""
        out: list[float] = []
        for line in self.lines.feed(data):
            value = self.parse(line)
            if value is not None:
                out.append(value)
        return out

    def parse(self, line: bytes) -> float | None:
        """One line's reading in degrees Celsius with the offset, or None (counted)."""
        try:
            text = line.decode("ascii")
        except UnicodeDecodeError:
            self._stats["undecodable"] += 1
            return None
        if FLAGGED.search(text):
            self._stats["flagged"] += 1
            return None
        match = self.regex.search(text)
        try:
            value = float(match.group(1)) if match and match.group(1) is not None else None
        except ValueError:
            value = None
        if value is None:
            self._stats["no_match"] += 1
            return None
        if not math.isfinite(value) or not PLAUSIBLE_C[0] <= value <= PLAUSIBLE_C[1]:
            self._stats["implausible"] += 1
            return None
        self._stats["readings"] += 1
        return round(value + self.offset_c, 2)


class SerialThermometer(SerialDriver):
    """A thermometer on a serial port: emits a ``temp`` reading per good line.

    Config: :class:`SerialThermometerConfig` (``[thermometer] driver = "serial"``).
    """

    config_model = SerialThermometerConfig
    config: SerialThermometerConfig

    def make_framer(self) -> ThermometerFramer:
        """The line framer with the configured regex and offset."""
        return ThermometerFramer(self.config.line_regex, self.config.offset_c)

    def on_item(self, item: Any) -> None:
        """Emit one reading."""
        self.emit(Reading("temp", item, self.name))
