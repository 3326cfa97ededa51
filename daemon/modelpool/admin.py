"""Operational endpoints: /healthz, /readyz, /admin/status."""

from __future__ import annotations

import hmac
from typing import Any

import orjson
import prometheus_client
from aiohttp import web

from modelpool.config.semantic import is_loopback
from modelpool.describe import config_json
from modelpool.metrics import Metrics
from modelpool.reload import Reloader
from modelpool.table import TableHolder


class AdminApi:
    def __init__(self, holder: TableHolder, reloader: Reloader, metrics: Metrics) -> None:
        self._holder = holder
        self._reloader = reloader
        self._metrics = metrics

    def routes(self) -> list[web.RouteDef]:
        return [
            web.get("/healthz", self.healthz),
            web.get("/readyz", self.readyz),
            web.get("/metrics", self.metrics),
            web.get("/admin/status", self.status),
            web.post("/admin/reload", self.reload),
            web.get("/admin/config", self.config),
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
        table = self._holder.current
        ready = bool(table.models)
        return web.json_response(
            {"ready": ready, "generation": table.generation}, status=200 if ready else 503
        )

    async def status(self, request: web.Request) -> web.Response:
        self._authorize(request)
        table = self._holder.current
        models: dict[str, Any] = {
            name: {
                "in_flight": model.state.in_flight,
                "requests": model.state.requests,
                "errors": model.state.errors,
                "latency_ewma_s": model.state.latency_ewma,
            }
            for name, model in table.models.items()
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
                "models": models,
            }
        )

    def _authorize(self, request: web.Request) -> None:
        token = self._holder.current.config.server.admin_token
        if token is None:
            # No token: only this host may look, even when the proxy listens wider.
            if not is_loopback(request.remote or ""):
                raise web.HTTPForbidden(reason="admin endpoints need server.admin_token off-host")
            return
        given = request.headers.get("Authorization", "").removeprefix("Bearer ").encode()
        if not hmac.compare_digest(given, token.reveal().encode()):
            raise web.HTTPUnauthorized(reason="admin token required")
