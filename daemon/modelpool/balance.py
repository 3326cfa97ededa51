"""Load-balancing strategies: pure functions from members to a try order.

A strategy returns *every* member, best first, so the orchestrator can fail
over to the next one without asking again. Randomness comes from an
injected ``random.Random`` so tests are repeatable.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from typing import Protocol, TypeVar


class Weighted(Protocol):
    @property
    def weight(self) -> float: ...

    @property
    def priority(self) -> int: ...


M = TypeVar("M", bound=Weighted)

Strategy = Callable[[Sequence[M], int, random.Random], list[M]]


def round_robin(members: Sequence[M], position: int, rng: random.Random) -> list[M]:
    """Rotate the start by one per request."""
    start = position % len(members)
    return [*members[start:], *members[:start]]


def weighted(members: Sequence[M], position: int, rng: random.Random) -> list[M]:
    """Weighted random order without replacement (Efraimidis-Spirakis keys).

    The first member is picked with probability weight/total, exactly; the
    rest follow in the same weighted-random way, so failover also spreads.
    """
    if len(members) == 1:
        return list(members)
    keyed = [(rng.random() ** (1.0 / m.weight), i) for i, m in enumerate(members)]
    keyed.sort(reverse=True)
    return [members[i] for _, i in keyed]


def priority(members: Sequence[M], position: int, rng: random.Random) -> list[M]:
    """Lowest tier first; members of one tier share its traffic by weight.

    Within a tier the order is weighted-random, never list order, so a tier's
    first-listed member is not favoured.
    """
    tiers: dict[int, list[M]] = {}
    for member in members:
        tiers.setdefault(member.priority, []).append(member)
    ordered: list[M] = []
    for tier in sorted(tiers):
        ordered.extend(weighted(tiers[tier], position, rng))
    return ordered


def strategy_for(name: str) -> Strategy[M]:
    """The strategy called ``name``; those not built yet fall back to round_robin."""
    strategies: dict[str, Strategy[M]] = {
        "round_robin": round_robin,
        "weighted": weighted,
        "priority": priority,
    }
    return strategies.get(name, round_robin)
