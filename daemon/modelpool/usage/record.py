"""One finished request, as accounting keeps it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from modelpool.providers.translate.usage import Usage

Outcome = Literal["ok", "error", "cancelled"]
"""ok: served; error: no attempt succeeded (or the stream broke); cancelled: the client
went away (charged for what was generated)."""

ANONYMOUS = "-"
"""The client name recorded when the daemon runs without ``clients:``."""
NO_MODEL = "-"
"""The model name recorded when no model served the request."""
OTHER = "other"
"""A metric label for a name the config does not have (an unknown key, pool or model)."""


@dataclass(frozen=True, slots=True)
class UsageRecord:
    at: float
    """Unix time the request finished."""
    client: str
    pool: str
    """The pool (or model) the client asked for."""
    model: str
    """The model that served it, or NO_MODEL."""
    outcome: Outcome
    usage: Usage
    cost_usd: float
    """0.0 when the cost is unknown (see ``cost_known``)."""
    cost_known: bool
    """False when the model has no price: counted as cost_unknown, never as a silent $0."""


@dataclass(frozen=True, slots=True)
class Totals:
    """Sums over a group of records (one report row)."""

    requests: int = 0
    errors: int = 0
    cancelled: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cache_read_tokens: int = 0
    cache_write_tokens: int = 0
    cost_usd: float = 0.0
    cost_unknown: int = 0
    """Requests whose cost could not be priced."""

    @property
    def tokens(self) -> int:
        return (
            self.input_tokens
            + self.output_tokens
            + self.cache_read_tokens
            + self.cache_write_tokens
        )
