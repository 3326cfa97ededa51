"""The composition root: builds every part, wires it into aiohttp, runs it.

Nothing else in the package constructs long-lived objects; everything hangs
off the Application under typed keys (aiohttp's "no singletons" advice), and
each resource with a lifetime has one cleanup context owning it.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import signal
from collections.abc import AsyncIterator, Coroutine
from typing import TYPE_CHECKING, Any

from aiohttp import web

from modelpool import openapi
from modelpool.access import access_middleware, add_request_id
from modelpool.admin import AdminApi
from modelpool.api import ProxyApi
from modelpool.api_errors import error_middleware
from modelpool.clock import Clock, SystemClock
from modelpool.compile import compile_table
from modelpool.config.gate import GateFactory, child_gate, inline_gate
from modelpool.config.load import load_config
from modelpool.config.spec import Config
from modelpool.dashboard import DashboardApi
from modelpool.dispatch import Dispatcher
from modelpool.drain import Drain, drain_middleware
from modelpool.health import HealthChecker
from modelpool.http_server import LIMITS, ProxyRunner
from modelpool.listeners import ADMIN_SOCKETS, admin_gate, start_admin_listener
from modelpool.logs import flush_logs
from modelpool.mcp_lazy import LazyMcp
from modelpool.metrics import Metrics, watch_capacity_of
from modelpool.notify import Notifier
from modelpool.reload import Reloader
from modelpool.state import StateRegistry
from modelpool.table import TableHolder
from modelpool.upstream import Transports
from modelpool.usage.accounting import Accountant
from modelpool.usage.pricing import unpriced, warn_unpriced
from modelpool.usage.store import open_store

if TYPE_CHECKING:
    from modelpool.shared.state import SharedState

log = logging.getLogger("modelpool")

HOLDER = web.AppKey("holder", TableHolder)
REGISTRY = web.AppKey("registry", StateRegistry)
TRANSPORTS = web.AppKey("transports", Transports)
DISPATCHER = web.AppKey("dispatcher", Dispatcher)
METRICS = web.AppKey("metrics", Metrics)
RELOADER = web.AppKey("reloader", Reloader)
BACKGROUND = web.AppKey("background", set[asyncio.Task[object]])
HEALTH = web.AppKey("health", HealthChecker)
ACCOUNTANT = web.AppKey("accountant", Accountant)
DRAIN = web.AppKey("drain", Drain)
SHARED: web.AppKey[SharedState] = web.AppKey("shared")


KEEPALIVE_TIMEOUT = 15.0
"""An idle connection — or one trickling its request headers (slowloris) — is closed
after this long; aiohttp's own timer covers both."""


def build_app(
    config: Config,
    *,
    clock: Clock | None = None,
    watch: bool = False,
    health: bool = False,
    gate: GateFactory = inline_gate,
) -> web.Application:
    """A ready-to-run application serving ``config`` as generation 1.

    ``watch`` starts the config file watcher and ``health`` the active health
    checks, and reloads validate with ``gate`` (the daemon watches, checks, and
    validates in a child; most tests don't).
    """
    clock = clock or SystemClock()
    shared = _shared(config, clock)
    registry = StateRegistry(clock, shared.gates if shared is not None else None)
    transports = Transports()
    holder = TableHolder(
        compile_table(config, generation=1, registry=registry, transports=transports)
    )
    metrics = Metrics()
    store = open_store(config.usage, prefix=config.shared_state.prefix)
    book = shared.book(store) if shared is not None else None
    accountant = Accountant(store, metrics, book=book)
    dispatcher = Dispatcher(clock, metrics=metrics, accountant=accountant)
    watch_capacity_of(metrics, lambda: holder.current)
    metrics.watch_breakers(
        lambda: ((name, model.state.breaker) for name, model in holder.current.models.items())
    )
    loader = functools.partial(load_config, gate=gate)
    reloader = Reloader(config.source, holder, registry, transports, metrics, loader=loader)
    checker = HealthChecker(lambda: holder.current, transports, clock)
    metrics.watch_health(checker.statuses)

    drain = Drain()
    middlewares = [
        access_middleware(lambda: holder.current.config.server.access_log),
        error_middleware,
        *([admin_gate] if config.server.admin_listen is not None else []),
        drain_middleware(drain),
    ]
    app = web.Application(middlewares=middlewares, handler_args=LIMITS)
    app.on_response_prepare.append(add_request_id)
    app[HOLDER] = holder
    app[REGISTRY] = registry
    app[TRANSPORTS] = transports
    app[DISPATCHER] = dispatcher
    app[METRICS] = metrics
    app[RELOADER] = reloader
    app[BACKGROUND] = set()
    app[HEALTH] = checker
    app[ACCOUNTANT] = accountant
    app[DRAIN] = drain
    if shared is not None:
        app[SHARED] = shared
        metrics.watch_shared_state(lambda: shared.link.up)
        app.cleanup_ctx.append(_shared_state)
    app[ADMIN_SOCKETS] = []
    app.add_routes(ProxyApi(holder, dispatcher, drain, metrics).routes())
    admin = AdminApi(
        holder,
        reloader,
        metrics,
        health=checker,
        clock=clock,
        accountant=accountant,
        drain=drain,
        shared=shared,
    )
    app.add_routes(admin.routes())
    app.add_routes(openapi.routes())
    dashboard = DashboardApi(
        holder,
        reloader,
        metrics,
        authorize=admin.authorize,
        accountant=accountant,
        health=checker,
    )
    app.add_routes(dashboard.routes())
    mcp = LazyMcp(holder, accountant, health=checker)  # the SDK loads on the first /mcp
    app.add_routes(mcp.routes())
    app.on_shutdown.append(mcp.closing)  # ends open MCP streams so shutdown is not held
    app.cleanup_ctx.append(_close_transports)
    app.cleanup_ctx.append(_usage_store)
    _warn_about_accounting(config)
    if watch:
        app.cleanup_ctx.append(_watch_files)
    if health:
        app.cleanup_ctx.append(_check_health)
    return app


def spawn(app: web.Application, coro: Coroutine[Any, Any, object]) -> None:
    """Run ``coro`` in the background, holding a reference until it ends."""
    task: asyncio.Task[object] = asyncio.create_task(coro)
    app[BACKGROUND].add(task)
    task.add_done_callback(app[BACKGROUND].discard)


async def _watch_files(app: web.Application) -> AsyncIterator[None]:
    stop = asyncio.Event()
    task = asyncio.create_task(_keep_watching(app[RELOADER], stop))
    yield
    stop.set()
    try:
        await asyncio.wait_for(task, timeout=5)
    except TimeoutError:
        log.warning("file watcher did not stop in time")


async def _keep_watching(reloader: Reloader, stop: asyncio.Event) -> None:
    """The top of a background task: the watcher must outlive any one failure."""
    while not stop.is_set():
        try:
            await reloader.watch(stop)
        except Exception:  # top of a background task: log, back off, resume
            log.exception("config file watcher failed; restarting it in 1s")
            await asyncio.sleep(1)


async def _check_health(app: web.Application) -> AsyncIterator[None]:
    stop = asyncio.Event()
    task = asyncio.create_task(app[HEALTH].run(stop))
    yield
    stop.set()
    try:
        await asyncio.wait_for(task, timeout=5)
    except TimeoutError:
        log.warning("health checker did not stop in time")


def _shared(config: Config, clock: Clock) -> SharedState | None:
    """The Redis shared state, when configured (redis-py is imported only then)."""
    if not config.shared_state.enabled:
        return None
    from modelpool.shared.state import SharedState

    return SharedState(config.shared_state, clock)


async def _shared_state(app: web.Application) -> AsyncIterator[None]:
    holder = app[HOLDER]
    async with app[SHARED].running(lambda: holder.current):
        yield


async def _usage_store(app: web.Application) -> AsyncIterator[None]:
    """The store opens before the first request and closes (flushing everything) last."""
    store = app[ACCOUNTANT].store
    if store is None:
        yield
        return
    await store.open()
    yield
    await store.close()


def _warn_about_accounting(config: Config) -> None:
    warn_unpriced(unpriced(config))
    budgets = [c.budget for c in config.clients.values()]
    budgets += [p.budget for p in config.pools.values()]
    if config.usage.store == "none" and any(not b.empty for b in budgets):
        log.warning("usage.store is none: budgets start from zero each time the daemon starts")


async def _close_transports(app: web.Application) -> AsyncIterator[None]:
    yield
    await app[TRANSPORTS].aclose()


def proxy_runner(
    app: web.Application, *, grace_period: float, keepalive_timeout: float = KEEPALIVE_TIMEOUT
) -> ProxyRunner:
    """The runner ``modelpool run`` serves ``app`` with (the integration tests too, with a
    shorter keep-alive): a client that disconnects cancels its handler."""
    return ProxyRunner(
        app,
        max_connections=lambda: app[HOLDER].current.config.server.max_connections,
        handler_cancellation=True,
        access_log=None,  # modelpool's own access log (access.py) replaces aiohttp's
        shutdown_timeout=grace_period,
        keepalive_timeout=keepalive_timeout,
    )


async def serve(config: Config, host: str, port: int) -> int:
    """Serve until SIGTERM or SIGINT, drain, and return the process exit code.

    Under systemd (``NOTIFY_SOCKET``) it says READY once every listener is up,
    RELOADING/READY around each SIGHUP reload, STOPPING when the drain starts,
    and pings the watchdog with a status line until it exits.
    """
    notifier = Notifier.from_environ()
    app = build_app(config, watch=True, health=True, gate=child_gate)
    runner = proxy_runner(app, grace_period=config.server.grace_period)
    app[RELOADER].listening_on([host])  # before the file watcher starts
    await runner.setup()
    site = web.TCPSite(runner, host, port, backlog=1024, reuse_address=True)
    await site.start()
    proxy_addresses = list(runner.addresses)
    app[RELOADER].listening_on([host, *(address[0] for address in proxy_addresses)])
    if config.server.admin_listen is not None:
        # Before "listening": that line tells supervisors and tests everything is up.
        where = await start_admin_listener(runner, app, config.server.admin_listen)
        log.info("admin listening", extra={"url": where})
    for address in proxy_addresses:
        bound_host, bound_port = address[0], address[1]
        shown = f"[{bound_host}]" if ":" in bound_host else bound_host
        log.info(
            "listening", extra={"url": f"http://{shown}:{bound_port}", "config": config.source}
        )
    signals = _Signals(app, notifier)
    notifier.ready(_status(app))
    watchdog_stop = asyncio.Event()  # its own: the watchdog keeps pinging through the drain
    watchdog = asyncio.create_task(notifier.run_watchdog(watchdog_stop, lambda: _status(app)))
    await signals.first_stop.wait()
    notifier.stopping(f"draining {app[DRAIN].in_flight} requests in flight")
    await _drain(app, app[HOLDER].current.config.server.grace_period, signals.second_stop)
    log.info("stopping")
    await runner.cleanup()
    flush_logs()
    watchdog_stop.set()
    await watchdog
    notifier.close()
    return 0


def _status(app: web.Application) -> str:
    """The one line systemd shows: what is serving, and how busy it is."""
    table, reload = app[HOLDER].current, app[RELOADER].last
    return (
        f"serving generation {table.generation}, {app[DRAIN].in_flight} in flight; "
        f"last reload {reload.result} ({reload.trigger})"
    )


async def _reload(app: web.Application, notifier: Notifier) -> None:
    """SIGHUP as systemd's reload protocol wants it: RELOADING=1, then READY=1 whatever happens."""
    notifier.reloading()
    try:
        await app[RELOADER].reload("sighup")
    finally:
        notifier.reloaded(_status(app))


class _Signals:
    """SIGTERM/SIGINT once: drain; twice: cut what is left. SIGHUP: reload."""

    def __init__(self, app: web.Application, notifier: Notifier) -> None:
        self.first_stop = asyncio.Event()
        self.second_stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._stop)
        loop.add_signal_handler(signal.SIGHUP, lambda: spawn(app, _reload(app, notifier)))

    def _stop(self) -> None:
        (self.second_stop if self.first_stop.is_set() else self.first_stop).set()


async def _drain(app: web.Application, grace: float, interrupt: asyncio.Event) -> None:
    drain = app[DRAIN]
    drain.start()
    if drain.in_flight:
        log.info("draining", extra={"in_flight": drain.in_flight, "grace_period_s": grace})
    if not await drain.finish(grace, interrupt):
        log.warning("cutting requests still in flight", extra={"in_flight": drain.in_flight})
        await drain.cut()
