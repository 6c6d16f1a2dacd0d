"""Wiegand 26/34: the pure decoder on synthetic timestamps, the driver on MockFactory pins."""

from __future__ import annotations

import queue
import threading
import time
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from drivers import driver_class
from drivers.common.base import DeviceHealth, DriverContext, Reading
from drivers.wiegand import (
    WiegandCardReader,
    WiegandDecoder,
    WiegandFrame,
    decode_bits,
    encode_bits,
)
from tests.support.readings import next_reading

# Facility 8, card 12345 (0x083039) and 0x12345678, as a reader sends them;
# parity checked by hand: 3 ones in the first half (even bit 1), 4 in the second
# (odd bit 1); for W34 5 and 8 ones.
W26 = "10000100000110000001110011"
W34 = "1000100100011010001010110011110001"


def bits(text: str) -> list[int]:
    return [int(c) for c in text]


def feed_frame(dec: WiegandDecoder, frame: list[int], t0: float, step: float = 0.002) -> list[Any]:
    out = [dec.feed(b, t0 + i * step) for i, b in enumerate(frame)]
    return [f for f in out if f is not None]


# ---- the pure decoder --------------------------------------------------------------


def test_decodes_26_and_34_bits_to_uppercase_hex_without_parity():
    assert decode_bits(bits(W26)).uid == "083039"
    assert decode_bits(bits(W34)).uid == "12345678"
    assert decode_bits(bits(W34)).length == 34


def test_bad_parity_is_dropped_and_counted():
    for text in (W26, W34):
        for flip in (0, 5, len(text) - 3, len(text) - 1):
            b = bits(text)
            b[flip] ^= 1
            assert decode_bits(b).problem == "parity"
    dec = WiegandDecoder(0.025)
    b = bits(W26)
    b[-1] ^= 1
    feed_frame(dec, b, 0.0)
    frame = dec.flush(1.0)
    assert frame is not None and frame.uid is None and frame.problem == "parity"
    assert dec.counts == {"codes": 0, "length": 0, "parity": 1}


@pytest.mark.parametrize("length", [1, 4, 8, 25, 27, 32, 35, 37, 200])
def test_other_lengths_are_dropped_and_counted(length: int):
    dec = WiegandDecoder(0.025)
    feed_frame(dec, [1, 0] * (length // 2) + [1] * (length % 2), 0.0)
    frame = dec.flush(10.0)
    assert frame is not None and frame.problem == "length" and frame.length == length
    assert dec.counts["length"] == 1 and dec.counts["codes"] == 0


def test_silence_longer_than_the_gap_ends_a_frame():
    dec = WiegandDecoder(0.025)
    # A slow reader: 15 ms between pulses is within the standard's 20 ms.
    assert feed_frame(dec, bits(W26), 0.0, step=0.015) == []
    last = 25 * 0.015
    assert dec.deadline() == pytest.approx(last + 0.025)
    assert dec.flush(last + 0.020) is None  # not yet: 20 ms of silence
    frame = dec.flush(last + 0.030)
    assert frame is not None and frame.uid == "083039"
    assert dec.deadline() is None and dec.flush(100.0) is None


def test_the_next_frame_after_a_gap_returns_the_previous_one():
    dec = WiegandDecoder(0.025)
    assert feed_frame(dec, bits(W26), 0.0) == []
    # The second frame's first bit comes 30 ms after the first frame's last.
    done = feed_frame(dec, bits(W34), 25 * 0.002 + 0.030)
    assert [f.uid for f in done] == ["083039"]
    frame = dec.flush(5.0)
    assert frame is not None and frame.uid == "12345678"
    assert dec.counts == {"codes": 2, "length": 0, "parity": 0}


def test_a_glitch_then_a_frame_is_one_dropped_and_one_code():
    dec = WiegandDecoder(0.025)
    dec.feed(1, 0.0)  # power-on glitch on D1
    done = feed_frame(dec, bits(W26), 0.5)
    assert [(f.length, f.problem) for f in done] == [(1, "length")]
    frame = dec.flush(2.0)
    assert frame is not None and frame.uid == "083039"


def test_frames_too_close_together_run_into_one_and_are_dropped():
    dec = WiegandDecoder(0.025)
    feed_frame(dec, bits(W26) + bits(W26), 0.0)
    frame = dec.flush(1.0)
    assert frame is not None and frame.problem == "length" and frame.length == 52


@given(value=st.integers(min_value=0, max_value=2**24 - 1))
def test_every_26_bit_value_round_trips(value: int):
    assert decode_bits(encode_bits(value, 26)).uid == f"{value:06X}"


@given(value=st.integers(min_value=0, max_value=2**32 - 1), flip=st.integers(0, 33))
def test_every_single_bit_error_in_34_bits_is_caught(value: int, flip: int):
    frame = encode_bits(value, 34)
    assert decode_bits(frame).uid == f"{value:08X}"
    frame[flip] ^= 1
    assert decode_bits(frame).problem == "parity"


# ---- garbage ------------------------------------------------------------------------

GAP_S = 0.025
#: Times between events: anything, and the spacings that matter (a pulse period, just
#: under, at and just over the gap, a long silence).
gaps = st.one_of(
    st.floats(0.0, 0.1),
    st.sampled_from([0.0, 0.002, 0.0249999, GAP_S, 0.0250001, 1.0]),
)
#: One step of input: a bit at +dt, a flush at +dt, or a whole frame sent with real
#: spacing (sometimes with one bit flipped) so that codes are among the garbage.
steps = st.one_of(
    st.tuples(st.just("bit"), st.integers(-2, 3), gaps),
    st.tuples(st.just("flush"), st.just(0), gaps),
    st.tuples(
        st.just("frame"),
        st.tuples(
            st.sampled_from([26, 34]), st.integers(0, 2**32 - 1), st.none() | st.integers(0, 33)
        ),
        gaps,
    ),
)


def parity_ok(frame: list[int]) -> bool:
    """Wiegand parity: the first half of the frame even, the second half odd."""
    half = len(frame) // 2
    return sum(frame[:half]) % 2 == 0 and sum(frame[half:]) % 2 == 1


@settings(max_examples=400, deadline=None)
@given(st.lists(steps, max_size=80))
def test_garbage_never_raises_and_a_uid_only_comes_from_a_whole_good_frame(script):
    dec = WiegandDecoder(GAP_S)
    out: list[WiegandFrame] = []
    sent: list[list[int]] = []  # what a receiver sees: bits split where silence > the gap
    current: list[int] = []
    t, last = 0.0, 0.0

    def bit(b: int, at: float) -> None:
        nonlocal current, last
        if current and at - last > GAP_S:
            sent.append(current)
            current = []
        current.append(1 if b else 0)
        last = at
        if (frame := dec.feed(b, at)) is not None:
            out.append(frame)

    def flush(at: float) -> None:
        nonlocal current
        if current and at - last > GAP_S:
            sent.append(current)
            current = []
        if (frame := dec.flush(at)) is not None:
            out.append(frame)

    for kind, value, dt in script:
        t += dt
        if kind == "bit":
            bit(value, t)
        elif kind == "flush":
            flush(t)
        else:
            length, uid, flip = value
            frame = encode_bits(uid % 2 ** (length - 2), length)
            if flip is not None:
                frame[flip % length] ^= 1
            for i, b in enumerate(frame):
                bit(b, t + i * 0.002)
            t += (length - 1) * 0.002
    flush(t + 1.0)
    assert dec.deadline() is None and current == []

    assert [f.length for f in out] == [len(s) for s in sent]
    for frame, received in zip(out, sent, strict=True):
        good = len(received) in (26, 34) and parity_ok(received)
        if frame.uid is None:
            assert not good and frame.problem in ("length", "parity")
            continue
        assert good
        data = int("".join(map(str, received[1:-1])), 2)
        assert frame.uid == f"{data:0{(len(received) - 2) // 4}X}"
    assert dec.counts["codes"] == sum(f.uid is not None for f in out)
    assert dec.counts["length"] + dec.counts["parity"] == sum(f.uid is None for f in out)


# ---- the driver on MockFactory pins ------------------------------------------------

D0, D1 = 5, 6


class Rig:
    def __init__(self, gap_ms: float = 25):
        self.readings: queue.Queue[Reading] = queue.Queue()
        self.reader = WiegandCardReader(
            "card",
            self.readings.put,
            {"d0_pin": D0, "d1_pin": D1, "gap_ms": gap_ms},
            DriverContext(pin_factory="mock"),
        )

    def next(self, kind: str, timeout: float = 10.0) -> Reading:
        return next_reading(self.readings, kind, timeout)


def send(factory: Any, frame: list[int], pulse_s: float = 80e-6, period_s: float = 0.0015) -> None:
    """Drive D0/D1 like a reader: low pulses of ~80 us, 1.5 ms apart."""
    pins = (factory.pin(D0), factory.pin(D1))
    for b in frame:
        pin = pins[b]
        pin.drive_low()
        time.sleep(pulse_s)
        pin.drive_high()
        time.sleep(period_s)


def send_on_thread(factory: Any, *frames: list[int], silence_s: float = 0.3) -> threading.Thread:
    def run() -> None:
        for i, frame in enumerate(frames):
            if i:
                time.sleep(silence_s)
            send(factory, frame)

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t


def test_driver_is_registered():
    assert driver_class("card", "wiegand") is WiegandCardReader


def test_driver_reads_frames_sent_with_real_timing(factory: Any):
    # gap_ms is generous here so that a loaded test machine stalling the sending
    # thread cannot split a frame; the 25 ms rule itself is tested on the decoder.
    rig = Rig(gap_ms=150)
    rig.reader.start()
    try:
        sender = send_on_thread(factory, bits(W26), bits(W34), silence_s=0.5)
        assert rig.next("card").value == "083039"
        assert rig.next("card").value == "12345678"
        sender.join(timeout=10)
        assert rig.reader.decoder.counts == {"codes": 2, "length": 0, "parity": 0}
        assert rig.reader.health() == DeviceHealth(True, "")
    finally:
        rig.reader.stop()


def test_driver_with_the_default_gap_reads_a_frame(factory: Any):
    rig = Rig()
    rig.reader.start()
    try:
        # Retried only if the machine stalled the sender past the 25 ms gap (dropped,
        # counted): the point is that a frame at reader speed decodes.
        for _ in range(5):
            send(factory, bits(W26))
            try:
                assert rig.next("card", timeout=2).value == "083039"
                break
            except queue.Empty:
                continue
        else:
            pytest.fail("no card read in five frames")
    finally:
        rig.reader.stop()


def test_driver_drops_bad_frames_and_keeps_reading(factory: Any):
    rig = Rig(gap_ms=150)
    rig.reader.start()
    try:
        bad = bits(W26)
        bad[3] ^= 1
        send_on_thread(factory, bad, [1, 0, 1, 1], bits(W26), silence_s=0.5)
        assert rig.next("card").value == "083039"
        assert rig.reader.decoder.counts == {"codes": 1, "length": 1, "parity": 1}
    finally:
        rig.reader.stop()


def test_a_line_held_low_marks_the_reader_unhealthy_until_it_recovers(factory: Any):
    rig = Rig()
    rig.reader.start()
    try:
        factory.pin(D0).drive_low()
        health = rig.next("device").value
        assert not health.ok and "D0" in health.detail and "held low" in health.detail
        assert not rig.reader.health().ok
        factory.pin(D0).drive_high()
        assert rig.next("device").value == DeviceHealth(True, "")
        # The long low pulse was one bit: dropped as a frame of bad length.
        assert rig.reader.decoder.counts["length"] == 1
    finally:
        rig.reader.stop()


def test_a_pin_in_use_fails_start_with_an_os_error_and_releases_the_other(factory: Any):
    from gpiozero import DigitalInputDevice

    other = DigitalInputDevice(D1, pin_factory=factory)
    rig = Rig()
    try:
        with pytest.raises(OSError, match="D1 on GPIO 6"):
            rig.reader.start()
        # D0 was released again: another device can take it.
        DigitalInputDevice(D0, pin_factory=factory).close()
    finally:
        other.close()
        rig.reader.stop()


def test_stop_releases_the_pins_and_is_safe_twice(factory: Any):
    from gpiozero import DigitalInputDevice

    rig = Rig()
    rig.reader.start()
    rig.reader.stop()
    rig.reader.stop()
    DigitalInputDevice(D0, pin_factory=factory).close()
    DigitalInputDevice(D1, pin_factory=factory).close()
