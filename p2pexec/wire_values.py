"""
Checking values from outside (the wire, a job file, the command line): the
error they raise (L{ValidationError}), names and kinds, strict JSON, and the
field checks the value types of L{p2pexec.model} are built with.

Nothing in this module does I/O.  L{p2pexec.model} re-exports its public
names, so C{from p2pexec.model import ValidationError} keeps working.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Mapping
from typing import Any

NAME_PATTERN = re.compile(r"[A-Za-z0-9_.-]{1,64}")
"""What a node name, cluster name or task kind may look like."""

_LEADING_LETTERS = re.compile(r"^[A-Za-z]+")


class ValidationError(ValueError):
    """
    A value from outside (the wire, a job file, the command line) is not
    acceptable.  The message names the field and what is wrong with it.
    """


def kind_of(name: str) -> str:
    """
    The task kind implied by a task or node name: its leading letters.

    C{b1} is of kind C{b}; C{render7} of kind C{render}.  A name that does not
    start with a letter is its own kind.
    """
    match = _LEADING_LETTERS.match(name)
    return match.group(0) if match else name


def loads_strict(data: bytes, object_pairs_hook: Callable[[list[tuple[str, Any]]], Any] | None = None) -> Any:
    """
    Decode UTF-8 JSON from the network, refusing what cannot be written back
    as UTF-8: a lone surrogate (C{"\\ud800"}) that JSON escapes allow.

    @param object_pairs_hook: as for C{json.loads} (to refuse duplicate keys, say).
    @raise ValueError: if C{data} is not such JSON.
    """
    value = json.loads(data.decode("utf-8"), object_pairs_hook=object_pairs_hook)
    try:
        json.dumps(value, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("the JSON holds a lone surrogate (an unpaired \\ud800-\\udfff escape)") from None
    return value


def shorten(text: str, limit: int = 300) -> str:
    """C{text}, cut to C{limit} characters with a note of how much was left out (for errors and logs)."""
    if len(text) <= limit:
        return text
    return f"{text[:limit]}... ({len(text) - limit} more characters)"


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise ValidationError(message)


def _field(data: Mapping[str, Any], key: str, kind: type, what: str) -> Any:
    _require(key in data, f"{what}: missing field {key!r}")
    value = data[key]
    if kind is int:
        _require(
            isinstance(value, int) and not isinstance(value, bool),
            f"{what}: field {key!r} must be an integer, not {value!r}",
        )
    elif kind is float:
        _require(
            isinstance(value, (int, float)) and not isinstance(value, bool),
            f"{what}: field {key!r} must be a number, not {value!r}",
        )
    else:
        _require(
            isinstance(value, kind),
            f"{what}: field {key!r} must be a {kind.__name__}, not {value!r}",
        )
    return value


def _finite_seconds(value: int | float, what: str) -> float:
    """
    C{value} as a float, if it is a finite number of seconds; a negative one
    counts as 0 (a worker that measures durations on a wall clock that was
    stepped back while the task ran; p2pexec's own use a monotonic clock).

    JSON decodes C{NaN} and C{1e400} to floats that are not finite, and a
    huge integer overflows C{float()}: neither is a duration.
    """
    try:
        seconds = float(value)
    except OverflowError:
        seconds = math.inf
    if not math.isfinite(seconds):
        raise ValidationError(f"{what} must be a finite number of seconds, not {seconds!r}")
    return max(seconds, 0.0)


def validate_name(value: Any, what: str) -> str:
    """
    Check a node name, cluster name or task kind and return it.

    @raise ValidationError: naming C{what} when the value is unacceptable.
    """
    _require(
        isinstance(value, str) and bool(NAME_PATTERN.fullmatch(value)),
        f"{what} must be 1-64 characters of A-Z a-z 0-9 _ . -, not {value!r}",
    )
    return value
