"""The reconnecting serial reader on pty pairs, and the line framer the serial drivers share.

A pty pair stands in for a serial device: the driver opens the slave through a
symlink (the stable name a udev rule gives), the test writes into the master; closing
the master is pulling the plug, a new pty behind the same symlink is plugging it back.
"""

from __future__ import annotations

import time
from typing import Any

import pytest

from drivers import driver_class
from drivers.common.base import DeviceHealth, Reading
from drivers.common.serialport import LineFramer, SerialReader
from drivers.rdm6300 import encode_frame
from tests.support.readings import Readings
from tests.support.rig import Rig
from tests.support.serial import REPLUG_S, PtyPort
from tests.support.waiting import wait_until

# ---- the line framer ---------------------------------------------------------------


def test_lines_end_with_cr_lf_or_both_and_empty_lines_are_skipped():
    f = LineFramer()
    assert f.feed(b"one\rtwo\nthree\r\nfour\n\r\n\r") == [b"one", b"two", b"three", b"four"]
    assert f.feed(b"fi") == []
    assert f.feed(b"ve") == []
    assert f.feed(b"\r") == [b"five"]
    assert f.feed(b"\n") == []
    assert f.stats["lines"] == 5


def test_a_line_over_the_limit_is_dropped_whole_with_its_tail():
    f = LineFramer(max_len=8)
    assert f.feed(b"12345678\n") == [b"12345678"]
    assert f.feed(b"1234") == []
    assert f.feed(b"56789") == []  # over: dropped from here on
    assert f.feed(b"abc") == []  # the tail is not a line of its own
    assert f.feed(b"\nok\n") == [b"ok"]
    assert f.stats["too_long"] == 1
    assert f.stats["lines"] == 2


def test_a_line_that_took_too_long_is_stale():
    now = [0.0]
    f = LineFramer(max_age_s=1.0, clock=lambda: now[0])
    assert f.feed(b"36.") == []
    now[0] = 5.0
    assert f.feed(b"6\n") == []
    assert f.stats["stale"] == 1
    assert f.feed(b"36.7") == []
    now[0] = 5.5
    assert f.feed(b"\n") == [b"36.7"]


def test_reset_forgets_the_partial_line():
    f = LineFramer()
    f.feed(b"half a li")
    f.reset()
    assert f.feed(b"ne\n") == [b"ne"]


# ---- the reader on a pty -----------------------------------------------------------


def make_reader(port: PtyPort, readings: Readings, framer: Any = None) -> SerialReader:
    return SerialReader(
        "dev",
        readings,
        str(port.link),
        9600,
        framer or LineFramer(),
        lambda item: readings(Reading("line", item, "dev")),
    )


def test_reads_lines_from_a_pty_and_reports_healthy(pty_port, stopper):
    readings = Readings()
    reader = make_reader(pty_port, readings)
    reader.start()
    stopper.append(reader)
    r = readings.wait_health(True)
    assert r.source == "dev" and isinstance(r.value, DeviceHealth)
    assert reader.health().ok
    pty_port.write(b"hello\r\nworld\r\n")
    assert readings.wait(lambda r: r.kind == "line").value == b"hello"
    assert readings.wait(lambda r: r.kind == "line").value == b"world"
    assert reader.stats["opens"] == 1 and reader.stats["bytes"] == 14


def test_a_missing_port_is_unhealthy_once_and_retried_until_it_appears(tmp_path, stopper):
    readings = Readings()
    link = tmp_path / "ttyLATER"
    reader = SerialReader("dev", readings, str(link), 9600, LineFramer(), readings)
    reader.start()
    stopper.append(reader)
    r = readings.wait_health(False)
    assert str(link) in r.value.detail
    wait_until(lambda: reader.stats["failures"] >= 4, "four failed opens")
    assert [x for x in readings.drain() if x.kind == "device"] == []  # one alarm, not four
    assert not reader.health().ok
    port = PtyPort(link)
    stopper.append(port)  # closed after the reader stops
    readings.wait_health(True)
    assert reader.health().ok


def test_stop_joins_promptly_and_is_safe_twice(pty_port):
    readings = Readings()
    reader = make_reader(pty_port, readings)
    reader.start()
    readings.wait_health(True)
    thread = reader._thread
    assert thread is not None
    reader.stop()
    assert not thread.is_alive()
    reader.stop()


def test_a_second_reader_of_the_same_port_is_refused(pty_port, stopper):
    """Two readers would each get half of every frame: the second one is refused."""
    first = make_reader(pty_port, Readings())
    first.start()
    stopper.append(first)
    wait_until(lambda: first.health().ok, "the first reader open")
    readings = Readings()
    second = make_reader(pty_port, readings)
    second.start()
    stopper.append(second)
    assert "in use by another process" in readings.wait_health(False).value.detail
    assert first.health().ok


class ExplodingFramer(LineFramer):
    """A framer with a bug: raises on a ``!`` (the reader must survive it)."""

    def feed(self, data: bytes) -> list[bytes]:
        if b"!" in data:
            raise RuntimeError("framer bug")
        return super().feed(data)


def test_a_framer_or_handler_error_is_counted_and_reading_goes_on(pty_port, stopper):
    readings = Readings()
    seen: list[bytes] = []

    def on_item(item: bytes) -> None:
        if item == b"boom":
            raise ValueError("handler bug")
        seen.append(item)
        readings(Reading("line", item, "dev"))

    reader = SerialReader("dev", readings, str(pty_port.link), 9600, ExplodingFramer(), on_item)
    reader.start()
    stopper.append(reader)
    readings.wait_health(True)
    pty_port.write(b"!\n")
    wait_until(lambda: reader.stats["errors"] == 1, "the framer error counted")
    pty_port.write(b"boom\n")
    wait_until(lambda: reader.stats["errors"] == 2, "the handler error counted")
    pty_port.write(b"fine\n")
    readings.wait(lambda r: r.kind == "line")
    assert seen == [b"fine"]
    assert reader.health().ok


# ---- unplug and plug back, for every serial driver ---------------------------------

# section -> bytes that make one reading, the reading's kind and value; then another
# input for after the re-plug (a card or code seen again at once would be a repeat)
GOOD_INPUT: dict[str, tuple[str, list[tuple[bytes, Any]]]] = {
    "rdm6300": (
        "card",
        [(encode_frame("0A1B2C3D4E"), "0A1B2C3D4E"), (encode_frame("1122334455"), "1122334455")],
    ),
    "qr": ("qr", [(b"eyJhbGciOiJFZERTQSJ9.e30.c2ln\r\n", "eyJhbGciOiJFZERTQSJ9.e30.c2ln"),
                  (b"second-code\r", "second-code")]),
    "thermometer": ("temp", [(b"T=36.6\r\n", 36.6), (b"T=36.6\r\n", 36.6)]),
}  # fmt: skip
SECTIONS = {"rdm6300": "card", "qr": "qr", "thermometer": "thermometer"}
DRIVER_NAMES = {"rdm6300": "rdm6300", "qr": "serial", "thermometer": "serial"}


@pytest.mark.parametrize("which", sorted(GOOD_INPUT))
def test_unplugged_and_plugged_back_under_the_same_name(which, pty_port, stopper):
    kind, [(data, value), (data_after, value_after)] = GOOD_INPUT[which]
    section = SECTIONS[which]
    readings = Readings()
    cls = driver_class(section, DRIVER_NAMES[which])
    driver = cls(section, readings, {"port": str(pty_port.link), "baud": 9600})
    driver.start()
    stopper.append(driver)
    readings.wait_health(True)
    pty_port.write(data)
    assert readings.wait(lambda r: r.kind == kind).value == value

    pty_port.unplug()
    gone = readings.wait_health(False)
    assert gone.source == section and str(pty_port.link) in gone.value.detail
    assert not driver.health().ok

    plugged = time.monotonic()
    pty_port.plug()
    readings.wait_health(True)
    back_s = time.monotonic() - plugged
    assert back_s < REPLUG_S, f"back {back_s:.2f} s after the re-plug; the contract is 2 s"
    assert driver.health().ok
    pty_port.write(data_after)
    assert readings.wait(lambda r: r.kind == kind).value == value_after
    assert driver.stats["reconnects"] == 1
    assert driver.stats["failures"] >= 1
    assert driver.stats["dropped"] == 0


def test_the_controller_records_the_loss_and_the_recovery(tmp_path, pty_port, stopper):
    """Health readings from a re-plugged port become ``device`` events and one alarm."""
    rig = Rig(tmp_path)
    try:
        readings = Readings()
        driver = driver_class("card", "rdm6300")("card", readings, {"port": str(pty_port.link)})
        driver.start()
        stopper.append(driver)
        rig.controller.handle(readings.wait_health(True))
        pty_port.unplug()
        rig.controller.handle(readings.wait_health(False))
        pty_port.plug()
        rig.controller.handle(readings.wait_health(True))
        kinds = [(e["kind"], e.get("device"), e.get("ok"), e.get("alarm")) for e in rig.stored()]
        assert ("device", "card", False, None) in kinds
        assert ("device", "card", True, None) in kinds
        assert [k for k in kinds if k[0] == "alarm"] == [("alarm", None, None, "device")]
    finally:
        rig.conn.close()


# ---- ports as pyserial URLs ------------------------------------------------------


@pytest.mark.parametrize(
    ("section", "driver", "config", "sent", "kind", "value"),
    [
        ("card", "rdm6300", {}, encode_frame("62E3086CED"), "card", "62E3086CED"),
        ("qr", "serial", {}, b"https://example.invalid/p\r\n", "qr", "https://example.invalid/p"),
        ("thermometer", "serial", {"offset_c": 0.5}, b"T 36.4\r\n", "temp", 36.9),
    ],
)
def test_a_serial_driver_reads_a_loop_url(section, driver, config, sent, kind, value, stopper):
    """``loop://`` is a port whose writes come back as reads: the device is the test."""
    cls = driver_class(section, driver)
    readings = Readings()
    device = cls(section, readings, cls.config_model.model_validate({"port": "loop://", **config}))
    stopper.append(device)
    device.start()
    readings.wait_health(True)
    device.reader._serial.write(sent)
    assert readings.wait(lambda r: r.kind == kind).value == value
    assert device.stats["opens"] == 1
