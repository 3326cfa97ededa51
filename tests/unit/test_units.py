"""Durations and sizes: what the schema accepts parses, and what `check` prints parses back."""

from __future__ import annotations

import math
import re
from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from modelpool.config.units import (
    DURATION_PATTERN,
    POSITIVE_DURATION_PATTERN,
    SIZE_PATTERN,
    format_duration,
    parse_duration,
    parse_size,
)

DURATION_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600}
SIZE_UNITS = {
    "B": 1,
    "KB": 1000,
    "MB": 1000**2,
    "GB": 1000**3,
    "KiB": 1024,
    "MiB": 1024**2,
    "GiB": 1024**3,
}

millis = st.integers(min_value=0, max_value=10**10)  # up to ~4 months, to the millisecond
decimals = st.decimals(min_value=0, max_value=10**6, places=3, allow_nan=False)


@st.composite
def spelled(draw: st.DrawFn, units: list[str]) -> str:
    """Numbers as people write them: `10`, `0.25`, `007.50`, then a unit."""
    whole = draw(st.from_regex(r"\A\d{1,12}\Z"))
    fraction = draw(st.one_of(st.just(""), st.from_regex(r"\A\.\d{1,6}\Z")))
    return f"{whole}{fraction}{draw(st.sampled_from(units))}"


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("250ms", 0.25),
        ("10s", 10.0),
        ("5m", 300.0),
        ("1h", 3600.0),
        ("1.5s", 1.5),
        ("0.5ms", 0.0005),
        (30, 30.0),
        (2.5, 2.5),
    ],
)
def test_parse_duration_examples(text: str | float, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(0.25, "250ms"), (1.5, "1500ms"), (60, "1m"), (90, "90s"), (7200, "2h"), (0, "0ms")],
)
def test_format_duration_picks_the_largest_exact_unit(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text


@pytest.mark.parametrize("bad", ["", "ms", "10 parsecs", "-5s", "1d", "1e3s", "fast", True])
def test_parse_duration_rejects_nonsense(bad: str | bool) -> None:
    with pytest.raises(ValueError, match="not a duration"):
        parse_duration(bad)


@given(millis)
def test_format_then_parse_duration_round_trips(ms: int) -> None:
    seconds = ms / 1000
    text = format_duration(seconds)
    assert re.fullmatch(DURATION_PATTERN, text), text  # what `check` prints is valid config
    assert math.isclose(parse_duration(text), seconds, rel_tol=1e-12, abs_tol=1e-12)


@given(st.from_regex(r"\A0{0,3}[0-9]{1,4}(\.[0-9]{1,4})?(ms|s|m|h)\Z"))
def test_the_positive_duration_grammar_is_exactly_the_durations_above_zero(text: str) -> None:
    number = Decimal(text.rstrip("hms"))
    assert bool(re.fullmatch(POSITIVE_DURATION_PATTERN, text)) == (number > 0), text


@pytest.mark.parametrize("zero", ["0s", "0ms", "00.000h", "0.0m"])
def test_zero_is_no_positive_duration(zero: str) -> None:
    assert re.fullmatch(DURATION_PATTERN, zero)
    assert not re.fullmatch(POSITIVE_DURATION_PATTERN, zero)


@given(spelled(sorted(DURATION_UNITS)))
def test_every_duration_the_schema_accepts_parses(text: str) -> None:
    assert re.fullmatch(DURATION_PATTERN, text), text
    value = parse_duration(text)
    assert value >= 0
    number, unit = re.fullmatch(r"([\d.]+)(ms|s|m|h)", text).groups()  # type: ignore[union-attr]
    assert math.isclose(value, float(number) * DURATION_UNITS[unit], rel_tol=1e-12)


@given(st.floats(min_value=0, max_value=1e9, allow_nan=False, allow_infinity=False))
def test_a_number_of_seconds_is_taken_as_is(seconds: float) -> None:
    assert parse_duration(seconds) == seconds
    assert math.isclose(parse_duration(format_duration(seconds)), seconds, abs_tol=1e-6)


@pytest.mark.parametrize(
    ("text", "size"),
    [("16MiB", 16 * 1024 * 1024), ("512KiB", 524288), ("1GB", 10**9), ("100B", 100), (42, 42)],
)
def test_parse_size_examples(text: str | int, size: int) -> None:
    assert parse_size(text) == size


@pytest.mark.parametrize("bad", ["", "16 megs", "16Mb", "-1B", "1TiB", "big"])
def test_parse_size_rejects_nonsense(bad: str) -> None:
    with pytest.raises(ValueError, match="not a size"):
        parse_size(bad)


@given(decimals, st.sampled_from(sorted(SIZE_UNITS)))
def test_parse_size_is_exact(number: Decimal, unit: str) -> None:
    text = f"{number:f}{unit}"
    assert re.fullmatch(SIZE_PATTERN, text), text
    assert parse_size(text) == int(number * SIZE_UNITS[unit])  # whole bytes, rounded down


@given(spelled(sorted(SIZE_UNITS)))
def test_every_size_the_schema_accepts_parses(text: str) -> None:
    assert re.fullmatch(SIZE_PATTERN, text), text
    number, unit = re.fullmatch(r"([\d.]+)([A-Za-z]+)", text).groups()  # type: ignore[union-attr]
    assert parse_size(text) == int(Decimal(number) * SIZE_UNITS[unit])
