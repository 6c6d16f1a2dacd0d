"""RDM6300: the pure framer (checksum, resync, debounce, garbage) and the driver on a pty."""

from __future__ import annotations

import random

from hypothesis import given, settings
from hypothesis import strategies as st

from drivers import driver_class
from drivers.rdm6300 import ETX, STX, Rdm6300CardReader, Rdm6300Framer, encode_frame
from tests.support.readings import Readings
from tests.support.rig import Rig
from tests.support.serial import chunked
from tests.support.waiting import wait_until

# A real EM4100 frame as an RDM6300 sends it: version 0x62, tag 0xE3086CED;
# 0x62 ^ 0xE3 ^ 0x08 ^ 0x6C ^ 0xED = 0x08, worked out by hand.
REAL = b"\x02" + b"62E3086CED" + b"08" + b"\x03"


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def framer(debounce_s: float = 1.0) -> tuple[Rdm6300Framer, Clock]:
    clock = Clock()
    return Rdm6300Framer(debounce_s, clock), clock


def test_a_real_frame_decodes_to_its_ten_hex_digits():
    assert encode_frame("62E3086CED") == REAL
    f, _ = framer()
    assert f.feed(REAL) == ["62E3086CED"]
    assert f.stats["frames"] == 1 and f.stats["cards"] == 1


def test_lowercase_digits_are_reported_uppercase():
    f, _ = framer()
    assert f.feed(b"\x02" + b"62e3086ced" + b"08" + b"\x03") == ["62E3086CED"]


def test_a_frame_split_anywhere_still_decodes():
    for cut in range(1, len(REAL)):
        f, _ = framer()
        assert f.feed(REAL[:cut]) == []
        assert f.feed(REAL[cut:]) == ["62E3086CED"]


def test_bad_checksum_is_dropped_and_counted():
    f, _ = framer()
    bad = REAL[:11] + b"09" + REAL[13:]
    assert f.feed(bad) == []
    assert f.stats["bad_checksum"] == 1 and f.stats["frames"] == 0


def test_bad_framing_is_dropped_counted_and_the_next_frame_still_reads():
    f, _ = framer(debounce_s=0)
    other = encode_frame("1122334455")
    # no ETX, a non-hex digit, a truncated frame straight before a good one, noise
    assert f.feed(REAL[:-1] + b"X") == []
    assert f.feed(REAL[:5] + b"G" + REAL[6:]) == []
    assert f.feed(REAL[:7] + other) == ["1122334455"]
    assert f.feed(b"noise" + REAL + b"\xff\xfe") == ["62E3086CED"]
    assert f.stats["bad_framing"] == 5  # three bad frames, two runs of noise
    assert f.stats["frames"] == 2


def test_one_bad_frame_is_one_resync_counted_once():
    f, _ = framer(debounce_s=0)
    assert f.feed(REAL[:-1] + b"X") == []  # no ETX: the window and its tail are one drop
    assert f.stats["bad_framing"] == 1
    assert f.feed(b"more junk") == []  # still skipping to the next STX: the same resync
    assert f.feed(b"and more" + REAL) == ["62E3086CED"]
    assert f.stats["bad_framing"] == 1
    assert f.feed(REAL[:7] + REAL) == ["62E3086CED"]  # cut short by the next frame's STX
    assert f.stats["bad_framing"] == 2
    assert f.feed(b"\xff" + REAL) == ["62E3086CED"]  # noise after a good frame: a new drop
    assert f.stats["bad_framing"] == 3


def test_a_held_card_counts_once_and_again_after_the_debounce():
    f, clock = framer(debounce_s=1.0)
    assert f.feed(REAL) == ["62E3086CED"]
    for _ in range(40):  # two seconds held: a frame every 50 ms
        clock.now += 0.05
        assert f.feed(REAL) == []
    assert f.stats["repeats"] == 40
    clock.now += 1.0  # taken away for a second, presented again
    assert f.feed(REAL) == ["62E3086CED"]
    assert f.stats["cards"] == 2


def test_debounce_is_per_uid():
    f, clock = framer(debounce_s=1.0)
    other = encode_frame("1122334455")
    assert f.feed(REAL + other) == ["62E3086CED", "1122334455"]
    clock.now += 0.1
    assert f.feed(other + REAL) == []


def test_the_debounce_memory_stays_bounded():
    f, clock = framer(debounce_s=1.0)
    for i in range(2000):
        clock.now += 0.01
        assert f.feed(encode_frame(f"{i:010X}")) == [f"{i:010X}"]
    assert len(f.debouncer._seen) <= 257


# ---- garbage -----------------------------------------------------------------------

uids = st.integers(0, 2**40 - 1).map(lambda n: f"{n:010X}")
no_etx = st.binary(max_size=60).map(lambda b: b.replace(bytes([ETX]), b""))


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=400), st.lists(st.integers(0, 400), max_size=20))
def test_garbage_never_raises_and_only_whole_valid_frames_give_uids(data, cuts):
    f = Rdm6300Framer(0)
    out = []
    for chunk in chunked(data, cuts):
        out += f.feed(chunk)
    for uid in out:
        assert len(uid) == 10 and uid == uid.upper()
        assert encode_frame(uid)[1:13].upper() in data.upper()
    assert f.stats["cards"] == len(out)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300), st.lists(st.tuples(st.binary(max_size=30), uids), max_size=6),
       st.lists(st.integers(0, 600), max_size=30))  # fmt: skip
def test_how_the_bytes_are_split_into_reads_changes_nothing(noise, pairs, cuts):
    """Same uids and the same counters, bad_framing included, for any split of the bytes."""
    data = noise + b"".join(g + encode_frame(u) for g, u in pairs)
    whole, _ = framer(debounce_s=0)
    split, _ = framer(debounce_s=0)
    out_whole = whole.feed(data)
    out_split = [uid for chunk in chunked(data, cuts) for uid in split.feed(chunk)]
    assert out_split == out_whole
    assert split.stats == whole.stats


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(no_etx, uids), max_size=8), no_etx, st.lists(st.integers(0, 999)))
def test_every_frame_among_garbage_is_read_and_nothing_else(pairs, tail, cuts):
    """Garbage without ETX cannot end a frame: exactly the frames put in come out."""
    data = b"".join(g + encode_frame(u) for g, u in pairs) + tail
    f = Rdm6300Framer(0)
    out = []
    for chunk in chunked(data, cuts):
        out += f.feed(chunk)
    assert out == [u for _, u in pairs]


# ---- the driver on a pty -----------------------------------------------------------


def test_registered_for_card_rdm6300():
    assert driver_class("card", "rdm6300") is Rdm6300CardReader


def test_the_driver_reads_a_held_card_once_and_drops_noise(pty_port, stopper):
    readings = Readings()
    driver = Rdm6300CardReader("card", readings, {"port": str(pty_port.link), "debounce_s": 60})
    driver.start()
    stopper.append(driver)
    readings.wait_health(True)
    noise = bytes(random.Random(7).randrange(256) for _ in range(4096)).replace(b"\x03", b"")
    pty_port.write(noise + REAL * 20 + bytes([STX]) + b"0000")
    r = readings.wait(lambda r: r.kind == "card")
    assert (r.value, r.source) == ("62E3086CED", "card")
    wait_until(lambda: driver.stats["repeats"] == 19, "19 repeats of the held card")
    assert driver.stats["bad_framing"] >= 1
    assert driver.stats["dropped"] == driver.stats["bad_framing"] + driver.stats["bad_checksum"]
    assert [x for x in readings.drain() if x.kind == "card"] == []


def test_garbage_on_the_line_grants_nothing(tmp_path, pty_port, stopper):
    """Noise reaches the controller as nothing at all; the card after it is decided on."""
    rig = Rig(tmp_path)
    try:
        readings = Readings()
        driver = Rdm6300CardReader("card", readings, {"port": str(pty_port.link)})
        driver.start()
        stopper.append(driver)
        readings.wait_health(True)
        rig.feed("temp", 36.5)
        noise = bytes(random.Random(3).randrange(256) for _ in range(8192))
        pty_port.write(noise.replace(b"\x03", b"") + encode_frame("0A1B2C3D4E"))
        card = readings.wait(lambda r: r.kind == "card")
        assert card.value == "0A1B2C3D4E"
        assert [r for r in readings.seen if r.kind == "card"] == [card]
        rig.feed("card", card.value)
        assert [d["decision"] for d in rig.decisions()] == ["granted"]
    finally:
        rig.conn.close()
