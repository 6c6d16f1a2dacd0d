"""The MLX90614: word decoding (PEC, error flag, range), emissivity correction, one
reading per person in front, and the driver on a fake SMBus (errors, loss, recovery)."""

from __future__ import annotations

import itertools
import math
import statistics
import threading
import time
from collections.abc import Sequence
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from drivers import driver_class
from drivers.common.base import Reading
from drivers.mlx90614 import (
    BAD_READS_LOST,
    ERROR_FLAG,
    GAP_S,
    OBJECT_RANGE_C,
    REG_AMBIENT,
    REG_EMISSIVITY,
    REG_OBJECT,
    STALE_READ_S,
    STEADY_READS,
    STEADY_SPREAD_C,
    Mlx90614Thermometer,
    Presentation,
    correct_emissivity,
    crc8,
    raw_to_celsius,
    word_from_block,
)
from tests.support.readings import Readings
from tests.support.rig import make_config
from tests.support.waiting import wait_until

ADDRESS = 0x5A


def raw_of(celsius: float) -> int:
    return round((celsius + 273.15) / 0.02)


def block(register: int, word: int, address: int = ADDRESS, good_pec: bool = True) -> list[int]:
    lsb, msb = word & 0xFF, word >> 8
    pec = crc8(bytes([address << 1, register, (address << 1) | 1, lsb, msb]))
    return [lsb, msb, pec if good_pec else pec ^ 0x5A]


class SteppedClock:
    """A monotonic clock a slow fake bus moves on: ``time.monotonic()`` plus ``ahead`` s."""

    def __init__(self) -> None:
        self.ahead = 0.0

    def __call__(self) -> float:
        return time.monotonic() + self.ahead


class FakeSMBus:
    """An I2C bus with one MLX90614 on it, whose temperatures and faults the test sets.

    With a ``clock``, each register read takes ``read_s`` seconds of it (a slow bus).
    """

    def __init__(
        self,
        object_c: float = 22.0,
        ambient_c: float = 23.0,
        emissivity: float = 1.0,
        clock: SteppedClock | None = None,
    ):
        self.object_c = object_c
        self.ambient_c = ambient_c
        self.emissivity_raw = round(emissivity * 0xFFFF)
        self.mode = "ok"  # ok | gone | flagged | bad_pec | out_of_range
        self.reads = 0
        self.writes = 0
        self.clock = clock
        self.read_s = 0.0
        self._lock = threading.Lock()

    def read_i2c_block_data(self, address: int, register: int, length: int) -> list[int]:
        with self._lock:
            self.reads += 1
            mode = self.mode
            if self.clock is not None:
                self.clock.ahead += self.read_s
        if mode == "gone" or address != ADDRESS:
            raise OSError(121, "Remote I/O error")
        if register == REG_EMISSIVITY:
            word = self.emissivity_raw
        elif register == REG_AMBIENT:
            word = raw_of(self.ambient_c)
        elif register == REG_OBJECT:
            word = raw_of(-100.0 if mode == "out_of_range" else self.object_c)
        else:
            raise OSError(5, "Input/output error")
        if mode == "flagged" and register != REG_EMISSIVITY:
            word |= ERROR_FLAG
        return block(register, word, good_pec=mode != "bad_pec")[:length]

    def write_word_data(self, *args: object) -> None:
        self.writes += 1  # the driver must never write the EEPROM

    write_byte_data = write_i2c_block_data = write_word_data

    def close(self) -> None:
        pass


# ---- pure parts --------------------------------------------------------------------


def test_crc8_is_the_smbus_pec():
    assert crc8(b"") == 0
    assert crc8(b"\x00") == 0
    assert crc8(b"123456789") == 0xF4  # the CRC-8/SMBUS check value


def test_a_word_is_lsb_first_and_needs_its_pec():
    assert word_from_block(ADDRESS, REG_OBJECT, block(REG_OBJECT, 0x3AF7)) == 0x3AF7
    assert word_from_block(ADDRESS, REG_OBJECT, block(REG_OBJECT, 0x3AF7, good_pec=False)) is None
    assert word_from_block(ADDRESS, REG_AMBIENT, block(REG_OBJECT, 0x3AF7)) is None
    assert word_from_block(ADDRESS, REG_OBJECT, [0xF7]) is None


def test_raw_to_celsius_and_the_error_flag():
    assert raw_to_celsius(0x3AF7) == pytest.approx(0x3AF7 * 0.02 - 273.15)
    assert raw_to_celsius(raw_of(36.6)) == pytest.approx(36.6, abs=0.011)
    assert raw_to_celsius(0x0000) == pytest.approx(-273.15)
    assert raw_to_celsius(0x8000 | raw_of(36.6)) is None


def test_emissivity_correction():
    assert correct_emissivity(36.0, 22.0, 1.0, 1.0) == 36.0
    skin = correct_emissivity(35.5, 22.0, 1.0, 0.98)
    assert 35.7 < skin < 35.9  # a less emissive surface is warmer than it reads
    assert correct_emissivity(22.0, 22.0, 1.0, 0.5) == pytest.approx(22.0)
    # a sensor set to 0.98 read with 0.98 wanted: unchanged; set to 0.98, wanted 1.0: cooler
    assert correct_emissivity(36.0, 22.0, 0.98, 0.98) == 36.0
    assert correct_emissivity(36.0, 22.0, 0.98, 1.0) < 36.0


def feed_all(p: Presentation, values: list[float], t0: float = 0.0, dt: float = 0.2) -> list:
    return [v for i, x in enumerate(values) if (v := p.feed(x, t0 + i * dt)) is not None]


def test_one_reading_per_person_the_first_steady_one():
    p = Presentation()
    empty = [22.0, 22.1, 21.9, 22.0, 22.0]
    person = [28.0, 33.5, 36.4, 36.5, 36.5, 36.6, 36.5, 36.5, 36.4]
    assert feed_all(p, empty + person + empty + person) == [36.5, 36.5]


def test_a_person_coming_closer_is_read_again_higher_at_most_three_times():
    p = Presentation()
    values = [22.0] * 3 + [35.0] * 3 + [35.1] * 3 + [35.6] * 3 + [36.2] * 3 + [36.8] * 3
    assert feed_all(p, values) == [35.0, 35.6, 36.2]


def test_unsteady_reads_are_never_emitted():
    p = Presentation()
    assert feed_all(p, [22.0, 22.0, 30.0, 33.0, 36.0, 34.0, 36.5, 33.0, 22.0]) == []


def test_reads_across_a_gap_are_not_combined():
    p = Presentation()
    assert feed_all(p, [22.0, 36.5, 36.5]) == []
    assert p.feed(36.5, 5.0) is None  # 4.6 s after the last read: starts afresh
    assert p.feed(36.5, 5.2) is None
    assert p.feed(36.5, 5.4) == 36.5


def test_a_hot_day_still_sees_a_person():
    p = Presentation()
    assert feed_all(p, [35.0] * 20 + [36.4, 36.5, 36.5, 36.5]) == [36.5]


def test_a_scene_that_stays_warm_is_learnt_as_empty():
    p = Presentation()
    values = [22.0] * 3 + [30.0] * 200 + [36.5] * 4  # sun on the wall, then a person
    out = feed_all(p, values)
    assert out[0] == 30.0 and out[-1] == 36.5


# ---- the driver on a fake bus --------------------------------------------------------


def make_driver(
    bus: FakeSMBus, readings: Readings, stopper: list, **options
) -> Mlx90614Thermometer:
    opts = {"interval_s": 0.02, **options}
    driver = Mlx90614Thermometer(
        "thermometer", readings, opts, smbus=bus, clock=bus.clock or time.monotonic
    )
    stopper.append(driver)
    return driver


def test_a_person_in_front_is_one_reading_with_the_offset(stopper):
    bus, readings = FakeSMBus(), Readings()
    driver = make_driver(bus, readings, stopper, offset_c=0.4)
    driver.start()
    readings.wait_health(True)
    wait_until(lambda: driver.stats["reads"] >= 5, "reads of the empty scene")
    bus.object_c = 36.2
    assert readings.wait(lambda r: r.kind == "temp").value == pytest.approx(36.6, abs=0.02)
    reads = driver.stats["reads"]
    wait_until(lambda: driver.stats["reads"] >= reads + 10, "more reads")
    assert [r for r in readings.drain() if r.kind == "temp"] == []
    assert bus.writes == 0


def test_the_config_emissivity_corrects_in_software(stopper):
    bus, readings = FakeSMBus(ambient_c=22.0), Readings()
    make_driver(bus, readings, stopper, emissivity=0.98).start()
    readings.wait_health(True)
    bus.object_c = 35.5
    value = readings.wait(lambda r: r.kind == "temp").value
    assert value == pytest.approx(correct_emissivity(35.5, 22.0, 1.0, 0.98), abs=0.02)
    assert bus.writes == 0


@pytest.mark.parametrize("mode", ["flagged", "bad_pec", "out_of_range"])
def test_bad_reads_are_dropped_counted_and_a_run_of_them_is_a_fault(stopper, mode):
    bus, readings = FakeSMBus(), Readings()
    driver = make_driver(bus, readings, stopper)
    driver.start()
    readings.wait_health(True)
    bus.mode = mode
    bus.object_c = 36.5
    lost = readings.wait_health(False)
    assert "bad reads" in lost.value.detail
    counter = {"flagged": "flagged", "bad_pec": "pec", "out_of_range": "out_of_range"}[mode]
    assert driver.stats[counter] >= BAD_READS_LOST
    assert [r for r in readings.seen if r.kind == "temp"] == []
    bus.mode = "ok"
    readings.wait_health(True)
    assert readings.wait(lambda r: r.kind == "temp").value == pytest.approx(36.5, abs=0.02)


def test_stale_reads_are_bad_reads_and_a_run_of_them_is_a_fault(stopper):
    clock = SteppedClock()
    bus, readings = FakeSMBus(clock=clock), Readings()
    driver = make_driver(bus, readings, stopper)
    driver.start()
    readings.wait_health(True)
    wait_until(lambda: driver.stats["reads"] >= 3, "reads of the empty scene")
    # each register read now takes 0.2 s: one is within STALE_READ_S, the pair is not
    bus.read_s = 0.2
    assert bus.read_s < STALE_READ_S < 2 * bus.read_s
    bus.object_c = 36.5
    lost = readings.wait_health(False)
    assert "bad reads" in lost.value.detail
    assert driver.stats["stale"] >= BAD_READS_LOST
    assert [r for r in readings.seen if r.kind == "temp"] == []
    bus.read_s = 0.0
    readings.wait_health(True)
    assert readings.wait(lambda r: r.kind == "temp").value == pytest.approx(36.5, abs=0.02)


def test_a_sensor_that_stops_answering_is_unhealthy_then_recovers(stopper):
    bus, readings = FakeSMBus(), Readings()
    driver = make_driver(bus, readings, stopper)
    driver.start()
    readings.wait_health(True)
    bus.mode = "gone"
    readings.wait_health(False)
    assert not driver.health().ok
    bus.mode = "ok"
    readings.wait_health(True)
    assert driver.stats["reconnects"] >= 1 and driver.stats["bus_errors"] >= 1


def test_no_sensor_at_the_address_is_unhealthy(stopper):
    readings = Readings()
    make_driver(FakeSMBus(), readings, stopper, address=0x5B).start()
    assert "MLX90614 0x5B" in readings.wait_health(False).value.detail


def test_the_registered_driver_takes_the_config_options(tmp_path, stopper):
    config = make_config(tmp_path, thermometer={"driver": "mlx90614", "interval_s": 0.02})
    options = config.thermometer.model_dump(exclude={"driver"})
    assert options["address"] == 0x5A and options["bus"] == 1
    bus, readings = FakeSMBus(), Readings()
    driver = driver_class("thermometer", "mlx90614")("thermometer", readings, options, smbus=bus)
    stopper.append(driver)
    driver.start()
    readings.wait_health(True)
    bus.object_c = 37.9
    assert readings.wait(lambda r: r.kind == "temp").value == pytest.approx(37.9, abs=0.02)


def test_without_smbus_hardware_the_real_bus_fails_cleanly(stopper):
    pytest.importorskip("smbus2")
    readings = Readings()
    driver = Mlx90614Thermometer("thermometer", readings, {"bus": 97, "interval_s": 0.05})
    stopper.append(driver)
    driver.start()
    assert "MLX90614" in readings.wait_health(False).value.detail


# ---- garbage -----------------------------------------------------------------------

blocks = st.one_of(st.binary(max_size=5), st.lists(st.integers(0, 255), max_size=5))


def pec_ok(address: int, register: int, block: Sequence[int]) -> bool:
    header = [address << 1, register, (address << 1) | 1]
    return len(block) >= 3 and crc8(bytes([*header, block[0], block[1]])) == block[2]


@given(
    address=st.integers(0, 0x7F),
    register=st.integers(0, 0xFF),
    data=st.one_of(blocks, st.integers(0, 0xFFFF).map(lambda w: block(REG_OBJECT, w))),
)
def test_any_block_gives_a_word_only_with_its_pec(address, register, data):
    word = word_from_block(address, register, data)
    if pec_ok(address, register, data):
        assert word == data[0] | (data[1] << 8)
    else:
        assert word is None


@given(raw=st.integers(0, 0xFFFF))
def test_any_word_is_a_temperature_or_flagged(raw):
    celsius = raw_to_celsius(raw)
    if raw & ERROR_FLAG:
        assert celsius is None
    else:
        assert celsius is not None and math.isfinite(celsius)
        assert -273.15 <= celsius <= 0x7FFF * 0.02 - 273.15 + 1e-9


any_floats = st.floats(allow_nan=True, allow_infinity=True)
reads = st.lists(
    st.tuples(st.one_of(any_floats, st.floats(-80.0, 400.0)), st.floats(0.0, 2 * GAP_S)),
    max_size=150,
)


@settings(max_examples=300)
@given(reads)
def test_any_stream_of_reads_emits_only_steady_finite_values(steps):
    p = Presentation()
    t = 0.0
    good: list[tuple[float, float]] = []  # the finite reads so far, with their times
    for value, dt in steps:
        t += dt
        out = p.feed(value, t)
        if math.isfinite(value):
            good.append((value, t))
        if out is None:
            continue
        assert math.isfinite(out)
        last = good[-STEADY_READS:]
        assert len(last) == STEADY_READS
        values = [v for v, _ in last]
        assert max(values) - min(values) <= STEADY_SPREAD_C
        assert all(b - a <= GAP_S for (_, a), (_, b) in itertools.pairwise(last))
        assert out == statistics.median(values)


@st.composite
def jumpy(draw: Any) -> list[float]:
    """A sensor that never holds still: every read 0.31 C or more from the one before."""
    values = [draw(st.floats(-70.0, 380.0))]
    for delta in draw(st.lists(st.floats(0.31, 60.0), max_size=150)):
        step = delta if draw(st.booleans()) else -delta
        values.append(values[-1] + step)
    return values


@given(jumpy())
def test_a_reading_that_never_holds_still_is_never_a_person(values):
    p = Presentation()
    assert [p.feed(v, i * 0.2) for i, v in enumerate(values)] == [None] * len(values)


class ScriptedBus:
    """A bus that answers each read with the next of ``script``: bytes as they are,
    ``None`` a bus error, an int a word with the right PEC for the register read."""

    def __init__(self, script: list[Any]):
        self.script = script
        self.next = 0

    @property
    def left(self) -> bool:
        return self.next < len(self.script)

    def read_i2c_block_data(self, address: int, register: int, length: int) -> list[int]:
        if not self.left:
            raise OSError(121, "Remote I/O error")
        item = self.script[self.next]
        self.next += 1
        if item is None:
            raise OSError(5, "Input/output error")
        if isinstance(item, int):
            return block(register, item, address)
        return list(item)

    def close(self) -> None:
        pass


def run_on(script: list[Any]) -> list[Reading]:
    """Drive the sensor reader over ``script`` as its thread would, on a still clock.

    Only OSError (the sensor lost, or not answering) may leave ``open`` or ``read_once``:
    anything else fails the test.
    """
    emitted: list[Reading] = []
    bus = ScriptedBus(script)
    driver = Mlx90614Thermometer(
        "thermometer", emitted.append, {"interval_s": 0.0}, smbus=bus, clock=lambda: 100.0
    )
    reader = driver.reader
    while bus.left:
        try:
            reader.open()
        except OSError:
            continue
        try:
            while bus.left:
                reader.read_once()
        except OSError:
            pass
    assert all(r.kind == "temp" for r in emitted)
    return emitted


@settings(max_examples=200, deadline=None)
@given(st.lists(st.one_of(blocks, st.none()), max_size=120))
def test_a_bus_answering_garbage_raises_nothing_else_and_gives_no_temperature(script):
    assert run_on(script) == []


@settings(max_examples=200, deadline=None)
@given(st.lists(st.one_of(blocks, st.none(), st.integers(0, 0xFFFF)), max_size=120))
def test_any_word_the_sensor_sends_gives_only_temperatures_it_can_measure(script):
    for reading in run_on(script):
        assert math.isfinite(reading.value)
        assert OBJECT_RANGE_C[0] <= reading.value <= OBJECT_RANGE_C[1]
