"""Shared limits, budgets and cooldowns on a real redis-server: several 'sidecars'
(independent objects on one Redis) act as one; with Redis gone each fails as configured."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable

import pytest

from modelpool.breaker import Breaker, State
from modelpool.clock import SystemClock
from modelpool.config.secrets import Secret
from modelpool.config.spec import BreakerPolicy, Budget, SharedStateSpec
from modelpool.errors import BudgetExceeded, SharedStateUnavailable
from modelpool.limits import Gate, GateRefused, Lease, blocking, take_all
from modelpool.shared.budgets import SharedBudgetBook
from modelpool.shared.gates import SharedGates
from modelpool.shared.link import RedisLink
from redis_server import RedisServer

Links = Callable[..., RedisLink]


@pytest.fixture
async def links(redis_server: RedisServer) -> AsyncIterator[Links]:
    made: list[RedisLink] = []

    def make(**spec: object) -> RedisLink:
        # Generous: a late reply fails open to a local share, which the exactness tests
        # would read as overshoot on a loaded CI machine. Slow-Redis tests pass their own.
        options = {"redis": Secret(redis_server.url), "timeout": 2.0} | spec
        link = RedisLink(SharedStateSpec(**options))  # type: ignore[arg-type]
        made.append(link)
        return link

    yield make
    for link in made:
        await link.aclose()


async def admitted(gate: Gate, attempts: int, amount: int = 1) -> int:
    """How many of ``attempts`` the gate admits, asked as the dispatcher asks: the local
    view first (blocking), then the authoritative take."""
    count = 0
    for _ in range(attempts):
        if blocking([gate], amount) is not None:
            continue
        try:
            await take_all([gate], amount, Lease())
            count += 1
        except GateRefused:
            pass
    return count


async def test_three_sidecars_share_one_rpm(links: Links) -> None:
    clock = SystemClock()
    gates = [SharedGates(links(), clock)("rpm", 10, "client:a") for _ in range(3)]
    counts = await asyncio.gather(*(admitted(g, 8) for g in gates))
    assert sum(counts) == 10
    assert not gates[0].can_take(1)  # the refusal closed it locally for a while
    assert gates[0].retry_in(1) == pytest.approx(6.0)


async def test_tpm_settles_unused_tokens_back_for_everyone(links: Links) -> None:
    clock = SystemClock()
    one, two = (SharedGates(links(), clock)("tpm", 1000, "model:m") for _ in range(2))
    lease = Lease()
    await take_all([one], 900, lease)
    assert await admitted(two, 1, amount=200) == 0
    lease.release(used_tokens=100)  # 800 given back, settled in the background
    await asyncio.sleep(0.1)
    two._closed_until = 0.0  # type: ignore[attr-defined]  # forget the local hint
    assert await admitted(two, 1, amount=200) == 1


async def test_concurrency_is_shared_and_slots_come_back(links: Links) -> None:
    clock = SystemClock()
    one, two = (SharedGates(links(), clock)("concurrency", 2, "pool:p") for _ in range(2))
    first, second = Lease(), Lease()
    await take_all([one], 1, first)
    await take_all([two], 1, second)
    assert await admitted(two, 1) == 0
    first.release()
    await asyncio.sleep(0.1)
    two._closed_until = 0.0  # type: ignore[attr-defined]
    assert await admitted(two, 1) == 1


async def test_fail_open_uses_a_local_share_and_fail_closed_refuses(
    links: Links, redis_server: RedisServer
) -> None:
    clock = SystemClock()
    open_gate = SharedGates(links(replicas=4), clock)("rpm", 40, "client:a")
    closed_gate = SharedGates(links(on_failure="fail_closed"), clock)("rpm", 40, "client:a")
    redis_server.kill()
    assert await admitted(open_gate, 20) == 10  # 40 / 4 replicas, counted here
    with pytest.raises(SharedStateUnavailable):
        await take_all([closed_gate], 1, Lease())


async def test_a_slow_redis_never_hangs_a_request(links: Links, redis_server: RedisServer) -> None:
    link = links(timeout=0.05)
    gate = SharedGates(link, SystemClock())("rpm", 100, "client:a")
    await admitted(gate, 1)  # connected while Redis answered
    redis_server.pause()  # SIGSTOP: the socket is open, nobody answers
    try:
        began = asyncio.get_running_loop().time()
        assert await admitted(gate, 1) == 1  # fell back, within the timeout
        assert asyncio.get_running_loop().time() - began < 0.5
        assert link.up  # one late reply is not an outage...
        assert await admitted(gate, 2) == 2
        assert not link.up  # ...three in a row are
    finally:
        redis_server.resume()
    await link.watch_once()
    assert link.up  # the next ping found it back


async def test_shared_budgets_never_overshoot_by_more_than_one_per_sidecar(links: Links) -> None:
    books = [SharedBudgetBook(links(), None) for _ in range(3)]
    budget = Budget(usd_per_day=1.0)
    cost = 0.07

    async def one(book: SharedBudgetBook) -> bool:
        try:
            reservation = await book.reserve([("client", "a", budget)], cost, 10)
        except BudgetExceeded:
            return False
        await asyncio.sleep(0.01)
        reservation.settle(cost, 10)
        return True

    results = await asyncio.gather(*(one(books[i % 3]) for i in range(50)))
    await asyncio.sleep(0.2)  # settlements are written in the background
    admitted_cost = sum(results) * cost
    assert admitted_cost >= 1.0  # the budget was used...
    assert admitted_cost <= 1.0 + 3 * cost  # ...and overshot by at most one per sidecar
    with pytest.raises(BudgetExceeded, match="resets at"):
        await books[0].reserve([("client", "a", budget)], cost, 10)


async def test_budgets_fail_open_to_a_local_share(links: Links, redis_server: RedisServer) -> None:
    book = SharedBudgetBook(links(replicas=2), None)
    redis_server.kill()
    budget = Budget(usd_per_day=1.0)
    (await book.reserve([("client", "a", budget)], 0.6, 1)).settle(0.6, 1)
    with pytest.raises(BudgetExceeded):  # 0.6 of the local half (0.5) is spent
        await book.reserve([("client", "a", budget)], 0.1, 1)


async def test_a_cooldown_seen_by_one_sidecar_cools_the_others(links: Links) -> None:
    from modelpool.shared.cooldowns import CooldownSync

    breakers = [Breaker(SystemClock()) for _ in range(2)]
    policy = BreakerPolicy()
    tables = [_table_with(breaker) for breaker in breakers]
    syncs = [CooldownSync(links(), lambda t=t: t) for t in tables]  # type: ignore[misc]
    breakers[0].failed(policy, "429", retry_after=5.0)
    for sync in syncs:
        await sync.sync_once()
    assert breakers[1].state is State.OPEN
    assert breakers[1].rate_limited
    assert 4.0 < breakers[1].retry_in() <= 5.0
    assert breakers[1].consecutive_failures == 0  # cooled, not failed


def _table_with(breaker: Breaker) -> object:
    from types import SimpleNamespace

    from modelpool.state import ModelIdentity

    identity = ModelIdentity("m", "openai:http://x", "up-m", "fp")
    state = SimpleNamespace(breaker=breaker)
    model = SimpleNamespace(identity=identity, state=state)
    return SimpleNamespace(models={"m": model})


async def test_a_reloaded_limit_applies_to_the_same_shared_count(links: Links) -> None:
    from modelpool.config.spec import Limits
    from modelpool.limits import LimitState

    clock = SystemClock()
    factory = SharedGates(links(), clock)
    state = LimitState(clock, factory=factory, scope="client:a")
    [gate] = state.gates(Limits(rpm=5))
    assert await admitted(gate, 8) == 5
    [bigger] = state.gates(Limits(rpm=8))  # the reload raised the limit
    assert bigger is not gate
    assert await admitted(bigger, 8) == 3  # the 5 already counted still count


async def evalsha_calls(redis_server: RedisServer) -> int:
    import redis.asyncio as aioredis

    async with aioredis.from_url(redis_server.url) as client:
        stats = await client.info("commandstats")
    return int(stats.get("cmdstat_evalsha", {}).get("calls", 0)) + int(
        stats.get("cmdstat_eval", {}).get("calls", 0)
    )


async def test_a_requests_shared_gates_are_one_round_trip_all_or_nothing(
    links: Links, redis_server: RedisServer
) -> None:
    clock = SystemClock()
    factory = SharedGates(links(), clock)
    rpm = factory("rpm", 100, "model:m")
    tpm = factory("tpm", 1000, "pool:p")
    slots = factory("concurrency", 1, "client:a")
    await take_all([factory("rpm", 5, "warm-up")], 1, Lease())  # loads the script
    before = await evalsha_calls(redis_server)
    lease = Lease()
    await take_all([rpm, tpm, slots], 300, lease)
    assert await evalsha_calls(redis_server) - before == 1  # three gates, one script

    # the client's one slot is taken: a second request counts nowhere, not even rpm
    with pytest.raises(GateRefused):
        await take_all([rpm, tpm, slots], 300, Lease())
    assert rpm.level == pytest.approx(1, abs=0.01)  # not counted by the refused request
    lease.release(used_tokens=100)  # two give-backs (tpm, slot), sent together
    await asyncio.sleep(0.1)
    assert await evalsha_calls(redis_server) - before == 3
    await take_all([tpm], 900, Lease())  # 200 used + 900 fits in 1000 only after the refund


async def meter(redis_server: RedisServer, key: str) -> dict[str, float]:
    """A budget meter's hash as Redis holds it now."""
    import redis.asyncio as aioredis

    async with aioredis.from_url(redis_server.url, decode_responses=True) as client:
        fields = await client.hgetall(key)
    return {name: float(value) for name, value in fields.items()}


async def spend(book: SharedBudgetBook, budget: Budget, *costs: float) -> None:
    for cost in costs:
        (await book.reserve([("client", "a", budget)], cost, 1)).settle(cost, 1)
    await asyncio.sleep(0.1)  # settlements are written in the background


async def test_a_used_up_budget_still_refuses_after_redis_restarts_empty(
    links: Links, redis_server: RedisServer
) -> None:
    book = SharedBudgetBook(links(), None)
    budget = Budget(usd_per_day=1.0)
    await spend(book, budget, 0.6, 0.6)
    with pytest.raises(BudgetExceeded):
        await book.reserve([("client", "a", budget)], 0.01, 1)
    redis_server.restart()  # empty: the meter is gone, and nobody noticed an outage
    with pytest.raises(BudgetExceeded):  # the meter came back from what this daemon knew
        await book.reserve([("client", "a", budget)], 0.01, 1)
    other = SharedBudgetBook(links(), None)  # a daemon that never saw the meter
    with pytest.raises(BudgetExceeded):
        await other.reserve([("client", "a", budget)], 0.01, 1)


async def test_spend_settled_during_an_outage_reaches_redis_when_it_returns(
    links: Links, redis_server: RedisServer
) -> None:
    link = links(timeout=0.05)
    book, other = SharedBudgetBook(link, None), SharedBudgetBook(links(), None)
    budget = Budget(usd_per_day=10.0)
    await spend(book, budget, 0.3)
    await spend(other, budget, 0.2)  # in Redis; this daemon never read it
    in_flight = await book.reserve([("client", "a", budget)], 0.5, 1)
    [key] = [k for k in book._tracks]  # type: ignore[attr-defined]
    redis_server.pause()
    try:
        await spend(book, budget, 0.1, 0.1, 0.1)  # timed out: the local book took them
        assert not link.up
        in_flight.settle(0.15, 1)  # a request that ended during the outage
    finally:
        redis_server.resume()
    await link.watch_once()  # Redis answers: the link is up and the book re-syncs
    await asyncio.sleep(0.2)
    assert link.up
    assert (await meter(redis_server, key))["spent"] == pytest.approx(0.3 + 0.2 + 0.3 + 0.15)


async def test_a_restarted_redis_costs_no_request_a_spurious_503(
    links: Links, redis_server: RedisServer
) -> None:
    """Pooled connections to the Redis that died are dead: each is replaced at its first
    use, not failed (failing closed, that failure would be a 503)."""
    link = links(on_failure="fail_closed")
    gate = SharedGates(link, SystemClock())("rpm", 10_000, "client:a")

    async def wave(n: int) -> list[bool]:
        async def one() -> bool:
            try:
                await take_all([gate], 1, Lease())
            except SharedStateUnavailable:
                return False
            return True

        return await asyncio.gather(*(one() for _ in range(n)))

    assert all(await wave(20))  # twenty connections in the pool
    redis_server.kill()
    for _ in range(5):
        assert await wave(1) == [False]  # the first three find it down, the rest know
    assert not link.up
    redis_server.start()
    await link.watch_once()
    assert link.up
    assert all(await wave(20))


async def test_every_key_modelpool_writes_to_redis_expires(
    links: Links, redis_server: RedisServer
) -> None:
    import contextlib
    import time

    import redis.asyncio as aioredis

    from modelpool.config.spec import UsageSpec
    from modelpool.providers.translate.usage import Usage
    from modelpool.shared.cooldowns import CooldownSync
    from modelpool.usage.record import UsageRecord
    from modelpool.usage.store import open_store

    link = links()
    book = SharedBudgetBook(link, None)
    budget = Budget(usd_per_day=1.0, tokens_per_month=10_000)
    await spend(book, budget, 0.1)
    in_flight = await book.reserve([("client", "a", budget)], 0.1, 10)
    redis_server.restart()  # empty
    for _ in range(2):  # a fresh connection, whatever the pool held
        with contextlib.suppress(Exception):
            await link.call(lambda client: client.ping())
    in_flight.settle(0.1, 10)  # into meters that vanished with the restart
    await asyncio.sleep(0.2)

    clock = SystemClock()
    factory = SharedGates(link, clock)
    lease = Lease()
    gates = [factory(kind, 1000, "pool:p") for kind in ("rpm", "tpm", "concurrency")]
    await take_all(gates, 300, lease)
    lease.release(used_tokens=100)
    breaker = Breaker(clock)
    breaker.failed(BreakerPolicy(), "429", retry_after=5.0)
    table = _table_with(breaker)
    await CooldownSync(link, lambda: table).sync_once()  # type: ignore[arg-type,return-value]
    store = open_store(UsageSpec(store=redis_server.url))
    assert store is not None
    await store.open()
    store.add(UsageRecord(time.time(), "a", "p", "m", "ok", Usage(10, 5), 0.01, True))
    await store.close()
    await asyncio.sleep(0.1)  # the give-backs are written in the background

    async with aioredis.from_url(redis_server.url, decode_responses=True) as client:
        keys = [key async for key in client.scan_iter("*")]
        ttls = {key: await client.pttl(key) for key in keys}
    families = {key.split(":")[1] for key in keys}
    assert families == {"budget", "limit", "cool", "usage"}
    assert [key for key, ttl in ttls.items() if ttl <= 0] == []
