"""Recent history for the dashboard, sampled from the Prometheus metrics when it is asked for.

Nothing here runs per request. Each time the dashboard's JSON is built it
calls :meth:`Trends.sample`, which reads a few counters and one histogram
(bounded: every label value is a name from the config) and keeps:

- a :class:`MinuteRing`: requests, errors, rejections and cost per minute
  over the last hour, from the growth of ``modelpool_requests_total`` and
  ``modelpool_cost_usd_total`` between two samples. Growth over a span of
  up to a minute is put in the minute of the later sample; a longer gap
  (nobody was looking) is spread over the minutes it covers, pro rata, and
  those minutes are marked ``filled``.
- a :class:`LatencyWindow`: snapshots of ``modelpool_upstream_latency_seconds``
  buckets and ``modelpool_upstream_errors_total`` per model, at most one per
  ``every`` seconds, so that p50/p95 latency, time to first token and the
  error rate can be read over the last ``window`` seconds (the difference
  between the newest snapshot and the oldest one kept).

Quantiles are estimates, as with Prometheus' ``histogram_quantile``: linear
within the bucket that holds the rank, so no finer than the bucket bounds.
"""

from __future__ import annotations

import math
from collections import defaultdict, deque
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from prometheus_client.registry import Collector
from prometheus_client.samples import Sample

from modelpool.metrics import Metrics

MINUTE = 60
HOUR_MINUTES = 60
WINDOW = 300.0
"""Seconds of history behind latency quantiles and error rates."""
SNAPSHOT_EVERY = 10.0
"""Seconds between two kept latency snapshots (so at most WINDOW / SNAPSHOT_EVERY + 2)."""

Buckets = tuple[tuple[float, float], ...]
"""A histogram's (upper bound, cumulative count) pairs, +Inf last."""


@dataclass(frozen=True, slots=True)
class Counts:
    """Finished client requests, those that failed or were turned away, and their cost."""

    requests: float = 0.0
    errors: float = 0.0
    rejected: float = 0.0
    cost_usd: float = 0.0

    def since(self, before: Counts) -> Counts:
        """Growth since ``before`` (never negative: counters only grow)."""
        return Counts(
            max(0.0, self.requests - before.requests),
            max(0.0, self.errors - before.errors),
            max(0.0, self.rejected - before.rejected),
            max(0.0, self.cost_usd - before.cost_usd),
        )

    def share(self, part: float) -> Counts:
        return Counts(
            self.requests * part, self.errors * part, self.rejected * part, self.cost_usd * part
        )

    def plus(self, other: Counts) -> Counts:
        return Counts(
            self.requests + other.requests,
            self.errors + other.errors,
            self.rejected + other.rejected,
            self.cost_usd + other.cost_usd,
        )


def read_counts(metrics: Metrics) -> Counts:
    """Totals since the daemon started, from the request and cost counters."""
    requests = errors = rejected = 0.0
    for sample in _samples(metrics.requests, "_total"):
        requests += sample.value
        outcome = sample.labels.get("outcome")
        if outcome == "error":
            errors += sample.value
        elif outcome == "rejected":
            rejected += sample.value
    cost = sum(sample.value for sample in _samples(metrics.cost, "_total"))
    return Counts(requests, errors, rejected, cost)


@dataclass(slots=True)
class _Minute:
    counts: Counts = field(default_factory=Counts)
    filled: bool = False


class MinuteRing:
    """Per-minute counts over the last ``size`` minutes (unix minutes, wall clock)."""

    def __init__(self, now: float, counts: Counts, size: int = HOUR_MINUTES) -> None:
        self._size = size
        self._since = now
        self._last_at = now
        self._last = counts
        self._minutes: dict[int, _Minute] = {}

    def sample(self, now: float, counts: Counts) -> None:
        span = now - self._last_at
        growth = counts.since(self._last)
        self._last_at, self._last = now, counts
        if span < 0:  # the wall clock went back: start counting again from here
            return
        current = int(now // MINUTE)
        if span <= MINUTE:
            self._add(current, growth, filled=False)
        else:
            first = max(int((now - span) // MINUTE), current - self._size + 1)
            for index in range(first, current + 1):
                covered = min(now, (index + 1) * MINUTE) - max(now - span, index * MINUTE)
                if covered > 0:
                    self._add(index, growth.share(covered / span), filled=True)
        for index in [i for i in self._minutes if i <= current - self._size]:
            del self._minutes[index]

    def _add(self, index: int, growth: Counts, *, filled: bool) -> None:
        minute = self._minutes.setdefault(index, _Minute())
        minute.counts = minute.counts.plus(growth)
        minute.filled = minute.filled or filled

    def points(self, now: float) -> list[dict[str, Any] | None]:
        """Oldest first, the current minute last; None for minutes before counting began."""
        current = int(now // MINUTE)
        points: list[dict[str, Any] | None] = []
        for index in range(current - self._size + 1, current + 1):
            if (index + 1) * MINUTE <= self._since:
                points.append(None)
                continue
            minute = self._minutes.get(index) or _Minute()
            c = minute.counts
            points.append(
                {
                    "t": index * MINUTE,
                    "requests": round(c.requests, 2),
                    "errors": round(c.errors, 2),
                    "rejected": round(c.rejected, 2),
                    "cost_usd": round(c.cost_usd, 6),
                    "filled": minute.filled,
                }
            )
        return points


@dataclass(frozen=True, slots=True)
class Snapshot:
    """Cumulative latency buckets per (model, stream) and failed attempts per model."""

    at: float
    latency: Mapping[tuple[str, str], Buckets] = field(default_factory=dict)
    errors: Mapping[str, float] = field(default_factory=dict)


def read_snapshot(metrics: Metrics, at: float) -> Snapshot:
    pairs: dict[tuple[str, str], list[tuple[float, float]]] = defaultdict(list)
    for sample in _samples(metrics.upstream_latency, "_bucket"):
        key = (sample.labels["model"], sample.labels["stream"])
        pairs[key].append((float(sample.labels["le"]), sample.value))
    errors: dict[str, float] = defaultdict(float)
    for sample in _samples(metrics.upstream_errors, "_total"):
        errors[sample.labels["model"]] += sample.value
    latency = {key: tuple(sorted(buckets)) for key, buckets in pairs.items()}
    return Snapshot(at, latency, dict(errors))


class LatencyWindow:
    """The snapshots that span the last ``window`` seconds (one older, as the base)."""

    def __init__(
        self, first: Snapshot, window: float = WINDOW, every: float = SNAPSHOT_EVERY
    ) -> None:
        self._window = window
        self._every = every
        self._kept: deque[Snapshot] = deque([first])

    def sample(self, snapshot: Snapshot) -> Snapshot:
        """Keep ``snapshot`` if it is due; return the base to measure it against."""
        if snapshot.at - self._kept[-1].at >= self._every:
            self._kept.append(snapshot)
        while len(self._kept) > 1 and snapshot.at - self._kept[1].at >= self._window:
            self._kept.popleft()
        return self._kept[0]


def model_stats(now: Snapshot, base: Snapshot, model: str) -> dict[str, Any]:
    """Latency and time-to-first-token quantiles and the error rate, between two snapshots."""
    plain = _growth(now.latency.get((model, "false")), base.latency.get((model, "false")))
    stream = _growth(now.latency.get((model, "true")), base.latency.get((model, "true")))
    served = _total(plain) + _total(stream)
    failed = max(0.0, now.errors.get(model, 0.0) - base.errors.get(model, 0.0))
    attempts = served + failed
    return {
        "latency_s": _quantiles(plain),
        "ttft_s": _quantiles(stream),
        "attempts": round(attempts),
        "failed": round(failed),
        "error_rate": round(failed / attempts, 4) if attempts else None,
    }


def quantile(q: float, buckets: Sequence[tuple[float, float]]) -> float | None:
    """The ``q`` quantile of cumulative ``buckets`` (+Inf last); None when empty.

    As Prometheus' histogram_quantile: linear within the bucket holding the
    rank; a rank in the +Inf bucket answers the highest finite bound.
    """
    if not buckets or buckets[-1][1] <= 0:
        return None
    rank = q * buckets[-1][1]
    lower, below = 0.0, 0.0
    for bound, count in buckets:
        if count >= rank:
            if math.isinf(bound):
                return lower
            return lower + (bound - lower) * (rank - below) / (count - below)
        lower, below = bound, count
    return lower


def _quantiles(buckets: Buckets) -> dict[str, float | int | None]:
    p50, p95 = quantile(0.5, buckets), quantile(0.95, buckets)
    return {
        "p50": None if p50 is None else round(p50, 4),
        "p95": None if p95 is None else round(p95, 4),
        "count": round(_total(buckets)),
    }


def _growth(now: Buckets | None, base: Buckets | None) -> Buckets:
    if not now:
        return ()
    before = dict(base or ())
    return tuple((bound, max(0.0, count - before.get(bound, 0.0))) for bound, count in now)


def _total(buckets: Buckets) -> float:
    return buckets[-1][1] if buckets else 0.0


def _samples(metric: Collector, suffix: str) -> Iterator[Sample]:
    for family in metric.collect():
        for sample in family.samples:
            if sample.name.endswith(suffix):
                yield sample


class Trends:
    """The minute ring and the latency window, sampled together from one Metrics."""

    def __init__(self, metrics: Metrics, now: float) -> None:
        self._metrics = metrics
        self.minutes = MinuteRing(now, read_counts(metrics))
        self._latest = read_snapshot(metrics, now)
        self._latency = LatencyWindow(self._latest)
        self._base = self._latest

    def sample(self, now: float) -> None:
        self.minutes.sample(now, read_counts(self._metrics))
        self._latest = read_snapshot(self._metrics, now)
        self._base = self._latency.sample(self._latest)

    @property
    def resolution(self) -> tuple[float, float] | None:
        """The lowest and highest finite bucket bounds: quantiles say no more than "below
        the lowest" or "above the highest" (None until something was observed)."""
        for buckets in self._latest.latency.values():
            finite = [bound for bound, _ in buckets if not math.isinf(bound)]
            if finite:
                return finite[0], finite[-1]
        return None

    @property
    def window(self) -> float:
        """Seconds the latency figures cover."""
        return self._latest.at - self._base.at

    def model(self, name: str) -> dict[str, Any]:
        return model_stats(self._latest, self._base, name)
