"""The status screen's request bodies: what each refuses, and the line the guard is told."""

from __future__ import annotations

import math
from typing import Any

import pytest
from pydantic import ValidationError

from gated.status.bodies import AckBody, Body, DecideBody, LoginBody, ModeBody

CONTEXT = {"valid_temp_c": (30.0, 43.0), "low": 30.0, "high": 43.0}
TEMP = "confirm_temp_c: a reading in °C, 30.0 to 43.0"
EVENT_GRANT = "event (id) and grant (true/false) are required"


def refusal(model: type[Body], data: dict[str, Any]) -> str:
    with pytest.raises(ValidationError) as exc:
        model.model_validate(data, context=CONTEXT)
    return model.message(exc.value, CONTEXT)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({}, EVENT_GRANT),
        ({"event": "e1"}, EVENT_GRANT),
        ({"event": 1, "grant": True}, EVENT_GRANT),
        ({"event": "e1", "grant": 1}, EVENT_GRANT),
        ({"event": "e1", "grant": "true"}, EVENT_GRANT),
        ({"event": "e1", "grant": True, "confirm_temp_c": True}, TEMP),
        ({"event": "e1", "grant": True, "confirm_temp_c": "36.6"}, TEMP),
        ({"event": "e1", "grant": True, "confirm_temp_c": math.nan}, TEMP),
        ({"event": "e1", "grant": True, "confirm_temp_c": math.inf}, TEMP),
        ({"event": "e1", "grant": True, "confirm_temp_c": 99}, TEMP),
        ({"event": "e1", "grant": True, "confirm_temp_c": 29.9}, TEMP),
    ],
)
def test_a_decision_body_names_what_is_wrong(data: dict[str, Any], message: str) -> None:
    assert refusal(DecideBody, data) == message


def test_a_decision_body_takes_an_int_reading_as_degrees_and_ignores_other_keys() -> None:
    body = DecideBody.model_validate(
        {"event": "e1", "grant": True, "confirm_temp_c": 37, "extra": 1}, context=CONTEXT
    )
    assert (body.event, body.grant, body.confirm_temp_c) == ("e1", True, 37.0)
    assert isinstance(body.confirm_temp_c, float)
    none = DecideBody.model_validate({"event": "e1", "grant": False}, context=CONTEXT)
    assert none.confirm_temp_c is None


def test_login_mode_and_ack_bodies() -> None:
    guard = "guard: 1 to 32 letters, digits, '_', '.', '-'"
    assert refusal(LoginBody, {}) == guard  # the guard is checked first, as before
    assert refusal(LoginBody, {"guard": "G 1", "pin": "1234"}) == guard
    assert refusal(LoginBody, {"guard": "G01", "pin": 1234}) == "pin: 4 to 64 characters"
    assert refusal(LoginBody, {"guard": "G01", "pin": "12"}) == "pin: 4 to 64 characters"
    assert LoginBody.model_validate({"guard": "G01", "pin": "2468"}).guard == "G01"
    modes = "mode: one of normal, locked, free, guard_only"
    assert refusal(ModeBody, {"mode": "party"}) == refusal(ModeBody, {"mode": 1}) == modes
    assert ModeBody.model_validate({"mode": "free"}).mode == "free"
    assert refusal(AckBody, {"event": None}) == "event (alarm id) is required"
