"""A camera that reads QR passes through OpenCV (``[qr] driver = "camera"``).

The capture source is a camera index (``0``), a V4L2 path (``/dev/video0``, or a
stable ``/dev/v4l/by-id/...`` name), a video file or a stream URL. The capture
buffer is one frame (``CAP_PROP_BUFFERSIZE``), so what is decoded is what the camera
sees now, not a queue of old frames. Each frame passes the motion gate, then the
downscaled first look, then (sometimes) the full-size decode (see
:mod:`drivers.qr_decode`). An empty gate costs a thumbnail per frame; once nothing
has moved for the gate's hold, two frames in three are only taken off the camera
(``grab``, counted as ``skipped``), not converted or looked at, which adds at most
two frames (0.2 s at 10 fps) to noticing someone.

A decoded text is emitted once per presentation (debounced per text for
``DEBOUNCE_S`` by :class:`drivers.common.debounce.Debouncer`) and never logged: logs
carry its length and a hash. A camera that fails to open or stops giving frames
makes the device unhealthy, and is re-opened with backoff until it comes back (which
reports it healthy again). A video file is played at ``fps`` and from the start again
when it ends; a file that has gone away is a lost camera.

cv2 is imported in ``start``, so this module imports on any machine.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, Field

from drivers.common.base import DriverContext, Emit, Reading
from drivers.common.debounce import Debouncer
from drivers.common.options import QR_DRIVER, StrictModel
from drivers.common.serialport import ReaderDriver, ReconnectingReader
from drivers.qr_decode import MotionGate, QrScan, fingerprint, make_decoder, to_grey

log = logging.getLogger(__name__)

#: Seconds the same text is held back after its last sighting.
DEBOUNCE_S = 2.0
#: Frames in a row a live camera may fail to deliver before it counts as lost.
MAX_MISSED_FRAMES = 5
#: While the gate is idle, one frame in this many is converted and looked at.
IDLE_EVERY = 3


def _check_capture_source(value: object) -> object:
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value.strip())
    if isinstance(value, bool) or not isinstance(value, int | str) or value == "":
        raise ValueError("a camera index (0), a device path, a video file or a URL")
    if isinstance(value, int) and value < 0:
        raise ValueError("a camera index is 0 or more")
    return value


CaptureSource = Annotated[int | str, BeforeValidator(_check_capture_source)]


class CameraQrConfig(StrictModel):
    """A camera read through OpenCV, decoding QR codes only."""

    driver: Literal["camera"] = Field(default="camera", description=QR_DRIVER)
    device: CaptureSource = Field(
        default=0, description="Capture source: camera index, V4L2 path, video file or stream URL."
    )
    fps: float = Field(default=10, gt=0, le=120, description="Frames per second captured.")
    decoder: Literal["zxing", "pyzbar"] = Field(
        default="zxing", description="QR decoder: zxing (zxing-cpp) or pyzbar."
    )
    width: int = Field(default=640, gt=0, description="Capture width in pixels.")
    height: int = Field(default=480, gt=0, description="Capture height in pixels.")
    motion_gate: bool = Field(
        default=True,
        description="Decode only when something moves, so an empty gate costs little CPU.",
    )


class CaptureReader(ReconnectingReader):
    """Opens the capture source, paces frames at ``fps`` and hands each to ``on_frame``."""

    def __init__(self, scanner: CameraQrScanner, source: int | str):
        what = f"camera {source}" if isinstance(source, int) else _shown(source)
        super().__init__(scanner.name, scanner.emit, what)
        self.scanner = scanner
        self.source = source
        self.is_file = isinstance(source, str) and "://" not in source and _is_file(source)
        self.stats.update({"frames": 0, "skipped": 0, "missed": 0, "loops": 0})
        self._cap: Any = None
        self._next = 0.0
        self._missed = 0
        self._since_open = 0
        self._tick = 0

    def open(self) -> None:
        """Open the source afresh: nothing is known about the scene yet."""
        self._open_capture()
        self.scanner.gate.reset()

    def _open_capture(self) -> None:
        """Open the source with a one-frame buffer and the configured size and rate."""
        import cv2

        config = self.scanner.config
        source = self.source
        if isinstance(source, str) and "://" not in source and not Path(source).exists():
            raise FileNotFoundError(f"no such device or file: {source}")
        # one decoding thread: frame threads cost more in wake-ups than they save at 10 fps
        cap = cv2.VideoCapture(self.source, cv2.CAP_ANY, [cv2.CAP_PROP_N_THREADS, 1])
        if not cap.isOpened():
            cap.release()
            raise OSError("cannot open capture source")
        cap.set(cv2.CAP_PROP_BUFFERSIZE, 1)
        if not self.is_file:
            cap.set(cv2.CAP_PROP_FRAME_WIDTH, config.width)
            cap.set(cv2.CAP_PROP_FRAME_HEIGHT, config.height)
            cap.set(cv2.CAP_PROP_FPS, config.fps)
        self._cap = cap
        self._missed = 0
        self._since_open = 0
        self._next = time.monotonic()

    def read_once(self) -> None:
        """Wait for the next frame's turn, read it and scan it."""
        delay = self._next - time.monotonic()
        if delay > 0:
            time.sleep(min(delay, 0.1))
            return
        self._next = max(self._next + self.scanner.period, time.monotonic() - self.scanner.period)
        self._tick += 1
        if self.scanner.idle and self._tick % IDLE_EVERY:
            # nothing moved for a while: take the frame off the camera (so the next one
            # is fresh) without converting it; only every IDLE_EVERY-th is looked at
            ok, frame = self._cap.grab(), None
            self.stats["skipped"] += ok
        else:
            ok, frame = self._cap.read()
            ok = ok and frame is not None
        if not ok:
            self._no_frame()
            return
        self._missed = 0
        self._since_open += 1
        self.stats["frames"] += 1
        if frame is not None:
            self.scanner.on_frame(frame, time.monotonic())

    def _no_frame(self) -> None:
        if self.is_file:
            # the end of a video file: play it again, unless the file is gone or empty
            if self._since_open == 0:
                raise OSError("the video file has no frames")
            self.stats["loops"] += 1
            # the same scene: rewind (the motion gate keeps its last frame)
            if not (Path(str(self.source)).exists() and self._cap.set(_pos_frames(), 0)):
                self.close()
                self._open_capture()
            return
        self.stats["missed"] += 1
        self._missed += 1
        if self._missed >= MAX_MISSED_FRAMES:
            raise OSError(f"no frame from the camera {self._missed} times in a row")

    def close(self) -> None:
        """Release the capture; never raises."""
        cap, self._cap = self._cap, None
        if cap is not None:
            try:
                cap.release()
            except Exception as exc:  # a vanished device may fail to release
                log.debug("%s: release failed: %s", self.name, exc)


def _shown(source: str) -> str:
    """The source as logs and health may show it: a URL's user and password masked."""
    scheme, sep, rest = source.partition("://")
    if sep and "@" in rest.split("/", 1)[0]:
        return f"{scheme}://***@{rest.split('@', 1)[1]}"
    return source


def _pos_frames() -> int:
    import cv2

    return int(cv2.CAP_PROP_POS_FRAMES)


def _is_file(source: str) -> bool:
    path = Path(source)
    return not str(path).startswith("/dev/") and path.suffix != ""


class CameraQrScanner(ReaderDriver):
    """A camera decoding QR passes: emits a ``qr`` reading per presentation.

    Config: :class:`CameraQrConfig` (``[qr] driver = "camera"``). ``stats`` counts
    frames, what the gates let through, texts emitted, repeats held back and decoder
    errors.
    """

    config_model = CameraQrConfig
    config: CameraQrConfig

    def __init__(
        self,
        name: str,
        emit: Emit,
        config: BaseModel | Mapping[str, Any] | None = None,
        ctx: DriverContext | None = None,
    ):
        super().__init__(name, emit, config, ctx)
        self.period = 1.0 / self.config.fps
        self.use_gate = self.config.motion_gate
        self.gate = MotionGate()
        self.debouncer = Debouncer(DEBOUNCE_S)
        self.scan: QrScan | None = None
        self.counts = {"texts": 0, "repeats": 0, "errors": 0}
        source = self.config.device
        if isinstance(source, str) and source.strip().isdigit():
            source = int(source)
        self.reader = CaptureReader(self, source)

    @property
    def stats(self) -> dict[str, int]:
        """Counters for ``/metrics``."""
        scan = self.scan.stats if self.scan is not None else {}
        return {**self.reader.stats, **self.gate.stats, **scan, **self.counts}

    def start(self) -> None:
        """Load the decoder and start capturing; a camera missing now is retried."""
        import cv2  # noqa: F401  (fail here, clearly, if OpenCV is missing)

        self.scan = QrScan(make_decoder(self.config.decoder))
        self.reader.start()

    @property
    def idle(self) -> bool:
        """Whether nothing has moved for a while, so frames may be skipped."""
        return self.use_gate and self.gate.idle

    def on_frame(self, frame: Any, now: float) -> None:
        """Gate, decode and emit one frame's passes."""
        assert self.scan is not None
        try:
            if self.use_gate and not self.gate.moving(frame, now):
                return
            texts = self.scan.scan(to_grey(frame))
        except Exception:  # one odd frame (or a decoder bug) must not stop the camera
            self.counts["errors"] += 1
            log.exception("%s: a frame could not be scanned", self.name)
            return
        for text in texts:
            if not self.debouncer.accept(text, now):
                self.counts["repeats"] += 1
                continue
            self.counts["texts"] += 1
            log.info("%s: QR read (%s)", self.name, fingerprint(text))
            self.emit(Reading("qr", text, self.name, now))
