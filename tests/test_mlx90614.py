"""The MLX90614: word decoding (PEC, error flag, range), emissivity correction, one
reading per person in front, and the driver on a fake SMBus (errors, loss, recovery)."""

from __future__ import annotations

import threading

import pytest

from drivers import driver_class
from drivers.mlx90614 import (
    BAD_READS_LOST,
    ERROR_FLAG,
    REG_AMBIENT,
    REG_EMISSIVITY,
    REG_OBJECT,
    Mlx90614Thermometer,
    Presentation,
    correct_emissivity,
    crc8,
    raw_to_celsius,
    word_from_block,
)
from tests.conftest import make_config
from tests.test_serialport import Readings, stopper, wait_until

__all__ = ["stopper"]  # fixture shared with test_serialport

ADDRESS = 0x5A


def raw_of(celsius: float) -> int:
    return round((celsius + 273.15) / 0.02)


def block(register: int, word: int, address: int = ADDRESS, good_pec: bool = True) -> list[int]:
    lsb, msb = word & 0xFF, word >> 8
    pec = crc8(bytes([address << 1, register, (address << 1) | 1, lsb, msb]))
    return [lsb, msb, pec if good_pec else pec ^ 0x5A]


class FakeSMBus:
    """An I2C bus with one MLX90614 on it, whose temperatures and faults the test sets."""

    def __init__(self, object_c: float = 22.0, ambient_c: float = 23.0, emissivity: float = 1.0):
        self.object_c = object_c
        self.ambient_c = ambient_c
        self.emissivity_raw = round(emissivity * 0xFFFF)
        self.mode = "ok"  # ok | gone | flagged | bad_pec | out_of_range
        self.reads = 0
        self.writes = 0
        self._lock = threading.Lock()

    def read_i2c_block_data(self, address: int, register: int, length: int) -> list[int]:
        with self._lock:
            self.reads += 1
            mode = self.mode
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
    driver = Mlx90614Thermometer("thermometer", readings, opts, smbus=bus)
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
