"""Retry policy, pure: which failures are worth another attempt, backoff, and the budget.

This is the only place that classifies an upstream failure. Transport code
states facts (status, phase, Retry-After); ``judge`` turns them into what
the orchestrator and the breaker need to know.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from modelpool.clock import Clock
from modelpool.config.spec import RetryPolicy
from modelpool.errors import (
    UpstreamConnectError,
    UpstreamError,
    UpstreamStatusError,
    UpstreamStreamBroken,
    UpstreamTimeout,
)

RETRYABLE_STATUS = frozenset({408, 409, 425, 429, 500, 502, 503, 504, 529})
REQUEST_SCOPED_STATUS = frozenset({400, 413, 422})
"""The request's own fault (bad shape, too long, content policy): says nothing about the model."""
COOLING_STATUS = frozenset({429, 503, 529})
"""Statuses whose Retry-After cools the model for that long."""


@dataclass(frozen=True, slots=True)
class Verdict:
    retry: bool
    """Worth trying another attempt (on another member, or this one later)."""
    blame_model: bool
    """Counts against the model's breaker."""
    cool_for: float | None = None
    """The upstream asked for a pause of this many seconds (Retry-After)."""
    kind: str = "other"
    """For metrics: connect, timeout, status_429, status_5xx, status_4xx, stream, context_length."""


CONTEXT_MARKERS = (
    "context_length_exceeded",
    "maximum context length",
    "context window",
    "context length",
    "prompt is too long",
    "input is too long",
)
"""How OpenAI, Anthropic, vLLM, Ollama and friends say the prompt does not fit."""


def context_exceeded(error: UpstreamStatusError) -> bool:
    """A 400-class answer saying the prompt is too long for this model (another may fit it)."""
    if error.status not in REQUEST_SCOPED_STATUS:
        return False
    text = (error.body[:4096].decode("utf-8", "replace") + " " + error.message).lower()
    return any(marker in text for marker in CONTEXT_MARKERS)


def judge(error: UpstreamError) -> Verdict:
    if isinstance(error, UpstreamStatusError):
        status = error.status
        if context_exceeded(error):
            return Verdict(retry=True, blame_model=False, kind="context_length")
        if status in REQUEST_SCOPED_STATUS:
            return Verdict(retry=False, blame_model=False, kind="status_4xx")
        cool = error.retry_after if status in COOLING_STATUS else None
        retry = status in RETRYABLE_STATUS or status >= 500
        kind = "status_429" if status == 429 else "status_5xx" if status >= 500 else "status_4xx"
        return Verdict(retry=retry, blame_model=True, cool_for=cool, kind=kind)
    if isinstance(error, UpstreamConnectError):
        return Verdict(retry=True, blame_model=True, kind="connect")
    if isinstance(error, UpstreamTimeout):
        return Verdict(retry=True, blame_model=True, kind="timeout")
    if isinstance(error, UpstreamStreamBroken):
        return Verdict(retry=True, blame_model=True, kind="stream")
    return Verdict(retry=False, blame_model=True)


def is_retryable(error: UpstreamError) -> bool:
    return judge(error).retry


def backoff(policy: RetryPolicy, round_: int, rng: random.Random) -> float:
    """Full-jitter exponential backoff before round ``round_`` (1 = first retry round)."""
    ceiling = policy.backoff_initial * policy.backoff_multiplier ** max(0, round_ - 1)
    return rng.uniform(0, min(ceiling, policy.backoff_max))


class RetryBudget:
    """Retries may not exceed ``ratio`` of requests, plus a small floor per second.

    A token bucket: each request deposits ``ratio`` tokens, time deposits
    ``min_per_second``, each retry withdraws one. With a provider down, the
    first failures are retried from the reserve; after that, retries track
    traffic instead of multiplying it — no retry storm.
    """

    __slots__ = ("_at", "_clock", "tokens")

    def __init__(self, clock: Clock) -> None:
        self._clock = clock
        self._at = clock.now()
        self.tokens: float | None = None  # full on first use, sized by the policy

    def _refill(self, policy: RetryPolicy) -> float:
        cap = max(10.0, policy.budget_min_per_second * 10)
        now = self._clock.now()
        tokens = cap if self.tokens is None else self.tokens
        tokens = min(cap, tokens + (now - self._at) * policy.budget_min_per_second)
        self._at = now
        return tokens

    def deposit(self, policy: RetryPolicy) -> None:
        cap = max(10.0, policy.budget_min_per_second * 10)
        self.tokens = min(cap, self._refill(policy) + policy.budget_ratio)

    def withdraw(self, policy: RetryPolicy) -> bool:
        tokens = self._refill(policy)
        if tokens < 1.0:
            self.tokens = tokens
            return False
        self.tokens = tokens - 1.0
        return True
