"""What a usage store keeps between flushes: one tally of counters per bucket key.

Both stores (SQLite, Redis) buffer records the same way: summed in memory per
(bucket, client, pool, model), written in batches.
"""

from __future__ import annotations

from dataclasses import dataclass

from modelpool.usage.record import UsageRecord
from modelpool.usage.store import BUCKET

COUNTERS = (
    "requests",
    "errors",
    "cancelled",
    "input_tokens",
    "output_tokens",
    "cache_read_tokens",
    "cache_write_tokens",
    "cost_usd",
    "cost_unknown",
)
"""The summed columns, in :class:`Totals` field order."""

Key = tuple[int, str, str, str]
"""(bucket_start, client, pool, model): one row of ``usage_buckets``."""


def bucket_of(at: float) -> int:
    """The start of the UTC hour holding unix time ``at``."""
    return int(at // BUCKET) * BUCKET


@dataclass(slots=True)
class Tally:
    """The buffered counters of one bucket key (mutable: ``add`` must be cheap)."""

    requests: int = 0
    errors: int = 0
    cancelled: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cache_read_tokens: int = 0
    cache_write_tokens: int = 0
    cost_usd: float = 0.0
    cost_unknown: int = 0

    def count(self, record: UsageRecord) -> None:
        usage = record.usage
        self.requests += 1
        self.errors += record.outcome == "error"
        self.cancelled += record.outcome == "cancelled"
        self.input_tokens += usage.input_tokens
        self.output_tokens += usage.output_tokens
        self.cache_read_tokens += usage.cache_read_tokens
        self.cache_write_tokens += usage.cache_write_tokens
        if record.cost_known:
            self.cost_usd += record.cost_usd
        else:
            self.cost_unknown += 1

    def merge(self, other: Tally) -> None:
        for name in COUNTERS:
            setattr(self, name, getattr(self, name) + getattr(other, name))

    def values(self) -> tuple[int | float, ...]:
        return tuple(getattr(self, name) for name in COUNTERS)


def count_into(buffer: dict[Key, Tally], record: UsageRecord) -> None:
    """Count ``record`` in its bucket's tally in ``buffer`` (what ``add`` does: no I/O)."""
    key = (bucket_of(record.at), record.client, record.pool, record.model)
    tally = buffer.get(key)
    if tally is None:
        tally = buffer[key] = Tally()
    tally.count(record)
