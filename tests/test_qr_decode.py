"""QR decoding on generated camera views: both decoders, the motion gate, the first
look and full-size fallback, the debouncer and what may be logged."""

from __future__ import annotations

import numpy as np
import pytest
import segno
from hypothesis import given, settings
from hypothesis import strategies as st

from drivers.common.debounce import Debouncer
from drivers.qr_decode import (
    DECODERS,
    FIRST_LOOK_WIDTH,
    MotionGate,
    QrScan,
    decode_pyzbar,
    decode_zxing,
    fingerprint,
    first_look,
    make_decoder,
    to_grey,
)
from tests.support.qr_corpus import CASES, View, background, hard_corpus, pass_text, render, scaled

TEXT = pass_text(1)
DECODE = {"zxing": decode_zxing, "pyzbar": decode_pyzbar}
#: The hard cases each decoder is known to read at 640x480 (the bench has the shares).
READS = {
    "zxing": set(CASES),
    "pyzbar": {"plain", "blur", "glare", "small"},
}


@pytest.mark.parametrize("decoder", DECODERS)
@pytest.mark.parametrize("case", sorted(CASES))
def test_each_hard_case(decoder, case):
    grey = to_grey(render(TEXT, CASES[case]))
    texts = DECODE[decoder](grey)
    if case in READS[decoder]:
        assert texts == [TEXT]
    else:
        assert texts in ([], [TEXT])  # a better library version may read it: fine


@pytest.mark.parametrize("decoder", DECODERS)
def test_an_empty_scene_has_no_codes(decoder):
    assert DECODE[decoder](to_grey(background(640, 480, seed=3))) == []


def test_zxing_reads_most_of_a_hard_mix():
    views = hard_corpus(12, seed=11)
    read = sum(decode_zxing(to_grey(render(TEXT, v))) == [TEXT] for v in views)
    assert read >= 6, f"zxing read only {read} of 12"


@pytest.mark.parametrize("decoder", DECODERS)
def test_two_passes_in_one_frame_are_both_read(decoder):
    other = pass_text(2)
    frame = render(TEXT, View(size=220, cx=0.27), 640, 480)
    frame = render(other, View(size=220, cx=0.73), 640, 480, scene=frame)
    assert sorted(DECODE[decoder](to_grey(frame))) == sorted([TEXT, other])


@pytest.mark.parametrize("decoder", DECODERS)
def test_a_binary_payload_is_handed_on_marked_not_dropped(decoder):
    qr = segno.make(b"\xff\xfe\x00JWS?", error="m", micro=False)
    rows = np.array(list(qr.matrix_iter(scale=8, border=4)), dtype=bool)
    grey = np.where(rows, 25, 235).astype(np.uint8)
    texts = DECODE[decoder](grey)
    assert len(texts) == 1 and "JWS?" in texts[0]  # the controller refuses it as pass_invalid


@pytest.mark.parametrize("name", DECODERS)
def test_make_decoder_names_both_and_refuses_others(name):
    assert make_decoder(name) is DECODE[name]
    with pytest.raises(ValueError):
        make_decoder("opencv")


def _noisy(frame: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    noise = rng.normal(0, 2.5, frame.shape[:2])
    return np.clip(to_grey(frame) + noise, 0, 255).astype(np.uint8)


def test_the_motion_gate_lets_through_motion_and_the_hold_then_stops():
    rng = np.random.default_rng(0)
    scene = background(640, 480, seed=5)
    gate = MotionGate(hold_s=1.0)
    assert gate.moving(_noisy(scene, rng), 0.0)  # the first frame: look once
    assert gate.moving(_noisy(scene, rng), 0.5)  # within the hold
    assert not gate.moving(_noisy(scene, rng), 1.6)  # sensor noise is not motion
    assert not gate.moving(_noisy(scene, rng), 1.7)
    with_pass = render(TEXT, View(size=200, cx=0.3), 640, 480, scene=scene)
    assert gate.moving(_noisy(with_pass, rng), 1.8)  # the pass comes in
    assert gate.moving(_noisy(with_pass, rng), 2.5)  # held still: within the hold
    assert not gate.moving(_noisy(with_pass, rng), 3.0 + 1.0)
    assert gate.stats["gated"] == 3
    gate.reset()
    assert gate.moving(_noisy(with_pass, rng), 5.0)  # re-opened: look again


def test_a_large_pass_is_found_by_the_first_look_alone():
    scan = QrScan(decode_zxing)
    grey = to_grey(render(TEXT, scaled(View(), 1280), 1280, 720))
    assert scan.scan(grey) == [TEXT]
    assert scan.stats == {"first_looks": 1, "full_scans": 0, "found": 1}


@pytest.mark.parametrize("decoder", DECODERS)
def test_a_small_far_pass_is_found_at_full_size_within_two_frames(decoder):
    scan = QrScan(DECODE[decoder], full_every=2)
    grey = to_grey(render(TEXT, View(size=180, cx=0.7, cy=0.4), 1280, 720))
    assert first_look(grey, DECODE[decoder]) == []  # too small at half size
    found = scan.scan(grey) or scan.scan(grey)
    assert found == [TEXT]
    assert scan.stats["full_scans"] == 1


def test_the_debouncer_counts_a_held_pass_once():
    d = Debouncer(2.0)
    assert d.accept("a", 0.0)
    assert not d.accept("a", 1.5)
    assert not d.accept("a", 3.0)  # still in view: each sighting extends the window
    assert d.accept("b", 3.1)
    assert d.accept("a", 5.5)  # away for 2.5 s: shown again
    for i in range(100):
        d.accept(str(i), 10.0 + i * 3)
    assert len(d._seen) <= 65


def test_a_fingerprint_never_contains_the_text():
    fp = fingerprint(TEXT)
    assert str(len(TEXT)) in fp
    assert TEXT[:8] not in fp and TEXT[-8:] not in fp
    assert fingerprint(TEXT) == fp != fingerprint(TEXT + "x")


# ---- garbage -----------------------------------------------------------------------


@st.composite
def captured_frames(draw: st.DrawFn) -> np.ndarray:
    """What a capture can hand over: 8-bit grey, BGR or BGRA, any size, any content.

    Sizes run past ``FIRST_LOOK_WIDTH`` so the full-size decode is reached too; the
    content is noise, flat, stripes or random blocks (the look of a QR's modules).
    """
    h = draw(st.integers(1, 360))
    w = draw(st.one_of(st.integers(1, 64), st.integers(1, FIRST_LOOK_WIDTH + 300)))
    channels = draw(st.sampled_from([None, 3, 4]))
    shape = (h, w) if channels is None else (h, w, channels)
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    kind = draw(st.sampled_from(["noise", "flat", "stripes", "blocks"]))
    if kind == "noise":
        return rng.integers(0, 256, shape, dtype=np.uint8)
    if kind == "flat":
        return np.full(shape, draw(st.integers(0, 255)), np.uint8)
    if kind == "stripes":
        period = draw(st.integers(1, 40))
        row = np.where((np.arange(w) // period) % 2 == 0, 25, 235).astype(np.uint8)
        grey = np.broadcast_to(row, (h, w))
    else:
        module = draw(st.integers(1, 12))
        cells = rng.integers(0, 2, (h // module + 1, w // module + 1), dtype=np.uint8)
        grey = np.kron(cells, np.ones((module, module), np.uint8))[:h, :w] * 210 + 25
    grey = np.ascontiguousarray(grey, dtype=np.uint8)
    if channels is None:
        return grey
    return np.ascontiguousarray(np.repeat(grey[:, :, None], channels, axis=2))


@pytest.mark.parametrize("decoder", DECODERS)
def test_any_captured_frame_scans_without_error_and_finds_no_code(decoder):
    scan = QrScan(DECODE[decoder], full_every=1)

    @settings(max_examples=60, deadline=None)
    @given(frame=captured_frames())
    def check(frame: np.ndarray) -> None:
        assert scan.scan(to_grey(frame)) == []

    check()
    assert scan.stats["found"] == 0


@settings(max_examples=80, deadline=None)
@given(frames=st.lists(st.tuples(captured_frames(), st.floats(0.0, 5.0)), min_size=1, max_size=6))
def test_the_motion_gate_takes_any_captured_frames_in_any_order(frames):
    gate = MotionGate(hold_s=1.0)
    now = 0.0
    for i, (frame, dt) in enumerate(frames):
        now += dt
        moving = gate.moving(frame, now)
        assert isinstance(moving, bool)
        if i == 0:
            assert moving  # the first frame is always looked at
    last = frames[-1][0]
    assert not gate.moving(
        last, now + 1.1
    )  # nothing moved for the hold: gated, whatever came before
