"""Serial QR scanners: the text framer (CR/LF, limits, UTF-8, garbage) and the driver on a pty."""

from __future__ import annotations

import contextlib

from hypothesis import given, settings
from hypothesis import strategies as st

from drivers import driver_class
from drivers.serial_qr import MAX_TEXT_BYTES, QrFramer, SerialQrScanner
from tests.support.readings import Readings
from tests.support.rig import Rig
from tests.support.serial import chunked
from tests.support.waiting import wait_until

TOKEN = "eyJhbGciOiJFZERTQSIsImtpZCI6ImsxIn0.eyJzdWIiOiJQMSJ9.c2lnbmF0dXJl"


def test_texts_end_with_cr_lf_or_both():
    f = QrFramer(debounce_s=0)
    assert f.feed(f"{TOKEN}\r".encode()) == [TOKEN]
    assert f.feed(f"{TOKEN}\n".encode()) == [TOKEN]
    assert f.feed(f"{TOKEN}\r\n".encode()) == [TOKEN]
    assert f.feed(b"https://example.invalid/x?y=1\r\n") == ["https://example.invalid/x?y=1"]
    assert f.stats["texts"] == 4


def test_a_held_code_counts_once_and_again_after_the_debounce():
    now = [50.0]
    f = QrFramer(debounce_s=2.0, clock=lambda: now[0])
    assert f.feed(TOKEN.encode() + b"\r\n") == [TOKEN]
    for _ in range(10):  # continuous mode: the same code every 0.5 s while held
        now[0] += 0.5
        assert f.feed(TOKEN.encode() + b"\r\n") == []
    assert f.feed(b"other\r\n") == ["other"]
    now[0] += 2.0
    assert f.feed(TOKEN.encode() + b"\r\n") == [TOKEN]
    assert f.stats["repeats"] == 10 and f.stats["texts"] == 3


def test_the_debounce_memory_stays_bounded():
    now = [0.0]
    f = QrFramer(clock=lambda: now[0])
    for i in range(1000):
        now[0] += 0.1
        assert f.feed(f"text {i}\n".encode()) == [f"text {i}"]
    assert len(f.debouncer._seen) <= 65


def test_empty_and_blank_lines_are_ignored():
    f = QrFramer()
    assert f.feed(b"\r\n\r\n   \r\n\t\n") == []
    assert f.stats["texts"] == 0


def test_utf8_text_is_kept_and_undecodable_text_dropped():
    f = QrFramer(debounce_s=0)
    assert f.feed("访客 V9001\r\n".encode()) == ["访客 V9001"]
    assert f.feed(b"\xff\xfe\xc3(\r\n" + "访客".encode("gbk") + b"\r\n") == []
    assert f.stats["undecodable"] == 2


def test_a_text_over_4096_bytes_is_dropped_whole():
    f = QrFramer(debounce_s=0)
    assert f.feed(b"A" * MAX_TEXT_BYTES + b"\r\n") == ["A" * MAX_TEXT_BYTES]
    assert f.feed(b"B" * (MAX_TEXT_BYTES + 1)) == []
    assert f.feed(b"tail\r\nnext\r\n") == ["next"]
    assert f.stats["too_long"] == 1


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=9000), st.lists(st.integers(0, 9000), max_size=30))
def test_garbage_never_raises_and_every_text_is_a_line_of_the_input(data, cuts):
    f = QrFramer(debounce_s=0)
    out = []
    for chunk in chunked(data, cuts):
        out += f.feed(chunk)
    # A line's text is what it decodes to without the whitespace around it (str.strip's, which
    # also counts \x1c-\x1f and Unicode spaces: bytes.strip's would not match b"\x00\x1c").
    lines = set()
    for ln in data.replace(b"\r", b"\n").split(b"\n"):
        with contextlib.suppress(UnicodeDecodeError):
            lines.add(ln.decode("utf-8").strip().encode("utf-8"))
    for text in out:
        raw = text.encode("utf-8")
        assert text and text == text.strip()
        assert b"\r" not in raw and b"\n" not in raw and len(raw) <= MAX_TEXT_BYTES
        assert raw in lines


def test_registered_for_qr_serial():
    assert driver_class("qr", "serial") is SerialQrScanner


def test_the_driver_reads_texts_at_115200(pty_port, stopper):
    readings = Readings()
    driver = SerialQrScanner("qr", readings, {"port": str(pty_port.link), "baud": 115200})
    driver.start()
    stopper.append(driver)
    readings.wait_health(True)
    pty_port.write(b"\r\n" + b"\xff\xfe\r\n" + TOKEN.encode() + b"\r\n")
    r = readings.wait(lambda r: r.kind == "qr")
    assert (r.value, r.source) == (TOKEN, "qr")
    wait_until(lambda: driver.stats["undecodable"] == 1, "the undecodable line counted")
    assert driver.stats["texts"] == 1


garbage_texts = st.one_of(
    st.binary(min_size=1, max_size=300),
    st.text(min_size=1, max_size=300).map(lambda t: t.encode("utf-8", "replace")),
    st.text("abcXYZ0189-_.", min_size=1, max_size=200).map(lambda t: ("eyJ" + t).encode()),
)


@settings(max_examples=40, deadline=None)
@given(garbage_texts)
def test_garbage_scanned_is_never_a_grant(tmp_path_factory, data):
    """Whatever text a garbage line decodes to, the controller refuses it as a pass."""
    rig = Rig(tmp_path_factory.mktemp("qr"))
    try:
        texts = QrFramer(debounce_s=0).feed(data + b"\r\n")
        for text in texts:
            rig.feed("temp", 36.5)
            rig.feed("qr", text)
            rig.wait(60)
        decisions = rig.decisions()
        assert len(decisions) == len(texts)
        assert all(d["decision"] == "denied" for d in decisions)
    finally:
        rig.conn.close()
