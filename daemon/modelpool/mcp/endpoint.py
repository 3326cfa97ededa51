"""``/mcp``: the MCP Streamable HTTP endpoint, served by the SDK through an ASGI bridge.

Each request is checked here, before the SDK sees it, the way the proxy
checks its own: with ``clients:`` configured it needs a known key
(``Authorization: Bearer`` or ``x-api-key``), else 401 with a JSON-RPC error
body; an open daemon needs none. A browser page on another origin is refused
(403) unless keys are configured, so DNS rebinding cannot reach an open
daemon's MCP tools. The authenticated client rides in the ASGI scope to the
tool handlers (``modelpool.mcp.server.Caller``).

Stateless by default: every POST is answered on its own (no ``Mcp-Session-Id``,
no standing GET stream), so nothing is held across reloads and shutdown has
no stream to wait for. ``stateless=False`` gives SDK sessions instead, each
bound to the client that opened it; their streams are ended on shutdown.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from urllib.parse import urlsplit

import orjson
from aiohttp import web
from mcp.server.auth.middleware.bearer_auth import AuthenticatedUser
from mcp.server.auth.provider import AccessToken
from mcp.server.streamable_http_manager import StreamableHTTPSessionManager

from modelpool.config.semantic import is_loopback
from modelpool.config.spec import ClientSpec
from modelpool.errors import Unauthorized
from modelpool.mcp.asgi import call_asgi
from modelpool.mcp.server import CALLER, Caller, ModelpoolMcp, Sources
from modelpool.mcp.views import HealthView
from modelpool.table import TableHolder
from modelpool.usage.accounting import Accountant

log = logging.getLogger("modelpool.mcp")

PATH = "/mcp"
UNAUTHORIZED = -32001
"""JSON-RPC error code of a refused request (implementation-defined server error range)."""


class McpEndpoint:
    def __init__(
        self,
        holder: TableHolder,
        accountant: Accountant | None = None,
        *,
        health: HealthView | None = None,
        stateless: bool = True,
        json_response: bool = False,
    ) -> None:
        self._holder = holder
        self._stateless = stateless
        sources = Sources(holder, accountant, health)
        self._manager = StreamableHTTPSessionManager(
            ModelpoolMcp(sources).server(), stateless=stateless, json_response=json_response
        )
        self._handlers: set[asyncio.Task[object]] = set()

    def routes(self) -> list[web.RouteDef]:
        """POST carries every message. GET (the server's standing stream) and DELETE (end a
        session) exist only with sessions; stateless, aiohttp answers them 405, as the
        transport spec asks of a server that offers no stream."""
        routes = [web.post(PATH, self.handle)]
        if not self._stateless:
            routes += [web.get(PATH, self.handle, allow_head=False), web.delete(PATH, self.handle)]
        return routes

    async def running(self, app: web.Application) -> AsyncIterator[None]:
        """cleanup_ctx: the SDK's session manager runs for the application's lifetime.

        It runs in a task of its own, since its task group must be left by
        the task that entered it and aiohttp may start and clean up in two.
        """
        started, stop = asyncio.Event(), asyncio.Event()

        async def run() -> None:
            async with self._manager.run():
                started.set()
                await stop.wait()

        task = asyncio.create_task(run())
        starting = asyncio.ensure_future(started.wait())
        await asyncio.wait({task, starting}, return_when=asyncio.FIRST_COMPLETED)
        starting.cancel()
        if task.done():
            task.result()  # it failed to start: raise why
        yield
        stop.set()
        await task

    async def closing(self, app: web.Application) -> None:
        """on_shutdown: end the MCP requests still open (session GET streams), which would
        otherwise hold the server's shutdown for its whole timeout."""
        for handler in list(self._handlers):
            handler.cancel()

    async def handle(self, request: web.Request) -> web.StreamResponse:
        table = self._holder.current
        if not table.authenticator.open:
            try:
                client = table.authenticator.authenticate(request.headers)
            except Unauthorized as exc:
                return refusal(401, exc.message, {"WWW-Authenticate": 'Bearer realm="modelpool"'})
        else:
            client = None
            if not _local_origin(request.headers.get("Origin")):
                return refusal(403, "cross-origin requests need a client key (clients:)")
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        try:
            return await call_asgi(self._manager.handle_request, request, _scope_for(client))
        finally:
            self._handlers.discard(task)


def _scope_for(client: ClientSpec | None) -> dict[str, object]:
    """What the tool handlers learn about the caller; with a client, the session owner too."""
    extra: dict[str, object] = {"state": {CALLER: Caller(client)}}
    if client is not None:
        extra["user"] = AuthenticatedUser(AccessToken(token="", client_id=client.name, scopes=[]))
    return extra


def _local_origin(origin: str | None) -> bool:
    """No Origin (not a browser), or a page served from this host."""
    if origin is None:
        return True
    host = urlsplit(origin).hostname or ""
    return host == "localhost" or is_loopback(host)


def refusal(status: int, message: str, headers: dict[str, str] | None = None) -> web.Response:
    """A JSON-RPC error without an id, as the SDK answers requests it refuses."""
    error = {"code": UNAUTHORIZED, "message": message}
    body = orjson.dumps({"jsonrpc": "2.0", "id": None, "error": error})
    return web.Response(status=status, body=body, content_type="application/json", headers=headers)
