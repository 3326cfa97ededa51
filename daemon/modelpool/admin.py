"""Operational endpoints: /healthz, /readyz, /admin/status."""

from __future__ import annotations

import base64
import hmac
import time
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol

import orjson
import prometheus_client
from aiohttp import web

from modelpool.breaker import Breaker, State
from modelpool.clock import Clock, SystemClock
from modelpool.config.semantic import is_loopback
from modelpool.describe import config_json
from modelpool.drain import Drain
from modelpool.errors import BadRequest
from modelpool.limits import Gate
from modelpool.listeners import via_unix_socket
from modelpool.metrics import Metrics
from modelpool.reload import Reloader
from modelpool.state import ModelState
from modelpool.table import RoutingTable, TableHolder
from modelpool.usage.accounting import Accountant
from modelpool.usage.cli_report import DEFAULT_GROUP_BY, UsageArgs, build_query
from modelpool.usage.report import report_json
from modelpool.usage.store import StoreError

if TYPE_CHECKING:
    from modelpool.shared.state import SharedState

Report = Mapping[str, Mapping[str, Any]]


class HealthView(Protocol):
    """What the health checker shows (the composition root passes it in)."""

    def providers(self, table: RoutingTable) -> Report: ...

    def models(self, table: RoutingTable) -> Report: ...


class AdminApi:
    def __init__(
        self,
        holder: TableHolder,
        reloader: Reloader,
        metrics: Metrics,
        *,
        health: HealthView | None = None,
        clock: Clock | None = None,
        accountant: Accountant | None = None,
        drain: Drain | None = None,
        shared: SharedState | None = None,
    ) -> None:
        self._shared = shared
        self._clock: Clock = clock or SystemClock()
        self._accountant = accountant
        self._drain = drain
        self._holder = holder
        self._reloader = reloader
        self._metrics = metrics
        self._health = health

    def routes(self) -> list[web.RouteDef]:
        return [
            web.get("/healthz", self.healthz),
            web.get("/readyz", self.readyz),
            web.get("/metrics", self.metrics),
            web.get("/admin/status", self.status),
            web.post("/admin/reload", self.reload),
            web.get("/admin/config", self.config),
            web.get("/admin/usage", self.usage),
        ]

    async def metrics(self, request: web.Request) -> web.Response:
        body = prometheus_client.generate_latest(self._metrics.registry)
        return web.Response(
            body=body, headers={"Content-Type": prometheus_client.CONTENT_TYPE_LATEST}
        )

    async def config(self, request: web.Request) -> web.Response:
        """The configuration being served, as validated, with every secret masked."""
        self._authorize(request)
        table = self._holder.current
        body = {"generation": table.generation, "config": config_json(table.config)}
        return web.json_response(body, dumps=lambda v: orjson.dumps(v).decode())

    async def usage(self, request: web.Request) -> web.Response:
        """What ``modelpool usage --json`` prints, exact to this moment (buffered records
        included), plus every budget meter. Query: since, until, by, client, pool, model."""
        self._authorize(request)
        store = self._accountant.store if self._accountant is not None else None
        if self._accountant is None or store is None:
            raise web.HTTPNotFound(reason="this daemon keeps no usage store")
        q = request.query
        args = UsageArgs(
            since=q.get("since"),
            until=q.get("until"),
            by=q.get("by", DEFAULT_GROUP_BY),
            client=q.get("client"),
            pool=q.get("pool"),
            model=q.get("model"),
        )
        try:
            query = build_query(args, time.time())
        except ValueError as exc:
            raise BadRequest(str(exc)) from None
        try:
            rows = await store.report(query)
        except StoreError as exc:
            raise web.HTTPServiceUnavailable(reason=f"usage store unavailable: {exc}") from None
        body = report_json(rows, query.group_by)
        body["budgets"] = self._accountant.book.status()
        return web.json_response(body, dumps=lambda v: orjson.dumps(v).decode())

    async def reload(self, request: web.Request) -> web.Response:
        """Reload now and answer with the outcome: the diff, or every error (422)."""
        self._authorize(request)
        outcome = await self._reloader.reload("admin")
        return web.json_response(
            outcome.as_json(), status=422 if outcome.result == "rejected" else 200
        )

    async def healthz(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def readyz(self, request: web.Request) -> web.Response:
        """Ready while some pool can serve now: a member (or failover member) not broken."""
        table = self._holder.current
        pools = {name: can_serve(table, name) for name in table.pools or table.routes}
        draining = self._drain is not None and self._drain.draining
        ready = any(pools.values()) and not draining
        body = {"ready": ready, "generation": table.generation, "pools": pools}
        if draining:
            body["draining"] = True
        return web.json_response(body, status=200 if ready else 503)

    async def status(self, request: web.Request) -> web.Response:
        self._authorize(request)
        table = self._holder.current
        health = self._health
        probes = health.models(table) if health is not None else {}
        times = _Times(self._clock)
        models = {
            name: _model_status(model.state, probes.get(name), times)
            | {"limits": limits_status(model.state.limits.gates(model.spec.limits))}
            for name, model in table.models.items()
        }
        pools = {
            name: {
                "queue_depth": pool.state.queue.depth,
                "limits": limits_status(pool.state.limits.gates(pool.limits)),
            }
            for name, pool in table.pools.items()
        }
        reports = self._provider_health(table)
        providers = {
            name: {"type": spec.type, "health": reports[name]}
            for name, spec in table.config.providers.items()
        }
        return web.json_response(
            {
                "generation": table.generation,
                "config": {
                    "path": table.config.source,
                    "digest": table.config.digest,
                    "loaded_at": self._reloader.loaded_at,
                },
                "last_reload": self._reloader.last.as_json(),
                "providers": providers,
                "pools": pools,
                "models": models,
                "shared_state": self._shared.status() if self._shared is not None else None,
            }
        )

    def _provider_health(self, table: RoutingTable) -> Report:
        if self._health is not None:
            return self._health.providers(table)
        unknown = {"status": "unknown", "reason": "health checks are off"}
        return {name: unknown for name in table.config.providers}

    def authorize(self, request: web.Request) -> None:
        """Refuse ``request`` unless it may see /admin/* (the dashboard uses this too)."""
        self._authorize(request)

    def _authorize(self, request: web.Request) -> None:
        token = self._holder.current.config.server.admin_token
        if token is None:
            # No token: only this host may look, even when the proxy listens wider.
            if not is_loopback(request.remote or "") and not via_unix_socket(request):
                raise web.HTTPForbidden(reason="admin endpoints need server.admin_token off-host")
            return
        if not hmac.compare_digest(presented_token(request), token.reveal().encode()):
            raise web.HTTPUnauthorized(reason="admin token required")


def presented_token(request: web.Request) -> bytes:
    """The admin token a request shows: ``Authorization: Bearer <token>``, or a browser's
    ``Basic`` credentials with the token as password (any user name)."""
    value = request.headers.get("Authorization", "")
    scheme, _, credentials = value.partition(" ")
    if scheme.lower() != "basic":
        return value.removeprefix("Bearer ").encode()
    try:
        decoded = base64.b64decode(credentials.strip(), validate=True)
    except ValueError:  # binascii.Error is one
        return b""
    return decoded.partition(b":")[2]


def can_serve(table: RoutingTable, route: str) -> bool:
    """Whether a request to ``route`` could be admitted by some model of its chain now."""
    return any(
        member.model.state.breaker.available()
        for pool in table.routes[route].chain
        for member in table.routes[pool].members
    )


class _Times:
    """Breakers keep monotonic times; a reader needs Unix ones."""

    __slots__ = ("_monotonic", "_unix")

    def __init__(self, clock: Clock) -> None:
        self._monotonic = clock.now()
        self._unix = time.time()

    def unix(self, monotonic: float) -> float:
        return round(self._unix + (monotonic - self._monotonic), 3)


def limits_status(gates: Sequence[Gate]) -> dict[str, Any]:
    """Each configured limit and what is left of it now."""
    return {
        gate.kind: {"limit": getattr(gate, "limit", None), "headroom": round(gate.headroom(), 1)}
        for gate in gates
    }


def _model_status(
    state: ModelState, probe: Mapping[str, Any] | None, times: _Times
) -> dict[str, Any]:
    status: dict[str, Any] = {
        "in_flight": state.in_flight,
        "requests": state.requests,
        "errors": state.errors,
        "latency_ewma_s": state.latency_ewma,
        "breaker": _breaker_status(state.breaker, times),
    }
    if probe is not None:
        status["health"] = probe
    return status


def _breaker_status(breaker: Breaker, times: _Times) -> dict[str, Any]:
    """Why and since when a breaker is open, and when it admits a trial (Unix times)."""
    opened_at = breaker.opened_at if breaker.state is not State.CLOSED else None
    is_open = breaker.state is State.OPEN
    return {
        "state": breaker.state.value,
        "reason": breaker.reason,
        "opened_at": times.unix(opened_at) if opened_at is not None else None,
        "half_open_at": times.unix(breaker.open_until) if is_open else None,
        "retry_in_s": round(breaker.retry_in(), 3) if is_open else None,
        "rate_limited": breaker.rate_limited,
        "consecutive_failures": breaker.consecutive_failures,
        "trips": breaker.trips,
        "transitions": breaker.transitions,
    }
