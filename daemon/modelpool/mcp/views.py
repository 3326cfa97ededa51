"""What the MCP tools and resources show: the live routing table, seen by one client.

Every function takes the table the caller read at the start of the call
and the calling client (None when the daemon is open), and shows only what
that client may use — the pools and models it may name, and the models
serving those pools — with their capabilities, context window, price and
health. The figures are the ones ``/admin/status`` reports (breaker state,
in-flight, queue depth, limit headroom), so an agent and an operator see the
same numbers. No keys, no URLs, nothing of other clients.
"""

from __future__ import annotations

import calendar
import time
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, Protocol

from modelpool.auth import may_use
from modelpool.breaker import Breaker, State
from modelpool.config.spec import Budget, ClientSpec
from modelpool.limits import Gate
from modelpool.mcp.recommend import MemberFacts, Option
from modelpool.registry_view import models_listing
from modelpool.table import Model, Pool, RoutingTable
from modelpool.usage.accounting import Accountant
from modelpool.usage.record import ANONYMOUS
from modelpool.usage.report import report_json
from modelpool.usage.store import Query

Report = Mapping[str, Mapping[str, Any]]


class HealthView(Protocol):
    """The active health checker's latest results (modelpool.health.HealthChecker)."""

    def providers(self, table: RoutingTable) -> Report: ...

    def models(self, table: RoutingTable) -> Report: ...


class NotAllowed(LookupError):
    """The pool does not exist, or the calling client may not use it."""


# ------------------------------------------------------------------ registry


def pools_view(table: RoutingTable, client: ClientSpec | None) -> list[dict[str, Any]]:
    """The declared pools ``client`` may name, as /v1/models shows them, plus price and health."""
    entries = [e for e in models_listing(table, client)["data"] if e["modelpool"]["kind"] == "pool"]
    return [_pool_entry(table, entry) for entry in entries]


def _pool_entry(table: RoutingTable, entry: Mapping[str, Any]) -> dict[str, Any]:
    pool = table.pools[entry["id"]]
    return _flat(entry) | {"price": _price_range(pool), "health": _pool_health(table, pool)}


def models_view(
    table: RoutingTable, client: ClientSpec | None, health: HealthView | None = None
) -> list[dict[str, Any]]:
    """The models ``client`` may name, and those serving the pools it may name.

    ``direct`` says whether it may name the model itself; ``pools`` which of
    its pools (failover pools included) the model serves.
    """
    serving = _serving(table, client)
    direct = {name for name in table.models if may_use(client, name)}
    entries = {entry["id"]: entry for entry in models_listing(table, None)["data"]}
    probes = _probes(table, health)
    return [
        _flat(entries[name])
        | {
            "direct": name in direct,
            "pools": sorted(serving.get(name, ())),
            "health": model_health(model, probes.get(name)),
        }
        for name, model in table.models.items()
        if name in direct or name in serving
    ]


def _serving(table: RoutingTable, client: ClientSpec | None) -> dict[str, set[str]]:
    """Model name → the client's pools whose chain it serves."""
    serving: dict[str, set[str]] = {}
    for name, pool in table.pools.items():
        if not may_use(client, name):
            continue
        for link in pool.chain:
            for member in table.routes[link].members:
                serving.setdefault(member.model.name, set()).add(name)
    return serving


def _flat(entry: Mapping[str, Any]) -> dict[str, Any]:
    """A /v1/models entry without the OpenAI envelope: its name and modelpool's fields."""
    return {"name": entry["id"]} | dict(entry["modelpool"])


def _price_range(pool: Pool) -> dict[str, Any] | None:
    prices = [m.model.spec.price for m in pool.members if m.model.spec.price is not None]
    if not prices:
        return None
    inputs = [p.input_per_mtok for p in prices]
    outputs = [p.output_per_mtok for p in prices]
    return {
        "input_per_mtok": {"min": min(inputs), "max": max(inputs)},
        "output_per_mtok": {"min": min(outputs), "max": max(outputs)},
        "unpriced_members": [m.model.name for m in pool.members if m.model.spec.price is None],
    }


def _pool_health(table: RoutingTable, pool: Pool) -> dict[str, Any]:
    up = [m.model.name for m in pool.members if m.model.state.breaker.available()]
    return {
        "status": "up" if up else "down",
        "members_up": len(up),
        "members": len(pool.members),
        "can_serve": can_serve(table, pool),
    }


def can_serve(table: RoutingTable, pool: Pool) -> bool:
    """Some model of the pool or of its failover chain admits requests now (as /readyz)."""
    return any(
        member.model.state.breaker.available()
        for link in pool.chain
        for member in table.routes[link].members
    )


def model_health(model: Model, probe: str | None) -> dict[str, Any]:
    breaker = model.state.breaker
    return {
        "status": "up" if breaker.available() else "down",
        "breaker": breaker.state.value,
        "retry_in_s": round(breaker.retry_in(), 3) if breaker.state is State.OPEN else None,
        "probe": probe,
    }


def _probes(table: RoutingTable, health: HealthView | None) -> dict[str, str]:
    """Each model's latest probe status: its own chat probe, else its provider's list probe.
    Only the status word: a probe's reason may name an upstream URL."""
    if health is None:
        return {}
    providers = health.providers(table)
    models = health.models(table)
    out: dict[str, str] = {}
    for name, model in table.models.items():
        result = models.get(name) or providers.get(model.spec.provider)
        if result is not None:
            out[name] = str(result.get("status"))
    return out


# ------------------------------------------------------------------ one pool


def pool_status(
    table: RoutingTable, client: ClientSpec | None, name: str, health: HealthView | None = None
) -> dict[str, Any]:
    """One pool right now: members and their breakers, in-flight, queue depth, headroom."""
    pool = allowed_route(table, client, name)
    probes = _probes(table, health)
    members = [
        {
            "model": member.model.name,
            "weight": member.weight,
            "priority": member.priority,
            "in_flight": member.model.state.in_flight,
            "requests": member.model.state.requests,
            "errors": member.model.state.errors,
            "latency_ewma_s": member.model.state.latency_ewma,
            "breaker": breaker_status(member.model.state.breaker),
            "limits": headroom(member.model.state.limits.gates(member.model.spec.limits)),
            "health": model_health(member.model, probes.get(member.model.name)),
        }
        for member in pool.members
    ]
    return {
        "pool": pool.name,
        "kind": "pool" if pool.spec is not None else "model",
        "generation": table.generation,
        "strategy": _strategy(pool),
        "can_serve": can_serve(table, pool),
        "in_flight": sum(member.model.state.in_flight for member in pool.members),
        "queue_depth": pool.state.queue.depth,
        "queue": {"max_waiting": pool.queue.max_waiting, "timeout_s": pool.queue.timeout},
        "limits": headroom(pool.state.limits.gates(pool.limits)),
        "failover": list(pool.chain[1:]),
        "members": members,
    }


def allowed_route(table: RoutingTable, client: ClientSpec | None, name: str) -> Pool:
    """The pool (or model) ``name``, if ``client`` may use it; NotAllowed says which it may."""
    route = table.routes.get(name)
    if route is not None and may_use(client, name):
        return route
    allowed = sorted(n for n in table.pools if may_use(client, n))
    what = "unknown pool" if route is None else "you may not use pool"
    raise NotAllowed(f"{what} {name!r}; yours: {', '.join(allowed) or 'none'}")


def breaker_status(breaker: Breaker) -> dict[str, Any]:
    """A breaker as /admin/status shows it, in relative times."""
    is_open = breaker.state is State.OPEN
    return {
        "state": breaker.state.value,
        "reason": breaker.reason,
        "retry_in_s": round(breaker.retry_in(), 3) if is_open else None,
        "rate_limited": breaker.rate_limited,
        "consecutive_failures": breaker.consecutive_failures,
        "trips": breaker.trips,
    }


def headroom(gates: Sequence[Gate]) -> dict[str, Any]:
    """Each configured limit and what is left of it now (as /admin/status)."""
    return {
        gate.kind: {"limit": getattr(gate, "limit", None), "headroom": round(gate.headroom(), 1)}
        for gate in gates
    }


# ------------------------------------------------------------------ recommendation


def options(table: RoutingTable, client: ClientSpec | None) -> list[Option]:
    """The pools ``client`` may name, as facts for the recommendation.

    Declared pools only (they retry and fail over); a client allowed no
    declared pool is offered the models it may name directly.
    """
    routes = [pool for name, pool in table.pools.items() if may_use(client, name)]
    if not routes:
        routes = [route for name, route in table.routes.items() if may_use(client, name)]
    return [Option(route.name, _strategy(route), _members(route)) for route in routes]


def _strategy(route: Pool) -> str:
    return route.spec.strategy if route.spec is not None else "round_robin"


def _members(route: Pool) -> tuple[MemberFacts, ...]:
    return tuple(_facts(m.model, m.weight, m.priority) for m in route.members)


def _facts(model: Model, weight: float, priority: int) -> MemberFacts:
    breaker = model.state.breaker
    return MemberFacts(
        model=model.name,
        capabilities=model.capabilities,
        context_window=model.spec.context_window,
        price=model.spec.price,
        available=breaker.available(),
        latency=model.state.latency_ewma,
        weight=weight,
        priority=priority,
        retry_in=breaker.retry_in(),
    )


# ------------------------------------------------------------------ usage


def caller_name(client: ClientSpec | None) -> str:
    """The name usage is recorded under: the client's, or ``-`` on an open daemon."""
    return client.name if client is not None else ANONYMOUS


async def usage_view(
    accountant: Accountant | None, client: ClientSpec | None, now: float | None = None
) -> dict[str, Any]:
    """The calling client's own usage today and this month (UTC), and its budget meters.

    Raises StoreError when the store cannot be read.
    """
    now = time.time() if now is None else now
    name = caller_name(client)
    out: dict[str, Any] = {"client": name, "as_of": _iso(now)}
    store = accountant.store if accountant is not None else None
    day, month = day_start(now), month_start(now)
    for label, since in (("today", day), ("this_month", month)):
        if store is None:
            out[label] = None
            continue
        rows = await store.report(Query(since=since, client=name, group_by=("pool", "model")))
        out[label] = {"since": _iso(since)} | report_json(rows, ("pool", "model"))
    if store is None:
        out["note"] = "this daemon keeps no usage store (usage.store: none)"
    out["budget"] = _caps(client.budget) if client is not None else None
    meters = accountant.book.status() if accountant is not None else []
    out["budgets"] = [m for m in meters if m["scope"] == "client" and m["name"] == name]
    return out


def _caps(budget: Budget) -> dict[str, Any] | None:
    if budget.empty:
        return None
    return {
        "usd_per_day": budget.usd_per_day,
        "usd_per_month": budget.usd_per_month,
        "tokens_per_day": budget.tokens_per_day,
        "tokens_per_month": budget.tokens_per_month,
    }


def day_start(now: float) -> float:
    moment = datetime.fromtimestamp(now, UTC)
    return float(calendar.timegm((moment.year, moment.month, moment.day, 0, 0, 0)))


def month_start(now: float) -> float:
    moment = datetime.fromtimestamp(now, UTC)
    return float(calendar.timegm((moment.year, moment.month, 1, 0, 0, 0)))


def _iso(moment: float) -> str:
    return datetime.fromtimestamp(moment, UTC).isoformat().replace("+00:00", "Z")
