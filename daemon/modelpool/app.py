"""The composition root: builds every part, wires it into aiohttp, runs it.

Nothing else in the package constructs long-lived objects; everything hangs
off the Application under typed keys (aiohttp's "no singletons" advice), and
each resource with a lifetime has one cleanup context owning it.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import AsyncIterator

from aiohttp import web

from modelpool.admin import AdminApi
from modelpool.api import ProxyApi
from modelpool.api_errors import error_middleware
from modelpool.clock import Clock, SystemClock
from modelpool.compile import compile_table
from modelpool.config.spec import Config
from modelpool.dispatch import Dispatcher
from modelpool.state import StateRegistry
from modelpool.table import TableHolder
from modelpool.upstream import Transports

log = logging.getLogger("modelpool")

HOLDER = web.AppKey("holder", TableHolder)
REGISTRY = web.AppKey("registry", StateRegistry)
TRANSPORTS = web.AppKey("transports", Transports)
DISPATCHER = web.AppKey("dispatcher", Dispatcher)


def build_app(config: Config, *, clock: Clock | None = None) -> web.Application:
    """A ready-to-run application serving ``config`` as generation 1."""
    registry = StateRegistry()
    transports = Transports()
    holder = TableHolder(
        compile_table(config, generation=1, registry=registry, transports=transports)
    )
    dispatcher = Dispatcher(clock or SystemClock())

    app = web.Application(middlewares=[error_middleware], handler_args={"max_field_size": 16384})
    app[HOLDER] = holder
    app[REGISTRY] = registry
    app[TRANSPORTS] = transports
    app[DISPATCHER] = dispatcher
    app.add_routes(ProxyApi(holder, dispatcher).routes())
    app.add_routes(AdminApi(holder).routes())
    app.cleanup_ctx.append(_close_transports)
    return app


async def _close_transports(app: web.Application) -> AsyncIterator[None]:
    yield
    await app[TRANSPORTS].aclose()


async def serve(config: Config, host: str, port: int) -> int:
    """Serve until SIGTERM or SIGINT; return the process exit code."""
    app = build_app(config)
    runner = web.AppRunner(
        app, handler_cancellation=True, access_log=None, shutdown_timeout=config.server.grace_period
    )
    await runner.setup()
    site = web.TCPSite(runner, host, port, backlog=1024, reuse_address=True)
    await site.start()
    for address in runner.addresses:
        bound_host, bound_port = address[0], address[1]
        shown = f"[{bound_host}]" if ":" in bound_host else bound_host
        log.info(
            "listening", extra={"url": f"http://{shown}:{bound_port}", "config": config.source}
        )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    log.info("stopping")
    await runner.cleanup()
    return 0
