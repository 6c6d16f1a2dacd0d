"""The one guard every message from the broker is decoded through: bytes to JSON, bounded.

Whatever a broker delivers on a subscribed topic, :func:`decode` returns a JSON value or
raises :class:`InputRefused` with a short reason; nothing else escapes it. The bounds:

- size: at most ``max_bytes`` (commands 64 KiB, registry messages ``[mqtt]
  registry_max_bytes``), checked before anything else is done with the payload;
- UTF-8 only (``json.loads`` of bytes would also guess UTF-16 and UTF-32);
- nesting at most :data:`MAX_DEPTH` deep, measured WITHOUT recursion before parsing
  (``json.loads`` recurses in C per level: 50,000 levels raise ``RecursionError``);
- numbers: integers within +-2**53 (I-JSON, RFC 7493: what every JSON peer reads exactly;
  a 400-digit ``ts`` made ``float()`` raise ``OverflowError``), floats finite, and no
  ``NaN`` / ``Infinity`` (Python's json accepts them, JSON does not).
"""

from __future__ import annotations

import json
import math
import re
from itertools import accumulate
from typing import Any

#: Deepest nesting of arrays and objects taken (a registry snapshot is 4 deep).
MAX_DEPTH = 32
#: Largest integer magnitude taken: 2**53, the range a double holds exactly.
MAX_INT = 2**53
#: Size limit of a command (``T/cmd/{name}`` other than ``registry``): 64 KiB.
COMMAND_MAX_BYTES = 64 * 1024

# A JSON string. It never starts right after a backslash: outside strings valid JSON
# has none, and that rule keeps the scan linear on a payload of escaped quotes that is
# never closed. Unrolled (``[^"\\]*`` in one go), it runs at C speed on long strings.
_STRING = re.compile(rb'(?<!\\)"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)
_NOT_BRACKET = re.compile(rb"[^\[\]{}]+")
_DEPTH_STEP = {ord("["): 1, ord("{"): 1, ord("]"): -1, ord("}"): -1}


class InputRefused(ValueError):
    """A message from the broker refused by the guard; ``code`` names the rule it broke."""

    def __init__(self, code: str, reason: str):
        super().__init__(reason)
        self.code = code
        self.reason = reason


def nesting_depth(payload: bytes) -> int:
    """How deep arrays and objects nest in ``payload`` (brackets inside strings ignored).

    No recursion and no per-character Python loop: strings are cut out and the brackets
    left are summed in C. On input that is not JSON the figure may be too high, never
    too low for the part ``json.loads`` would read before failing.
    """
    brackets = _NOT_BRACKET.sub(b"", _STRING.sub(b"", payload))
    return max(accumulate(map(_DEPTH_STEP.__getitem__, brackets)), default=0)


def _int(text: str) -> int:
    # Checked on the digits before int(): a 100,000-digit number costs nothing to refuse.
    if len(text.lstrip("-")) > 16 or abs(value := int(text)) > MAX_INT:
        raise InputRefused("number", f"integer out of range ({len(text)} digits; limit 2**53)")
    return value


def _float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise InputRefused("number", f"number out of range ({text[:24]}...)")
    return value


def _constant(name: str) -> Any:
    raise InputRefused("number", f"{name} is not a JSON number")


def decode(payload: bytes, max_bytes: int, max_depth: int = MAX_DEPTH) -> Any:
    """The JSON value in ``payload``; :class:`InputRefused` with the reason if not taken."""
    if len(payload) > max_bytes:
        raise InputRefused("size", f"payload too large ({len(payload)} bytes; limit {max_bytes})")
    # No deeper than the brackets it holds at all: most messages are refused nothing by
    # the scan, and skip it (a gate's event has a handful; the hub reads thousands a second).
    if payload.count(b"[") + payload.count(b"{") > max_depth:
        depth = nesting_depth(payload)
        if depth > max_depth:
            raise InputRefused("depth", f"nested too deep ({depth} levels; limit {max_depth})")
    try:
        text = payload.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InputRefused("utf8", f"not UTF-8 (byte {exc.start})") from None
    try:
        return json.loads(
            text, parse_int=_int, parse_float=_float, parse_constant=_constant, strict=True
        )
    except InputRefused:
        raise
    except ValueError as exc:  # JSONDecodeError, and int()'s own digit limit
        raise InputRefused("json", f"not valid JSON ({str(exc)[:80]})") from None
    except RecursionError:  # cannot happen after the depth check; never let it escape
        raise InputRefused("depth", "nested too deep") from None
