"""The MLX90614 infrared thermometer on I2C (``[thermometer] driver = "mlx90614"``).

Every ``interval_s`` the driver reads the ambient (RAM 0x06) and object (RAM 0x07)
temperatures, each as a 3-byte SMBus read: the word LSB first, then the PEC byte (a
CRC-8 over the whole transaction) which must match. ``T = raw * 0.02 - 273.15``. A
read that is never used: bit 15 set (the sensor's error flag, ``flagged``), a PEC
that does not match (``pec``), a value outside what the sensor can measure
(``out_of_range``: object -70 to 382 C, ambient -40 to 125 C) and a read that took
longer than ``STALE_READ_S`` (``stale``). ``BAD_READS_LOST`` bad, stale or failed
reads in a row make the device unhealthy; it is re-opened with backoff.

Emissivity: the EEPROM is never written (a write cycle can brick the calibration if
power drops). The sensor's own emissivity setting (EEPROM 0x24, factory 1.0) is read
at open, and when ``emissivity`` in the config differs, readings are corrected in
software: ``To^4 = Ta^4 + (To_sensor^4 - Ta^4) * e_sensor / e_config`` (kelvin).
Then ``offset_c`` is added.

The sensor reads constantly, people come and go: :class:`Presentation` turns the
stream into one ``temp`` reading per person. Someone is in front when the object
reads ``RISE_C`` above the empty scene (a slowly tracked baseline); the reading
emitted is the first steady one (``STEADY_READS`` reads in a row within
``STEADY_SPREAD_C``), and again only if a later steady value is higher (the person
came closer), at most ``MAX_PER_PRESENTATION`` times. A scene that stays warm for
``PRESENT_MAX_S`` (sun on the wall) becomes the new empty scene.

smbus2 is imported in ``start``; tests pass a fake bus object (and a clock) instead.
"""

from __future__ import annotations

import logging
import math
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal

from pydantic import BaseModel, Field

from drivers.common.base import DriverContext, Emit, Reading
from drivers.common.options import OFFSET_C, THERMOMETER_DRIVER, StrictModel
from drivers.common.serialport import ReaderDriver, ReconnectingReader

log = logging.getLogger(__name__)

#: RAM register of the ambient (die) temperature.
REG_AMBIENT = 0x06
#: RAM register of the object temperature (first IR channel).
REG_OBJECT = 0x07
#: EEPROM register of the emissivity, read with the EEPROM access bit (0x20 | 0x04).
REG_EMISSIVITY = 0x24
#: Bit 15 of a RAM temperature: the sensor's error flag.
ERROR_FLAG = 0x8000
#: Object temperatures the sensor can measure, in degrees Celsius.
OBJECT_RANGE_C = (-70.0, 382.2)
#: Ambient temperatures the sensor works in, in degrees Celsius.
AMBIENT_RANGE_C = (-40.0, 125.0)
#: Seconds a read of both registers may take before it is stale.
STALE_READ_S = 0.25
#: Bad or failed reads in a row after which the sensor counts as lost.
BAD_READS_LOST = 10

#: Degrees Celsius above the empty scene that mean someone is in front.
RISE_C = 1.0
#: Degrees Celsius above the empty scene below which they have left.
LEAVE_C = 0.5
#: Share of the way the baseline moves up towards each reading of an empty scene.
BASELINE_RISE = 0.02
#: Reads in a row that make a steady value, and how far apart they may be.
STEADY_READS = 3
STEADY_SPREAD_C = 0.3
#: A later steady value is emitted if it is this much higher than the last emitted.
HIGHER_C = 0.3
#: Most readings emitted for one person in front.
MAX_PER_PRESENTATION = 3
#: Seconds between reads after which earlier reads are not combined with later ones.
GAP_S = 1.0
#: Seconds "someone in front" may last before the scene is learnt afresh (a warm wall).
PRESENT_MAX_S = 30.0


class Mlx90614ThermometerConfig(StrictModel):
    """An MLX90614 infrared thermometer on I2C (SMBus)."""

    driver: Literal["mlx90614"] = Field(default="mlx90614", description=THERMOMETER_DRIVER)
    bus: int = Field(
        default=1, ge=0, description="I2C bus number (1 = /dev/i2c-1 on a Raspberry Pi)."
    )
    address: int = Field(
        default=0x5A, ge=0x03, le=0x77, description="7-bit I2C address of the sensor (0x5A = 90)."
    )
    offset_c: float = Field(default=0.0, ge=-10, le=10, description=OFFSET_C)
    emissivity: float = Field(
        default=1.0,
        ge=0.1,
        le=1.0,
        description=(
            "Emissivity of what is measured, 0.1 to 1.0 (skin is about 0.98): readings are"
            " corrected in software from the sensor's own setting, which is never written."
        ),
    )
    interval_s: float = Field(default=0.2, gt=0, description="Seconds between reads.")


def crc8(data: bytes) -> int:
    """SMBus packet error code: CRC-8, polynomial x^8 + x^2 + x + 1, initial 0."""
    crc = 0
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = ((crc << 1) ^ 0x07) & 0xFF if crc & 0x80 else (crc << 1) & 0xFF
    return crc


def word_from_block(address: int, register: int, block: Sequence[int]) -> int | None:
    """The 16-bit word of a 3-byte read (LSB, MSB, PEC), or None if the PEC is wrong."""
    if len(block) < 3:
        return None
    lsb, msb, pec = block[0] & 0xFF, block[1] & 0xFF, block[2] & 0xFF
    if crc8(bytes([address << 1, register, (address << 1) | 1, lsb, msb])) != pec:
        return None
    return lsb | (msb << 8)


def raw_to_celsius(raw: int) -> float | None:
    """Degrees Celsius of a RAM temperature word, or None if its error flag is set."""
    if raw & ERROR_FLAG:
        return None
    return raw * 0.02 - 273.15


def correct_emissivity(
    object_c: float, ambient_c: float, sensor_e: float, wanted_e: float
) -> float:
    """The object temperature for emissivity ``wanted_e``, from one computed for ``sensor_e``."""
    if abs(sensor_e - wanted_e) < 0.005:
        return object_c
    to4 = (object_c + 273.15) ** 4
    ta4 = (ambient_c + 273.15) ** 4
    value = ta4 + (to4 - ta4) * sensor_e / wanted_e
    return float(max(value, 0.0) ** 0.25 - 273.15)


class Presentation:
    """Turns a stream of object temperatures into one reading per person in front.

    ``feed(object_c, t)`` returns the value to emit, or None. Pure: the caller passes
    the monotonic time of each read.
    """

    def __init__(self) -> None:
        self.baseline: float | None = None
        self.present = False
        self.since = 0.0
        self._recent: list[float] = []
        self._last_t: float | None = None
        self._emitted: list[float] = []

    def feed(self, object_c: float, t: float) -> float | None:
        """Take one good read; the steady temperature to emit, if this read makes one."""
        if not (math.isfinite(object_c) and math.isfinite(t)):
            return None  # not a read at all: it must not become the baseline or a reading
        if self._last_t is not None and t - self._last_t > GAP_S:
            self._recent.clear()  # reads from before a gap are not steady with later ones
        self._last_t = t
        if self.baseline is None:
            self.baseline = object_c
        if not self.present:
            if object_c - self.baseline >= RISE_C:
                self.present = True
                self.since = t
                self._recent = []
                self._emitted = []
            else:
                if object_c < self.baseline:
                    self.baseline = object_c
                else:
                    self.baseline += (object_c - self.baseline) * BASELINE_RISE
                return None
        elif object_c - self.baseline < LEAVE_C or t - self.since > PRESENT_MAX_S:
            self.present = False
            self._recent.clear()
            if t - self.since > PRESENT_MAX_S:
                self.baseline = object_c
            else:
                self.baseline = min(self.baseline, object_c)
            return None
        self._recent = [*self._recent[-(STEADY_READS - 1) :], object_c]
        if len(self._recent) < STEADY_READS:
            return None
        if max(self._recent) - min(self._recent) > STEADY_SPREAD_C:
            return None
        value = statistics.median(self._recent)
        if len(self._emitted) >= MAX_PER_PRESENTATION:
            return None
        if self._emitted and value < self._emitted[-1] + HIGHER_C:
            return None
        self._emitted.append(value)
        return value


class SensorReader(ReconnectingReader):
    """Opens the bus, reads the sensor every ``interval_s`` and hands good reads on."""

    def __init__(self, thermometer: Mlx90614Thermometer, bus_number: int, address: int):
        super().__init__(thermometer.name, thermometer.emit, f"MLX90614 0x{address:02X}")
        self.thermometer = thermometer
        self.bus_number = bus_number
        self.address = address
        self.sensor_emissivity = 1.0
        self.stats.update(
            {"reads": 0, "flagged": 0, "pec": 0, "out_of_range": 0, "stale": 0, "bus_errors": 0}
        )
        self._bus: Any = None
        self._next = 0.0
        self._bad = 0

    def open(self) -> None:
        """Open the I2C bus and read the sensor's emissivity setting."""
        bus = self.thermometer.injected_bus
        if bus is None:
            import smbus2

            try:
                bus = smbus2.SMBus(self.bus_number)
            except FileNotFoundError:
                raise FileNotFoundError(
                    f"no /dev/i2c-{self.bus_number} (enable I2C: raspi-config nonint do_i2c 0)"
                ) from None
        self._bus = bus
        self._bad = 0
        self._next = self.thermometer.clock()
        raw = self._word(REG_EMISSIVITY)
        if raw is None or raw == 0:
            raise OSError("MLX90614 does not answer with a valid emissivity")
        self.sensor_emissivity = raw / 0xFFFF

    def _word(self, register: int) -> int | None:
        block = self._bus.read_i2c_block_data(self.address, register, 3)
        word = word_from_block(self.address, register, block)
        if word is None:
            self.stats["pec"] += 1
        return word

    def read_once(self) -> None:
        """Wait for the next read's turn, read both temperatures and pass them on."""
        clock = self.thermometer.clock
        delay = self._next - clock()
        if delay > 0:
            time.sleep(min(delay, 0.1))
            return
        period = self.thermometer.interval_s
        self._next = max(self._next + period, clock())
        started = clock()
        try:
            ambient_raw = self._word(REG_AMBIENT)
            object_raw = self._word(REG_OBJECT)
        except OSError:
            self.stats["bus_errors"] += 1
            self._bad_read()
            return
        now = clock()
        self.stats["reads"] += 1
        if ambient_raw is None or object_raw is None:
            self._bad_read()
            return
        ambient_c, object_c = raw_to_celsius(ambient_raw), raw_to_celsius(object_raw)
        if ambient_c is None or object_c is None:
            self.stats["flagged"] += 1
            self._bad_read()
            return
        if not (
            OBJECT_RANGE_C[0] <= object_c <= OBJECT_RANGE_C[1]
            and AMBIENT_RANGE_C[0] <= ambient_c <= AMBIENT_RANGE_C[1]
        ):
            self.stats["out_of_range"] += 1
            self._bad_read()
            return
        if now - started > STALE_READ_S:
            # a bus that slow is failing too: ten of these in a row are a lost sensor
            self.stats["stale"] += 1
            self._bad_read()
            return
        self._bad = 0
        self.thermometer.on_read(object_c, ambient_c, self.sensor_emissivity, now)

    def _bad_read(self) -> None:
        self._bad += 1
        self.log_drops(self.stats, ("flagged", "pec", "out_of_range", "stale", "bus_errors"))
        if self._bad >= BAD_READS_LOST:
            raise OSError(f"{self._bad} bad reads in a row")

    def close(self) -> None:
        """Close the bus (an injected one is left open); never raises."""
        bus, self._bus = self._bus, None
        if bus is None or bus is self.thermometer.injected_bus:
            return
        try:
            bus.close()
        except Exception as exc:  # closing a failed bus may fail too
            log.debug("%s: close failed: %s", self.name, exc)


class Mlx90614Thermometer(ReaderDriver):
    """An MLX90614 on I2C: emits one ``temp`` reading (degrees Celsius) per person in front.

    Config: :class:`Mlx90614ThermometerConfig` (``[thermometer] driver = "mlx90614"``;
    ``emissivity`` is a software correction, see the module). ``smbus`` (a keyword
    argument, not in the config) is an SMBus-like object to use
    instead of opening ``/dev/i2c-N``: tests pass a fake one. ``clock`` (a keyword
    argument too) is the monotonic clock reads are timed and stamped with, in seconds.
    """

    config_model = Mlx90614ThermometerConfig
    config: Mlx90614ThermometerConfig

    def __init__(
        self,
        name: str,
        emit: Emit,
        config: BaseModel | Mapping[str, Any] | None = None,
        ctx: DriverContext | None = None,
        *,
        smbus: Any = None,
        clock: Callable[[], float] = time.monotonic,
    ):
        super().__init__(name, emit, config, ctx)
        self.injected_bus = smbus
        self.clock = clock
        self.interval_s = self.config.interval_s
        self.offset_c = self.config.offset_c
        self.emissivity = self.config.emissivity
        self.presentation = Presentation()
        self.reader = SensorReader(self, self.config.bus, self.config.address)
        self.last: tuple[float, float] | None = None

    @property
    def stats(self) -> dict[str, int]:
        """Counters for ``/metrics``."""
        return dict(self.reader.stats)

    def start(self) -> None:
        """Start reading; a sensor missing now is retried until it answers."""
        if self.injected_bus is None:
            import smbus2  # noqa: F401  (fail here, clearly, if smbus2 is missing)
        self.reader.start()

    def on_read(self, object_c: float, ambient_c: float, sensor_e: float, t: float) -> None:
        """Correct one good read and emit it if it completes a presentation."""
        value = correct_emissivity(object_c, ambient_c, sensor_e, self.emissivity)
        self.last = (value, ambient_c)
        steady = self.presentation.feed(value, t)
        if steady is not None:
            self.emit(Reading("temp", round(steady + self.offset_c, 2), self.name, t))
