"""The one debouncer of the readers that repeat themselves, and the one backoff."""

from __future__ import annotations

import pytest

from drivers.common.backoff import Backoff
from drivers.common.debounce import Debouncer


def test_a_key_held_in_view_counts_once_and_again_after_the_window():
    d = Debouncer(1.0)
    assert d.accept("a", 10.0)
    assert not d.accept("a", 10.5)
    assert not d.accept("a", 11.4)  # each sighting extends the window
    assert d.accept("b", 11.4)  # per key
    assert d.accept("a", 12.5)


def test_a_sighting_exactly_at_the_window_is_a_new_presentation():
    d = Debouncer(2.0)
    assert d.accept("a", 0.0)
    assert not d.accept("a", 1.999)
    assert d.accept("a", 3.999)  # exactly 2.0 after the last sighting


def test_a_window_of_zero_lets_every_sighting_through_even_at_one_instant():
    d = Debouncer(0)
    assert all(d.accept("a", 5.0) for _ in range(3))


def test_keys_are_remembered_by_digest_and_forgotten_once_their_window_ended():
    d = Debouncer(1.0, max_remembered=8)
    secret = "eyJhbGciOiJFZERTQSJ9.personal"
    d.accept(secret, 0.0)
    assert secret.encode() not in d._seen and secret not in d._seen
    for i in range(100):
        d.accept(str(i), 1.0 + i)
    assert len(d) <= 9


def test_the_backoff_doubles_to_its_cap_and_resets():
    b = Backoff(0.05, 0.5, jitter=0)
    assert [b.next() for _ in range(6)] == pytest.approx([0.05, 0.1, 0.2, 0.4, 0.5, 0.5])
    b.reset()
    assert b.next() == 0.05


def test_the_backoff_jitter_takes_up_to_half_off():
    b = Backoff(1.0, 8.0)  # jitter 0.5: between half and all of the delay
    for expected in (1.0, 2.0, 4.0, 8.0, 8.0):
        assert expected / 2 <= b.next() <= expected
    with pytest.raises(ValueError):
        Backoff(jitter=1.5)
