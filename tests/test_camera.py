"""The camera driver on generated video files: passes read once, empty scenes gated,
a lost camera unhealthy and back, and a read pass decided by the controller."""

from __future__ import annotations

import logging
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import cv2
import hypothesis.extra.numpy as hnp
import numpy as np
import pytest
import segno
from hypothesis import given, settings
from hypothesis import strategies as st

from drivers import driver_class
from drivers.camera import CameraQrScanner
from drivers.qr_decode import DECODERS, MotionGate, QrScan, decode_zxing, make_decoder
from tests.support.qr_corpus import CASES, empty_video, pass_text, pass_video, render, scaled
from tests.support.readings import Readings
from tests.support.rig import Rig, make_config
from tests.support.waiting import wait_until

TEXT = pass_text(3)


def camera(path: Path | str, readings: Readings, stopper: list, **options) -> CameraQrScanner:
    opts = {"device": str(path), "fps": 120, "decoder": "zxing", **options}
    driver = CameraQrScanner("qr", readings, opts)
    stopper.append(driver)
    return driver


def qr_readings(readings: Readings) -> list[str]:
    readings.drain()  # into readings.seen
    return [r.value for r in readings.seen if r.kind == "qr"]


@pytest.mark.parametrize("decoder", DECODERS)
def test_a_pass_held_in_view_is_emitted_once(tmp_path, stopper, decoder):
    video = pass_video(tmp_path / "pass.avi", TEXT, CASES["plain"], frames=24, lead_in=2)
    readings = Readings()
    driver = camera(video, readings, stopper, decoder=decoder)
    driver.start()
    readings.wait_health(True)
    readings.wait(lambda r: r.kind == "qr", "a qr reading")
    # the file plays again and again, the pass (almost) always in view: it counts once
    wait_until(lambda: driver.stats["loops"] >= 3, "three plays of the video")
    assert qr_readings(readings) == [TEXT]
    assert driver.stats["repeats"] > 0


@pytest.mark.parametrize("case", ["angle", "perspective", "blur", "glare"])
def test_hard_views_in_video_are_read_with_the_default_decoder(tmp_path, stopper, case):
    video = pass_video(tmp_path / f"{case}.avi", TEXT, CASES[case], frames=24)
    readings = Readings()
    camera(video, readings, stopper).start()
    assert readings.wait(lambda r: r.kind == "qr", "a qr reading").value == TEXT


def test_a_small_far_pass_at_720p_is_read(tmp_path, stopper):
    view = scaled(CASES["small"], 1280)
    video = pass_video(tmp_path / "far.avi", TEXT, view, frames=24, width=1280, height=720)
    readings = Readings()
    driver = camera(video, readings, stopper, width=1280, height=720)
    driver.start()
    assert readings.wait(lambda r: r.kind == "qr", "a qr reading").value == TEXT


def test_the_text_is_never_logged_whole(tmp_path, stopper, caplog):
    caplog.set_level(logging.DEBUG)
    video = pass_video(tmp_path / "pass.avi", TEXT, CASES["plain"], frames=24)
    readings = Readings()
    camera(video, readings, stopper).start()
    readings.wait(lambda r: r.kind == "qr", "a qr reading")
    assert f"{len(TEXT)} chars" in caplog.text
    assert TEXT[:20] not in caplog.text and TEXT[-20:] not in caplog.text


def test_an_empty_scene_is_gated_and_decodes_nothing(tmp_path, stopper):
    video = empty_video(tmp_path / "empty.avi", frames=24)
    readings = Readings()
    driver = camera(video, readings, stopper)
    driver.gate = MotionGate(hold_s=0.2)
    driver.start()
    wait_until(lambda: driver.stats.get("gated", 0) >= 40, "gated frames")
    stats = driver.stats
    assert stats["first_looks"] < stats["frames"] / 2
    assert stats["skipped"] > stats["gated"]  # idle: most frames are not even converted
    assert qr_readings(readings) == []


def test_a_lost_camera_is_unhealthy_and_recovers(tmp_path, stopper):
    video = pass_video(tmp_path / "pass.avi", TEXT, CASES["plain"], frames=16)
    away = tmp_path / "away.avi"
    readings = Readings()
    driver = camera(video, readings, stopper)
    driver.start()
    readings.wait_health(True)
    video.rename(away)  # the file ends and cannot be opened again: the camera is gone
    lost = readings.wait_health(False)
    assert "pass.avi" in lost.value.detail
    assert not driver.health().ok
    away.rename(video)
    readings.wait_health(True)
    assert driver.health().ok
    assert driver.stats["reconnects"] >= 1


def test_a_missing_device_is_retried_until_it_appears(tmp_path, stopper):
    path = tmp_path / "later.avi"
    readings = Readings()
    camera(path, readings, stopper).start()
    readings.wait_health(False)
    pass_video(tmp_path / "tmp.avi", TEXT, CASES["plain"], frames=16).rename(path)
    readings.wait_health(True)
    assert readings.wait(lambda r: r.kind == "qr", "a qr reading").value == TEXT


def test_a_file_that_is_not_a_video_is_unhealthy(tmp_path, stopper):
    bad = tmp_path / "bad.avi"
    bad.write_bytes(b"not a video at all" * 100)
    readings = Readings()
    driver = camera(bad, readings, stopper)
    driver.start()
    readings.wait_health(False)
    wait_until(lambda: driver.stats["failures"] >= 2, "retries")
    assert qr_readings(readings) == []


def test_a_stream_password_is_never_shown(stopper):
    readings = Readings()
    url = "rtsp://gate:s3cret@127.0.0.1:1/stream"
    camera(url, readings, stopper).start()
    detail = readings.wait_health(False).value.detail
    assert "s3cret" not in detail and "127.0.0.1:1/stream" in detail


def test_an_unknown_decoder_fails_at_start(tmp_path):
    driver = CameraQrScanner("qr", Readings(), {"device": str(tmp_path / "x.avi"), "decoder": "x"})
    with pytest.raises(ValueError):
        driver.start()


def test_a_pass_read_by_the_camera_is_decided_by_the_controller(tmp_path, stopper):
    rig = Rig(tmp_path)
    try:
        token = rig.issue()
        video = pass_video(tmp_path / "pass.avi", token, CASES["perspective"], frames=24)
        config = make_config(tmp_path, qr={"driver": "camera", "device": str(video), "fps": 120})
        options = config.qr.model_dump(exclude={"driver"})
        readings = Readings()
        driver = driver_class("qr", "camera")("qr", readings, options)
        stopper.append(driver)
        driver.start()
        rig.feed("temp", 36.5)
        rig.controller.handle(readings.wait(lambda r: r.kind == "qr", "a qr reading"))
        rig.wait(1)
        decisions = rig.decisions()
        assert [d["decision"] for d in decisions] == ["granted"]
        assert decisions[0]["credential"]["kind"] == "qr"
    finally:
        rig.conn.close()


def test_an_odd_frame_is_counted_not_fatal(tmp_path, stopper):
    driver = CameraQrScanner("qr", Readings(), {"device": str(tmp_path / "x.avi")})
    driver.scan = QrScan(decode_zxing)
    driver.on_frame(np.zeros((0, 0, 3), np.uint8), 0.0)  # an empty frame from a broken driver
    driver.on_frame(np.zeros((480, 640, 7), np.uint8), 0.1)
    assert driver.stats["errors"] == 2
    frame = render(TEXT, CASES["plain"])
    driver.on_frame(frame, 0.2)
    assert driver.stats["texts"] == 1


class MjpegServer:
    """An IP camera: serves one JPEG frame over and over as an HTTP MJPEG stream."""

    def __init__(self, frame: np.ndarray, port: int = 0):
        self.jpeg = cv2.imencode(".jpg", frame)[1].tobytes()
        self.port = port
        self.server: ThreadingHTTPServer | None = None
        self.stopping = threading.Event()

    def start(self) -> None:
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                self.send_response(200)
                self.send_header("Content-Type", "multipart/x-mixed-replace; boundary=frame")
                self.end_headers()
                head = b"--frame\r\nContent-Type: image/jpeg\r\nContent-Length: %d\r\n\r\n"
                try:
                    while not owner.stopping.is_set():
                        self.wfile.write(head % len(owner.jpeg) + owner.jpeg + b"\r\n")
                        time.sleep(0.03)
                except OSError:
                    pass

        self.stopping.clear()
        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_port
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/stream.mjpg"

    def stop(self) -> None:
        self.stopping.set()
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self.server = None


def test_an_ip_camera_that_goes_away_is_unhealthy_and_recovers(stopper):
    ipcam = MjpegServer(render(TEXT, CASES["angle"]))
    ipcam.start()
    stopper.append(ipcam)
    readings = Readings()
    driver = CameraQrScanner("qr", readings, {"device": ipcam.url, "fps": 30})
    stopper.insert(0, driver)
    driver.start()
    readings.wait_health(True)
    assert readings.wait(lambda r: r.kind == "qr", "a qr reading").value == TEXT
    ipcam.stop()
    assert not readings.wait_health(False).value.ok
    ipcam.start()  # the same port again
    readings.wait_health(True)
    assert driver.stats["reconnects"] >= 1


# ---- garbage -----------------------------------------------------------------------

#: Frames no camera should send, and some it may: any dtype (NaN and inf included),
#: no, one to four dimensions, empty sides, odd channel counts.
odd_frames = hnp.arrays(
    dtype=st.one_of(hnp.scalar_dtypes(), st.just(np.dtype(np.uint8))),
    shape=hnp.array_shapes(min_dims=0, max_dims=4, min_side=0, max_side=12),
)
#: Frames of a usable size in any dtype, some wider than the first look.
large_frames = st.builds(
    lambda h, w, c, dtype, seed: (
        np.random.default_rng(seed).random((h, w) if c is None else (h, w, c)) * 300
    ).astype(dtype),
    st.integers(1, 300),
    st.integers(1, 900),
    st.sampled_from([None, 1, 2, 3, 4, 5]),
    st.sampled_from([np.uint8, np.int8, np.uint16, np.int32, np.float32, np.float64, np.bool_]),
    st.integers(0, 2**32 - 1),
)


@pytest.mark.parametrize("decoder", DECODERS)
@pytest.mark.parametrize("motion_gate", [True, False])
def test_any_frame_into_the_frame_handler_raises_nothing_and_reads_nothing(
    tmp_path, decoder, motion_gate
):
    readings = Readings()
    opts = {"device": str(tmp_path / "x.avi"), "decoder": decoder, "motion_gate": motion_gate}
    driver = CameraQrScanner("qr", readings, opts)
    driver.scan = QrScan(make_decoder(decoder), full_every=1)
    now = [0.0]

    @settings(max_examples=60, deadline=None)
    @given(frames=st.lists(st.one_of(odd_frames, large_frames), min_size=1, max_size=4))
    def check(frames: list[np.ndarray]) -> None:
        for frame in frames:
            now[0] += 0.1
            driver.on_frame(frame, now[0])

    check()
    assert qr_readings(readings) == []
    assert driver.stats["texts"] == 0
    # and the camera is not wedged by what it was shown: a pass is still read
    driver.on_frame(render(TEXT, CASES["plain"]), now[0] + 10.0)
    assert qr_readings(readings) == [TEXT]


payloads = st.one_of(st.binary(min_size=1, max_size=120), st.text(min_size=1, max_size=80))


@pytest.mark.parametrize("decoder", DECODERS)
def test_a_qr_of_random_bytes_or_text_is_never_granted(tmp_path, decoder):
    """A real QR code of anything but a signed pass: read by the camera, refused as pass_invalid."""
    rig = Rig(tmp_path)
    readings = Readings()
    opts = {"device": str(tmp_path / "x.avi"), "decoder": decoder, "motion_gate": False}
    driver = CameraQrScanner("qr", readings, opts)
    driver.scan = QrScan(make_decoder(decoder))

    @settings(max_examples=40, deadline=None)
    @given(payload=payloads)
    def check(payload: bytes | str) -> None:
        code = segno.make(payload, error="m", micro=False)
        modules = np.array(list(code.matrix_iter(scale=4, border=4)), dtype=bool)
        grey = np.where(modules, 25, 235).astype(np.uint8)
        rig.wait(60.0)  # whatever the last example left open is settled
        before = len(rig.decisions())
        rig.feed("temp", 36.6)
        driver.on_frame(grey, rig.clock.monotonic())
        (reading,) = [r for r in readings.drain() if r.kind == "qr"]
        rig.controller.handle(reading)
        rig.wait(60.0)
        new = rig.decisions()[before:]
        assert new and all(d["decision"] == "denied" for d in new)
        if reading.value.strip():
            assert [d["reasons"] for d in new] == [["pass_invalid"]]

    try:
        check()
        assert rig.turnstile.history == []
        assert "granted" not in rig.turnstile.signals
    finally:
        rig.conn.close()
