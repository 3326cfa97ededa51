"""Cost in USD from a model's price and the canonical usage.

Usage is normalised once, when it is read (``translate.usage``): input,
cache-read, cache-write and output tokens are disjoint counts, so cost is a
plain sum. Cache reads and writes are priced at their own rates when the
model declares them, else at the input rate.
"""

from __future__ import annotations

from modelpool.config.spec import Price
from modelpool.providers.translate.usage import Usage

PER = 1_000_000


def cost_of(usage: Usage, price: Price | None) -> float | None:
    """USD for ``usage`` at ``price``; None when the model has no price."""
    if price is None:
        return None
    read = price.input_per_mtok if price.cache_read_per_mtok is None else price.cache_read_per_mtok
    write = (
        price.input_per_mtok if price.cache_write_per_mtok is None else price.cache_write_per_mtok
    )
    return (
        usage.input_tokens * price.input_per_mtok
        + usage.cache_read_tokens * read
        + usage.cache_write_tokens * write
        + usage.output_tokens * price.output_per_mtok
    ) / PER
