"""The Redis usage store against a real redis-server (tests/redis_server.py): buckets,
reports, sharing between daemons, and flushes that fail, hang or lose their reply."""

from __future__ import annotations

import asyncio
import logging
import math
import random
import time
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from redis.asyncio import Redis
from redis.exceptions import TimeoutError as RedisTimeout

from modelpool.config.spec import UsageSpec
from modelpool.providers.translate.usage import Usage
from modelpool.usage import redis_store
from modelpool.usage.record import Outcome, Totals, UsageRecord
from modelpool.usage.redis_store import APPLIED_TTL, RedisStore
from modelpool.usage.store import BUCKET, Query, StoreError, UsageStore, open_store
from redis_server import RedisServer


def utc(*args: int) -> float:
    return datetime(*args, tzinfo=UTC).timestamp()  # type: ignore[misc]


NOW = utc(2024, 2, 1, 12)
"""The stores' clock: every record below is well within the 90-day retention."""
RETENTION = 90 * 86400.0


def record(
    at: float = NOW,
    *,
    client: str = "alice",
    pool: str = "chat",
    model: str = "gpt",
    outcome: Outcome = "ok",
    cost: float | None = 0.01,
) -> UsageRecord:
    return UsageRecord(
        at=at,
        client=client,
        pool=pool,
        model=model,
        outcome=outcome,
        usage=Usage(input_tokens=10, output_tokens=5),
        cost_usd=0.0 if cost is None else cost,
        cost_known=cost is not None,
    )


def new_store(url: str, clock: Callable[[], float] = lambda: NOW, **kw: Any) -> RedisStore:
    kw.setdefault("flush_interval", 3600.0)  # flushed by hand unless a test says otherwise
    return RedisStore(url, clock=clock, **kw)


@pytest.fixture
async def store(redis_url: str) -> AsyncIterator[RedisStore]:
    opened = new_store(redis_url)
    await opened.open()
    yield opened
    await opened.close()


@pytest.fixture
async def redis(redis_url: str) -> AsyncIterator[Redis]:
    """A client of our own, to look at what the store wrote."""
    client = Redis.from_url(redis_url, decode_responses=True)
    yield client
    await client.aclose()


async def total(store: UsageStore, **query: Any) -> Totals:
    rows = await store.report(Query(group_by=(), **query))
    return rows[0].totals if rows else Totals()


async def requests_in_redis(redis: Redis, prefix: str = "modelpool") -> int:
    """Requests summed over every bucket hash, read with KEYS (fine in a test)."""
    names = [n for n in await redis.keys(f"{prefix}:usage:*") if n.count(":") == 5]
    return sum([int(await redis.hget(name, "requests") or 0) for name in names])


# --------------------------------------------------------------------------- reports


async def test_report_groups_sorts_and_filters(store: RedisStore) -> None:
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
        requests=2, cancelled=1, input_tokens=20, output_tokens=10, cost_usd=0.01, cost_unknown=1
    )
    assert rows[1].totals.errors == 1
    by_pool = await store.report(Query(group_by=("pool",)))
    assert [(row.key, row.totals.requests) for row in by_pool] == [(("chat",), 3), (("code",), 1)]
    only = await store.report(Query(client="alice", pool="chat", group_by=("model",)))
    assert [(row.key, row.totals.requests) for row in only] == [(("gpt",), 2)]
    assert await store.report(Query(model="nobody")) == []
    assert (await total(store)).requests == 4
    with pytest.raises(ValueError, match="month"):
        await store.report(Query(group_by=("month",)))  # type: ignore[arg-type]


async def test_buckets_follow_utc_hours_across_day_boundaries(
    store: RedisStore, redis: Redis
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
    assert (await total(store, since=february + 1)).requests == 1  # buckets *starting* after
    assert (await total(store, until=february + 1)).requests == 3
    index = sorted(await redis.keys("modelpool:usage:index:*"))
    starts = [int(february - 3600), int(february), int(february + 3600)]
    assert index == [f"modelpool:usage:index:{start}" for start in starts]


async def test_spent_sums_one_client_or_pool_since_a_time(store: RedisStore) -> None:
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


async def test_reports_read_only_their_buckets_never_the_keyspace(
    store: RedisStore, redis: Redis
) -> None:
    store.add(record())
    await store.flush()
    await redis.config_resetstat()
    assert (await total(store, since=NOW - 3 * BUCKET)).requests == 1
    assert (await total(store)).requests == 1
    stats = await redis.info("commandstats")
    assert not {"cmdstat_keys", "cmdstat_scan"} & set(stats)
    in_range = 3 + 1 + 24  # the 3 hours asked for, this one, and a day ahead (clock skew)
    everything = RETENTION / BUCKET + 2 + 24  # the retention (+ an hour), this one, a day ahead
    assert stats["cmdstat_smembers"]["calls"] == in_range + everything


async def test_names_with_colons_or_percents_do_not_collide(
    store: RedisStore, redis: Redis
) -> None:
    store.add(record(client="a:b", pool="c"))
    store.add(record(client="a", pool="b:c"))
    store.add(record(client="a%3Ab", pool="c"))
    store.add(record(client="a", pool="b:c", model="x:y:z"))
    await store.flush()
    rows = await store.report(Query(group_by=("client", "pool", "model")))
    assert [(row.key, row.totals.requests) for row in rows] == [
        (("a", "b:c", "gpt"), 1),
        (("a", "b:c", "x:y:z"), 1),
        (("a%3Ab", "c", "gpt"), 1),
        (("a:b", "c", "gpt"), 1),
    ]
    assert len(await redis.keys("modelpool:usage:1*")) == 4
    assert (await store.spent("pool", "b:c", 0)).requests == 2


async def test_prefixes_keep_stores_apart(redis_url: str) -> None:
    ours, theirs = new_store(redis_url), new_store(redis_url, prefix="other:app")
    for opened in (ours, theirs):
        await opened.open()
        opened.add(record())
        await opened.flush()
    theirs.add(record())
    await theirs.flush()
    assert (await total(ours)).requests == 1
    assert (await total(theirs)).requests == 2
    await ours.close()
    await theirs.close()


# --------------------------------------------------------------------------- buffering, sharing


async def test_buffered_records_are_in_reports_before_any_flush(
    store: RedisStore, redis: Redis
) -> None:
    for _ in range(3):
        store.add(record())
    assert await requests_in_redis(redis) == 0  # add never talks to Redis
    assert (await total(store)).requests == 3
    await store.flush()
    assert await requests_in_redis(redis) == 3
    assert (await total(store)).requests == 3  # not counted twice
    store.add(record(utc(2024, 2, 1, 13)))
    report = await store.report(Query(group_by=("hour",)))
    assert [(row.key[0], row.totals.requests) for row in report] == [
        ("2024-02-01T12:00Z", 3),
        ("2024-02-01T13:00Z", 1),
    ]


async def test_the_flusher_writes_on_its_interval(redis_url: str, redis: Redis) -> None:
    store = new_store(redis_url, flush_interval=0.02)
    await store.open()
    try:
        store.add(record())
        for _ in range(200):
            if await requests_in_redis(redis):
                break
            await asyncio.sleep(0.01)
        assert await requests_in_redis(redis) == 1
        assert store.up
    finally:
        await store.close()


async def test_close_flushes_everything_and_another_store_sees_it(redis_url: str) -> None:
    first = new_store(redis_url)
    await first.open()
    for i in range(10):
        first.add(record(NOW + i * 600, cost=0.1))
    await first.close()
    await first.close()  # idempotent
    first.add(record())  # after close: dropped, not raised

    again = new_store(redis_url)
    await again.open()
    try:
        assert (await total(again)).requests == 10
        assert math.isclose((await total(again)).cost_usd, 1.0, abs_tol=1e-12)
    finally:
        await again.close()


async def test_two_stores_on_one_redis_share_their_flushed_counts(redis_url: str) -> None:
    one, two = new_store(redis_url), new_store(redis_url)
    await one.open()
    await two.open()
    try:
        one.add(record(client="alice", cost=1.0))
        two.add(record(client="alice", cost=2.0))
        two.add(record(client="bob", cost=4.0))
        await one.flush()
        await two.flush()
        one.add(record(client="alice", cost=8.0))  # one's own buffer: only one sees it
        assert (await one.spent("client", "alice", 0)).cost_usd == 11.0
        assert (await two.spent("client", "alice", 0)).cost_usd == 3.0
        assert (await total(two)).requests == 3
    finally:
        await one.close()
        await two.close()
    assert one.writer != two.writer


async def test_a_store_that_is_not_open_says_so(redis_url: str) -> None:
    store = new_store(redis_url)
    with pytest.raises(StoreError, match="not open"):
        await store.report(Query())
    await store.close()  # closing what never opened is fine


# --------------------------------------------------------------------------- expiry


async def test_every_key_expires_after_the_retention(redis_url: str, redis: Redis) -> None:
    store = new_store(redis_url, retention=86400.0)
    await store.open()
    store.add(record(NOW - 3 * 86400))  # past the retention: never written
    store.add(record(NOW - 86400 + 1800))
    store.add(record(NOW))
    await store.close()

    names = await redis.keys("*")
    assert len(names) == 5  # two hashes, two index sets, one writer mark
    ttls = {name: await redis.ttl(name) for name in names}
    assert all(ttl > 0 for ttl in ttls.values())
    mark = f"modelpool:usage:applied:{store.writer}"
    assert 0 < ttls.pop(mark) <= APPLIED_TTL
    recent = int(NOW // BUCKET * BUCKET)
    assert ttls[f"modelpool:usage:index:{recent}"] == BUCKET + 86400  # its end + retention
    assert ttls[f"modelpool:usage:{recent}:alice:chat:gpt"] == BUCKET + 86400
    day_ago = recent - 86400  # its bucket ends an hour after the retention starts
    assert ttls[f"modelpool:usage:index:{day_ago}"] == BUCKET


# --------------------------------------------------------------------------- failures


async def test_a_flush_while_redis_is_down_keeps_the_records_and_writes_them_once(
    store: RedisStore, redis_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    for _ in range(5):
        store.add(record(cost=0.2))
    assert store.up
    redis_server.kill()
    with caplog.at_level(logging.WARNING, logger="modelpool.usage"):
        await store.flush()
        await store.flush()  # still down: logged once, not every try
    assert not store.up
    assert caplog.text.count("is unreachable") == 1
    assert "5 records kept for the next try" in caplog.text
    with pytest.raises(StoreError, match=r"redis://127\.0\.0\.1:\d+/0 cannot be read"):
        await store.report(Query())
    assert store.pending == 5

    redis_server.restart()
    store.add(record(cost=0.2))
    await store.flush()
    assert store.up
    assert store.pending == 0
    assert (await total(store)).requests == 6
    assert math.isclose((await total(store)).cost_usd, 1.2, abs_tol=1e-12)
    await store.flush()  # nothing left to send twice
    assert (await total(store)).requests == 6


async def test_a_batch_whose_reply_was_lost_is_applied_once(
    store: RedisStore,
    redis: Redis,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    real = store._apply
    lost = [True]

    async def reply_lost(names: list[str], args: list[str]) -> int:
        applied = await real(names, args)  # the server ran the whole batch …
        if lost.pop() if lost else False:
            raise RedisTimeout("Timeout reading from socket")  # … but we never heard back
        return applied

    monkeypatch.setattr(store, "_apply", reply_lost)
    for _ in range(4):
        store.add(record(cost=0.25))
    await store.flush()
    assert store.pending == 4  # held: we cannot know it was applied
    assert await requests_in_redis(redis) == 4
    assert (await total(store)).requests == 4  # the writer's mark says Redis has it: once

    store.add(record(cost=0.25))
    with caplog.at_level(logging.INFO, logger="modelpool.usage"):
        await store.flush()  # retries the held batch (a no-op), then sends the new one
    assert f"usage batch {store.writer}:1 was already in" in caplog.text
    assert store.pending == 0
    assert await requests_in_redis(redis) == 5
    assert (await total(store)).cost_usd == 1.25


async def test_a_flush_that_times_out_on_a_hung_redis_is_not_counted_twice(
    redis_server: RedisServer, redis_url: str, redis: Redis
) -> None:
    store = new_store(redis_url, timeout=0.2)
    await store.open()
    try:
        for _ in range(3):
            store.add(record())
        redis_server.pause()
        started = time.monotonic()
        await store.flush()  # sent, then no reply within the timeout
        assert store.pending == 3
        assert time.monotonic() - started < 2
        assert not store.up
        redis_server.resume()  # whether it ran the batch or not, the retry settles it
        store.add(record())
        await store.flush()
        assert await requests_in_redis(redis) == 4
        assert (await total(store)).requests == 4
    finally:
        redis_server.resume()
        await store.close()


async def test_close_gives_up_on_a_dead_redis_and_says_what_is_lost(
    store: RedisStore,
    redis_server: RedisServer,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    monkeypatch.setattr(redis_store, "CLOSE_TIMEOUT", 0.3)
    for _ in range(3):
        store.add(record())
    redis_server.kill()
    started = time.monotonic()
    with caplog.at_level(logging.ERROR, logger="modelpool.usage"):
        await store.close()
    assert time.monotonic() - started < 2
    assert "3 records could not be written before closing and are lost" in caplog.text


async def test_a_daemon_may_start_before_its_redis(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    server = RedisServer(tmp_path / "redis")
    url = server.url.replace("redis://", "redis://:hunter2@")
    store = new_store(url)
    with caplog.at_level(logging.INFO, logger="modelpool.usage"):
        await store.open()  # nothing listens yet: not fatal
        assert not store.up
        store.add(record())
        await store.flush()
        server.start()
        try:
            await store.flush()
            assert store.up
            assert (await total(store)).requests == 1
        finally:
            await store.close()
            server.stop()
    assert f"usage store redis://127.0.0.1:{server.port}/0 is unreachable" in caplog.text
    assert "reachable again" in caplog.text
    assert "hunter2" not in caplog.text


async def test_a_refused_password_fails_open_without_echoing_it(tmp_path: Path) -> None:
    server = RedisServer(tmp_path / "redis", args=("--requirepass", "right-one"))
    server.start()
    try:
        wrong = new_store(server.url.replace("redis://", "redis://:wrong-one@"))
        with pytest.raises(StoreError, match="cannot use usage store") as caught:
            await wrong.open()
        assert "wrong-one" not in str(caught.value)
        right = new_store(server.url.replace("redis://", "redis://:right-one@"))
        await right.open()
        right.add(record())
        await right.close()
        assert right.pending == 0
    finally:
        server.stop()


# --------------------------------------------------------------------------- volume


async def test_cost_sums_are_exact_over_thousands_of_records(store: RedisStore) -> None:
    rng = random.Random(7)
    costs: list[float] = []
    for i in range(5_000):
        cost = rng.choice((rng.uniform(0, 0.2), rng.uniform(0, 1e-4), rng.uniform(0, 3.0)))
        costs.append(cost)
        store.add(record(NOW - rng.randrange(48) * 3600, client=f"c{i % 3}", cost=cost))
        if i % 500 == 499 and i < 4_500:
            await store.flush()  # the rest stays buffered
    expected = math.fsum(costs)
    assert abs((await total(store)).cost_usd - expected) < 1e-9
    assert abs(math.fsum(r.totals.cost_usd for r in await store.report(Query())) - expected) < 1e-9
    await store.flush()
    assert abs((await store.spent("client", "c1", 0)).cost_usd - math.fsum(costs[1::3])) < 1e-9
    assert (await total(store)).requests == 5_000


# --------------------------------------------------------------------------- open_store


def test_open_store_picks_redis_for_redis_urls_without_echoing_them() -> None:
    store = open_store(UsageSpec(store="redis://:hunter2@cache:6380/2", flush_interval=0.5))
    assert isinstance(store, RedisStore)
    assert store.where == "redis://cache:6380/2"
    assert store.flush_interval == 0.5
    assert "hunter2" not in repr(store)
    tls = open_store(UsageSpec(store="rediss://cache/0", retention=3600.0))
    assert isinstance(tls, RedisStore)
    assert tls.where == "rediss://cache:6379/0"
    assert tls.retention == 3600.0


async def test_a_daemons_usage_store_keeps_to_its_shared_state_prefix(
    tmp_path: Path, redis_url: str, redis: Redis
) -> None:
    """Two daemons on one Redis with different ``shared_state.prefix`` share no usage."""
    from modelpool.app import ACCOUNTANT, SHARED, build_app
    from modelpool.config.load import load_config

    stores: list[UsageStore] = []
    for prefix in ("team-a", "team-b"):
        path = tmp_path / f"{prefix}.yaml"
        path.write_text(
            "version: 1\nproviders: {mock: {type: mock}}\nmodels: {m: {provider: mock}}\n"
            f"pools: {{p: {{members: [m]}}}}\nusage: {{store: '{redis_url}'}}\n"
            f"shared_state: {{prefix: {prefix}}}\n"
        )
        app = build_app(load_config(path, env={}))
        await app[SHARED].link.aclose()  # not used here; the store has its own connection
        store = app[ACCOUNTANT].store
        assert store is not None
        await store.open()
        stores.append(store)
    now = time.time()  # the daemons' stores run on the real clock
    stores[0].add(record(now))
    for _ in range(2):
        stores[1].add(record(now))
    for store in stores:
        await store.flush()
    assert (await total(stores[0])).requests == 1
    assert (await total(stores[1])).requests == 2
    assert await requests_in_redis(redis, "team-a") == 1
    assert await requests_in_redis(redis, "team-b") == 2
    assert not await redis.keys("modelpool:*")
    for store in stores:
        await store.close()
