"""Load-balancing strategies: pure functions of (members, position, seeded RNG, hint)."""

from __future__ import annotations

import json
import random
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import pytest
from hypothesis import given
from hypothesis import strategies as st

from modelpool import balance
from modelpool.balance import (
    STRATEGIES,
    Strategy,
    least_in_flight,
    least_latency,
    lowest_cost,
    priority,
    round_robin,
    strategy_for,
    weighted,
)
from modelpool.config.judge import schema_text
from modelpool.config.spec import Price
from modelpool.tokens import Estimate

DRAWS = 20_000


@dataclass(eq=False)
class M:
    """A member as a strategy sees it; mutable so a test can change what it has learned."""

    name: str
    weight: float = 1.0
    priority: int = 0
    in_flight: int = 0
    latency: float | None = None
    price: Price | None = None


def names(members: Sequence[M]) -> list[str]:
    return [m.name for m in members]


def first_picks(
    members: Sequence[M], strategy: str = "weighted", seed: int = 7, draws: int = DRAWS
) -> Counter[str]:
    rng = random.Random(seed)
    pick: Strategy[M] = strategy_for(strategy)
    return Counter(pick(members, i, rng)[0].name for i in range(draws))


# --------------------------------------------------------------------------- round robin


def test_round_robin_rotates_the_start_by_one_per_request() -> None:
    members = [M("a"), M("b"), M("c")]
    rng = random.Random(0)
    orders = [names(round_robin(members, position, rng)) for position in range(4)]
    assert orders == [
        ["a", "b", "c"],
        ["b", "c", "a"],
        ["c", "a", "b"],
        ["a", "b", "c"],
    ]


def test_round_robin_spreads_evenly_and_handles_huge_positions() -> None:
    members = [M("a"), M("b"), M("c")]
    counts = Counter(round_robin(members, p, random.Random(0))[0].name for p in range(300))
    assert counts == {"a": 100, "b": 100, "c": 100}
    assert names(round_robin(members, 10**18 + 1, random.Random(0))) == ["c", "a", "b"]


def test_round_robin_of_one_member() -> None:
    assert names(round_robin([M("only")], 5, random.Random(0))) == ["only"]


# --------------------------------------------------------------------------- weighted


@pytest.mark.parametrize(
    "weights",
    [
        {"a": 3.0, "b": 1.0},
        {"a": 1.0, "b": 1.0, "c": 2.0},
        {"a": 0.005, "b": 0.995},
        {"a": 10.0, "b": 0.5, "c": 0.25},
    ],
)
def test_weighted_first_pick_follows_the_weights(weights: dict[str, float]) -> None:
    members = [M(n, w) for n, w in weights.items()]
    counts = first_picks(members)
    total = sum(weights.values())
    for name, weight in weights.items():
        expected = weight / total
        observed = counts[name] / DRAWS
        # 4 standard deviations of a binomial proportion, plus a small floor.
        tolerance = 4 * (expected * (1 - expected) / DRAWS) ** 0.5 + 0.002
        assert abs(observed - expected) < tolerance, (name, observed, expected)


def test_tiny_weight_still_gets_its_share() -> None:
    counts = first_picks([M("rare", 0.005), M("common", 0.995)], draws=40_000)
    assert 120 <= counts["rare"] <= 280  # expected 200


def test_weighted_returns_every_member_once() -> None:
    members = [M(n, w) for n, w in (("a", 5), ("b", 1), ("c", 0.1))]
    rng = random.Random(3)
    for position in range(200):
        assert sorted(names(weighted(members, position, rng))) == ["a", "b", "c"]


def test_weighted_failover_order_is_also_weighted() -> None:
    """After the first pick, the next is drawn from the rest by weight, too."""
    members = [M("a", 8.0), M("b", 3.0), M("c", 1.0)]
    rng = random.Random(11)
    orders = [names(weighted(members, i, rng)) for i in range(DRAWS)]
    after_a = Counter(order[1] for order in orders if order[0] == "a")
    share_b = after_a["b"] / sum(after_a.values())
    assert abs(share_b - 0.75) < 0.03


def test_weighted_is_repeatable_with_a_seed() -> None:
    members = [M("a", 2.0), M("b", 1.0), M("c", 1.0)]
    first = [names(weighted(members, i, random.Random(42))) for i in range(20)]
    second = [names(weighted(members, i, random.Random(42))) for i in range(20)]
    assert first == second


# --------------------------------------------------------------------------- priority


def test_priority_tries_tiers_lowest_first() -> None:
    members = [M("backup", priority=2), M("main", priority=0), M("second", priority=1)]
    rng = random.Random(1)
    for position in range(50):
        assert names(priority(members, position, rng)) == ["main", "second", "backup"]


def test_priority_shares_a_tier_by_weight() -> None:
    members = [M("a", 3.0, 0), M("b", 1.0, 0), M("fallback", 100.0, 1)]
    counts = first_picks(members, "priority")
    assert counts["fallback"] == 0
    assert abs(counts["a"] / DRAWS - 0.75) < 0.03
    rng = random.Random(5)
    for position in range(100):
        assert priority(members, position, rng)[-1].name == "fallback"


def test_priority_does_not_favour_the_first_listed_member_of_a_tier() -> None:
    counts = first_picks([M("x", priority=0), M("y", priority=0)], "priority")
    assert abs(counts["x"] / DRAWS - 0.5) < 0.03


@given(
    tiers=st.lists(st.integers(0, 3), min_size=1, max_size=10),
    seed=st.integers(0, 2**32),
)
def test_priority_puts_every_higher_tier_member_before_the_next_tier(
    tiers: list[int], seed: int
) -> None:
    """A lower tier is reached only after every member of the tiers above it."""
    members = [M(f"m{i}", weight=1 + i % 3, priority=tier) for i, tier in enumerate(tiers)]
    order = priority(members, 0, random.Random(seed))
    assert [m.priority for m in order] == sorted(tiers)


# --------------------------------------------------------------------------- every strategy

NAMES = ("round_robin", "weighted", "priority", "least_in_flight", "least_latency", "lowest_cost")
HINT = Estimate(input_tokens=1_000, output_tokens=200)


def test_every_strategy_in_the_schema_is_built() -> None:
    schema = json.loads(schema_text())
    accepted = schema["$defs"]["pool"]["properties"]["strategy"]["enum"]
    assert sorted(accepted) == sorted(NAMES) == sorted(STRATEGIES)
    for name in accepted:
        assert strategy_for(name) is getattr(balance, name)


def decide(
    members: Sequence[M], strategy: str, decisions: int, seed: int = 7, hint: Estimate = HINT
) -> Counter[str]:
    """First picks over ``decisions`` routing decisions."""
    rng = random.Random(seed)
    pick: Strategy[M] = strategy_for(strategy)
    return Counter(pick(members, i, rng, hint)[0].name for i in range(decisions))


def equal_members(count: int = 4) -> list[M]:
    """Healthy and alike in everything a strategy looks at: idle, as fast, as cheap."""
    price = Price(input_per_mtok=1.0, output_per_mtok=4.0)
    return [M(f"m{i}", latency=0.2, price=price) for i in range(count)]


@pytest.mark.parametrize("strategy", NAMES)
def test_equal_members_share_first_picks_evenly(strategy: str) -> None:
    counts = decide(equal_members(), strategy, 10_000)
    assert sorted(counts) == ["m0", "m1", "m2", "m3"]
    for name, count in counts.items():
        assert abs(count / 10_000 - 0.25) <= 0.03, (strategy, name, count)


@pytest.mark.parametrize("strategy", ["least_in_flight", "least_latency", "lowest_cost"])
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_ties_are_never_broken_by_list_order(strategy: str, seed: int) -> None:
    counts = decide(equal_members(2), strategy, 2_000, seed=seed)
    assert abs(counts["m0"] / 2_000 - 0.5) <= 0.05, counts


def test_ties_between_members_without_a_latency_are_random_too() -> None:
    counts = decide([M("a"), M("b")], "least_latency", 2_000)
    assert abs(counts["a"] / 2_000 - 0.5) <= 0.05, counts


member_sets = st.lists(
    st.builds(
        M,
        name=st.just(""),
        weight=st.floats(0.001, 100),
        priority=st.integers(0, 3),
        in_flight=st.integers(0, 50),
        latency=st.none() | st.floats(0, 60),
        price=st.none() | st.builds(Price, st.floats(0, 100), st.floats(0, 100)),
    ),
    min_size=1,
    max_size=10,
)


@given(
    members=member_sets,
    strategy=st.sampled_from(NAMES),
    position=st.integers(0, 10**6),
    seed=st.integers(0, 2**32),
)
def test_every_strategy_returns_every_member_once(
    members: list[M], strategy: str, position: int, seed: int
) -> None:
    pick: Strategy[M] = strategy_for(strategy)
    order = pick(members, position, random.Random(seed), HINT)
    assert sorted(map(id, order)) == sorted(map(id, members))


# --------------------------------------------------------------------------- least in flight


@given(
    in_flight=st.lists(st.integers(0, 20), min_size=1, max_size=10),
    seed=st.integers(0, 2**32),
)
def test_least_in_flight_puts_an_idle_member_first_when_one_exists(
    in_flight: list[int], seed: int
) -> None:
    members = [M(f"m{i}", in_flight=n) for i, n in enumerate(in_flight)]
    order = least_in_flight(members, 0, random.Random(seed))
    if 0 in in_flight:
        assert order[0].in_flight == 0
    assert [m.in_flight for m in order] == sorted(in_flight)


def test_least_in_flight_follows_the_counts_as_they_change() -> None:
    members = [M("a", in_flight=3), M("b", in_flight=1), M("c", in_flight=2)]
    rng = random.Random(0)
    assert names(least_in_flight(members, 0, rng)) == ["b", "c", "a"]
    members[1].in_flight = 5
    assert names(least_in_flight(members, 1, rng)) == ["c", "a", "b"]


# --------------------------------------------------------------------------- least latency


def test_least_latency_shifts_first_picks_from_a_slow_member_and_back() -> None:
    """A member 10x slower loses nearly all its pairs, but keeps a trickle of probes."""
    members = [M(name, latency=0.1) for name in "abcd"]
    healthy = decide(members, "least_latency", 1_000, seed=1)
    members[3].latency = 1.0
    slow = decide(members, "least_latency", 1_000, seed=2)
    members[3].latency = 0.1
    recovered = decide(members, "least_latency", 1_000, seed=3)

    assert abs(healthy["d"] / 1_000 - 0.25) <= 0.05
    assert 0 < slow["d"] < 100  # < 10 %, never zero
    for name in "abc":
        assert slow[name] > healthy["d"]  # the others take its traffic
    assert abs(recovered["d"] / 1_000 - 0.25) <= 0.05


def test_least_latency_recovers_when_the_ewma_only_moves_as_the_member_serves() -> None:
    """Closed loop, as in the daemon: only a member that goes first updates its EWMA.

    A strict "faster of the two wins" would leave a member that was slow with
    a stale EWMA for ever; the trickle of probes lets it show it recovered.
    """
    members = [M(name, latency=0.1) for name in "abcd"]
    true_latency = dict.fromkeys("abcd", 0.1)
    rng = random.Random(5)

    def run(decisions: int) -> int:
        picked_d = 0
        for position in range(decisions):
            first = least_latency(members, position, rng)[0]
            assert first.latency is not None
            first.latency = 0.8 * first.latency + 0.2 * true_latency[first.name]
            picked_d += first.name == "d"
        return picked_d

    run(1_000)
    true_latency["d"] = 1.0
    run(200)  # its EWMA climbs while it still serves
    assert 0 < run(1_000) < 100
    true_latency["d"] = 0.1
    run(2_000)  # probes pull the EWMA down, which brings more traffic (~600 decisions)
    assert members[3].latency == pytest.approx(0.1, abs=0.01)
    assert abs(run(1_000) / 1_000 - 0.25) <= 0.05


def test_least_latency_probes_a_new_member_at_once() -> None:
    """No EWMA yet counts as fastest: it wins every pair it is drawn into (2 of 4 → ~50 %)."""
    members = [M("a", latency=0.1), M("b", latency=0.1), M("c", latency=0.1), M("new")]
    counts = decide(members, "least_latency", 2_000)
    assert abs(counts["new"] / 2_000 - 0.5) <= 0.05
    order = least_latency(members, 0, random.Random(0))
    assert order.index(members[3]) <= 1  # first, or next after the pair's winner


def test_least_latency_does_not_stampede_one_fast_member() -> None:
    """Power of two choices: the fastest goes first only in the pairs it is drawn into."""
    members = [M("fast", latency=0.01), *(M(f"m{i}", latency=0.5) for i in range(7))]
    counts = decide(members, "least_latency", 4_000)
    assert 0.2 <= counts["fast"] / 4_000 <= 0.3  # 2 of 8 → 25 %, not 100 %


def test_least_latency_fails_over_fastest_first() -> None:
    members = [M("a", latency=0.4), M("b", latency=0.1), M("c", latency=0.3), M("d", latency=0.2)]
    rng = random.Random(9)
    for position in range(100):
        order = least_latency(members, position, rng)
        rest = [m.latency or 0.0 for m in order[1:]]
        assert rest == sorted(rest)


# --------------------------------------------------------------------------- lowest cost


def priced(name: str, input_per_mtok: float, output_per_mtok: float) -> M:
    return M(name, price=Price(input_per_mtok, output_per_mtok))


def test_lowest_cost_orders_by_the_cost_of_this_request() -> None:
    reader = priced("reader", 1.0, 10.0)  # cheap to read, dear to write
    writer = priced("writer", 5.0, 2.0)
    middle = priced("middle", 3.0, 5.0)
    unpriced = M("unpriced")
    members = [unpriced, writer, middle, reader]
    rng = random.Random(0)
    long_prompt = Estimate(input_tokens=10_000, output_tokens=100)
    long_answer = Estimate(input_tokens=100, output_tokens=10_000)
    for position in range(20):
        assert names(lowest_cost(members, position, rng, long_prompt)) == [
            "reader",
            "middle",
            "writer",
            "unpriced",
        ]
        assert names(lowest_cost(members, position, rng, long_answer)) == [
            "writer",
            "middle",
            "reader",
            "unpriced",
        ]


def test_lowest_cost_puts_every_unpriced_member_last_and_shares_ties() -> None:
    members = [M("free-a"), priced("a", 2.0, 2.0), M("free-b"), priced("b", 2.0, 2.0)]
    rng = random.Random(4)
    orders = [names(lowest_cost(members, i, rng, HINT)) for i in range(2_000)]
    assert all(sorted(order[2:]) == ["free-a", "free-b"] for order in orders)
    first_a = sum(order[0] == "a" for order in orders)
    assert abs(first_a / 2_000 - 0.5) <= 0.05


def test_lowest_cost_without_an_estimate_compares_input_plus_output_price() -> None:
    members = [priced("dear", 1.0, 9.0), priced("cheap", 3.0, 3.0)]
    assert names(lowest_cost(members, 0, random.Random(0))) == ["cheap", "dear"]
