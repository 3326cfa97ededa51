"""The periods usage_report sums over: today and this month, in UTC, whole usage buckets."""

from __future__ import annotations

from datetime import UTC, datetime

from modelpool.mcp.views import day_start, month_start
from modelpool.usage.store import BUCKET


def unix(text: str) -> float:
    return datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp()


def test_today_and_this_month_start_at_utc_midnight() -> None:
    now = unix("2026-11-26T23:59:59.5")
    assert day_start(now) == unix("2026-11-26T00:00:00")
    assert month_start(now) == unix("2026-11-01T00:00:00")
    assert day_start(unix("2026-11-01T00:00:00")) == unix("2026-11-01T00:00:00")
    assert month_start(unix("2024-02-29T12:00:00")) == unix("2024-02-01T00:00:00")


def test_the_periods_are_whole_usage_buckets() -> None:
    now = unix("2026-03-15T07:12:00")
    assert day_start(now) % BUCKET == 0
    assert month_start(now) % BUCKET == 0
