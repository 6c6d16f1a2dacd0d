"""Serial thermometers: the line parser (regex, offset, flags, range, staleness, garbage)
and the driver on a pty."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from drivers import driver_class
from drivers.serial_thermometer import PLAUSIBLE_C, SerialThermometer, ThermometerFramer
from tests.support.readings import Readings
from tests.support.rig import Rig
from tests.support.serial import chunked
from tests.support.waiting import wait_until


def test_the_default_regex_takes_the_first_number():
    f = ThermometerFramer()
    assert f.feed(b"36.6\r\n") == [36.6]
    assert f.feed(b"T 37\n") == [37.0]
    assert f.feed(b"-5.25 C\r") == [-5.25]
    assert f.stats["readings"] == 3


def test_the_configured_regex_and_offset():
    f = ThermometerFramer(r"OBJ=(-?\d+\.\d+)", offset_c=0.4)
    assert f.feed(b"AMB=24.10 OBJ=36.30\r\n") == [36.7]
    assert f.feed(b"AMB=24.10\r\n") == []
    assert f.stats["no_match"] == 1


def test_a_group_that_is_no_number_is_no_reading():
    f = ThermometerFramer(r"T=(\S+)")
    assert f.feed(b"T=36,6\nT=.\nT=1e400\nT=36.6\n") == [36.6]
    assert f.stats["no_match"] == 2
    assert f.stats["implausible"] == 1  # 1e400 is inf


@pytest.mark.parametrize(
    "line",
    [b"ERR", b"T=ERR 00.0", b"Err:3 36.5", b"Lo", b"HI 43.0", b"OL", b"T=--.-", b"FAIL 36.5",
     b"sensor fault 36.5", b"NaN", b"invalid 36.6"],
)  # fmt: skip
def test_flagged_lines_are_never_readings(line):
    f = ThermometerFramer()
    assert f.feed(line + b"\r\n") == []
    assert f.stats["flagged"] == 1


@pytest.mark.parametrize("value", ["-20.1", "80.5", "-273.15", "1000", "655.35"])
def test_physically_implausible_values_are_sensor_faults(value):
    f = ThermometerFramer(offset_c=1.0)
    assert f.feed(f"{value}\n".encode()) == []
    assert f.stats["implausible"] == 1


def test_a_reading_that_straddles_a_pause_is_stale():
    now = [0.0]
    f = ThermometerFramer(clock=lambda: now[0])
    assert f.feed(b"36") == []
    now[0] = 3.0
    assert f.feed(b".6\r\n") == []
    assert f.stats["stale"] == 1
    assert f.feed(b"36.6\r\n") == [36.6]


def test_a_regex_without_one_group_is_refused():
    with pytest.raises(ValueError):
        ThermometerFramer(r"\d+")


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=2000), st.lists(st.integers(0, 2000), max_size=20), st.floats(-10, 10))
def test_garbage_never_raises_and_every_reading_is_plausible(data, cuts, offset):
    f = ThermometerFramer(offset_c=offset)
    out = []
    for chunk in chunked(data, cuts):
        out += f.feed(chunk)
    for value in out:
        assert math.isfinite(value)
        assert PLAUSIBLE_C[0] + offset - 0.01 <= value <= PLAUSIBLE_C[1] + offset + 0.01


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=80), st.sampled_from([r"(-?\d+(?:\.\d+)?)", r"T=(.*)", r"(\w+)"]))
def test_any_text_with_any_configured_regex_never_raises(text, regex):
    f = ThermometerFramer(regex)
    for value in f.feed(text.encode("utf-8", "replace") + b"\n"):
        assert math.isfinite(value) and PLAUSIBLE_C[0] <= value <= PLAUSIBLE_C[1]


def test_registered_for_thermometer_serial():
    assert driver_class("thermometer", "serial") is SerialThermometer


def test_the_driver_emits_good_readings_only(pty_port, stopper):
    readings = Readings()
    options = {"port": str(pty_port.link), "line_regex": r"T=(-?\d+\.\d)", "offset_c": 0.3}
    driver = SerialThermometer("thermometer", readings, options)
    driver.start()
    stopper.append(driver)
    readings.wait_health(True)
    pty_port.write(b"T=ERR\r\nT=99.9\r\nhello\r\nT=36.4\r\n")
    r = readings.wait(lambda r: r.kind == "temp")
    assert (r.value, r.source) == (36.7, "thermometer")
    wait_until(lambda: driver.stats["lines"] == 4, "four lines framed")
    assert (driver.stats["flagged"], driver.stats["implausible"], driver.stats["no_match"]) == (
        1,
        1,
        1,
    )


def test_a_fault_reading_is_never_the_persons_temperature(tmp_path, pty_port, stopper):
    """A sensor fault before a good reading: the session's temperature is the good one."""
    rig = Rig(tmp_path)
    try:
        readings = Readings()
        driver = SerialThermometer("thermometer", readings, {"port": str(pty_port.link)})
        driver.start()
        stopper.append(driver)
        readings.wait_health(True)
        pty_port.write(b"655.35\r\nErr 0.0\r\n36.5\r\n")
        temp = readings.wait(lambda r: r.kind == "temp")
        assert temp.value == 36.5
        rig.feed("temp", temp.value)
        rig.feed("card", "0A1B2C3D4E")
        (decision,) = rig.decisions()
        assert decision["decision"] == "granted"
        assert decision["readings_c"] == [36.5]
    finally:
        rig.conn.close()
