"""Generated camera views of QR passes, for the camera tests and bench/qr.py.

A view is a grey-ish BGR scene (a textured wall) with a pass (a phone screen: a
white card with the QR on it) pasted in by a perspective warp, then spoiled on
purpose: turned at an angle, tilted in perspective, blurred, washed by glare, small
and far. Videos are MJPG AVI files of such views, the pass sliding in and held. All
of it is deterministic (seeded), made with segno and cv2 only.
"""

from __future__ import annotations

import base64
import functools
import math
import random
from dataclasses import dataclass, replace
from pathlib import Path

import cv2
import numpy as np
import segno


def pass_text(seed: int = 1, payload_bytes: int = 150) -> str:
    """A text shaped like a signed pass (compact JWS, ~300 characters)."""
    rng = random.Random(seed)

    def b64(n: int) -> str:
        raw = bytes(rng.randrange(256) for _ in range(n))
        return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()

    header = base64.urlsafe_b64encode(b'{"alg":"EdDSA","kid":"k1"}').rstrip(b"=").decode()
    return f"{header}.{b64(payload_bytes)}.{b64(64)}"


@functools.lru_cache(maxsize=16)
def qr_card(text: str, module_px: int = 8) -> np.ndarray:
    """The pass as a grey image: dark modules on white, with the quiet zone."""
    qr = segno.make(text, error="m", micro=False)
    rows = np.array(list(qr.matrix_iter(scale=module_px, border=4)), dtype=bool)
    return np.where(rows, 25, 235).astype(np.uint8)


def background(width: int, height: int, seed: int = 0) -> np.ndarray:
    """A BGR scene without a pass: a lit wall with some texture and a door frame."""
    rng = np.random.default_rng(seed)
    x = np.linspace(0, 1, width, dtype=np.float32)
    y = np.linspace(0, 1, height, dtype=np.float32)[:, None]
    wall = 90 + 70 * x[None, :] * (1 - 0.4 * y)
    noise = cv2.GaussianBlur(rng.normal(0, 18, (height, width)).astype(np.float32), (0, 0), 3)
    grey = np.clip(wall + noise, 0, 255).astype(np.uint8)
    frame = cv2.cvtColor(grey, cv2.COLOR_GRAY2BGR)
    cv2.rectangle(frame, (width // 8, height // 10), (width // 8 + 20, height), (60, 50, 40), -1)
    return frame


@dataclass(frozen=True)
class View:
    """How a pass is shown: size, position, turn, tilt and what spoils it.

    ``size`` is the code's width in pixels (quiet zone included); ``cx``/``cy`` its
    centre as shares of the frame; ``angle`` degrees turned in the image plane;
    ``tilt`` 0-1 how much the far edge shrinks (perspective); ``blur`` the Gaussian
    sigma in pixels; ``glare`` 0-1 the strength of a bright spot over the code.
    """

    size: int = 240
    cx: float = 0.5
    cy: float = 0.5
    angle: float = 0.0
    tilt: float = 0.0
    blur: float = 0.0
    glare: float = 0.0


def render(
    text: str, view: View, width: int = 640, height: int = 480, scene: np.ndarray | None = None
) -> np.ndarray:
    """A BGR frame of ``width`` x ``height`` showing the pass ``text`` as ``view`` says."""
    frame = (scene if scene is not None else background(width, height)).copy()
    card = qr_card(text)
    ch, cw = card.shape
    half = view.size / 2
    # corners of the code before turning: the right edge shrinks with tilt
    shrink = half * (1 - view.tilt)
    corners = np.array(
        [[-half, -half], [half, -shrink], [half, shrink], [-half, half]], dtype=np.float32
    )
    a = math.radians(view.angle)
    rot = np.array([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]], dtype=np.float32)
    dst = corners @ rot.T + np.array([view.cx * width, view.cy * height], dtype=np.float32)
    src = np.array([[0, 0], [cw, 0], [cw, ch], [0, ch]], dtype=np.float32)
    m = cv2.getPerspectiveTransform(src, dst)
    warped = cv2.warpPerspective(card, m, (width, height), flags=cv2.INTER_AREA)
    mask = cv2.warpPerspective(np.full_like(card, 255), m, (width, height)) > 127
    grey = cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY)
    grey[mask] = warped[mask]
    if view.glare > 0:
        yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
        gx, gy = dst[:, 0].mean() + view.size * 0.15, dst[:, 1].mean() - view.size * 0.1
        r = view.size * 0.3
        spot = np.exp(-((xx - gx) ** 2 + (yy - gy) ** 2) / (2 * r * r)) * 255 * view.glare
        grey = np.clip(grey.astype(np.float32) + spot, 0, 255).astype(np.uint8)
    if view.blur > 0:
        grey = cv2.GaussianBlur(grey, (0, 0), view.blur)
    return cv2.cvtColor(grey, cv2.COLOR_GRAY2BGR)


#: One example of each hard case at 640x480, by name.
CASES: dict[str, View] = {
    "plain": View(),
    "angle": View(angle=35),
    "perspective": View(tilt=0.35, angle=-10),
    "blur": View(blur=1.0),
    "glare": View(glare=0.7),
    "small": View(size=150, cx=0.7, cy=0.4),
}


def hard_corpus(n: int = 40, seed: int = 7) -> list[View]:
    """``n`` views mixing every difficulty at random strengths (seeded)."""
    rng = random.Random(seed)
    views = []
    for _ in range(n):
        views.append(
            View(
                size=rng.randint(140, 300),
                cx=rng.uniform(0.35, 0.65),
                cy=rng.uniform(0.35, 0.65),
                angle=rng.uniform(-45, 45),
                tilt=rng.choice([0.0, rng.uniform(0.1, 0.45)]),
                blur=rng.choice([0.0, rng.uniform(0.5, 2.2)]),
                glare=rng.choice([0.0, 0.0, rng.uniform(0.3, 0.8)]),
            )
        )
    return views


def scaled(view: View, width: int) -> View:
    """``view`` for a frame ``width`` pixels wide instead of 640 (same share of the frame)."""
    return replace(view, size=round(view.size * width / 640))


def write_video(path: Path, frames: list[np.ndarray], fps: float = 10) -> Path:
    """Write BGR frames as an MJPG AVI file and return its path."""
    h, w = frames[0].shape[:2]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), fps, (w, h))
    if not writer.isOpened():
        raise OSError(f"cannot write video {path}")
    for frame in frames:
        writer.write(frame)
    writer.release()
    return path


def pass_video(
    path: Path,
    text: str,
    view: View,
    frames: int = 30,
    width: int = 640,
    height: int = 480,
    seed: int = 0,
    lead_in: int | None = None,
) -> Path:
    """A video: the empty scene, then the pass sliding in from the left and held still.

    By default a quarter of the frames is empty and a quarter slides; ``lead_in``
    frames of sliding with no empty ones instead keeps the pass in view nearly always.
    """
    scene = background(width, height, seed)
    noise = _noise_fields(width, height, seed)
    out = []
    empty = frames // 4 if lead_in is None else 0
    slide = frames // 4 if lead_in is None else max(1, lead_in)
    for i in range(frames):
        if i < empty:
            frame = scene.copy()
        else:
            k = min(1.0, (i - empty + 1) / slide)
            cx = -0.3 + (view.cx + 0.3) * k
            frame = render(text, replace(view, cx=cx), width, height, scene)
        out.append(_noisy(frame, noise[i % len(noise)]))
    return write_video(path, out)


def empty_video(
    path: Path, frames: int = 30, width: int = 640, height: int = 480, seed: int = 0
) -> Path:
    """A video of the scene with nobody there (sensor noise only)."""
    scene = background(width, height, seed)
    noise = _noise_fields(width, height, seed)
    return write_video(path, [_noisy(scene, noise[i % len(noise)]) for i in range(frames)])


@functools.lru_cache(maxsize=4)
def _noise_fields(width: int, height: int, seed: int) -> list[np.ndarray]:
    """A few fields of sensor noise (sigma 2 grey levels), cycled through frame by frame."""
    rng = np.random.default_rng(seed + 1)
    return [rng.normal(0, 2.0, (height, width, 1)).astype(np.int16) for _ in range(5)]


def _noisy(frame: np.ndarray, noise: np.ndarray) -> np.ndarray:
    return np.clip(frame.astype(np.int16) + noise, 0, 255).astype(np.uint8)
