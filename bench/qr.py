"""Figures for camera QR scanning, on generated views and videos (no camera needed).

(b) Decode time per frame of both decoders at 640x480 and 1280x720, on a frame with
    a pass and on an empty one, and the share of a generated hard corpus (angle,
    perspective, blur, glare, small) each decoder reads, at both sizes.
(c) CPU time of the camera loop (``CameraQrScanner`` on a static video of the empty
    gate, motion-gated) against the naive loop that decodes every full frame with
    pyzbar at the same frame rate, as a ratio; the goal is under 0.2.

    .venv/bin/python bench/qr.py [--quick]
"""

from __future__ import annotations

import argparse
import resource
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import cv2

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from drivers.camera import CameraQrScanner
from drivers.qr_decode import (
    DECODERS,
    MotionGate,
    QrScan,
    decode_pyzbar,
    make_decoder,
    to_grey,
)
from tests.support.qr_corpus import (
    CASES,
    View,
    background,
    empty_video,
    hard_corpus,
    pass_text,
    render,
    scaled,
)

SIZES = ((640, 480), (1280, 720))


def cpu_s() -> float:
    """CPU seconds of this process, all threads (cv2's and the decoders' included)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def per_frame_ms(decode, grey, rounds: int) -> float:
    decode(grey)  # warm up
    times = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        decode(grey)
        times.append((time.perf_counter() - t0) * 1000)
    return statistics.median(times)


def bench_decode(rounds: int, corpus_n: int) -> dict[str, dict[str, float]]:
    text = pass_text(1)
    views = hard_corpus(corpus_n)
    shares: dict[str, dict[str, float]] = {d: {} for d in DECODERS}
    print("(b) decode time per frame, median ms (whole frame, one decoder call)")
    print(f"    {'decoder':8} {'size':>9} {'with pass':>10} {'empty':>8}")
    for width, height in SIZES:
        with_pass = to_grey(render(text, scaled(View(), width), width, height))
        empty = to_grey(background(width, height, seed=4))
        for name in DECODERS:
            decode = make_decoder(name)
            a = per_frame_ms(decode, with_pass, rounds)
            b = per_frame_ms(decode, empty, rounds)
            print(f"    {name:8} {width:>4}x{height:<4} {a:>10.1f} {b:>8.1f}")
    print(f"(b) hard corpus: {corpus_n} views (angle <=45 deg, tilt, blur, glare, small), read")
    for width, height in SIZES:
        frames = [to_grey(render(text, scaled(v, width), width, height)) for v in views]
        for name in DECODERS:
            decode = make_decoder(name)
            ok = sum(decode(f) == [text] for f in frames)
            pipeline = QrScan(decode, full_every=1)
            ok_pipe = sum(pipeline.scan(f) == [text] for f in frames)
            shares[name][f"{width}"] = ok / len(frames)
            n = len(frames)
            print(
                f"    {name:8} {width:>4}x{height:<4} {ok:>3}/{n} = {ok / n:5.0%}"
                f"   (first look + full size: {ok_pipe}/{n})"
            )
    print("    by kind, 640x480:", end="")
    for case, view in CASES.items():
        frame = to_grey(render(text, view))
        got = "/".join(
            name[0] + ("+" if make_decoder(name)(frame) == [text] else "-") for name in DECODERS
        )
        print(f" {case} {got}", end="")
    print()
    return shares


def open_capture(path: Path) -> cv2.VideoCapture:
    """The capture as the camera driver opens it (one decoding thread)."""
    return cv2.VideoCapture(str(path), cv2.CAP_ANY, [cv2.CAP_PROP_N_THREADS, 1])


def naive_loop(path: Path, fps: float, stop: threading.Event, frames: list[int]) -> None:
    """Every frame, full size, decoded with pyzbar, at ``fps``."""
    cap = open_capture(path)
    period = 1.0 / fps
    nxt = time.monotonic()
    while not stop.is_set():
        delay = nxt - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        nxt += period
        ok, frame = cap.read()
        if not ok:  # the end of the file: rewind, as the driver does
            cap.set(cv2.CAP_PROP_POS_FRAMES, 0)
            continue
        decode_pyzbar(to_grey(frame))
        frames[0] += 1
    cap.release()


def measure(run, seconds: float, warmup: float) -> float:
    time.sleep(warmup)
    c0, t0 = cpu_s(), time.monotonic()
    time.sleep(seconds)
    c1, t1 = cpu_s(), time.monotonic()
    run.stop()
    return (c1 - c0) / (t1 - t0)


class Naive:
    def __init__(self, path: Path, fps: float):
        self.stop_event = threading.Event()
        self.frames = [0]
        self.thread = threading.Thread(
            target=naive_loop, args=(path, fps, self.stop_event, self.frames), daemon=True
        )
        self.thread.start()

    def stop(self) -> None:
        self.stop_event.set()
        self.thread.join()


def bench_idle(fps: float, seconds: float) -> None:
    print(f"(c) CPU of an empty gate, static video at {fps:g} fps, {seconds:g} s measured")
    print(f"    {'size':>9} {'decoder':8} {'camera loop':>12} {'naive pyzbar':>13} {'ratio':>7}")
    with tempfile.TemporaryDirectory() as tmp:
        for width, height in SIZES:
            video = empty_video(Path(tmp) / f"empty{width}.avi", 100, width, height)
            naive = Naive(video, fps)
            naive_cpu = measure(naive, seconds, warmup=1.0)
            for name in DECODERS:
                cam = CameraQrScanner(
                    "qr",
                    lambda r: None,
                    {"device": str(video), "fps": fps, "decoder": name},
                )
                cam.gate = MotionGate()
                cam.start()
                # past the hold that follows the first frame (the gate's warm-up)
                cam_cpu = measure(cam, seconds, warmup=cam.gate.hold_s + 1.0)
                stats = cam.stats
                print(
                    f"    {width:>4}x{height:<4} {name:8} {cam_cpu:>11.1%} {naive_cpu:>13.1%}"
                    f" {cam_cpu / naive_cpu:>7.3f}   (frames {stats['frames']},"
                    f" decoded {stats.get('first_looks', 0)}, naive frames {naive.frames[0]})"
                )
    print("    CPU is the share of one core, all threads; goal: ratio under 0.2")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer rounds, shorter runs")
    args = parser.parse_args()
    cv2.setNumThreads(1)  # the Pi's cores are shared with the rest of the daemon
    rounds, corpus_n, seconds = (5, 20, 3.0) if args.quick else (20, 60, 8.0)
    bench_decode(rounds, corpus_n)
    bench_idle(10.0, seconds)


if __name__ == "__main__":
    main()
