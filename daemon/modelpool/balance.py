"""Load-balancing strategies: pure functions from members to a try order.

A strategy returns *every* member, best first, so the orchestrator can fail
over to the next one without asking again. Randomness comes from an
injected ``random.Random`` so tests are repeatable, and every tie is broken
by it: a member is never favoured for being listed first.

The strategies that depend on the request (``lowest_cost``) read its token
estimate from ``hint``; the others ignore it. They read runtime state
(in-flight count, latency) through :class:`Candidate`, never write it.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Protocol, TypeVar

from modelpool.config.spec import Price
from modelpool.tokens import Estimate

NO_HINT = Estimate(1, 1)
"""For callers without an estimate: ``lowest_cost`` then compares input + output prices."""

_INF = float("inf")


class Candidate(Protocol):
    """What a strategy may know about a member: its config and what it has learned."""

    @property
    def weight(self) -> float: ...

    @property
    def priority(self) -> int: ...

    @property
    def in_flight(self) -> int: ...

    @property
    def latency(self) -> float | None:
        """EWMA of seconds to the first byte of an answer; None until one has been seen."""

    @property
    def price(self) -> Price | None: ...


M = TypeVar("M", bound=Candidate)


class Strategy(Protocol[M]):
    def __call__(
        self,
        members: Sequence[M],
        position: int,
        rng: random.Random,
        hint: Estimate = NO_HINT,
        /,
    ) -> list[M]: ...


def round_robin(
    members: Sequence[M], position: int, rng: random.Random, hint: Estimate = NO_HINT
) -> list[M]:
    """Rotate the start by one per request."""
    start = position % len(members)
    return [*members[start:], *members[:start]]


def weighted(
    members: Sequence[M], position: int, rng: random.Random, hint: Estimate = NO_HINT
) -> list[M]:
    """Weighted random order without replacement (Efraimidis-Spirakis keys).

    The first member is picked with probability weight/total, exactly; the
    rest follow in the same weighted-random way, so failover also spreads.
    """
    if len(members) == 1:
        return list(members)
    keyed = [(rng.random() ** (1.0 / m.weight), i) for i, m in enumerate(members)]
    keyed.sort(reverse=True)
    return [members[i] for _, i in keyed]


def priority(
    members: Sequence[M], position: int, rng: random.Random, hint: Estimate = NO_HINT
) -> list[M]:
    """Lowest tier first; members of one tier share its traffic by weight.

    Within a tier the order is weighted-random (the same keys as
    :func:`weighted`), never list order, so a tier's first-listed member is
    not favoured.
    """
    draw = rng.random
    return sorted(members, key=lambda m: (m.priority, -(draw() ** (1.0 / m.weight))))


def least_in_flight(
    members: Sequence[M], position: int, rng: random.Random, hint: Estimate = NO_HINT
) -> list[M]:
    """Fewest requests in flight first; equal counts in random order."""
    draw = rng.random
    return sorted(members, key=lambda m: (m.in_flight, draw()))


def least_latency(
    members: Sequence[M], position: int, rng: random.Random, hint: Estimate = NO_HINT
) -> list[M]:
    """Power of two choices on the latency EWMA; the rest fastest first.

    Two distinct members are drawn at random and the faster goes first, so
    one fast member gets only the pairs it is in and is not stampeded. The
    comparison is soft: of latencies ``f < s`` the slower wins with
    probability f²/(f² + s²) — 1 % at 10x slower, 20 % at 2x, near even for
    noise — because a member's EWMA only moves when it serves, and one that
    never went first again could never show it had recovered. A member
    without an EWMA counts as 0 (it always wins its pair), so a new one is
    probed at once.
    """
    count = len(members)
    if count == 1:
        return list(members)
    draw = rng.random
    a = int(draw() * count)
    b = int(draw() * (count - 1))
    b += b >= a  # distinct from a, uniform over the others
    la, lb = members[a].latency or 0.0, members[b].latency or 0.0
    la, lb = la * la, lb * lb
    first = members[a if draw() * (la + lb) < lb else b]
    return sorted(members, key=lambda m: (m is not first, m.latency or 0.0, draw()))


def lowest_cost(
    members: Sequence[M], position: int, rng: random.Random, hint: Estimate = NO_HINT
) -> list[M]:
    """Cheapest for this request's estimated tokens first; unpriced members last.

    Cost is (input tokens * input price + output tokens * output price) / 1e6;
    equal costs in random order.
    """
    draw = rng.random
    tokens_in, tokens_out = hint.input_tokens, hint.output_tokens

    def cost(member: M) -> tuple[float, float]:
        price = member.price
        if price is None:
            return _INF, draw()
        return (tokens_in * price.input_per_mtok + tokens_out * price.output_per_mtok) / 1e6, draw()

    return sorted(members, key=cost)


STRATEGIES = {
    "round_robin": round_robin,
    "weighted": weighted,
    "priority": priority,
    "least_in_flight": least_in_flight,
    "least_latency": least_latency,
    "lowest_cost": lowest_cost,
}
"""Every ``pools.NAME.strategy`` the schema accepts."""


def strategy_for(name: str) -> Strategy[M]:
    """The strategy called ``name`` (the schema has already checked that it exists)."""
    return STRATEGIES[name]
