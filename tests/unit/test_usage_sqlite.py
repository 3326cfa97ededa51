"""The SQLite usage store on real files: buckets, reports, flushing, migration, failures."""

from __future__ import annotations

import asyncio
import logging
import math
import random
import sqlite3
import threading
from collections.abc import AsyncIterator, Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from modelpool.config.spec import UsageSpec
from modelpool.providers.translate.usage import Usage
from modelpool.usage import sqlite as usage_sqlite
from modelpool.usage.record import Outcome, Totals, UsageRecord
from modelpool.usage.sqlite import SCHEMA_VERSION, SQLiteStore, connect_read_only
from modelpool.usage.store import Query, StoreError, UsageStore, open_store


def utc(*args: int) -> float:
    return datetime(*args, tzinfo=UTC).timestamp()  # type: ignore[misc]


NOW = utc(2024, 2, 1, 12)
"""The stores' clock: every record below is well within the 90-day retention."""


def record(
    at: float = NOW,
    *,
    client: str = "alice",
    pool: str = "chat",
    model: str = "gpt",
    outcome: Outcome = "ok",
    usage: Usage = Usage(input_tokens=10, output_tokens=5),  # noqa: B008 - frozen
    cost: float | None = 0.01,
) -> UsageRecord:
    return UsageRecord(
        at=at,
        client=client,
        pool=pool,
        model=model,
        outcome=outcome,
        usage=usage,
        cost_usd=0.0 if cost is None else cost,
        cost_known=cost is not None,
    )


def new_store(path: Path, clock: Callable[[], float] = lambda: NOW, **kw: Any) -> SQLiteStore:
    kw.setdefault("flush_interval", 3600.0)  # flushed by hand unless a test says otherwise
    return SQLiteStore(path, clock=clock, **kw)


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SQLiteStore]:
    opened = new_store(tmp_path / "usage.db")
    await opened.open()
    yield opened
    await opened.close()


def rows_on_disk(path: Path) -> list[tuple[Any, ...]]:
    """Every bucket row in the file, read by a connection of our own."""
    with sqlite3.connect(path) as conn:
        return conn.execute("SELECT * FROM usage_buckets ORDER BY 1, 2, 3, 4").fetchall()


def requests_on_disk(path: Path) -> int:
    return sum(row[4] for row in rows_on_disk(path))


async def total(store: UsageStore, **query: Any) -> Totals:
    rows = await store.report(Query(group_by=(), **query))
    return rows[0].totals if rows else Totals()


# --------------------------------------------------------------------------- reports


async def test_report_groups_sorts_and_filters(store: SQLiteStore) -> None:
    store.add(record(client="bob", pool="chat", model="gpt", cost=0.5))
    store.add(record(client="alice", pool="code", model="claude", outcome="error", cost=0.25))
    store.add(record(client="alice", pool="chat", model="gpt", outcome="cancelled", cost=None))
    store.add(record(client="alice", pool="chat", model="gpt"))
    await store.flush()

    rows = await store.report(Query())
    assert [row.key for row in rows] == [
        ("alice", "chat", "gpt", "2024-02-01"),
        ("alice", "code", "claude", "2024-02-01"),
        ("bob", "chat", "gpt", "2024-02-01"),
    ]
    assert rows[0].totals == Totals(
        requests=2,
        cancelled=1,
        input_tokens=20,
        output_tokens=10,
        cost_usd=0.01,
        cost_unknown=1,
    )
    assert rows[1].totals.errors == 1

    by_pool = await store.report(Query(group_by=("pool",)))
    assert [(row.key, row.totals.requests) for row in by_pool] == [
        (("chat",), 3),
        (("code",), 1),
    ]
    only = await store.report(Query(client="alice", pool="chat", group_by=("model",)))
    assert [(row.key, row.totals.requests) for row in only] == [(("gpt",), 2)]
    assert await store.report(Query(model="nobody")) == []
    assert (await total(store)).requests == 4


async def test_an_unknown_group_key_is_refused(store: SQLiteStore) -> None:
    with pytest.raises(ValueError, match="month"):
        await store.report(Query(group_by=("month",)))  # type: ignore[arg-type]


async def test_buckets_follow_utc_hours_across_day_and_month_boundaries(
    store: SQLiteStore, tmp_path: Path
) -> None:
    for at in (
        utc(2024, 1, 31, 23, 59, 59),
        utc(2024, 2, 1, 0, 0, 0),
        utc(2024, 2, 1, 0, 59, 59),
        utc(2024, 2, 1, 1, 0, 0),
    ):
        store.add(record(at))
    await store.flush()

    hours = await store.report(Query(group_by=("hour",)))
    assert [(row.key[0], row.totals.requests) for row in hours] == [
        ("2024-01-31T23:00Z", 1),
        ("2024-02-01T00:00Z", 2),
        ("2024-02-01T01:00Z", 1),
    ]
    days = await store.report(Query(group_by=("day",)))
    assert [(row.key[0], row.totals.requests) for row in days] == [
        ("2024-01-31", 1),
        ("2024-02-01", 3),
    ]
    february = utc(2024, 2, 1)
    assert (await total(store, since=february)).requests == 3
    assert (await total(store, until=february)).requests == 1
    on_disk = rows_on_disk(tmp_path / "usage.db")
    assert [row[0] for row in on_disk] == [february - 3600, february, february + 3600]
    assert all(row[0] % 3600 == 0 for row in on_disk)  # one row per key, whole hours


async def test_spent_sums_one_client_or_pool_since_a_time(store: SQLiteStore) -> None:
    store.add(record(utc(2024, 1, 31, 10), client="alice", pool="chat", cost=1.0))
    store.add(record(utc(2024, 2, 1, 9), client="alice", pool="chat", cost=2.0))
    store.add(record(utc(2024, 2, 1, 10), client="alice", pool="code", cost=4.0))
    store.add(record(utc(2024, 2, 1, 11), client="bob", pool="chat", cost=8.0))
    await store.flush()
    store.add(record(utc(2024, 2, 1, 11), client="alice", pool="chat", cost=16.0))  # buffered

    today = utc(2024, 2, 1)
    assert (await store.spent("client", "alice", today)).cost_usd == 22.0
    assert (await store.spent("client", "alice", 0)).cost_usd == 23.0
    assert (await store.spent("pool", "chat", today)).cost_usd == 26.0
    assert (await store.spent("pool", "chat", today)).requests == 3
    assert await store.spent("client", "carol", 0) == Totals()


# --------------------------------------------------------------------------- buffering


async def test_buffered_records_are_in_reports_before_any_flush(
    store: SQLiteStore, tmp_path: Path
) -> None:
    for _ in range(3):
        store.add(record())
    assert requests_on_disk(tmp_path / "usage.db") == 0  # add never touches the file
    assert (await total(store)).requests == 3

    await store.flush()
    assert requests_on_disk(tmp_path / "usage.db") == 3
    assert (await total(store)).requests == 3  # not counted twice

    store.add(record(utc(2024, 2, 1, 13)))
    report = await store.report(Query(group_by=("hour",)))
    assert [(row.key[0], row.totals.requests) for row in report] == [
        ("2024-02-01T12:00Z", 3),
        ("2024-02-01T13:00Z", 1),
    ]


async def test_the_flusher_writes_on_its_interval(tmp_path: Path) -> None:
    store = new_store(tmp_path / "usage.db", flush_interval=0.02)
    await store.open()
    try:
        store.add(record())
        for _ in range(200):
            if requests_on_disk(tmp_path / "usage.db"):
                break
            await asyncio.sleep(0.01)
        assert requests_on_disk(tmp_path / "usage.db") == 1
    finally:
        await store.close()


async def test_close_flushes_everything_and_a_reopened_store_sees_it(tmp_path: Path) -> None:
    path = tmp_path / "usage.db"
    first = new_store(path)
    await first.open()
    for i in range(10):
        first.add(record(NOW + i * 600, cost=0.1))
    await first.close()
    await first.close()  # idempotent
    first.add(record())  # after close: dropped, not raised

    again = new_store(path)
    await again.open()
    try:
        assert (await total(again)).requests == 10
        assert math.isclose((await total(again)).cost_usd, 1.0, abs_tol=1e-12)
    finally:
        await again.close()


async def test_a_store_that_is_not_open_says_so(tmp_path: Path) -> None:
    store = new_store(tmp_path / "usage.db")
    with pytest.raises(StoreError, match="not open"):
        await store.report(Query())
    await store.close()  # closing what never opened is fine


# --------------------------------------------------------------------------- schema


def schema_of(path: Path) -> list[tuple[Any, ...]]:
    with sqlite3.connect(path) as conn:
        return conn.execute("SELECT type, name, sql FROM sqlite_master ORDER BY name").fetchall()


def user_version(path: Path) -> int:
    with sqlite3.connect(path) as conn:
        return int(conn.execute("PRAGMA user_version").fetchone()[0])


async def test_an_empty_file_is_migrated_and_reopening_changes_nothing(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "usage.db"
    path.touch()
    store = new_store(path)
    with caplog.at_level(logging.INFO, logger="modelpool.usage"):
        await store.open()
    store.add(record())
    await store.close()
    assert "migrated from version 0 to 1" in caplog.text
    assert user_version(path) == SCHEMA_VERSION
    schema = schema_of(path)
    assert {name for _, name, _ in schema} >= {"usage_buckets", "usage_buckets_by_client"}
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"

    caplog.clear()
    again = new_store(path)
    with caplog.at_level(logging.INFO, logger="modelpool.usage"):
        await again.open()
    await again.close()
    assert "migrated" not in caplog.text
    assert schema_of(path) == schema
    assert requests_on_disk(path) == 1


async def test_a_file_from_a_newer_version_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "usage.db"
    with sqlite3.connect(path) as conn:
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    store = new_store(path)
    with pytest.raises(StoreError, match="newer"):
        await store.open()
    with pytest.raises(StoreError, match="newer"):
        connect_read_only(path)
    await store.close()


async def test_a_file_that_is_not_a_database_is_refused_clearly(tmp_path: Path) -> None:
    path = tmp_path / "usage.db"
    path.write_text("not sqlite at all\n" * 100)
    store = new_store(path)
    with pytest.raises(StoreError, match=r"cannot open usage store .*not a database"):
        await store.open()


# --------------------------------------------------------------------------- retention


async def test_retention_deletes_old_buckets_at_open_and_then_hourly(tmp_path: Path) -> None:
    path = tmp_path / "usage.db"
    now = [NOW]
    store = new_store(path, clock=lambda: now[0], retention=86400.0)
    await store.open()
    store.add(record(NOW - 3 * 86400))
    store.add(record(NOW - 86400 + 1800))  # inside the retention for now
    store.add(record(NOW))
    await store.close()
    assert requests_on_disk(path) == 3

    again = new_store(path, clock=lambda: now[0], retention=86400.0, flush_interval=0.01)
    await again.open()
    try:
        assert requests_on_disk(path) == 2  # the open pass
        now[0] += 2 * 3600  # the flusher's hourly pass
        for _ in range(200):
            if requests_on_disk(path) == 1:
                break
            await asyncio.sleep(0.01)
        assert requests_on_disk(path) == 1
    finally:
        await again.close()


# --------------------------------------------------------------------------- failures


async def test_a_failed_flush_keeps_the_records_and_the_next_one_writes_them_once(
    store: SQLiteStore,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    real = usage_sqlite.write_rows
    failures = [sqlite3.OperationalError("database or disk is full")]

    def flaky(conn: sqlite3.Connection, rows: Sequence[Any]) -> None:
        if failures:
            raise failures.pop()
        real(conn, rows)

    monkeypatch.setattr(usage_sqlite, "write_rows", flaky)
    for _ in range(5):
        store.add(record(cost=0.2))
    with caplog.at_level(logging.WARNING, logger="modelpool.usage"):
        await store.flush()
    assert "disk is full" in caplog.text
    assert "kept for the next try" in caplog.text
    assert requests_on_disk(tmp_path / "usage.db") == 0
    assert (await total(store)).requests == 5  # still counted, from the buffer

    store.add(record(cost=0.2))
    await store.flush()
    assert requests_on_disk(tmp_path / "usage.db") == 6
    assert (await total(store)).requests == 6
    assert math.isclose((await total(store)).cost_usd, 1.2, abs_tol=1e-12)


async def test_a_lock_held_by_another_connection_is_waited_out(
    store: SQLiteStore, tmp_path: Path
) -> None:
    other = sqlite3.connect(tmp_path / "usage.db", isolation_level=None)
    other.execute("BEGIN EXCLUSIVE")
    store.add(record())
    flush = asyncio.create_task(store.flush())
    await asyncio.sleep(0.05)
    assert not flush.done()  # waiting on the worker thread; the event loop is free
    other.execute("ROLLBACK")  # released well within the busy timeout
    other.close()
    await flush
    assert requests_on_disk(tmp_path / "usage.db") == 1


@pytest.mark.parametrize("first_write_fails", [True, False])
async def test_a_cancelled_flush_still_settles_its_write(
    store: SQLiteStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, first_write_fails: bool
) -> None:
    real = usage_sqlite.write_rows
    release = threading.Event()
    outcomes = [sqlite3.OperationalError("database is locked") if first_write_fails else None]

    def slow(conn: sqlite3.Connection, rows: Sequence[Any]) -> None:
        release.wait(5)
        error = outcomes.pop(0) if outcomes else None
        if error is not None:
            raise error
        real(conn, rows)

    monkeypatch.setattr(usage_sqlite, "write_rows", slow)
    store.add(record())
    flush = asyncio.create_task(store.flush())
    await asyncio.sleep(0.02)
    flush.cancel()  # the write itself runs on and settles
    store.add(record())
    release.set()
    assert (await total(store)).requests == 2
    await store.flush()
    assert requests_on_disk(tmp_path / "usage.db") == 2


async def test_all_sqlite_work_runs_on_one_worker_thread(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    threads: set[int] = set()

    def spy(name: str) -> None:
        real = getattr(usage_sqlite, name)

        def wrapper(*args: Any) -> Any:
            threads.add(threading.get_ident())
            return real(*args)

        monkeypatch.setattr(usage_sqlite, name, wrapper)

    for name in ("connect", "write_rows", "select_rows", "prune"):
        spy(name)
    store = new_store(tmp_path / "usage.db")
    await store.open()
    store.add(record())
    await store.flush()
    await store.report(Query())
    await store.close()
    assert len(threads) == 1
    assert threading.get_ident() not in threads


# --------------------------------------------------------------------------- volume


async def test_cost_sums_are_exact_over_ten_thousand_records(store: SQLiteStore) -> None:
    rng = random.Random(7)
    costs: list[float] = []
    for i in range(10_000):
        cost = rng.choice((rng.uniform(0, 0.2), rng.uniform(0, 1e-4), rng.uniform(0, 3.0)))
        costs.append(cost)
        store.add(record(NOW - rng.randrange(48) * 3600, client=f"c{i % 3}", cost=cost))
        if i % 1_000 == 999 and i < 9_000:
            await store.flush()  # the rest stays buffered
    expected = math.fsum(costs)
    assert abs((await total(store)).cost_usd - expected) < 1e-9
    assert abs(math.fsum(r.totals.cost_usd for r in await store.report(Query())) - expected) < 1e-9
    await store.flush()
    assert abs((await store.spent("client", "c1", 0)).cost_usd - math.fsum(costs[1::3])) < 1e-9
    assert (await total(store)).requests == 10_000


async def test_adds_from_many_coroutines_lose_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "usage.db"
    real = usage_sqlite.write_rows
    writes: list[int] = []

    def counted(conn: sqlite3.Connection, rows: Sequence[Any]) -> None:
        writes.append(len(rows))
        real(conn, rows)

    monkeypatch.setattr(usage_sqlite, "write_rows", counted)
    store = new_store(path, flush_interval=0.005)
    await store.open()

    async def client(n: int) -> None:
        for i in range(200):
            store.add(record(NOW + i * 60, client=f"c{n % 7}"))
            await asyncio.sleep(0)
            for _ in range(500):  # halfway, wait until the flusher has written once
                if i != 100 or writes:
                    break
                await asyncio.sleep(0.002)

    await asyncio.gather(*(client(n) for n in range(50)))
    assert writes  # the flusher wrote while the coroutines were adding
    assert (await total(store)).requests == 10_000
    await store.close()
    assert requests_on_disk(path) == 10_000


# --------------------------------------------------------------------------- open_store


def test_open_store_picks_sqlite_for_urls_and_paths(tmp_path: Path) -> None:
    store = open_store(UsageSpec(store=f"sqlite://{tmp_path}/u.db", flush_interval=0.5))
    assert isinstance(store, SQLiteStore)
    assert store.path == tmp_path / "u.db"
    assert store.flush_interval == 0.5
    plain = open_store(UsageSpec(store="relative/u.db", retention=3600.0))
    assert isinstance(plain, SQLiteStore)
    assert plain.path == Path("relative/u.db")
    assert plain.retention == 3600.0


def test_open_store_keeps_nothing_for_none() -> None:
    assert open_store(UsageSpec(store="none")) is None
