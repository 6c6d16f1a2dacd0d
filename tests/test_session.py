"""The session state machine: temperature first, re-measure, timeouts, prompts."""

from __future__ import annotations

from typing import Any

from gated.config import PolicyConfig
from gated.session import SessionMachine


def machine(**kw: Any) -> SessionMachine:
    return SessionMachine(PolicyConfig.model_validate(kw), "in")


def test_card_before_temperature_waits_for_the_temperature() -> None:
    m = machine()
    step = m.feed("card", "0A1B2C3D4E", 0.0)
    assert step.ready is None and step.prompts == ["measure_temp"]
    step = m.feed("temp", 36.5, 1.0)
    assert step.ready is not None and step.ready.card == "0A1B2C3D4E"
    assert step.ready.temperature == 36.5


def test_a_fever_is_measured_again_and_the_last_valid_reading_counts() -> None:
    m = machine(remeasure=1)
    assert m.feed("temp", 37.8, 0.0).prompts == ["remeasure"]
    step = m.feed("temp", 36.9, 1.0)
    assert step.prompts == ["show_pass"]
    step = m.feed("card", "AB", 2.0)
    assert step.ready is not None
    assert step.ready.temperature == 36.9 and step.ready.readings == [37.8, 36.9]


def test_a_confirmed_fever_still_asks_for_the_pass_so_the_alarm_names_the_person() -> None:
    m = machine(remeasure=2)
    m.feed("temp", 38.0, 0.0)
    m.feed("temp", 38.1, 1.0)
    step = m.feed("temp", 37.9, 2.0)
    assert step.prompts == ["show_pass"]  # "fever" is the verdict's prompt, said once
    assert m.current is not None and m.current.temp_settled


def test_an_invalid_reading_asks_again_and_is_not_the_temperature() -> None:
    m = machine()
    step = m.feed("temp", 29.0, 0.0)
    assert step.prompts == ["remeasure"]
    assert m.current is not None and m.current.temperature is None
    assert m.current.invalid_readings == [29.0]


def test_no_progress_times_out_and_motion_alone_leaves_no_verdict() -> None:
    m = machine(session_timeout_s=15)
    assert m.feed("motion", True, 0.0).prompts == ["welcome", "measure_temp"]
    assert m.expire(14.9) is None and m.current is not None
    assert m.expire(15.0) is None and m.current is None
    assert m.motion_only_timeouts == 1

    m.feed("temp", 36.5, 100.0)
    m.feed("motion", True, 110.0)  # motion is not progress
    s = m.expire(115.0)
    assert s is not None and s.timed_out and s.card is None


def test_card_and_qr_needs_both() -> None:
    m = machine(credentials="card_and_qr")
    m.feed("temp", 36.5, 0.0)
    step = m.feed("card", "AB", 1.0)
    assert step.ready is None and step.prompts == ["show_pass"]
    assert m.feed("qr", "token", 2.0).ready is not None


def test_with_checks_off_the_first_credential_settles() -> None:
    m = machine()
    step = m.feed("card", "AB", 0.0, checks_off=True)
    assert step.ready is not None and step.ready.temperature is None
