"""OSDP: the card-read decoder, the key file, the config, and the driver as the Control
Panel of a real libosdp Peripheral Device on a pty pair.

The reader is libosdp's own ``PeripheralDevice`` at the master end of a pty: the wire.
The driver opens the slave through a symlink, as it would a udev name; closing the
master is pulling the adapter out, a new pty behind the same name is plugging it back.
"""

from __future__ import annotations

import contextlib
import os
import random
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from drivers import driver_class
from drivers.osdp import (
    EVENT_CARDREAD,
    EVENT_STATUS,
    FORMAT_ASCII,
    FORMAT_RAW,
    FORMAT_WIEGAND,
    STATUS_REPORT_LOCAL,
    CardData,
    LocalStatus,
    OsdpCardReader,
    decode_card,
    decode_local_status,
    read_scbk,
)
from drivers.wiegand import decode_bits, encode_bits
from gated.config.drivers import OsdpCardConfig
from gated.errors import ConfigError
from tests.support.readings import Readings
from tests.support.rig import make_config
from tests.support.serial import REPLUG_S, PtyPort
from tests.support.waiting import wait_until

REPO = Path(__file__).resolve().parent.parent
KEY = bytes.fromhex("0123456789abcdef0123456789abcdef")
#: A 26-bit card: facility code 123 (0x7B), number 6789 (0x1A85), the wiegand driver's uid.
CARD_26 = encode_bits(0x7B1A85, 26)


def packed(bits: list[int]) -> bytes:
    """Bits as OSDP carries them: first bit in the top of the first byte, zero padded."""
    nbytes = (len(bits) + 7) // 8
    value = int("".join(map(str, bits)), 2) << (8 * nbytes - len(bits))
    return value.to_bytes(nbytes, "big")


# ---- the decoder -------------------------------------------------------------------


def test_a_26_bit_wiegand_read_gives_the_wiegand_drivers_uid():
    assert decode_card(FORMAT_WIEGAND, 26, packed(CARD_26)) == CardData(uid="7B1A85")
    assert decode_bits(CARD_26).uid == "7B1A85"


def test_a_34_bit_wiegand_read_gives_eight_digits():
    assert decode_card(FORMAT_WIEGAND, 34, packed(encode_bits(0x12345678, 34))).uid == "12345678"


def test_a_wiegand_read_with_bad_parity_is_dropped():
    for flip in (0, 25):  # the even and the odd parity bit
        bits = list(CARD_26)
        bits[flip] ^= 1
        assert decode_card(FORMAT_WIEGAND, 26, packed(bits)) == CardData(problem="parity")


def test_other_raw_reads_are_every_bit_in_hex():
    # the same 26-bit card reported as "unspecified": parity bits included, 7 digits
    assert decode_card(FORMAT_RAW, 26, packed(CARD_26)).uid == "2F6350A"
    # a 37-bit Wiegand format gated knows no parity layout for: all 37 bits
    bits = [1] + [0] * 35 + [1]
    assert decode_card(FORMAT_WIEGAND, 37, packed(bits)).uid == f"{(1 << 36) | 1:010X}"
    # padding after the last bit is not part of the card
    assert decode_card(FORMAT_RAW, 4, b"\xaf").uid == "A"


def test_ascii_reads_are_the_text_in_uppercase():
    assert decode_card(FORMAT_ASCII, None, b" 0012345678\r\n").uid == "0012345678"
    assert decode_card(FORMAT_ASCII, 0, b"ab12").uid == "AB12"
    for bad in (b"", b"   ", b"\x01\x02", b"\xff\xfe", b"x" * 65):
        assert decode_card(FORMAT_ASCII, 0, bad) == CardData(problem="bad_data"), bad


def test_malformed_reads_are_dropped_with_a_reason():
    assert decode_card(FORMAT_RAW, 0, b"\x00").problem == "bad_data"
    assert decode_card(FORMAT_RAW, 9, b"\x00").problem == "bad_data"  # more bits than bytes
    assert decode_card(FORMAT_RAW, "26", b"\x00" * 4).problem == "bad_data"
    assert decode_card(FORMAT_RAW, True, b"\x00").problem == "bad_data"
    assert decode_card(FORMAT_RAW, 8, "ff").problem == "bad_data"
    assert decode_card(7, 8, b"\x00").problem == "format"
    assert decode_card(None, 8, b"\x00").problem == "format"


def test_the_numbers_match_libosdp():
    osdp = pytest.importorskip("osdp")
    theirs = (osdp.CardFormat.Unspecified, osdp.CardFormat.Wiegand, osdp.CardFormat.ASCII)
    assert theirs == (FORMAT_RAW, FORMAT_WIEGAND, FORMAT_ASCII)
    assert osdp.Event.CardRead == EVENT_CARDREAD


def test_the_status_numbers_match_libosdp():
    osdp = pytest.importorskip("osdp")
    assert (osdp.Event.Status, osdp.StatusReportType.Local) == (EVENT_STATUS, STATUS_REPORT_LOCAL)


def test_a_local_status_report_gives_tamper_and_power():
    local = STATUS_REPORT_LOCAL
    assert decode_local_status(local, b"\x01\x00") == LocalStatus(tamper=True, power_failure=False)
    assert decode_local_status(local, b"\x00\x01") == LocalStatus(tamper=False, power_failure=True)
    assert decode_local_status(local, b"\x00\x00") == LocalStatus(False, False)
    assert decode_local_status(local, bytearray(b"\x02")) == LocalStatus(True, False)
    for report_type in (0, 1, 3, None, True, "2"):  # inputs, outputs, remote readers...
        assert decode_local_status(report_type, b"\x01\x00") is None
    for bad in (b"", None, "1", [1, 0]):
        assert decode_local_status(local, bad) is None


@settings(max_examples=500, deadline=None)
@given(
    st.one_of(st.integers(-3, 6), st.none(), st.booleans(), st.text(max_size=3)),
    st.one_of(st.integers(-10, 600), st.none(), st.booleans(), st.floats()),
    st.one_of(st.binary(max_size=70), st.text(max_size=5), st.none()),
)
def test_garbage_never_raises_and_a_uid_needs_a_whole_read(fmt, length, data):
    card = decode_card(fmt, length, data)
    assert (card.uid is None) != (card.problem is None)
    if card.uid is None:
        return
    assert card.uid == card.uid.upper() and card.uid.isprintable()
    if fmt == FORMAT_ASCII:
        return
    assert isinstance(length, int) and 0 < length <= 8 * len(data)
    if fmt == FORMAT_WIEGAND and length in (26, 34):
        value = int.from_bytes(data, "big") >> (8 * len(data) - length)
        bits = [(value >> (length - 1 - i)) & 1 for i in range(length)]
        assert decode_bits(bits).uid == card.uid  # parity held
    else:
        assert len(card.uid) == (length + 3) // 4 and int(card.uid, 16) < 2**length


# ---- the key file ------------------------------------------------------------------


def test_the_key_file_is_32_hex_digits(tmp_path: Path):
    path = tmp_path / "osdp.scbk"
    path.write_text("0123 4567 89AB CDEF\n0123456789abcdef\n")
    assert read_scbk(path) == KEY
    for bad in ("0123", "zz" * 16, KEY.hex() + "00", ""):
        path.write_text(bad)
        with pytest.raises(ValueError, match="32 hex digits") as info:
            read_scbk(path)
        assert bad not in str(info.value) or not bad  # a secret is never echoed


# ---- the config --------------------------------------------------------------------


def test_the_config_takes_the_defaults(tmp_path: Path):
    config = make_config(tmp_path, card={"driver": "osdp", "port": "/dev/ttyUSB0"})
    card = config.card
    assert isinstance(card, OsdpCardConfig)
    assert (card.port, card.baud, card.address) == ("/dev/ttyUSB0", 9600, 0)
    assert (card.scbk_file, card.install_mode) == (None, False)


def test_the_key_file_is_resolved_and_must_exist(tmp_path: Path):
    (tmp_path / "osdp.scbk").write_text(KEY.hex())
    card = {"driver": "osdp", "port": "/dev/ttyUSB0", "scbk_file": "osdp.scbk", "address": 126}
    config = make_config(tmp_path, card=card)
    assert isinstance(config.card, OsdpCardConfig)
    assert config.card.scbk_file == tmp_path / "osdp.scbk"
    with pytest.raises(ConfigError) as info:
        make_config(tmp_path, card={**card, "scbk_file": "missing.scbk"})
    assert any("card.scbk_file" in p and "no such file" in p for p in info.value.problems)


def test_install_mode_needs_the_key_to_give_and_bad_values_name_their_key(tmp_path: Path):
    for card, key in (
        ({"install_mode": True}, "card.scbk_file"),
        ({"address": 127}, "card.address"),
        ({"baud": 0}, "card.baud"),
        ({"scbk": KEY.hex()}, "card.scbk"),  # a secret inline is an unknown key
    ):
        with pytest.raises(ConfigError) as info:
            make_config(tmp_path, card={"driver": "osdp", "port": "/dev/ttyUSB0", **card})
        assert any(key in p for p in info.value.problems), (card, info.value.problems)


# ---- the driver without a reader -------------------------------------------------


def test_registered_for_card_osdp():
    assert driver_class("card", "osdp") is OsdpCardReader


def test_the_module_imports_without_libosdp_and_start_says_what_to_install():
    code = (
        "import sys; sys.modules['osdp'] = None\n"
        "import drivers.osdp as m\n"
        "d = m.OsdpCardReader('card', print, {'port': '/dev/null'})\n"
        "try:\n"
        "    d.start()\n"
        "except ImportError as exc:\n"
        "    print('ImportError:', exc)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    assert "ImportError: card: the osdp driver needs libosdp" in out.stdout
    assert "gated[osdp]" in out.stdout


def test_start_refuses_a_bad_key_and_install_mode_without_one(tmp_path: Path):
    pytest.importorskip("osdp")
    bad = tmp_path / "bad.scbk"
    bad.write_text("not a key")
    for options, match in (
        ({"scbk_file": str(bad)}, "32 hex digits"),
        ({"install_mode": True}, "install_mode needs scbk_file"),
        ({"port": ""}, "no serial port"),
    ):
        driver = OsdpCardReader("card", Readings(), {"port": "/dev/null", **options})
        with pytest.raises(ValueError, match=match):
            driver.start()
        driver.stop()


# ---- a real reader on a pty ------------------------------------------------------


class Reader:
    """libosdp's PeripheralDevice on the master end of a pty: the reader on the wire.

    The object is the PD's channel too. ``mute`` makes it deaf and dumb (powered off,
    or its A/B pair cut); ``unplug`` and ``plug`` are the adapter pulled out and back.
    """

    def __init__(self, port: PtyPort, address: int = 0, scbk: bytes | None = None):
        import osdp

        self.osdp = osdp
        self.port = port
        self.mute = False
        self._lock = threading.Lock()
        os.set_blocking(self._fd(), False)
        caps = osdp.PDCapabilities([(osdp.Capability.CardDataFormat, 1, 1)])
        info = osdp.PDInfo(address, self, scbk=scbk, flags=[])
        self.pd = osdp.PeripheralDevice(info, caps, log_level=osdp.LogLevel.Emergency)
        self.pd.start()

    def _fd(self) -> int:
        assert self.port.master is not None
        return self.port.master

    # the channel
    def read(self, max_bytes: int) -> bytes:
        with self._lock:
            if self.port.master is None:
                return b""
            try:
                data = os.read(self.port.master, max_bytes)
            except OSError:  # nothing waiting (EAGAIN), or nobody at the other end (EIO)
                return b""
        return b"" if self.mute else data

    def write(self, buf: bytes) -> int:
        with self._lock:
            if self.mute or self.port.master is None:
                return len(buf)  # into the void
            try:
                return os.write(self.port.master, buf)
            except OSError:
                return 0

    def flush(self) -> None:
        pass

    # what the test does to it
    def card(self, bits: list[int], fmt: int | None = None) -> None:
        fmt = self.osdp.CardFormat.Wiegand if fmt is None else fmt
        event = {
            "event": self.osdp.Event.CardRead,
            "reader_no": 0,
            "direction": 0,
            "format": fmt,
            "length": len(bits),
            "data": packed(bits),
        }
        self.pd.submit_event(event)

    def status(self, tamper: bool, power_failure: bool = False) -> None:
        """Report the reader's own status (OSDP osdp_LSTATR): its tamper switch, its power."""
        event = {
            "event": self.osdp.Event.Status,
            "type": self.osdp.StatusReportType.Local,
            "report": bytes([int(tamper), int(power_failure)]),
        }
        assert self.pd.submit_event(event)

    def garbage(self, data: bytes) -> None:
        with self._lock:
            assert self.port.master is not None
            with contextlib.suppress(BlockingIOError):  # a full line loses the rest
                os.write(self.port.master, data)

    def unplug(self) -> None:
        with self._lock:
            self.port.unplug()

    def plug(self) -> None:
        with self._lock:
            self.port.plug()
            os.set_blocking(self._fd(), False)

    def stop(self) -> None:
        self.pd.teardown()
        self.port.close()


@pytest.fixture
def wire(tmp_path: Path) -> Iterator[Any]:
    """Makes a reader on a fresh pty: ``wire(address=..., scbk=...)``; stopped at the end."""
    pytest.importorskip("osdp")
    made: list[Reader] = []

    def make(address: int = 0, scbk: bytes | None = None) -> Reader:
        reader = Reader(PtyPort(tmp_path / f"ttyOSDP{len(made)}"), address, scbk)
        made.append(reader)
        return reader

    yield make
    for reader in made:
        reader.stop()


def key_file(tmp_path: Path, key: bytes = KEY) -> str:
    path = tmp_path / "osdp.scbk"
    path.write_text(key.hex() + "\n")
    path.chmod(0o600)
    return str(path)


def start(reader: Reader, stopper: list[Any], readings: Readings, **options: Any) -> OsdpCardReader:
    driver = OsdpCardReader("card", readings, {"port": str(reader.port.link), **options})
    driver.start()
    stopper.append(driver)
    return driver


def cards(readings: Readings) -> list[str]:
    readings.drain()
    return [r.value for r in readings.seen if r.kind == "card"]


def test_a_card_read_becomes_a_card_reading(wire, stopper):
    reader = wire(address=5)
    readings = Readings()
    driver = start(reader, stopper, readings, address=5)
    health = readings.wait_health(True)
    assert health.source == "card" and "OSDP reader 5" in health.value.detail
    reader.card(CARD_26)
    r = readings.wait(lambda r: r.kind == "card")
    assert (r.value, r.source) == ("7B1A85", "card")
    reader.card(encode_bits(0x12345678, 34))
    assert readings.wait(lambda r: r.kind == "card").value == "12345678"
    assert driver.stats["cards"] == 2 and driver.stats["dropped"] == 0
    assert driver.health().ok


def test_bad_parity_and_other_events_emit_nothing(wire, stopper):
    reader = wire()
    readings = Readings()
    driver = start(reader, stopper, readings)
    readings.wait_health(True)
    bad = list(CARD_26)
    bad[0] ^= 1
    reader.card(bad)
    reader.pd.submit_event({"event": reader.osdp.Event.KeyPress, "reader_no": 0, "data": b"12"})
    reader.card(CARD_26, reader.osdp.CardFormat.Unspecified)
    assert readings.wait(lambda r: r.kind == "card").value == "2F6350A"
    assert cards(readings) == ["2F6350A"]
    wait_until(lambda: driver.stats["other_events"] == 1, "the keypress counted")
    assert (driver.stats["parity"], driver.stats["dropped"]) == (1, 1)


def tampers(readings: Readings) -> list[bool]:
    readings.drain()
    return [r.value for r in readings.seen if r.kind == "tamper"]


def test_a_reader_reporting_tamper_gives_tamper_readings(wire, stopper):
    reader = wire()
    readings = Readings()
    driver = start(reader, stopper, readings)
    readings.wait_health(True)
    reader.status(tamper=True)
    r = readings.wait(lambda r: r.kind == "tamper")
    assert (r.value, r.source) == (True, "card")
    reader.status(tamper=True)  # said again: no second reading
    reader.status(tamper=True, power_failure=True)  # a power failure alone: logged only
    wait_until(lambda: driver.stats["status"] == 3, "three status reports taken")
    assert tampers(readings) == [True]
    reader.status(tamper=False)
    assert readings.wait(lambda r: r.kind == "tamper").value is False
    reader.card(CARD_26)  # cards still read
    assert readings.wait(lambda r: r.kind == "card").value == "7B1A85"
    assert tampers(readings) == [True, False]
    assert driver.stats["dropped"] == 0 and driver.health().ok


def test_a_clear_outside_the_secure_channel_is_not_trusted():
    readings = Readings()
    driver = OsdpCardReader("card", readings, {"port": "/dev/null"})
    local = {"event": EVENT_STATUS, "type": STATUS_REPORT_LOCAL}
    driver.on_event({**local, "report": b"\x01\x00"}, False)  # a tamper is taken anyhow
    driver.on_event({**local, "report": b"\x00\x00"}, False)  # its clear is not
    assert tampers(readings) == [True]
    driver.on_event({**local, "report": b"\x00\x00"}, True)
    driver.on_event({**local, "report": b""}, True)  # no tamper byte: dropped
    inputs = {"event": EVENT_STATUS, "type": 0, "report": b"\x01"}  # its inputs, not its own
    driver.on_event(inputs, True)
    assert tampers(readings) == [True, False]
    assert (driver.stats["status"], driver.stats["insecure"], driver.stats["bad_data"]) == (2, 1, 1)
    assert driver.stats["other_events"] == 1


def test_the_secure_channel_with_the_key_from_a_file(tmp_path, wire, stopper):
    reader = wire(scbk=KEY)
    readings = Readings()
    start(reader, stopper, readings, scbk_file=key_file(tmp_path))
    readings.wait_health(True)
    assert reader.pd.is_sc_active()
    reader.card(CARD_26)
    assert readings.wait(lambda r: r.kind == "card").value == "7B1A85"
    reader.status(tamper=True)  # in the secure channel, the clear is trusted too
    assert readings.wait(lambda r: r.kind == "tamper").value is True
    reader.status(tamper=False)
    assert readings.wait(lambda r: r.kind == "tamper").value is False


def test_a_reader_with_another_key_is_never_healthy_and_reads_nothing(tmp_path, wire, stopper):
    reader = wire(scbk=bytes(16))
    readings = Readings()
    driver = start(reader, stopper, readings, scbk_file=key_file(tmp_path))
    r = readings.wait_health(False)
    wait_until(lambda: "secure channel" in driver.health().detail, "the key named as the cause")
    reader.card(CARD_26)
    time.sleep(2.5)  # two reconnection cycles: still not in
    assert not driver.health().ok and not reader.pd.is_sc_active()
    assert cards(readings) == []
    assert [x for x in readings.seen if x.kind == "device"] == [r]  # one alarm, not one per try


def test_a_reader_with_no_key_is_refused_without_install_mode(tmp_path, wire, stopper):
    reader = wire(scbk=None)  # a reader fresh from the box: the default key, SCBK-D
    readings = Readings()
    driver = start(reader, stopper, readings, scbk_file=key_file(tmp_path))
    readings.wait_health(False)
    time.sleep(1.5)
    assert not driver.health().ok
    assert reader.pd.get_command(timeout=0) is None  # it was given no key


def test_install_mode_gives_a_new_reader_the_key(tmp_path, wire, stopper):
    reader = wire(scbk=None)
    readings = Readings()
    start(reader, stopper, readings, scbk_file=key_file(tmp_path), install_mode=True)
    readings.wait_health(True)
    keyset = reader.pd.get_command(timeout=5)
    assert keyset is not None and keyset["command"] == reader.osdp.Command.Keyset
    assert keyset["data"] == KEY
    assert reader.pd.is_sc_active()  # and the channel runs on that key now
    reader.card(CARD_26)
    assert readings.wait(lambda r: r.kind == "card").value == "7B1A85"


def test_a_silent_reader_is_unhealthy_and_healthy_again_when_it_answers(wire, stopper):
    reader = wire()
    readings = Readings()
    driver = start(reader, stopper, readings)
    readings.wait_health(True)
    reader.mute = True
    gone = readings.wait_health(False)
    assert "no answer" in gone.value.detail
    assert not driver.health().ok
    time.sleep(2.0)  # a while away: the driver keeps trying
    reader.mute = False
    readings.wait_health(True)
    assert driver.health().ok
    assert driver.stats["reconnects"] >= 1
    reader.card(CARD_26)
    assert readings.wait(lambda r: r.kind == "card").value == "7B1A85"


def test_an_adapter_plugged_back_reads_again_within_two_seconds(tmp_path, wire, stopper):
    reader = wire(scbk=KEY)
    readings = Readings()
    start(reader, stopper, readings, scbk_file=key_file(tmp_path))
    readings.wait_health(True)
    reader.unplug()
    readings.wait_health(False)
    time.sleep(1.0)
    reader.plug()
    plugged = time.monotonic()
    back = readings.wait_health(True)
    assert back.t - plugged < REPLUG_S, f"healthy {back.t - plugged:.2f} s after the re-plug"
    reader.card(CARD_26)
    assert readings.wait(lambda r: r.kind == "card").value == "7B1A85"


def test_a_port_missing_at_start_is_waited_for(tmp_path, stopper):
    pytest.importorskip("osdp")
    link = tmp_path / "ttyLATER"
    readings = Readings()
    driver = OsdpCardReader("card", readings, {"port": str(link)})
    driver.start()
    stopper.append(driver)
    assert "No such file" in readings.wait_health(False).value.detail
    reader = Reader(PtyPort(link))
    try:
        readings.wait_health(True)
        reader.card(CARD_26)
        assert readings.wait(lambda r: r.kind == "card").value == "7B1A85"
    finally:
        driver.stop()
        reader.stop()


def test_garbage_on_the_line_does_not_stop_the_driver_nor_make_a_card(wire, stopper):
    reader = wire()
    readings = Readings()
    driver = start(reader, stopper, readings)
    readings.wait_health(True)
    rnd = random.Random(11)
    osdp_som = b"\x53"  # the start-of-message mark, so some garbage looks like a packet
    for _ in range(150):
        chunk = bytes(rnd.randrange(256) for _ in range(rnd.randrange(1, 48)))
        reader.garbage(osdp_som + chunk if rnd.random() < 0.3 else chunk)
        time.sleep(0.005)
    reader.card(CARD_26)
    assert readings.wait(lambda r: r.kind == "card").value == "7B1A85"
    wait_until(lambda: driver.health().ok, "healthy after the garbage", timeout=10)
    assert cards(readings) == ["7B1A85"]
    assert driver.stats["errors"] == 0  # nothing raised on the reader's thread


def test_stop_is_prompt_and_safe_twice(wire, stopper):
    reader = wire()
    readings = Readings()
    driver = start(reader, stopper, readings)
    readings.wait_health(True)
    t0 = time.monotonic()
    driver.stop()
    driver.stop()
    assert time.monotonic() - t0 < 1.5
    reader.card(CARD_26)
    time.sleep(0.3)
    assert cards(readings) == []
