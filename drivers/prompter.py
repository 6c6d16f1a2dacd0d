"""The voice prompter on GPIO: a PIR reports motion, prompts play with aplay or a DFPlayer.

Playing never blocks the caller: one worker thread plays, and a newer prompt
interrupts the one playing, with one exception: ``welcome`` is heard to its end,
because the controller asks for ``welcome`` and the next prompt together
(``welcome`` then ``measure_temp``) and the second must not cut the first. So at
most ``welcome`` and one newer prompt wait; a newer prompt replaces a waiting one.

Night rule: the PIR's every activation is a ``motion`` reading, day and night; the
controller prompts on the first motion of a session only. At night (``night``
hours, in the Pi's local time) the prompter also says ``welcome`` itself on every
activation, so at night every motion is prompted, even one inside an open session.
"""

from __future__ import annotations

import datetime
import logging
import shutil
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal, Protocol

from pydantic import Field, model_validator

from drivers.common.base import DeviceHealth, Prompter, Reading
from drivers.common.gpio import GpioError, HealthTracker, close_quietly, describe, pin_factory
from drivers.common.options import (
    NIGHT,
    NIGHT_DEFAULT,
    PROMPTER_DRIVER,
    HhMm,
    KeyProblem,
    OptionalDir,
    Pin,
    StrictModel,
)
from drivers.common.serialport import open_serial

log = logging.getLogger(__name__)

#: Seconds a DFPlayer track may take before the next prompt goes anyway, should
#: the module not report the end of the track.
DFPLAYER_MAX_TRACK_S = 4.0
#: DFPlayer status codes that mean "track finished" (TF card, USB disk, flash).
DFPLAYER_FINISHED = (0x3D, 0x3C, 0x3E)


def dfplayer_play_frame(track: int) -> bytes:
    """The DFPlayer Mini command that plays ``track`` (1-255): ``7E FF 06 03 00 00 NN EF``."""
    if not 1 <= track <= 255:
        raise ValueError(f"DFPlayer track {track} is not 1 to 255")
    return bytes((0x7E, 0xFF, 0x06, 0x03, 0x00, 0x00, track, 0xEF))


def track_number(prompt: str) -> int:
    """The DFPlayer track of ``prompt``: its index in ``Prompter.PROMPTS`` plus one."""
    return Prompter.PROMPTS.index(prompt) + 1


def in_hours(now: datetime.time, start: str, end: str) -> bool:
    """Whether ``now`` is within ``[start, end)`` ("HH:MM"); the span may cross midnight."""
    s = datetime.time.fromisoformat(start)
    e = datetime.time.fromisoformat(end)
    if s == e:
        return False
    if s < e:
        return s <= now < e
    return now >= s or now < e


class Player(Protocol):
    """Something that sounds a prompt; ``play`` blocks until it ends or ``cancel`` is set."""

    def open(self) -> None:
        """Get ready; raise OSError when the output cannot work."""

    def play(self, prompt: str, cancel: threading.Event) -> None:
        """Sound ``prompt`` to its end or until ``cancel`` is set; raise OSError on failure."""

    def close(self) -> None:
        """Release what ``open`` took."""


class AplayPlayer:
    """Plays ``{sounds_dir}/{prompt}.wav`` with ``aplay``; a newer prompt kills the older."""

    def __init__(self, sounds_dir: Path, command: str = "aplay"):
        self.sounds_dir = Path(sounds_dir)
        self.command = command

    def open(self) -> None:
        """Check that aplay is installed and every prompt has its file."""
        if shutil.which(self.command) is None:
            raise OSError(f"{self.command} not found (apt-get install alsa-utils)")
        missing = [p for p in Prompter.PROMPTS if not (self.sounds_dir / f"{p}.wav").is_file()]
        if missing:
            raise OSError(f"missing in {self.sounds_dir}: {', '.join(m + '.wav' for m in missing)}")

    def play(self, prompt: str, cancel: threading.Event) -> None:
        """Run aplay on the prompt's file until it ends or ``cancel`` is set."""
        path = self.sounds_dir / f"{prompt}.wav"
        try:
            proc = subprocess.Popen(
                [self.command, "-q", str(path)],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
            )
        except FileNotFoundError:
            raise OSError(f"{self.command} not found (apt-get install alsa-utils)") from None
        try:
            while proc.poll() is None:
                if cancel.wait(0.02):
                    proc.terminate()
                    proc.wait(timeout=2)
                    return
            _, err = proc.communicate()
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        if proc.returncode != 0:
            last = err.decode("utf-8", "replace").strip().splitlines()
            raise OSError(f"aplay exit {proc.returncode}: {last[-1] if last else 'no message'}")

    def close(self) -> None:
        """Nothing to release."""


class DfPlayer:
    """A DFPlayer Mini on a UART (9600 8N1): track NN is ``PROMPTS`` index + 1."""

    def __init__(self, port: str, baud: int = 9600):
        self.port = port
        self.baud = baud
        self._serial: Any = None

    def open(self) -> None:
        """Open the serial port (a path or a pyserial URL)."""
        import serial

        try:
            # not exclusive: a selftest while the daemon runs may play a prompt too
            self._serial = open_serial(
                self.port, self.baud, exclusive=False, timeout=0.05, write_timeout=1
            )
        except (serial.SerialException, ValueError) as exc:
            raise OSError(f"DFPlayer port {self.port}: {exc}") from exc

    def play(self, prompt: str, cancel: threading.Event) -> None:
        """Send the play command, then wait for the module to report the track's end."""
        if self._serial is None:
            self.open()
        try:
            self._serial.reset_input_buffer()
            self._serial.write(dfplayer_play_frame(track_number(prompt)))
            self._serial.flush()
            deadline = time.monotonic() + DFPLAYER_MAX_TRACK_S
            buf = b""
            while not cancel.is_set() and time.monotonic() < deadline:
                buf += self._serial.read(10)
                buf = buf[-64:]
                if self._finished(buf):
                    return
        except Exception as exc:  # SerialException, OSError, termios.error...
            self.close()  # reopened on the next prompt
            raise OSError(f"DFPlayer port {self.port}: {exc}") from exc

    @staticmethod
    def _finished(buf: bytes) -> bool:
        # Module messages: 7E FF 06 CMD 00 P1 P2 [checksum hi lo] EF
        i = buf.find(b"\x7e\xff\x06")
        while i != -1 and i + 3 < len(buf):
            if buf[i + 3] in DFPLAYER_FINISHED:
                return True
            i = buf.find(b"\x7e\xff\x06", i + 1)
        return False

    def close(self) -> None:
        """Close the serial port."""
        if self._serial is not None:
            close_quietly(self._serial)
            self._serial = None


class PromptQueue:
    """Plays prompts on one thread: newest wins, ``welcome`` is never cut short."""

    def __init__(self, player: Player, on_result: Callable[[str | None], None]):
        self.player = player
        self.on_result = on_result  # None after a prompt played, else what failed
        self._cond = threading.Condition()
        self._waiting: list[str] = []
        self._current: str | None = None
        self._cancel = threading.Event()
        self._stop = False
        self._thread = threading.Thread(target=self._run, name="prompter", daemon=True)

    def start(self) -> None:
        """Start the playing thread."""
        self._thread.start()

    def put(self, prompt: str) -> None:
        """Queue ``prompt``; it interrupts the one playing unless that is ``welcome``."""
        with self._cond:
            if prompt == "welcome" and "welcome" in (self._current, *self._waiting):
                return
            self._waiting = [p for p in self._waiting if p == "welcome"] + [prompt]
            if self._current is not None and self._current != "welcome":
                self._cancel.set()
            self._cond.notify()

    def wait_idle(self, timeout: float) -> bool:
        """Wait until nothing plays or waits; False if ``timeout`` seconds ran out first."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while self._current is not None or self._waiting:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(min(left, 0.05))
        return True

    def stop(self) -> None:
        """Cut the prompt playing and end the thread."""
        with self._cond:
            self._stop = True
            self._waiting = []
            self._cancel.set()
            self._cond.notify()
        if self._thread.is_alive():
            self._thread.join(timeout=3)

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._waiting and not self._stop:
                    self._cond.wait()
                if self._stop:
                    return
                prompt = self._current = self._waiting.pop(0)
                self._cancel = threading.Event()
                cancel = self._cancel
                if self._waiting and prompt != "welcome":
                    cancel.set()  # already superseded
            try:
                if cancel.is_set():
                    continue  # superseded before it began (``finally`` clears _current)
                self.player.play(prompt, cancel)
            except Exception as exc:  # a broken speaker must not stop the prompter
                self.on_result(describe(exc))
            else:
                self.on_result(None)
            finally:
                with self._cond:
                    self._current = None
                    self._cond.notify_all()


class GpioPrompterConfig(StrictModel):
    """A PIR sensor on a GPIO input and spoken prompts."""

    driver: Literal["gpio"] = Field(default="gpio", description=PROMPTER_DRIVER)
    pir_pin: Pin = Field(description="GPIO input of the PIR motion sensor.")
    audio: Literal["aplay", "dfplayer", "none"] = Field(
        default="aplay",
        description="Prompts via aplay (sounds_dir), a DFPlayer Mini (port) or none.",
    )
    port: str = Field(
        default="", description="Serial port of the DFPlayer Mini (audio = dfplayer)."
    )
    sounds_dir: OptionalDir = Field(
        default=None,
        description="Directory of the prompt WAV files, welcome.wav ... (audio = aplay).",
    )
    night: tuple[HhMm, HhMm] = Field(default=NIGHT_DEFAULT, description=NIGHT)

    @model_validator(mode="after")
    def _audio_needs(self) -> GpioPrompterConfig:
        if self.audio == "dfplayer" and not self.port:
            raise KeyProblem("port", 'required when audio = "dfplayer"')
        if self.audio == "aplay" and self.sounds_dir is None:
            raise KeyProblem("sounds_dir", 'required when audio = "aplay"')
        return self


class GpioPrompter(Prompter):
    """A PIR on GPIO (``motion`` readings) and spoken prompts via aplay or a DFPlayer.

    Config: :class:`GpioPrompterConfig` (``[prompter] driver = "gpio"``): the PIR is
    an HC-SR501 output, active high.
    """

    config_model = GpioPrompterConfig
    config: GpioPrompterConfig

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        night = self.config.night
        self.night = (str(night[0]), str(night[1]))
        self.health_tracker = HealthTracker(self.name, self.emit)
        self.player: Player | None = None
        audio = self.config.audio
        if audio == "aplay":
            # the config requires sounds_dir here; a mapping (a test) may leave it out
            self.player = AplayPlayer(Path(self.config.sounds_dir or "sounds/zh-CN"))
        elif audio == "dfplayer":
            self.player = DfPlayer(self.config.port)
        self.queue: PromptQueue | None = None
        self._pir: Any = None
        self.motions = 0

    def start(self) -> None:
        """Open the PIR and the audio output; a failing part is reported, the other works."""
        if self.player is not None:
            try:
                self.player.open()
            except OSError as exc:
                self.health_tracker.set("audio", describe(exc))
            self.queue = PromptQueue(self.player, self._played)
            self.queue.start()
        factory = pin_factory(self.ctx.pin_factory)
        from gpiozero import MotionSensor

        pin = self.config.pir_pin
        try:
            self._pir = MotionSensor(pin, pin_factory=factory)
        except Exception as exc:  # gpiozero raises many kinds
            if self.queue is not None:
                self.queue.stop()
                self.queue = None
            raise GpioError(f"PIR on GPIO {pin}: {describe(exc)}") from exc
        self._pir.when_motion = self._motion
        # gpiozero fires no event for the first sample (no edge yet): wait for it, so
        # a person already in front of the PIR at start counts as motion too.
        if not self._pir.wait_for_no_motion(timeout=1.0) and self._pir.motion_detected:
            self._motion()

    def stop(self) -> None:
        """Stop playing and release the PIR and the audio output."""
        close_quietly(self._pir)
        self._pir = None
        if self.queue is not None:
            self.queue.stop()
            self.queue = None
        if self.player is not None:
            self.player.close()

    def health(self) -> DeviceHealth:
        """Healthy unless the PIR or the audio output failed."""
        return self.health_tracker.current()

    def play(self, prompt: str) -> None:
        """Queue ``prompt`` (one of ``PROMPTS``); returns at once."""
        if prompt not in self.PROMPTS:
            raise ValueError(f"unknown prompt {prompt!r}")
        if self.queue is not None:
            self.queue.put(prompt)

    @property
    def motion_detected(self) -> bool:
        """Whether the PIR sees motion now (False when it is not open)."""
        return bool(self._pir is not None and self._pir.motion_detected)

    def wait_idle(self, timeout: float = 10.0) -> bool:
        """Wait until every prompt asked for has played (for ``selftest``); False on timeout."""
        return self.queue is None or self.queue.wait_idle(timeout)

    def is_night(self, now: datetime.time | None = None) -> bool:
        """Whether ``now`` (default: local time) is within the ``night`` hours."""
        return in_hours(now or datetime.datetime.now().time(), *self.night)

    def _motion(self) -> None:
        self.motions += 1
        if self.is_night():
            self.play("welcome")  # before the reading: the controller's prompts follow it
        self.emit(Reading("motion", True, self.name))

    def _played(self, problem: str | None) -> None:
        self.health_tracker.set("audio", problem)
