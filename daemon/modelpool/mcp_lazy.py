"""``/mcp`` without paying for the MCP SDK until someone asks.

Importing the SDK (pydantic models, starlette, an HTTP client) costs about
0.6 s and tens of MB — more than the rest of the daemon — and most sidecars
are never asked over MCP. So ``POST /mcp`` is registered here, and the real
endpoint (``modelpool.mcp``) is imported and started on the first request;
shutdown ends it if it was started.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

from aiohttp import web

from modelpool.table import TableHolder
from modelpool.usage.accounting import Accountant

if TYPE_CHECKING:
    from modelpool.mcp import McpEndpoint

PATH = "/mcp"


class LazyMcp:
    def __init__(
        self, holder: TableHolder, accountant: Accountant | None, *, health: Any = None
    ) -> None:
        self._holder = holder
        self._accountant = accountant
        self._health = health
        self._endpoint: McpEndpoint | None = None
        self._running: AsyncIterator[None] | None = None
        self._starting = asyncio.Lock()

    def routes(self) -> list[web.RouteDef]:
        return [web.post(PATH, self.handle)]

    async def handle(self, request: web.Request) -> web.StreamResponse:
        endpoint = self._endpoint or await self._start(request.app)
        return await endpoint.handle(request)

    async def _start(self, app: web.Application) -> McpEndpoint:
        async with self._starting:
            if self._endpoint is None:
                from modelpool.mcp import McpEndpoint  # the SDK: imported on first use

                endpoint = McpEndpoint(self._holder, self._accountant, health=self._health)
                running = endpoint.running(app)
                await anext(running)  # the SDK's session manager, in its own task
                self._running, self._endpoint = running, endpoint
            return self._endpoint

    async def closing(self, app: web.Application) -> None:
        """on_shutdown: end open MCP requests, then the session manager, if started."""
        if self._endpoint is None or self._running is None:
            return
        await self._endpoint.closing(app)
        await anext(self._running, None)
