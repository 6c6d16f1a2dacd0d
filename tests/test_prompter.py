"""The GPIO prompter: PIR on MockFactory pins, a fake ``aplay`` on PATH, a DFPlayer on a pty."""

from __future__ import annotations

import contextlib
import datetime
import functools
import os
import pty
import queue
import select
import time
import tty
import wave
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from gpiozero.pins.mock import MockPin

from drivers import driver_class
from drivers.common.base import DeviceHealth, DriverContext, Prompter, Reading
from drivers.prompter import GpioPrompter, dfplayer_play_frame, in_hours, track_number
from tests.support.fake_aplay import FAKE_APLAY
from tests.support.readings import next_reading
from tests.support.waiting import wait_until

REPO = Path(__file__).resolve().parent.parent
PIR = 4


def hours_around_now(inside: bool) -> tuple[str, str]:
    """Night hours that contain the current local time (or lie well away from it)."""
    now = datetime.datetime.now()
    if inside:
        a, b = now - datetime.timedelta(hours=2), now + datetime.timedelta(hours=2)
    else:
        a, b = now + datetime.timedelta(hours=2), now + datetime.timedelta(hours=4)
    return (a.strftime("%H:%M"), b.strftime("%H:%M"))


@pytest.fixture
def fake_aplay(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    script = bin_dir / "aplay"
    script.write_text(FAKE_APLAY)
    script.chmod(0o755)
    log = tmp_path / "aplay.log"
    log.write_text("")
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_APLAY_LOG", str(log))
    monkeypatch.setenv("FAKE_APLAY_S", "0.05")
    monkeypatch.setenv("FAKE_APLAY_FAIL", "")
    return log


@pytest.fixture
def sounds(tmp_path: Path) -> Path:
    d = tmp_path / "sounds"
    d.mkdir()
    for p in Prompter.PROMPTS:
        (d / f"{p}.wav").write_bytes(b"RIFF")
    return d


class Rig:
    def __init__(self, **options: Any):
        self.readings: queue.Queue[Reading] = queue.Queue()
        opts: dict[str, Any] = {"pir_pin": PIR, "audio": "aplay", "night": hours_around_now(False)}
        opts.update(options)
        self.p = GpioPrompter("prompter", self.readings.put, opts, DriverContext("mock"))

    def next(self, kind: str, timeout: float = 10.0) -> Reading:
        return next_reading(self.readings, kind, timeout)


def welcomes_heard(log: Path, n: int) -> bool:
    return log_lines(log).count("end welcome") == n


def log_lines(log: Path) -> list[str]:
    return [line.split(" -q")[0] for line in log.read_text().splitlines()]


@pytest.fixture
def aplay_rig(factory: Any, fake_aplay: Path, sounds: Path) -> Iterator[Rig]:
    r = Rig(sounds_dir=sounds)
    r.p.start()
    yield r
    r.p.stop()


def test_registered():
    assert driver_class("prompter", "gpio") is GpioPrompter


# ---- aplay -------------------------------------------------------------------------


def test_aplay_plays_the_prompts_file(aplay_rig: Rig, fake_aplay: Path, sounds: Path):
    aplay_rig.p.play("granted")
    wait_until(lambda: "end granted" in fake_aplay.read_text())
    first = fake_aplay.read_text().splitlines()[0]
    assert first == f"start granted -q {sounds / 'granted.wav'}"
    assert aplay_rig.p.health() == DeviceHealth(True, "")


def test_a_newer_prompt_interrupts_the_older(
    aplay_rig: Rig, fake_aplay: Path, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.setenv("FAKE_APLAY_S", "30")
    aplay_rig.p.play("show_pass")  # returns at once: aplay runs on its own
    wait_until(lambda: "start show_pass" in fake_aplay.read_text())
    aplay_rig.p.play("denied")
    wait_until(lambda: "start denied" in fake_aplay.read_text())
    assert log_lines(fake_aplay) == ["start show_pass", "killed show_pass", "start denied"]


def test_a_prompt_interrupted_as_it_starts_ends_before_the_newer_starts(
    aplay_rig: Rig, fake_aplay: Path, monkeypatch: pytest.MonkeyPatch
):
    # The SIGTERM reaches aplay while it is still setting up (here: paused right
    # after "start"), the moment the order test above once lost by chance.
    monkeypatch.setenv("FAKE_APLAY_S", "30")
    monkeypatch.setenv("FAKE_APLAY_PAUSE_S", "0.3")
    aplay_rig.p.play("show_pass")
    wait_until(lambda: "start show_pass" in fake_aplay.read_text())
    aplay_rig.p.play("denied")
    wait_until(lambda: "start denied" in fake_aplay.read_text())
    assert log_lines(fake_aplay) == ["start show_pass", "killed show_pass", "start denied"]


def test_welcome_is_heard_to_its_end_and_the_newest_prompt_follows(
    aplay_rig: Rig, fake_aplay: Path, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.setenv("FAKE_APLAY_S", "0.5")
    aplay_rig.p.play("welcome")
    aplay_rig.p.play("show_pass")  # replaced by the next, still waiting
    aplay_rig.p.play("measure_temp")
    aplay_rig.p.play("welcome")  # already playing or waiting: not twice
    wait_until(lambda: "end measure_temp" in fake_aplay.read_text())
    assert log_lines(fake_aplay) == [
        "start welcome",
        "end welcome",
        "start measure_temp",
        "end measure_temp",
    ]


def test_a_failing_aplay_marks_audio_unhealthy_until_a_prompt_plays(
    aplay_rig: Rig, fake_aplay: Path, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.setenv("FAKE_APLAY_FAIL", "denied")
    aplay_rig.p.play("denied")
    health = aplay_rig.next("device").value
    assert not health.ok
    assert "aplay exit 1" in health.detail and "Device or resource busy" in health.detail
    aplay_rig.p.play("granted")
    assert aplay_rig.next("device").value == DeviceHealth(True, "")


def test_unknown_prompt_is_refused(aplay_rig: Rig):
    with pytest.raises(ValueError, match="unknown prompt"):
        aplay_rig.p.play("open_sesame")


def test_missing_sound_files_are_reported_and_motion_still_works(
    factory: Any, fake_aplay: Path, sounds: Path
):
    (sounds / "fever.wav").unlink()
    r = Rig(sounds_dir=sounds)
    r.p.start()
    try:
        health = r.next("device").value
        assert not health.ok and "fever.wav" in health.detail
        factory.pin(PIR).drive_high()
        assert r.next("motion").value is True
    finally:
        r.p.stop()


def test_no_aplay_installed_is_reported(
    factory: Any, sounds: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    r = Rig(sounds_dir=sounds)
    r.p.start()
    try:
        health = r.next("device").value
        assert not health.ok and "aplay not found" in health.detail
    finally:
        r.p.stop()


# ---- PIR and the night rule --------------------------------------------------------


def test_by_day_motion_is_reported_and_the_driver_says_nothing(
    aplay_rig: Rig, factory: Any, fake_aplay: Path
):
    pir = factory.pin(PIR)
    for _ in range(2):
        pir.drive_high()
        assert aplay_rig.next("motion").value is True
        pir.drive_low()
        wait_until(lambda: not aplay_rig.p.motion_detected)
    assert aplay_rig.p.motions == 2
    assert fake_aplay.read_text() == ""  # the controller prompts, not the driver


def test_at_night_every_motion_is_prompted(
    factory: Any, fake_aplay: Path, sounds: Path, monkeypatch: pytest.MonkeyPatch
):
    r = Rig(sounds_dir=sounds, night=hours_around_now(True))
    r.p.start()
    try:
        assert r.p.is_night()
        pir = factory.pin(PIR)
        for n in (1, 2, 3):
            pir.drive_high()
            assert r.next("motion").value is True
            wait_until(functools.partial(welcomes_heard, fake_aplay, n))
            pir.drive_low()
            wait_until(lambda: not r.p.motion_detected)
    finally:
        r.p.stop()


class BusyPirPin(MockPin):
    """A PIR output that is high from power-on: someone is already there."""

    def _set_pull(self, value: Any) -> None:
        super()._set_pull(value)
        self.drive_high()  # the PIR drives the line; the Pi's pull-down cannot win


def test_someone_in_front_of_the_pir_at_start_is_motion(
    factory: Any, fake_aplay: Path, sounds: Path
):
    factory.pin(PIR, pin_class=BusyPirPin)
    r = Rig(sounds_dir=sounds)
    r.p.start()
    try:
        assert r.next("motion").value is True
    finally:
        r.p.stop()


def test_night_hours_may_cross_midnight():
    t = datetime.time.fromisoformat
    assert in_hours(t("23:00"), "22:00", "06:00")
    assert in_hours(t("00:30"), "22:00", "06:00")
    assert in_hours(t("22:00"), "22:00", "06:00")
    assert not in_hours(t("06:00"), "22:00", "06:00")
    assert not in_hours(t("12:00"), "22:00", "06:00")
    assert in_hours(t("13:00"), "12:00", "14:00")
    assert not in_hours(t("15:00"), "12:00", "14:00")
    assert not in_hours(t("12:00"), "12:00", "12:00")  # an empty span: never night


def test_a_pir_pin_in_use_fails_start(factory: Any, fake_aplay: Path, sounds: Path):
    from gpiozero import OutputDevice

    squatter = OutputDevice(PIR, pin_factory=factory)
    r = Rig(sounds_dir=sounds)
    try:
        with pytest.raises(OSError, match="PIR on GPIO 4"):
            r.p.start()
        r.p.play("welcome")  # not started: nothing to play on, no error
    finally:
        r.p.stop()
        squatter.close()


# ---- DFPlayer Mini over a pty ------------------------------------------------------


class Pty:
    """The DFPlayer's end of a serial line: what the driver writes arrives here."""

    def __init__(self) -> None:
        self.master, slave = pty.openpty()
        tty.setraw(slave)
        self.port = os.ttyname(slave)
        self._slave = slave

    def read(self, n: int, timeout: float = 10.0) -> bytes:
        out = b""
        deadline = time.monotonic() + timeout
        while len(out) < n:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            ready, _, _ = select.select([self.master], [], [], left)
            if ready:
                out += os.read(self.master, n - len(out))
        return out

    def close(self) -> None:
        for fd in (self.master, self._slave):
            with contextlib.suppress(OSError):
                os.close(fd)


@pytest.fixture
def dfplayer(factory: Any) -> Iterator[tuple[Rig, Pty]]:
    line = Pty()
    r = Rig(audio="dfplayer", port=line.port)
    r.p.start()
    yield r, line
    r.p.stop()
    line.close()


def test_dfplayer_track_numbers_follow_the_prompt_list():
    assert [track_number(p) for p in Prompter.PROMPTS] == list(range(1, 10))
    assert dfplayer_play_frame(5) == bytes.fromhex("7EFF06030000 05EF".replace(" ", ""))


def test_dfplayer_gets_the_exact_play_command(dfplayer: tuple[Rig, Pty]):
    r, line = dfplayer
    r.p.play("granted")
    assert line.read(8) == bytes.fromhex("7E FF 06 03 00 00 05 EF")
    r.p.play("not_registered")  # interrupts: the module switches tracks by itself
    assert line.read(8) == bytes.fromhex("7E FF 06 03 00 00 09 EF")
    assert r.p.health().ok


def test_dfplayer_waits_for_welcome_to_finish(dfplayer: tuple[Rig, Pty]):
    r, line = dfplayer
    r.p.play("welcome")
    r.p.play("measure_temp")
    assert line.read(8) == bytes.fromhex("7E FF 06 03 00 00 01 EF")
    assert line.read(8, timeout=0.3) == b""  # welcome is still playing
    # The module reports "track 1 finished on the TF card" (with its checksum).
    os.write(line.master, bytes.fromhex("7E FF 06 3D 00 00 01 FE BD EF"))
    assert line.read(8) == bytes.fromhex("7E FF 06 03 00 00 03 EF")


def test_dfplayer_line_failure_is_reported_and_motion_still_works(
    dfplayer: tuple[Rig, Pty], factory: Any
):
    r, line = dfplayer
    line.close()  # the module's end of the line is gone
    r.p.play("denied")
    health = r.next("device").value
    assert not health.ok and "DFPlayer" in health.detail
    factory.pin(PIR).drive_high()
    assert r.next("motion").value is True


def test_dfplayer_port_missing_at_start_is_reported(factory: Any, tmp_path: Path):
    r = Rig(audio="dfplayer", port=str(tmp_path / "ttyNONE"))
    r.p.start()
    try:
        health = r.next("device").value
        assert not health.ok and "ttyNONE" in health.detail
    finally:
        r.p.stop()


# ---- the committed sound sets ------------------------------------------------------


@pytest.mark.parametrize("language", ["zh-CN", "en"])
def test_every_prompt_has_a_16khz_mono_wav(language: str):
    for prompt in Prompter.PROMPTS:
        with wave.open(str(REPO / "sounds" / language / f"{prompt}.wav")) as w:
            assert (w.getframerate(), w.getnchannels(), w.getsampwidth()) == (16000, 1, 2)
            assert 0.3 < w.getnframes() / 16000 < 6


def test_the_sound_sets_are_commit_sized():
    total = sum(f.stat().st_size for f in (REPO / "sounds").rglob("*.wav"))
    assert total < 1_500_000


def test_wait_idle_returns_once_the_prompts_have_played(aplay_rig: Rig, fake_aplay: Path):
    aplay_rig.p.play("welcome")
    aplay_rig.p.play("granted")
    assert aplay_rig.p.wait_idle(10)
    assert log_lines(fake_aplay) == ["start welcome", "end welcome", "start granted", "end granted"]


# ---- the daemon with the GPIO prompter ---------------------------------------------


def test_daemon_prompts_welcome_then_measure_temp_on_the_first_motion(
    factory: Any, fake_aplay: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    import threading

    from gated.app import App
    from gated.config import config_from_dict

    monkeypatch.setenv("FAKE_APLAY_S", "0.3")
    config = config_from_dict(
        {
            "gate": {"id": "g1", "site": "s1", "direction": "in", "timezone": "Asia/Shanghai"},
            "storage": {"path": str(tmp_path / "gated.db")},
            "hardware": {"pin_factory": "mock"},
            "turnstile": {"driver": "sim"},
            "prompter": {
                "driver": "gpio",
                "pir_pin": PIR,
                "audio": "aplay",
                "sounds_dir": str(REPO / "sounds" / "en"),
                "night": list(hours_around_now(False)),
            },
        },
        tmp_path / "gated.toml",
    )
    app = App(config)
    runner = threading.Thread(target=app.run, daemon=True)
    runner.start()
    try:
        # The controller takes work once every device has started (and the PIR has
        # taken its first sample, for which gpiozero fires no event).
        app.controller.submit(lambda: None).result(timeout=10)
        factory.pin(PIR).drive_high()
        wait_until(lambda: "end measure_temp" in fake_aplay.read_text())
        assert log_lines(fake_aplay) == [
            "start welcome",
            "end welcome",
            "start measure_temp",
            "end measure_temp",
        ]
        assert f"-q {REPO / 'sounds' / 'en' / 'welcome.wav'}" in fake_aplay.read_text()
    finally:
        app.stop_event.set()
        runner.join(timeout=10)
    assert not runner.is_alive()
