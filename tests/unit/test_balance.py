"""Load-balancing strategies: pure functions of (members, position, seeded RNG)."""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import pytest

from modelpool.balance import Strategy, priority, round_robin, strategy_for, weighted

DRAWS = 20_000


@dataclass(frozen=True)
class M:
    name: str
    weight: float = 1.0
    priority: int = 0


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


def test_unbuilt_strategies_fall_back_to_round_robin() -> None:
    members = [M("a"), M("b")]
    pick: Strategy[M] = strategy_for("least_latency")
    assert names(pick(members, 1, random.Random(0))) == ["b", "a"]
