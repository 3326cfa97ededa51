"""The operators' dashboard: ``GET /admin/dashboard``, live from ``GET /admin/dashboard.json``.

The page is three small hand-written files (``static/dashboard.{html,css,js}``,
no third-party code, nothing fetched from anywhere else) that poll the JSON
every 2 s and redraw in place; charts are inline SVG. The JSON is built from
what the daemon keeps anyway — the routing table and its runtime state
(breakers, in-flight, limits, queues), the Prometheus metrics (through
:mod:`modelpool.trends`, sampled when the JSON is asked for, never per
request), the usage store and budget meters, and the last reload — and,
like ``/admin/status``, names only what the config names: no key, no
secret, no upstream URL.

Access: the page, its assets and the JSON go through the same check as every
``/admin/*`` endpoint (``authorize``, AdminApi's). A browser cannot send a
Bearer header when it opens a URL, so the check also takes HTTP Basic
credentials whose password is the admin token; the page and its assets
answer a refusal with ``WWW-Authenticate: Basic``, the browser asks for the
token in its own dialog and then sends it with every request of the page
(the JSON polls included). Without a token, the loopback-only rule applies.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping
from datetime import UTC, datetime
from importlib import resources
from typing import Any

import orjson
from aiohttp import web

from modelpool.admin import HealthView, can_serve, limits_status
from modelpool.breaker import Breaker, State
from modelpool.metrics import Metrics
from modelpool.reload import Reloader
from modelpool.table import Model, Pool, RoutingTable, TableHolder
from modelpool.trends import Trends
from modelpool.usage.accounting import Accountant
from modelpool.usage.budgets import Period, Unit, caps, period_bounds
from modelpool.usage.record import Totals
from modelpool.usage.store import Query, Row, StoreError

Authorize = Callable[[web.Request], None]
"""Raises the HTTP error that refuses ``request`` (AdminApi's check), or returns."""
CHALLENGE = {"WWW-Authenticate": 'Basic realm="modelpool admin", charset="UTF-8"'}
"""Makes a browser ask for the admin token (as the password) when the page is refused."""

ASSETS = {
    "dashboard.css": "text/css",
    "dashboard.js": "text/javascript",
}
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Cache-Control": "no-cache",
}


def _static(name: str) -> bytes:
    return resources.files("modelpool").joinpath("static", name).read_bytes()


class DashboardApi:
    def __init__(
        self,
        holder: TableHolder,
        reloader: Reloader,
        metrics: Metrics,
        *,
        authorize: Authorize,
        accountant: Accountant | None = None,
        health: HealthView | None = None,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self._holder = holder
        self._reloader = reloader
        self._authorize = authorize
        self._accountant = accountant
        self._health = health
        self._wall = wall
        self._started = wall()
        self._trends = Trends(metrics, self._started)
        self._page = _static("dashboard.html")
        self._assets = {name: _static(name) for name in ASSETS}

    def routes(self) -> list[web.RouteDef]:
        return [
            web.get("/admin/dashboard", self.page),
            web.get("/admin/dashboard/assets/{name}", self.asset),
            web.get("/admin/dashboard.json", self.data),
        ]

    async def page(self, request: web.Request) -> web.Response:
        self._authorize_static(request)
        return web.Response(
            body=self._page, content_type="text/html", charset="utf-8", headers=SECURITY_HEADERS
        )

    async def asset(self, request: web.Request) -> web.Response:
        self._authorize_static(request)
        name = request.match_info["name"]
        if name not in ASSETS:
            raise web.HTTPNotFound()
        return web.Response(
            body=self._assets[name],
            content_type=ASSETS[name],
            charset="utf-8",
            headers=SECURITY_HEADERS,
        )

    async def data(self, request: web.Request) -> web.Response:
        """Everything the page shows, now."""
        self._authorize(request)
        body = await self.snapshot()
        return web.json_response(
            body,
            dumps=lambda v: orjson.dumps(v).decode(),
            headers={"Cache-Control": "no-store", "X-Content-Type-Options": "nosniff"},
        )

    async def snapshot(self) -> dict[str, Any]:
        now = self._wall()
        self._trends.sample(now)
        table = self._holder.current
        pools = [_pool_view(table, pool) for pool in table.pools.values()]
        return {
            "now": now,
            "started_at": self._started,
            "generation": table.generation,
            "ready": any(can_serve(table, name) for name in table.pools or table.routes),
            "config": {
                "digest": table.config.digest[:12],
                "loaded_at": self._reloader.loaded_at,
            },
            "last_reload": self._reloader.last.as_json(),
            "pools": pools,
            "models": self._models(table),
            "window_s": round(self._trends.window, 1),
            "latency_buckets_s": self._trends.resolution,
            "history": {"minute_s": 60, "points": self._trends.minutes.points(now)},
            "clients": await self._clients(table, now),
        }

    def _authorize_static(self, request: web.Request) -> None:
        """As every /admin/* path; a browser refused is asked for the token."""
        try:
            self._authorize(request)
        except web.HTTPUnauthorized as refused:
            refused.headers.update(CHALLENGE)
            raise

    def _models(self, table: RoutingTable) -> dict[str, dict[str, Any]]:
        providers = self._health.providers(table) if self._health is not None else {}
        probes = self._health.models(table) if self._health is not None else {}
        pooled = {m.model.name for pool in table.pools.values() for m in pool.members}
        views = {}
        for name, model in table.models.items():
            report = probes.get(name) or providers.get(model.spec.provider)
            view = _model_view(model, self._trends.model(name))
            view["health"] = report.get("status") if report is not None else None
            view["pooled"] = name in pooled
            views[name] = view
        return views

    async def _clients(self, table: RoutingTable, now: float) -> dict[str, Any]:
        """Each client's spend today and this month (UTC) and every cap of its budget."""
        accountant = self._accountant
        store = accountant.store if accountant is not None else None
        meters = _meters(accountant.book.status() if accountant is not None else [])
        rows: list[Row] = []
        error = None
        if store is not None:
            month = period_bounds("month", now)[0]
            try:
                rows = await store.report(Query(since=month, group_by=("client", "day")))
            except StoreError:
                error = "usage store unavailable"
        today = datetime.fromtimestamp(now, UTC).strftime("%Y-%m-%d")
        spend = _spend_by_client(rows, today)
        names = list(table.config.clients) + sorted(spend.keys() - table.config.clients.keys())
        clients = []
        for name in names:
            spent = spend.get(name, (Totals(), Totals()))
            counted = spent if store is not None and error is None else None
            spec = table.config.clients.get(name)
            budgets = [
                _budget_view(unit, period, cap, meters.get((name, unit, period)), counted, now)
                for unit, period, cap in (caps(spec.budget) if spec is not None else ())
            ]
            clients.append(
                {
                    "name": name,
                    "configured": spec is not None,
                    "today": _totals_view(spent[0]),
                    "month": _totals_view(spent[1]),
                    "budgets": budgets,
                }
            )
        return {"store": store is not None, "error": error, "day": today, "list": clients}


def _pool_view(table: RoutingTable, pool: Pool) -> dict[str, Any]:
    spec = pool.spec
    return {
        "name": pool.name,
        "description": spec.description if spec is not None else "",
        "strategy": spec.strategy if spec is not None else "-",
        "failover": list(pool.chain[1:]),
        "can_serve": can_serve(table, pool.name),
        "queue": {"depth": pool.state.queue.depth, "max_waiting": pool.queue.max_waiting},
        "limits": limits_status(pool.state.limits.gates(pool.limits)),
        "members": [
            {"model": m.model.name, "weight": m.weight, "priority": m.priority}
            for m in pool.members
        ],
    }


def _model_view(model: Model, stats: dict[str, Any]) -> dict[str, Any]:
    state = model.state
    return {
        "provider": model.spec.provider,
        "type": model.provider.type,
        "in_flight": state.in_flight,
        "breaker": breaker_view(state.breaker),
        "limits": limits_status(state.limits.gates(model.spec.limits)),
        **stats,
    }


def breaker_view(breaker: Breaker) -> dict[str, Any]:
    """State, why, and how long until it lets a trial through (seconds from now)."""
    is_open = breaker.state is State.OPEN
    return {
        "state": breaker.state.value,
        "reason": breaker.reason or None,
        "reopens_in_s": round(breaker.retry_in(), 1) if is_open else None,
        "rate_limited": breaker.rate_limited,
        "trips": breaker.trips,
        "consecutive_failures": breaker.consecutive_failures,
    }


Spend = tuple[Totals, Totals]
"""(today, this month) for one client."""


def _spend_by_client(rows: Iterable[Row], today: str) -> dict[str, Spend]:
    spend: dict[str, Spend] = {}
    for row in rows:
        client, day = row.key
        so_far = spend.get(client, (Totals(), Totals()))
        spend[client] = (
            _sum(so_far[0], row.totals) if day == today else so_far[0],
            _sum(so_far[1], row.totals),
        )
    return spend


def _sum(a: Totals, b: Totals) -> Totals:
    return Totals(
        requests=a.requests + b.requests,
        errors=a.errors + b.errors,
        cancelled=a.cancelled + b.cancelled,
        input_tokens=a.input_tokens + b.input_tokens,
        output_tokens=a.output_tokens + b.output_tokens,
        cache_read_tokens=a.cache_read_tokens + b.cache_read_tokens,
        cache_write_tokens=a.cache_write_tokens + b.cache_write_tokens,
        cost_usd=a.cost_usd + b.cost_usd,
        cost_unknown=a.cost_unknown + b.cost_unknown,
    )


def _totals_view(totals: Totals) -> dict[str, Any]:
    return {
        "requests": totals.requests,
        "errors": totals.errors,
        "tokens": totals.tokens,
        "cost_usd": round(totals.cost_usd, 6),
        "cost_unknown": totals.cost_unknown,
    }


MeterKey = tuple[str, str, str]
"""(client, unit, period)"""


def _meters(status: Iterable[Mapping[str, object]]) -> dict[MeterKey, Mapping[str, object]]:
    return {
        (str(m["name"]), str(m["unit"]), str(m["period"])): m
        for m in status
        if m.get("scope") == "client"
    }


def _budget_view(
    unit: Unit,
    period: Period,
    cap: float,
    meter: Mapping[str, object] | None,
    spent: Spend | None,
    now: float,
) -> dict[str, Any]:
    """One cap: what was spent in its period, what in-flight requests hold, when it resets.

    Spent is what the usage store counted (every sidecar's, with a shared store),
    which includes records not yet flushed; without a store, the budget meter's.
    """
    if spent is not None:
        totals = spent[0] if period == "day" else spent[1]
        used = round(totals.cost_usd, 6) if unit == "usd" else float(totals.tokens)
    else:
        used = _number(meter, "spent")
    resets = _number(meter, "resets_at") if meter is not None else period_bounds(period, now)[1]
    return {
        "unit": unit,
        "period": period,
        "cap": cap,
        "spent": used,
        "reserved": _number(meter, "reserved"),
        "resets_at": resets,
    }


def _number(meter: Mapping[str, object] | None, key: str) -> float:
    value = meter.get(key) if meter is not None else None
    return float(value) if isinstance(value, int | float) else 0.0
