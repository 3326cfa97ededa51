"""The dashboard's trends: minute ring, latency window, quantiles from histogram buckets."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from modelpool.metrics import Metrics
from modelpool.trends import (
    Counts,
    LatencyWindow,
    MinuteRing,
    Snapshot,
    Trends,
    quantile,
    read_counts,
    read_snapshot,
)

T0 = 1_800_000_000.0
"""A whole minute (divisible by 60)."""
INF = math.inf


def totals(points: list[dict[str, float] | None], key: str = "requests") -> float:
    return sum(p[key] for p in points if p is not None)


def test_growth_between_samples_lands_in_the_minute_of_the_later_one() -> None:
    ring = MinuteRing(T0 + 10, Counts())
    ring.sample(T0 + 30, Counts(requests=4, errors=1, cost_usd=0.5))
    ring.sample(T0 + 62, Counts(requests=10, errors=1, rejected=2, cost_usd=0.75))
    points = ring.points(T0 + 62)
    assert len(points) == 60
    assert points[:58] == [None] * 58  # before counting began
    assert points[58] == {"t": T0, "requests": 4, "errors": 1, "rejected": 0,
                          "cost_usd": 0.5, "filled": False}  # fmt: skip
    assert points[59] == {"t": T0 + 60, "requests": 6, "errors": 0, "rejected": 2,
                          "cost_usd": 0.25, "filled": False}  # fmt: skip


def test_a_long_gap_is_spread_over_its_minutes_and_marked() -> None:
    ring = MinuteRing(T0, Counts())
    ring.sample(T0 + 240, Counts(requests=40))  # four minutes nobody looked
    points = ring.points(T0 + 240)
    spread = [p for p in points[-5:] if p is not None]
    assert [p["requests"] for p in spread] == [10, 10, 10, 10, 0]
    assert [p["filled"] for p in spread] == [True, True, True, True, False]
    assert totals(points) == 40


def test_only_the_last_hour_is_kept_and_a_clock_going_back_is_survived() -> None:
    ring = MinuteRing(T0, Counts())
    ring.sample(T0 + 30, Counts(requests=5))
    ring.sample(T0 + 3 * 3600, Counts(requests=5 + 360))  # hours later: only the last hour
    points = ring.points(T0 + 3 * 3600)
    assert all(p is not None for p in points)
    span = 3 * 3600 - 30
    assert totals(points) == pytest.approx(360 * 59 * 60 / span, abs=0.3)  # 59 minutes, pro rata
    ring.sample(T0 + 100, Counts(requests=400))  # the wall clock jumped back
    ring.sample(T0 + 110, Counts(requests=401))
    assert totals(ring.points(T0 + 110)) >= 1


@given(st.lists(st.tuples(st.floats(0.5, 200), st.integers(0, 50)), min_size=1, max_size=40))
def test_nothing_is_lost_or_invented_within_the_hour(steps: list[tuple[float, int]]) -> None:
    ring = MinuteRing(T0, Counts())
    now, count = T0, 0
    for elapsed, more in steps:
        now += elapsed
        count += more
        ring.sample(now, Counts(requests=count))
    if now - T0 <= 59 * 60:  # everything still inside the window
        assert totals(ring.points(now)) == pytest.approx(count, abs=0.005 * 60)  # rounding


BOUNDS = (0.05, 0.1, 0.25, 0.5, 1.0, INF)


def buckets(*counts: float) -> tuple[tuple[float, float], ...]:
    return tuple(zip(BOUNDS, counts, strict=True))


def test_quantiles_interpolate_within_the_bucket_like_prometheus() -> None:
    assert quantile(0.5, ()) is None
    assert quantile(0.5, buckets(0, 0, 0, 0, 0, 0)) is None
    assert quantile(0.5, buckets(0, 0, 0, 10, 10, 10)) == pytest.approx(0.375)
    assert quantile(0.5, buckets(4, 4, 4, 4, 4, 4)) == pytest.approx(0.025)
    assert quantile(0.95, buckets(0, 0, 0, 0, 10, 100)) == 1.0  # in +Inf: the highest bound
    assert quantile(0.9, buckets(0, 0, 5, 5, 10, 10)) == pytest.approx(0.9)


def test_model_figures_cover_the_window_only() -> None:
    metrics = Metrics()
    trends = Trends(metrics, T0)
    for _ in range(4):
        metrics.upstream_latency.labels("m", "false").observe(2.0)  # old, slow
    metrics.upstream_errors.labels(model="m", kind="status_5xx").inc()
    trends.sample(T0 + 10)
    trends.sample(T0 + 400)
    for _ in range(9):
        metrics.upstream_latency.labels("m", "false").observe(0.3)  # recent, fast
    metrics.upstream_latency.labels("m", "true").observe(0.07)
    trends.sample(T0 + 420)

    stats = trends.model("m")
    assert stats["latency_s"]["count"] == 9
    assert 0.25 < stats["latency_s"]["p95"] <= 0.5
    assert stats["ttft_s"] == {"p50": pytest.approx(0.075), "p95": pytest.approx(0.0975),
                               "count": 1}  # fmt: skip
    assert (stats["attempts"], stats["failed"], stats["error_rate"]) == (10, 0, 0.0)
    assert 300 <= trends.window <= 420
    assert trends.resolution == (0.05, 120)
    assert trends.model("unknown")["error_rate"] is None


def test_the_window_keeps_a_bounded_number_of_snapshots() -> None:
    window = LatencyWindow(Snapshot(T0), window=300, every=10)
    for second in range(0, 3600, 2):
        base = window.sample(Snapshot(T0 + second))
    assert len(window._kept) <= 300 / 10 + 2
    assert 300 <= T0 + 3598 - base.at <= 310


def test_counts_and_snapshots_read_the_registry() -> None:
    metrics = Metrics()
    metrics.requests.labels("c", "p", "m", "ok").inc(3)
    metrics.requests.labels("c", "p", "m", "error").inc(2)
    metrics.requests.labels("c", "p", "-", "rejected").inc()
    metrics.cost.labels("c", "p", "m").inc(0.25)
    assert read_counts(metrics) == Counts(requests=6, errors=2, rejected=1, cost_usd=0.25)
    metrics.upstream_errors.labels(model="m", kind="timeout").inc(2)
    metrics.upstream_latency.labels("m", "true").observe(0.2)
    snapshot = read_snapshot(metrics, T0)
    assert snapshot.errors == {"m": 2}
    assert snapshot.latency[("m", "true")][-1] == (INF, 1)
