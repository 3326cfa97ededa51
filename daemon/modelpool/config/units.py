"""Durations (``250ms``, ``10s``, ``5m``, ``1h``) and sizes (``16MiB``)."""

from __future__ import annotations

import re
from decimal import Decimal

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*$")
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}

_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(B|KB|MB|GB|KiB|MiB|GiB)?\s*$")
_SIZE_UNITS = {
    None: 1,
    "B": 1,
    "KB": 1000,
    "MB": 1000**2,
    "GB": 1000**3,
    "KiB": 1024,
    "MiB": 1024**2,
    "GiB": 1024**3,
}

# The same grammar, as JSON Schema patterns (kept next to the parsers on purpose).
DURATION_PATTERN = r"^\d+(\.\d+)?(ms|s|m|h)$"
POSITIVE_DURATION_PATTERN = r"^(\d*[1-9]\d*(\.\d+)?|\d+\.\d*[1-9]\d*)(ms|s|m|h)$"
"""The same, above zero: a non-zero digit before the point, or after it."""
SIZE_PATTERN = r"^\d+(\.\d+)?(B|KB|MB|GB|KiB|MiB|GiB)$"


def parse_duration(value: str | float) -> float:
    """Seconds in ``value``; a bare number is seconds."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    match = _DURATION.match(str(value))
    if not match:
        raise ValueError(f"not a duration: {value!r} (use e.g. 250ms, 10s, 5m, 1h)")
    return float(match[1]) * _DURATION_UNITS[match[2]]


def parse_size(value: str | int) -> int:
    """Bytes in ``value``; a bare number is bytes."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    match = _SIZE.match(str(value))
    if not match:
        raise ValueError(f"not a size: {value!r} (use e.g. 512KiB, 16MiB)")
    return int(Decimal(match[1]) * _SIZE_UNITS[match[2]])  # exact: float gives 2.01KB = 2009


def format_duration(seconds: float) -> str:
    """The shortest exact spelling of ``seconds`` for humans."""
    for unit, size in (("h", 3600.0), ("m", 60.0), ("s", 1.0)):
        if seconds >= size and (seconds / size).is_integer():
            return f"{int(seconds / size)}{unit}"
    millis = f"{round(seconds * 1000, 3):.3f}".rstrip("0").rstrip(".")  # never 1e+06ms
    return f"{millis}ms"
