"""Cost in USD from a model's price and the canonical usage.

Usage is normalised once, when it is read (``translate.usage``): input,
cache-read, cache-write and output tokens are disjoint counts, so cost is a
plain sum. Cache reads and writes are priced at their own rates when the
model declares them, else at the input rate.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

from modelpool.config.spec import Config, Price
from modelpool.providers.translate.usage import Usage

log = logging.getLogger("modelpool.usage")

PER = 1_000_000


def cost_of(usage: Usage, price: Price | None) -> float | None:
    """USD for ``usage`` at ``price``; None when the model has no price."""
    if price is None:
        return None
    read, write = _cache_rates(price)
    return (
        usage.input_tokens * price.input_per_mtok
        + usage.cache_read_tokens * read
        + usage.cache_write_tokens * write
        + usage.output_tokens * price.output_per_mtok
    ) / PER


def worst_cost(prompt_tokens: int, output_tokens: int, price: Price) -> float:
    """The most a request of this size can cost at ``price``.

    Which prompt tokens the upstream bills as fresh input, cache writes or cache
    reads is known only afterwards, so each is priced at the dearest of the
    three (a cache write usually costs more than input). A budget reservation
    below the bill would let racing requests overshoot a cap by more than one
    reservation.
    """
    prompt_rate = max(price.input_per_mtok, *_cache_rates(price))
    return (prompt_tokens * prompt_rate + output_tokens * price.output_per_mtok) / PER


def _cache_rates(price: Price) -> tuple[float, float]:
    """(cache read, cache write) per million tokens: their own rates, else the input rate."""
    read = price.input_per_mtok if price.cache_read_per_mtok is None else price.cache_read_per_mtok
    write = (
        price.input_per_mtok if price.cache_write_per_mtok is None else price.cache_write_per_mtok
    )
    return read, write


def unpriced(config: Config) -> frozenset[str]:
    """Models whose requests are counted as cost_unknown: no price (the mock is free)."""
    return frozenset(
        name
        for name, model in config.models.items()
        if model.price is None and config.providers[model.provider].type != "mock"
    )


def warn_unpriced(models: Iterable[str]) -> None:
    """Say so for each model counted as cost_unknown: never a silent $0."""
    for name in sorted(models):
        log.warning(
            "model has no price: its requests are counted as cost_unknown, not $0",
            extra={"model": name},
        )
