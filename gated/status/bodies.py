"""The JSON bodies of the guard's actions on the status screen, as pydantic models.

A body that does not fit is answered 400 with the one line its first refused field
names (:attr:`Body.MESSAGES`), what the screen shows the guard. ``confirm_temp_c`` is
checked against the gate's ``valid_temp_c``, handed in as the validation context.
"""

from __future__ import annotations

from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator

from gated.events import MODES
from gated.status.auth import GUARD_ID, check_pin_text


class Body(BaseModel):
    """A request body: strict (no ``"1"`` for 1, no 1 for ``true``), other keys ignored."""

    model_config = ConfigDict(strict=True, extra="ignore", frozen=True)
    #: The one-line error a refused field is answered with (400), by field name.
    MESSAGES: ClassVar[dict[str, str]] = {}

    @classmethod
    def message(cls, exc: ValidationError, context: dict[str, Any]) -> str:
        """What the guard is told of the first field refused."""
        first = exc.errors()[0]
        field = str(first["loc"][0]) if first["loc"] else ""
        text = cls.MESSAGES.get(field)
        return text.format(**context) if text else f"{field}: {first['msg']}"


class LoginBody(Body):
    """``POST /api/guard/login``."""

    MESSAGES: ClassVar[dict[str, str]] = {
        "guard": "guard: 1 to 32 letters, digits, '_', '.', '-'",
        "pin": "pin: 4 to 64 characters",
    }
    guard: str
    pin: str

    @field_validator("guard")
    @classmethod
    def _guard_id(cls, v: str) -> str:
        if not GUARD_ID.match(v):
            raise ValueError("not a guard id")
        return v

    @field_validator("pin")
    @classmethod
    def _pin_text(cls, v: str) -> str:
        if why := check_pin_text(v):
            raise ValueError(why)
        return v


class DecideBody(Body):
    """``POST /api/guard/decide``; ``confirm_temp_c`` within ``valid_temp_c`` (the context)."""

    MESSAGES: ClassVar[dict[str, str]] = {
        "event": "event (id) and grant (true/false) are required",
        "grant": "event (id) and grant (true/false) are required",
        "confirm_temp_c": "confirm_temp_c: a reading in °C, {low} to {high}",
    }
    event: str
    grant: bool
    confirm_temp_c: float | None = Field(None, allow_inf_nan=False)

    @field_validator("confirm_temp_c")
    @classmethod
    def _a_temperature(cls, v: float | None, info: ValidationInfo) -> float | None:
        low, high = (info.context or {})["valid_temp_c"]
        if v is not None and not low <= v <= high:
            raise ValueError("not a temperature a person can have")
        return None if v is None else float(v)


class ModeBody(Body):
    """``POST /api/mode``."""

    MESSAGES: ClassVar[dict[str, str]] = {"mode": f"mode: one of {', '.join(MODES)}"}
    mode: str

    @field_validator("mode")
    @classmethod
    def _a_mode(cls, v: str) -> str:
        if v not in MODES:
            raise ValueError("not a mode")
        return v


class AckBody(Body):
    """``POST /api/alarm/ack``."""

    MESSAGES: ClassVar[dict[str, str]] = {"event": "event (alarm id) is required"}
    event: str
