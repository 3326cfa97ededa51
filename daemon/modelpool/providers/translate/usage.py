"""One canonical token-usage shape, and converters to and from both APIs.

OpenAI counts cached prompt tokens *inside* ``prompt_tokens`` (and reports
them again in ``prompt_tokens_details.cached_tokens``); Anthropic counts
``input_tokens`` *excluding* cache reads and cache writes, which it reports
separately. :class:`Usage` follows Anthropic: the four counts are disjoint.
OpenAI has no cache-write count, so cache writes fold into ``prompt_tokens``
on the way to OpenAI and come back as plain input tokens.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any


@dataclass(frozen=True, slots=True)
class Usage:
    input_tokens: int = 0
    """Prompt tokens that were neither read from nor written to a cache."""
    output_tokens: int = 0
    cache_read_tokens: int = 0
    cache_write_tokens: int = 0

    @property
    def prompt_tokens(self) -> int:
        """Every prompt token, cached or not (OpenAI's ``prompt_tokens``)."""
        return self.input_tokens + self.cache_read_tokens + self.cache_write_tokens

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.output_tokens


def _int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def usage_from_openai(usage: Mapping[str, Any] | None) -> Usage:
    """Read an OpenAI ``usage`` object (chat completion or final chunk)."""
    if not usage:
        return Usage()
    details = usage.get("prompt_tokens_details") or {}
    prompt = _int(usage.get("prompt_tokens"))
    cached = min(_int(details.get("cached_tokens")), prompt)
    return Usage(
        input_tokens=prompt - cached,
        output_tokens=_int(usage.get("completion_tokens")),
        cache_read_tokens=cached,
    )


def usage_to_openai(usage: Usage) -> dict[str, Any]:
    return {
        "prompt_tokens": usage.prompt_tokens,
        "completion_tokens": usage.output_tokens,
        "total_tokens": usage.total_tokens,
        "prompt_tokens_details": {"cached_tokens": usage.cache_read_tokens},
    }


def usage_from_anthropic(usage: Mapping[str, Any] | None) -> Usage:
    """Read an Anthropic ``usage`` object (message or ``message_start``)."""
    if not usage:
        return Usage()
    return Usage(
        input_tokens=_int(usage.get("input_tokens")),
        output_tokens=_int(usage.get("output_tokens")),
        cache_read_tokens=_int(usage.get("cache_read_input_tokens")),
        cache_write_tokens=_int(usage.get("cache_creation_input_tokens")),
    )


def merge_anthropic_delta_usage(base: Usage, delta: Mapping[str, Any] | None) -> Usage:
    """Apply a ``message_delta`` usage: the counts it carries are cumulative
    and replace those of ``message_start``; the ones it omits (or nulls) stay."""
    if not delta:
        return base
    fields = {
        "input_tokens": "input_tokens",
        "output_tokens": "output_tokens",
        "cache_read_tokens": "cache_read_input_tokens",
        "cache_write_tokens": "cache_creation_input_tokens",
    }
    changes = {
        ours: _int(delta[theirs])
        for ours, theirs in fields.items()
        if delta.get(theirs) is not None
    }
    return replace(base, **changes)


def usage_to_anthropic(usage: Usage) -> dict[str, Any]:
    return {
        "input_tokens": usage.input_tokens,
        "output_tokens": usage.output_tokens,
        "cache_read_input_tokens": usage.cache_read_tokens,
        "cache_creation_input_tokens": usage.cache_write_tokens,
    }
