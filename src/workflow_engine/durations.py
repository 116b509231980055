"""Durations as strings (`250ms`, `2s`, `5m`, `1h`, `1d`, or combined `1m30s`) parsed to seconds."""

from __future__ import annotations

import re
from typing import Annotated, Any

from pydantic import BeforeValidator, PlainSerializer, WithJsonSchema

_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|us|s|m|h|d)")
_UNITS = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_SIZE = re.compile(r"^(\d+(?:\.\d+)?)\s*(B|KB|MB|GB|Ki|Mi|Gi|K|M|G)?$", re.IGNORECASE)
_SIZE_UNITS = {
    "b": 1, "k": 1000, "kb": 1000, "m": 1000**2, "mb": 1000**2, "g": 1000**3, "gb": 1000**3,
    "ki": 1024, "mi": 1024**2, "gi": 1024**3,
}


def parse_duration(value: str | float) -> float:
    """Seconds in a duration string; a bare number is seconds."""
    if isinstance(value, bool):
        raise ValueError(f"invalid duration {value!r}")
    if isinstance(value, int | float):
        if value < 0:
            raise ValueError(f"duration must not be negative, got {value!r}")
        return float(value)
    if not isinstance(value, str):
        raise ValueError(f"invalid duration {value!r}: use a number with a unit such as 250ms, 2s, 5m, 1h")
    text = value.strip()
    pos, total = 0, 0.0
    for match in _PART.finditer(text):
        if match.start() != pos:
            break
        total += float(match.group(1)) * _UNITS[match.group(2)]
        pos = match.end()
    if pos != len(text) or not text:
        raise ValueError(f"invalid duration {value!r}: use a number with a unit such as 250ms, 2s, 5m, 1h")
    return total


def format_duration(seconds: float) -> str:
    """The shortest exact duration string for `seconds`."""
    if seconds and seconds < 1:
        return f"{round(seconds * 1000, 3):g}ms"
    return f"{seconds:g}s"


def parse_size(value: str | int) -> int:
    """Bytes in a size string (`512Mi`, `1MB`, `1048576`)."""
    if isinstance(value, bool):
        raise ValueError(f"invalid size {value!r}")
    if isinstance(value, int):
        return value
    if not isinstance(value, str):
        raise ValueError(f"invalid size {value!r}: use bytes or a unit such as 64KB, 1Mi, 512Mi")
    match = _SIZE.match(value.strip())
    if not match:
        raise ValueError(f"invalid size {value!r}: use bytes or a unit such as 64KB, 1Mi, 512Mi")
    return int(float(match.group(1)) * _SIZE_UNITS[(match.group(2) or "b").lower()])


def _duration(value: Any) -> float:
    return parse_duration(value)


def _size(value: Any) -> int:
    return parse_size(value)


Duration = Annotated[
    float,
    BeforeValidator(_duration),
    PlainSerializer(format_duration, return_type=str),
    WithJsonSchema({"type": ["string", "number"], "pattern": r"^(\d+(\.\d+)?(us|ms|s|m|h|d))+$",
                    "description": "A duration: 250ms, 2s, 5m, 1h (a bare number is seconds)."}),
]
"""A duration in seconds, written in config as `250ms`, `2s`, `5m`..."""

ByteSize = Annotated[
    int,
    BeforeValidator(_size),
    WithJsonSchema({"type": ["string", "integer"], "description": "A size in bytes: 1048576, 64KB, 1Mi."}),
]
"""A size in bytes, written in config as `1048576`, `64KB`, `512Mi`."""
