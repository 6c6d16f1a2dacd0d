"""HID keyboard readers: the pure decoder on synthetic key events, and the reader on a
FIFO that carries the kernel's ``struct input_event`` records (the device node's bytes);
the grabbed virtual keyboard runs only where evdev and /dev/uinput are there."""

from __future__ import annotations

import importlib.util
import os
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from drivers import driver_class
from drivers.hid import (
    ENTER,
    EV_KEY,
    EVENT,
    KEY_DOWN,
    KEY_REPEAT,
    KEY_UP,
    KEYS,
    HidCardReader,
    HidDecoder,
)
from tests.support.readings import Readings

HAVE_EVDEV = importlib.util.find_spec("evdev") is not None
HAVE_UINPUT = os.access("/dev/uinput", os.W_OK)

# Linux key codes (input-event-codes.h)
KEY_1, KEY_0, KEY_ENTER, KEY_KPENTER, KEY_LEFTSHIFT, KEY_A, KEY_Q = 2, 11, 28, 96, 42, 30, 16
DIGIT = {str((i + 1) % 10): code for i, code in enumerate(range(KEY_1, KEY_0 + 1))}


def typed(text: str, t0: float = 10.0, step: float = 0.005, enter: int = KEY_ENTER):
    """The key events a reader sends typing ``text`` then Enter: (code, value, t)."""
    codes = [DIGIT[c] for c in text] + [enter]
    events = []
    for i, code in enumerate(codes):
        events.append((code, KEY_DOWN, t0 + i * step))
        events.append((code, KEY_UP, t0 + i * step + step / 2))
    return events


def run(decoder: HidDecoder, events) -> list[str]:
    return [u for ev in events if (u := decoder.feed(*ev)) is not None]


def test_digits_then_enter_are_one_uid():
    d = HidDecoder()
    assert run(d, typed("0004567890")) == ["0004567890"]
    assert run(d, typed("123", t0=20, enter=KEY_KPENTER)) == ["123"]
    assert d.stats["uids"] == 2


def test_keypad_digits_hex_letters_and_shift():
    d = HidDecoder()
    events = [(82, 1, 0.0), (79, 1, 0.01), (KEY_LEFTSHIFT, 1, 0.02), (KEY_A, 1, 0.03)]
    events += [(KEY_LEFTSHIFT, 0, 0.035), (33, 1, 0.04), (KEY_ENTER, 1, 0.05)]
    assert run(d, events) == ["01AF"]


def test_releases_and_repeats_are_not_keys():
    d = HidDecoder()
    events = [(DIGIT["5"], KEY_DOWN, 0.0), (DIGIT["5"], KEY_REPEAT, 0.01)]
    events += [(DIGIT["5"], KEY_UP, 0.02), (KEY_ENTER, KEY_DOWN, 0.03)]
    assert run(d, events) == ["5"]


def test_an_unknown_key_drops_the_uid():
    d = HidDecoder()
    events = [(DIGIT["1"], 1, 0.0), (KEY_Q, 1, 0.01), (DIGIT["2"], 1, 0.02), (KEY_ENTER, 1, 0.03)]
    assert run(d, events) == []
    assert d.stats["bad_key"] == 1
    assert run(d, typed("42", t0=1.0)) == ["42"]


def test_enter_alone_is_ignored_and_too_long_is_dropped():
    d = HidDecoder(max_len=8)
    assert run(d, [(KEY_ENTER, 1, 0.0)]) == []
    assert d.stats["empty"] == 1
    assert run(d, typed("123456789", t0=1.0)) == []
    assert d.stats["too_long"] == 1
    assert run(d, typed("12345678", t0=2.0)) == ["12345678"]


def test_a_pause_between_keys_starts_over():
    d = HidDecoder(gap_s=0.5)
    events = [(DIGIT["9"], 1, 0.0), (DIGIT["9"], 1, 0.1)]  # a half read, then nothing
    assert run(d, events + typed("1234", t0=5.0)) == ["1234"]
    assert d.stats["partial"] == 1


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from([*KEYS, *ENTER, 1, 15, 42, 57, 113, 0, 255, 700]) | st.integers(),
            st.sampled_from([0, 1, 2]) | st.integers(),
            st.floats(0, 1000),
        ),
        max_size=120,
    )
)
def test_random_key_events_never_raise_and_give_only_typed_characters(events):
    d = HidDecoder()
    events.sort(key=lambda e: e[2])
    for uid in run(d, events):
        assert 0 < len(uid) <= 32 and set(uid) <= set(KEYS.values())


def test_registered_for_card_hid():
    assert driver_class("card", "hid") is HidCardReader


@pytest.mark.skipif(not HAVE_EVDEV, reason="evdev not installed")
def test_the_key_codes_are_evdevs():
    from evdev import ecodes

    for char in "0123456789":
        assert KEYS[ecodes.ecodes[f"KEY_{char}"]] == char
        assert KEYS[ecodes.ecodes[f"KEY_KP{char}"]] == char
    for char in "ABCDEF":
        assert KEYS[ecodes.ecodes[f"KEY_{char}"]] == char
    assert {ecodes.KEY_ENTER, ecodes.KEY_KPENTER} == ENTER


def test_a_missing_device_is_unhealthy_and_retried(tmp_path):
    readings = Readings()
    driver = HidCardReader("card", readings, {"device": str(tmp_path / "event-kbd")})
    driver.start()
    try:
        r = readings.wait_health(False)
        assert "No such file" in r.value.detail
        assert not driver.health().ok
    finally:
        driver.stop()


def input_events(text: str, enter: int = KEY_ENTER) -> bytes:
    """What the device node gives for a reader typing ``text``: key down/up and SYN reports."""
    out = b""
    for code in [DIGIT[c] for c in text] + [enter]:
        for value in (KEY_DOWN, KEY_UP):
            out += EVENT.pack(1_770_000_000, 0, EV_KEY, code, value)
            out += EVENT.pack(1_770_000_000, 0, 0, 0, 0)  # EV_SYN / SYN_REPORT
    return out


class FifoDevice:
    """A named pipe standing in for ``/dev/input/eventN``: written in input_event records."""

    def __init__(self, path):
        self.path = path
        self.fd = None

    def plug(self) -> None:
        os.mkfifo(self.path)
        self.fd = os.open(self.path, os.O_RDWR)  # a writer that never blocks on open

    def type(self, data: bytes) -> None:
        os.write(self.fd, data)

    def unplug(self) -> None:
        os.unlink(self.path)  # gone from its path first, as a device node is
        os.close(self.fd)


def test_the_reader_decodes_input_events_and_comes_back_after_an_unplug(tmp_path):
    device = FifoDevice(tmp_path / "event-kbd")
    device.plug()
    readings = Readings()
    driver = HidCardReader("card", readings, {"device": device.path, "grab": False})
    driver.start()
    try:
        readings.wait_health(True)
        events = input_events("0004567890")
        device.type(events[:37])  # a record split across two reads is joined
        device.type(events[37:])
        assert readings.wait(lambda r: r.kind == "card").value == "0004567890"
        device.type(EVENT.pack(0, 0, 4, 4, 458792))  # EV_MSC scan codes are not keys
        device.type(input_events("12") + input_events("0001112223", enter=KEY_KPENTER))
        cards = [readings.wait(lambda r: r.kind == "card").value for _ in range(2)]
        assert cards == ["12", "0001112223"]
        device.unplug()
        readings.wait_health(False)
        device.plug()
        readings.wait_health(True)
        device.type(input_events("0009998887"))
        assert readings.wait(lambda r: r.kind == "card").value == "0009998887"
        assert driver.stats["reconnects"] >= 1
    finally:
        driver.stop()
        device.unplug()


def test_a_device_that_cannot_be_grabbed_is_unhealthy(tmp_path):
    device = FifoDevice(tmp_path / "event-kbd")
    device.plug()
    readings = Readings()
    driver = HidCardReader("card", readings, {"device": device.path, "grab": True})
    driver.start()
    try:
        r = readings.wait_health(False)  # a pipe is no input device: EVIOCGRAB fails
        assert not driver.health().ok and r.value.detail
    finally:
        driver.stop()
        device.unplug()


@pytest.mark.skipif(
    not (HAVE_EVDEV and HAVE_UINPUT),
    reason="needs python-evdev and a writable /dev/uinput to make a virtual reader",
)
def test_a_virtual_reader_is_grabbed_read_unplugged_and_plugged_back(tmp_path):
    from evdev import UInput, ecodes

    keys = [*KEYS, *ENTER]
    link = tmp_path / "reader-event-kbd"

    def plug() -> UInput:
        ui = UInput({ecodes.EV_KEY: keys}, name="gated-test-reader")
        deadline = time.monotonic() + 10
        while ui.device is None or not os.path.exists(ui.device.path):
            assert time.monotonic() < deadline
            time.sleep(0.01)
        if os.path.lexists(link):
            link.unlink()
        link.symlink_to(ui.device.path)
        return ui

    def type_uid(ui: UInput, text: str) -> None:
        for code in [DIGIT[c] for c in text] + [KEY_ENTER]:
            ui.write(ecodes.EV_KEY, code, 1)
            ui.write(ecodes.EV_KEY, code, 0)
            ui.syn()

    readings = Readings()
    ui = plug()
    driver = HidCardReader("card", readings, {"device": str(link), "grab": True})
    driver.start()
    try:
        readings.wait_health(True)
        type_uid(ui, "0004567890")
        assert readings.wait(lambda r: r.kind == "card").value == "0004567890"
        ui.close()
        readings.wait_health(False)
        ui = plug()
        readings.wait_health(True)
        type_uid(ui, "0001112223")
        assert readings.wait(lambda r: r.kind == "card").value == "0001112223"
        assert driver.stats["reconnects"] == 1
    finally:
        driver.stop()
        ui.close()
