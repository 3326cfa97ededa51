"""Token estimates for admission, before the upstream has counted anything.

Limits (tpm) and `lowest_cost` need a number before the request is sent;
the upstream's `usage` settles the real one afterwards. About four bytes of
text per token is the usual rule of thumb for English and code; it errs
high for JSON syntax, which is the safe side for a limiter.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

BYTES_PER_TOKEN = 4
DEFAULT_OUTPUT_TOKENS = 256
"""Reserved for the answer when the request sets no max_tokens and no default is configured."""


@dataclass(frozen=True, slots=True)
class Estimate:
    input_tokens: int
    output_tokens: int

    @property
    def total(self) -> int:
        return self.input_tokens + self.output_tokens


IMAGE_TOKENS = 1600
"""What one image is counted as: about a megapixel, in both providers' accounting."""
_IMAGES = frozenset({"image_url", "image", "input_image"})


def _text_size(value: Any) -> int:
    if isinstance(value, str):
        return len(value)
    if isinstance(value, list):
        return sum(map(_text_size, value))
    if isinstance(value, dict | Mapping):  # dict first: parsed JSON skips the ABC check
        if value.get("type") in _IMAGES:  # base64 data is not prompt text
            return IMAGE_TOKENS * BYTES_PER_TOKEN
        return sum(map(_text_size, value.values()))
    return 0


_SOURCES = {
    "chat": "messages",
    "messages": "messages",
    "completions": "prompt",
    "embeddings": "input",
}


def estimate(endpoint: str, body: Mapping[str, Any], default_output: int | None = None) -> Estimate:
    """Prompt tokens from the request's text; output tokens from max_tokens or a default."""
    source = _SOURCES[endpoint]
    size = _text_size(body.get(source)) + _text_size(body.get("tools"))
    if endpoint == "messages":
        size += _text_size(body.get("system"))
    input_tokens = max(1, size // BYTES_PER_TOKEN)
    if endpoint == "embeddings":
        return Estimate(input_tokens, 0)
    requested = body.get("max_completion_tokens") or body.get("max_tokens")
    if isinstance(requested, int) and not isinstance(requested, bool) and requested > 0:
        output = requested
    else:
        output = default_output or DEFAULT_OUTPUT_TOKENS
    return Estimate(input_tokens, output)
