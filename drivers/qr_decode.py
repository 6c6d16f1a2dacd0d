"""QR decoding on grey images, and the gates that keep an empty scene cheap.

Everything here is a pure function (or a small state object) of numpy arrays, so
tests and the bench feed images directly. The decoders are restricted to QR codes:
``zxing`` (zxing-cpp) and ``pyzbar`` (libzbar0). A frame goes through three steps,
cheapest first:

1. :class:`MotionGate`: frame differencing on a tiny grey downscale (80 pixels
   wide); with nothing moving (and no motion in the last ``hold_s``) nothing is
   decoded at all.
2. :func:`first_look`: the frame downscaled to at most ``FIRST_LOOK_WIDTH`` pixels
   wide is decoded; a pass held up close is found there at a quarter of the cost.
3. The full-resolution frame, only when the first look found nothing, and only on
   every ``full_every``-th such frame (a small or far code still turns up within a
   few frames; a person walking by without one costs little).

numpy, cv2 and the decoder libraries are imported on first use, so this module
imports on any machine, and quickly (the config imports the camera's model).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np

#: The decoders a ``[qr] decoder`` may name.
DECODERS = ("zxing", "pyzbar")
#: Width in pixels of the grey thumbnail the motion gate compares.
MOTION_WIDTH = 80
#: Grey levels (0-255) a thumbnail pixel must change by to count as moving.
MOTION_PIXEL_DELTA = 18
#: Share of thumbnail pixels that must move for the frame to count as motion.
MOTION_SHARE = 0.004
#: Seconds decoding goes on after the last motion (a pass held still stays readable).
MOTION_HOLD_S = 3.0
#: Widest image, in pixels, the first look decodes.
FIRST_LOOK_WIDTH = 640

Decode = Callable[["np.ndarray"], list[str]]


def to_grey(frame: np.ndarray) -> np.ndarray:
    """An 8-bit single-channel image of a BGR, BGRA or grey frame."""
    import cv2

    if frame.ndim == 2:
        return frame
    if frame.shape[2] == 4:
        return cv2.cvtColor(frame, cv2.COLOR_BGRA2GRAY)
    return cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY)


def downscale(grey: np.ndarray, width: int) -> np.ndarray:
    """``grey`` shrunk to ``width`` pixels wide (aspect kept); unchanged if narrower."""
    import cv2

    h, w = grey.shape[:2]
    if w <= width:
        return grey
    height = max(1, round(h * width / w))
    return cv2.resize(grey, (width, height), interpolation=cv2.INTER_AREA)


def _texts(payloads: list[bytes]) -> list[str]:
    out: list[str] = []
    for data in payloads:
        # not UTF-8 is no pass, but it is handed on (with U+FFFD) so it is refused, not lost
        text = data.decode("utf-8", "replace")
        if text and text not in out:
            out.append(text)
    return out


def decode_zxing(grey: np.ndarray) -> list[str]:
    """The texts of the QR codes zxing-cpp finds in a grey image."""
    import numpy as np
    import zxingcpp

    found = zxingcpp.read_barcodes(
        np.ascontiguousarray(grey), formats=zxingcpp.BarcodeFormats(zxingcpp.BarcodeFormat.QRCode)
    )
    return _texts([bytes(b.bytes) for b in found if b.valid])


def decode_pyzbar(grey: np.ndarray) -> list[str]:
    """The texts of the QR codes pyzbar (zbar) finds in a grey image."""
    import numpy as np
    from pyzbar import pyzbar

    h, w = grey.shape[:2]
    data = np.ascontiguousarray(grey).tobytes()
    found = pyzbar.decode((data, w, h), symbols=[pyzbar.ZBarSymbol.QRCODE])
    return _texts([s.data for s in found])


def make_decoder(name: str) -> Decode:
    """The decode function called ``name``; ValueError for an unknown one.

    The decoder's library is imported here, so a missing one fails at start
    (ImportError), not on the first pass shown.
    """
    if name == "zxing":
        import zxingcpp  # noqa: F401

        return decode_zxing
    if name == "pyzbar":
        from pyzbar import pyzbar  # noqa: F401

        return decode_pyzbar
    raise ValueError(f"unknown QR decoder {name!r}; one of {', '.join(DECODERS)}")


def motion_share(previous: np.ndarray, current: np.ndarray) -> float:
    """Share (0-1) of pixels that changed by more than ``MOTION_PIXEL_DELTA`` grey levels."""
    import numpy as np

    if previous.shape != current.shape:
        return 1.0
    diff = np.abs(previous.astype(np.int16) - current.astype(np.int16))
    return float(np.count_nonzero(diff > MOTION_PIXEL_DELTA)) / diff.size


class MotionGate:
    """Says whether a frame is worth decoding: something moved within ``hold_s``.

    Frames are compared as ``MOTION_WIDTH``-pixel-wide grey thumbnails, blurred a
    little so sensor noise is not motion. The first frame counts as motion, so a
    pass already held up when the camera (re)opens is still read.
    """

    def __init__(self, share: float = MOTION_SHARE, hold_s: float = MOTION_HOLD_S):
        self.share = share
        self.hold_s = hold_s
        self._previous: np.ndarray | None = None
        self._last_motion = float("-inf")
        self._idle = False
        self.stats = {"motion": 0, "gated": 0}

    def reset(self) -> None:
        """Forget the previous frame (the source was re-opened)."""
        self._previous = None
        self._idle = False

    @property
    def idle(self) -> bool:
        """Whether the last frame was gated out (nothing moved for ``hold_s``)."""
        return self._idle

    def thumbnail(self, frame: np.ndarray) -> np.ndarray:
        """The small blurred grey image frames are compared by (of a BGR or grey frame)."""
        import cv2

        h, w = frame.shape[:2]
        # every 4th pixel of every 4th row is plenty for an 80-pixel thumbnail, and a
        # quarter of the memory traffic; INTER_AREA still averages away sensor noise
        step = max(1, w // (MOTION_WIDTH * 4))
        sub = frame[::step, ::step]
        size = (MOTION_WIDTH, max(1, round(h * MOTION_WIDTH / w)))
        small = cv2.resize(sub, size, interpolation=cv2.INTER_AREA)
        if small.ndim == 3:
            small = to_grey(small)
        return cv2.GaussianBlur(small, (3, 3), 0)

    def moving(self, frame: np.ndarray, now: float) -> bool:
        """Whether ``frame`` (BGR or grey, taken at monotonic ``now``) should be decoded."""
        small = self.thumbnail(frame)
        previous, self._previous = self._previous, small
        if previous is None or motion_share(previous, small) >= self.share:
            self._last_motion = now
            self.stats["motion"] += 1
        self._idle = now - self._last_motion > self.hold_s
        if not self._idle:
            return True
        self.stats["gated"] += 1
        return False


def first_look(grey: np.ndarray, decode: Decode, width: int = FIRST_LOOK_WIDTH) -> list[str]:
    """Decode ``grey`` downscaled to at most ``width`` pixels wide."""
    return decode(downscale(grey, width))


class QrScan:
    """The decode step of a frame: first look, then (every ``full_every``) full size.

    ``stats`` counts ``first_looks``, ``full_scans`` and ``found`` (frames with a code).
    """

    def __init__(self, decode: Decode, full_every: int = 2, width: int = FIRST_LOOK_WIDTH):
        self.decode = decode
        self.full_every = max(1, full_every)
        self.width = width
        self._misses = 0
        self.stats = {"first_looks": 0, "full_scans": 0, "found": 0}

    def scan(self, grey: np.ndarray) -> list[str]:
        """The QR texts in ``grey``; [] when none (or not looked for at full size this time)."""
        self.stats["first_looks"] += 1
        texts = first_look(grey, self.decode, self.width)
        if not texts and grey.shape[1] > self.width:
            self._misses += 1
            if self._misses % self.full_every == 0:
                self.stats["full_scans"] += 1
                texts = self.decode(grey)
        if texts:
            self._misses = 0
            self.stats["found"] += 1
        return texts


def fingerprint(text: str) -> str:
    """What a log may say about a decoded text: its length and a short hash."""
    digest = hashlib.sha256(text.encode("utf-8", "replace")).hexdigest()[:12]
    return f"{len(text)} chars, sha256 {digest}"
