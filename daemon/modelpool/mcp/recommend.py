"""Which pool to send a request to, right now: the choice behind ``recommend_model``.

Pure: it reads :class:`Option` facts (a pool, its members, their prices,
breakers and observed latency) and never the routing table, so it is tested
without one. A pool is judged by its *own* members that could take the
request the way the dispatcher would route it — every required capability,
a context window that holds the prompt (an unknown window may), a breaker
that admits requests now. Its expected cost and latency are those members'
figures weighted by how the pool's strategy spreads requests over them:
all on the cheapest for ``lowest_cost``, all on the fastest for
``least_latency``, evenly over the best tier for ``priority``, by weight for
``weighted``, evenly otherwise.

Preferences:

- ``cost``: lowest expected USD for the prompt plus the expected output at
  the price table; pools with an unpriced member in play rank last.
- ``latency``: lowest expected latency (the EWMA of time to first byte);
  with nothing observed yet for any pool, the cheapest instead.
- ``balanced``: the lowest mean of cost and latency, each divided by the
  largest among the candidates (so 0 is free or instant and 1 the worst);
  an unknown figure counts as the worst.

Ties go to the other figure, then to the name, so the answer is stable.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Literal

from modelpool.config.spec import Price
from modelpool.providers.translate.usage import Usage
from modelpool.usage.pricing import cost_of

Preference = Literal["cost", "latency", "balanced"]
PREFERENCES: tuple[Preference, ...] = ("cost", "latency", "balanced")
_INF = float("inf")


@dataclass(frozen=True, slots=True)
class MemberFacts:
    model: str
    capabilities: frozenset[str]
    context_window: int | None
    price: Price | None
    available: bool
    """The breaker admits a request now."""
    latency: float | None
    """Observed time to first byte (EWMA, seconds); None before any answer."""
    weight: float = 1.0
    priority: int = 0
    retry_in: float = 0.0
    """Seconds until an open breaker admits a trial."""


_Key = Callable[[MemberFacts], float]


@dataclass(frozen=True, slots=True)
class Option:
    """A pool the client may name, as the recommendation sees it."""

    name: str
    strategy: str
    members: tuple[MemberFacts, ...]


@dataclass(frozen=True, slots=True)
class Need:
    capabilities: frozenset[str]
    prompt_tokens: int
    output_tokens: int
    preference: Preference


@dataclass(frozen=True, slots=True)
class Candidate:
    """A pool that can take the request now, and what it is expected to cost and take."""

    pool: str
    members: tuple[str, ...]
    """Its members that could serve, most likely first."""
    cost: float | None
    latency: float | None
    score: float = 0.0

    def as_json(self) -> dict[str, object]:
        return {
            "pool": self.pool,
            "members": list(self.members),
            "estimated_cost_usd": None if self.cost is None else round(self.cost, 8),
            "latency_ewma_s": None if self.latency is None else round(self.latency, 4),
        }


@dataclass(frozen=True, slots=True)
class Recommendation:
    pool: str | None
    model: str | None
    """The member most likely to serve it."""
    reason: str
    ranked: tuple[Candidate, ...] = ()
    rejected: dict[str, str] = field(default_factory=dict)
    """Pools that cannot take the request now, and why."""

    def as_json(self) -> dict[str, object]:
        best = self.ranked[0] if self.ranked else None
        return {
            "pool": self.pool,
            "model": self.model,
            "reason": self.reason,
            "estimated_cost_usd": best.as_json()["estimated_cost_usd"] if best else None,
            "latency_ewma_s": best.as_json()["latency_ewma_s"] if best else None,
            "candidates": [candidate.as_json() for candidate in self.ranked],
            "rejected": dict(self.rejected),
        }


def recommend(options: Sequence[Option], need: Need) -> Recommendation:
    """The best of ``options`` for ``need`` now, with the reason and the runners-up."""
    candidates: list[Candidate] = []
    rejected: dict[str, str] = {}
    for option in options:
        judged = judge(option, need)
        if isinstance(judged, str):
            rejected[option.name] = judged
        else:
            candidates.append(judged)
    if not candidates:
        reason = "no pool you may use can take this request now" + (
            "" if rejected else " (you may use no pool)"
        )
        return Recommendation(None, None, reason, rejected=rejected)
    preference = need.preference
    if preference == "latency" and all(c.latency is None for c in candidates):
        preference = "cost"
    ranked = rank(candidates, preference)
    best = ranked[0]
    reason = explain(ranked, need, preference)
    return Recommendation(best.pool, best.members[0], reason, tuple(ranked), rejected)


def judge(option: Option, need: Need) -> Candidate | str:
    """The pool as a candidate for ``need``, or why it cannot take it now."""
    capable = [m for m in option.members if need.capabilities <= m.capabilities]
    if not capable:
        wanted = ", ".join(sorted(need.capabilities)) or "nothing"
        return f"no member has every capability asked for ({wanted})"
    fitting = [m for m in capable if fits(m, need.prompt_tokens)]
    if not fitting:
        largest = max(m.context_window or 0 for m in capable)
        return (
            f"a {need.prompt_tokens}-token prompt exceeds the context window of every "
            f"capable member (largest: {largest})"
        )
    ready = [m for m in fitting if m.available]
    if not ready:
        soonest = min(fitting, key=lambda m: m.retry_in)
        return (
            f"every capable member's breaker is open "
            f"({soonest.model} admits a trial in {soonest.retry_in:.1f}s)"
        )
    shares = spread(option.strategy, ready, need)
    likely = sorted(ready, key=lambda m: (-shares[m.model], ready.index(m)))
    return Candidate(
        pool=option.name,
        members=tuple(m.model for m in likely),
        cost=expected_cost(ready, shares, need),
        latency=expected_latency(ready, shares),
    )


def fits(member: MemberFacts, prompt_tokens: int) -> bool:
    """The dispatcher's rule: a prompt larger than the window skips the member."""
    return member.context_window is None or member.context_window >= prompt_tokens


def cost_for(member: MemberFacts, need: Need) -> float | None:
    usage = Usage(input_tokens=need.prompt_tokens, output_tokens=need.output_tokens)
    return cost_of(usage, member.price)


def spread(strategy: str, members: Sequence[MemberFacts], need: Need) -> dict[str, float]:
    """The share of requests each member takes under the pool's strategy."""
    if strategy == "lowest_cost":
        costs = {m.model: cost_for(m, need) for m in members}
        return _all_on(members, lambda m: _or_inf(costs[m.model]))
    if strategy == "least_latency" and any(m.latency is not None for m in members):
        return _all_on(members, lambda m: _or_inf(m.latency))
    if strategy == "priority":
        tier = min(m.priority for m in members)
        top = [m for m in members if m.priority == tier]
        return {m.model: (1 / len(top) if m.priority == tier else 0.0) for m in members}
    if strategy == "weighted":
        total = sum(m.weight for m in members)
        return {m.model: m.weight / total for m in members}
    return {m.model: 1 / len(members) for m in members}


def _all_on(members: Sequence[MemberFacts], key: _Key) -> dict[str, float]:
    """Every request on the members with the lowest ``key`` (shared when they tie)."""
    lowest = min(key(m) for m in members)
    best = [m for m in members if key(m) == lowest]
    return {m.model: (1 / len(best) if m in best else 0.0) for m in members}


def _or_inf(value: float | None) -> float:
    return _INF if value is None else value


def expected_cost(
    members: Sequence[MemberFacts], shares: dict[str, float], need: Need
) -> float | None:
    """USD per request; None when a member that takes requests has no price."""
    total = 0.0
    for member in members:
        share = shares[member.model]
        if share == 0:
            continue
        cost = cost_for(member, need)
        if cost is None:
            return None
        total += share * cost
    return total


def expected_latency(members: Sequence[MemberFacts], shares: dict[str, float]) -> float | None:
    """Seconds, over the members that have been observed; None when none has."""
    seen = [(shares[m.model], m.latency) for m in members if m.latency is not None]
    weight = sum(share for share, _ in seen)
    if not seen or weight == 0:
        return None
    return sum(share * latency for share, latency in seen) / weight


def rank(candidates: Sequence[Candidate], preference: Preference) -> list[Candidate]:
    if preference == "cost":
        return sorted(candidates, key=lambda c: (_or_inf(c.cost), _or_inf(c.latency), c.pool))
    if preference == "latency":
        return sorted(candidates, key=lambda c: (_or_inf(c.latency), _or_inf(c.cost), c.pool))
    return _balanced(candidates)


def _balanced(candidates: Sequence[Candidate]) -> list[Candidate]:
    top_cost = max((c.cost for c in candidates if c.cost is not None), default=None)
    top_latency = max((c.latency for c in candidates if c.latency is not None), default=None)
    scored = [
        Candidate(
            c.pool,
            c.members,
            c.cost,
            c.latency,
            (_relative(c.cost, top_cost) + _relative(c.latency, top_latency)) / 2,
        )
        for c in candidates
    ]
    return sorted(scored, key=lambda c: (c.score, _or_inf(c.cost), _or_inf(c.latency), c.pool))


def _relative(value: float | None, top: float | None) -> float:
    """``value`` on 0 (free, instant) … 1 (the worst candidate); unknown counts as 1."""
    if value is None:
        return 1.0
    if not top:
        return 0.0
    return value / top


def explain(ranked: Sequence[Candidate], need: Need, preference: Preference) -> str:
    """One sentence a person (or a model) can act on."""
    best = ranked[0]
    size = f"{need.prompt_tokens} prompt + {need.output_tokens} output tokens"
    if preference == "cost":
        why = f"cheapest for {size}: {_usd(best.cost)} per request"
        if need.preference == "latency":
            why = "no latency observed yet for any pool; " + why
    elif preference == "latency":
        why = f"lowest observed latency: {_seconds(best.latency)} to first byte"
    else:
        why = (
            f"best balance of cost and latency for {size}: "
            f"{_usd(best.cost)} per request, {_seconds(best.latency)} to first byte"
        )
    why += f", most likely served by {best.members[0]}"
    if len(ranked) > 1:
        second = ranked[1]
        why += f" (next: {second.pool}, {_usd(second.cost)}, {_seconds(second.latency)})"
    return why


def _usd(value: float | None) -> str:
    return "cost unknown (unpriced model)" if value is None else f"≈${value:.6f}"


def _seconds(value: float | None) -> str:
    return "latency not observed yet" if value is None else f"{value:.3f}s"
