"""The canonical usage shape and its OpenAI / Anthropic converters."""

from __future__ import annotations

import anthropic.types
import openai.types
import pytest
from hypothesis import given
from hypothesis import strategies as st

from modelpool.providers.translate import (
    Usage,
    merge_anthropic_delta_usage,
    usage_from_anthropic,
    usage_from_openai,
    usage_to_anthropic,
    usage_to_openai,
)

OPENAI_CASES = [
    ({"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15}, Usage(10, 5, 0, 0)),
    (
        {
            "prompt_tokens": 100,
            "completion_tokens": 7,
            "total_tokens": 107,
            "prompt_tokens_details": {"cached_tokens": 60},
        },
        Usage(40, 7, 60, 0),
    ),
    ({"prompt_tokens": 3, "completion_tokens": 0, "prompt_tokens_details": None}, Usage(3, 0)),
    (None, Usage()),
    ({}, Usage()),
]

ANTHROPIC_CASES = [
    ({"input_tokens": 10, "output_tokens": 5}, Usage(10, 5, 0, 0)),
    (
        {
            "input_tokens": 4,
            "output_tokens": 9,
            "cache_read_input_tokens": 50,
            "cache_creation_input_tokens": 20,
        },
        Usage(4, 9, 50, 20),
    ),
    ({"input_tokens": 1, "output_tokens": 2, "cache_read_input_tokens": None}, Usage(1, 2)),
]


@pytest.mark.parametrize(("raw", "expected"), OPENAI_CASES)
def test_from_openai(raw: dict[str, object] | None, expected: Usage) -> None:
    assert usage_from_openai(raw) == expected


@pytest.mark.parametrize(("raw", "expected"), ANTHROPIC_CASES)
def test_from_anthropic(raw: dict[str, object], expected: Usage) -> None:
    assert usage_from_anthropic(raw) == expected


def test_to_openai_counts_cache_inside_prompt() -> None:
    out = usage_to_openai(Usage(4, 9, 50, 20))
    assert out["prompt_tokens"] == 74
    assert out["completion_tokens"] == 9
    assert out["total_tokens"] == 83
    assert out["prompt_tokens_details"] == {"cached_tokens": 50}
    openai.types.CompletionUsage.model_validate(out)


def test_to_anthropic_keeps_counts_apart() -> None:
    out = usage_to_anthropic(Usage(4, 9, 50, 20))
    assert out == {
        "input_tokens": 4,
        "output_tokens": 9,
        "cache_read_input_tokens": 50,
        "cache_creation_input_tokens": 20,
    }
    anthropic.types.Usage.model_validate(out)


def test_message_delta_usage_replaces_only_what_it_carries() -> None:
    start = Usage(input_tokens=12, output_tokens=1, cache_read_tokens=3)
    merged = merge_anthropic_delta_usage(start, {"output_tokens": 40, "input_tokens": None})
    assert merged == Usage(12, 40, 3, 0)
    assert merge_anthropic_delta_usage(start, None) == start


counts = st.integers(min_value=0, max_value=10**7)


@given(counts, counts, counts, counts)
def test_anthropic_round_trip_is_exact(i: int, o: int, r: int, w: int) -> None:
    usage = Usage(i, o, r, w)
    assert usage_from_anthropic(usage_to_anthropic(usage)) == usage


@given(counts, counts, counts)
def test_openai_round_trip_is_exact_without_cache_writes(i: int, o: int, r: int) -> None:
    usage = Usage(i, o, r, 0)
    assert usage_from_openai(usage_to_openai(usage)) == usage


@given(counts, counts, counts, counts)
def test_totals_survive_any_trip(i: int, o: int, r: int, w: int) -> None:
    usage = Usage(i, o, r, w)
    back = usage_from_openai(usage_to_openai(usage))
    assert back.prompt_tokens == usage.prompt_tokens
    assert back.total_tokens == usage.total_tokens
    assert back.cache_read_tokens == r
