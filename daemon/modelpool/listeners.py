"""Where the daemon listens: the proxy's address, and optionally a separate admin listener.

With ``server.admin_listen`` (``host:port`` or ``unix:/path``), ``/admin/*``
and ``/metrics`` are served only there and the proxy only on ``listen``:
each listener answers 404 for the other's paths. A unix socket is guarded by
its file permissions, so its peers count as local for the admin checks.
"""

from __future__ import annotations

import socket
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from modelpool.config.spec import parse_listen

ADMIN_SOCKETS = web.AppKey("admin_sockets", list[Any])
"""The local addresses of the admin listener, once it is up (empty: no separate one)."""

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def is_admin_path(path: str) -> bool:
    return path.startswith("/admin/") or path == "/metrics"


def local_address(request: web.Request) -> Any:
    """The listener's own address a request came in on: (host, port), or a socket path."""
    transport = request.transport
    name = transport.get_extra_info("sockname") if transport is not None else None
    return tuple(name[:2]) if isinstance(name, tuple) else name


def via_unix_socket(request: web.Request) -> bool:
    transport = request.transport
    sock = transport.get_extra_info("socket") if transport is not None else None
    return sock is not None and sock.family == socket.AF_UNIX


@web.middleware
async def admin_gate(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Keep admin paths on the admin listener and everything else off it."""
    sockets = request.app[ADMIN_SOCKETS]
    if sockets and is_admin_path(request.path) != (local_address(request) in sockets):
        raise web.HTTPNotFound()
    return await handler(request)


async def start_admin_listener(runner: web.AppRunner, app: web.Application, listen: str) -> str:
    """Start the admin listener; return its URL (or socket path) for the log."""
    before = set(map(_normal, runner.addresses))
    if listen.startswith("unix:"):
        path = listen.removeprefix("unix:")
        await web.UnixSite(runner, path).start()
    else:
        host, port = parse_listen(listen)
        await web.TCPSite(runner, host, port, reuse_address=True).start()
    added = [a for a in map(_normal, runner.addresses) if a not in before]
    app[ADMIN_SOCKETS].extend(added)
    first = added[0] if added else listen
    return f"http://{first[0]}:{first[1]}" if isinstance(first, tuple) else f"unix:{first}"


def _normal(address: Any) -> Any:
    return tuple(address[:2]) if isinstance(address, tuple | list) else address
