"""Serving an ASGI application from inside an aiohttp handler.

The MCP SDK's Streamable HTTP transport is an ASGI application (Starlette);
modelpool is an aiohttp server. :func:`call_asgi` turns one aiohttp request
into one ASGI ``http`` call: the scope is built from the request,
``receive`` hands the body over as it arrives (and, once the response is
complete, says ``http.disconnect``), and ``send`` writes the status line,
headers and every body chunk through a ``web.StreamResponse`` as soon as the
application sends it, so an SSE response goes out event by event, never
buffered.

A client that goes away is reported the ASGI way, not by cancelling the
application: ``receive`` says ``http.disconnect`` and later writes are
dropped, as under uvicorn. The SDK keeps session bookkeeping in the code
that answers a request (an ``initialize`` whose answer was not fully written
is not a session), so it must run to its end: the aiohttp handler, cancelled
when its client leaves (``handler_cancellation``) or on shutdown, gives the
application up to ``linger`` seconds to finish, then cancels it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping, MutableMapping
from typing import Any

from aiohttp import web

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
AsgiApp = Callable[[Scope, Receive, Send], Awaitable[None]]

log = logging.getLogger("modelpool.mcp")

HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    }
)
"""Headers about one connection, not the response: aiohttp writes its own."""


class AsgiProtocolError(RuntimeError):
    """The application broke the ASGI HTTP protocol (body before start, nothing sent…)."""


async def call_asgi(
    app: AsgiApp,
    request: web.Request,
    extra: Mapping[str, Any] | None = None,
    *,
    linger: float = 5.0,
) -> web.StreamResponse:
    """Run ``app`` for ``request`` and return the response it wrote.

    ``extra`` is merged into the scope (e.g. ``state`` or ``user`` set by the
    caller's authentication). An application that ends without starting a
    response raises :class:`AsgiProtocolError`; one that ends in the middle
    of its body gets the body ended for it.
    """
    exchange = _Exchange(request)
    scope = scope_of(request)
    scope.update(extra or {})
    call = asyncio.ensure_future(exchange.run(app, scope))
    try:
        await asyncio.shield(call)
    except asyncio.CancelledError:
        exchange.disconnect()
        await _wind_down(call, linger)
        raise
    return await exchange.finish()


async def _wind_down(call: asyncio.Future[None], linger: float) -> None:
    """Let an application that was told of the disconnect finish, for ``linger`` seconds."""
    done, _ = await asyncio.wait({call}, timeout=linger)
    if not done:
        call.cancel()
        await asyncio.wait({call})
    if not call.cancelled() and call.exception() is not None:
        log.debug("ASGI application failed after its client left", exc_info=call.exception())


def scope_of(request: web.Request) -> Scope:
    """The ASGI 3 ``http`` scope of an aiohttp request."""
    target = request.raw_path.split("?", 1)[0]
    transport = request.transport
    return {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": f"{request.version.major}.{request.version.minor}",
        "method": request.method,
        "scheme": request.scheme,
        "path": request.path,
        "raw_path": target.encode("latin-1"),
        "query_string": request.rel_url.raw_query_string.encode("latin-1"),
        "root_path": "",
        "headers": [(name.lower(), value) for name, value in request.raw_headers],
        "client": _address(transport.get_extra_info("peername") if transport else None),
        "server": _address(transport.get_extra_info("sockname") if transport else None),
        "state": {},
    }


def _address(info: Any) -> tuple[str, int] | None:
    """(host, port) of a TCP socket address; None for a unix socket or no socket."""
    if isinstance(info, tuple) and len(info) >= 2:
        return str(info[0]), int(info[1])
    return None


class _Exchange:
    """One request/response pair as the ASGI application sees it."""

    def __init__(self, request: web.Request) -> None:
        self._request = request
        self._start: Message | None = None
        self._response: web.StreamResponse | None = None
        self._body_read = False
        self._complete = False
        self._gone = False
        self._closed = asyncio.Event()
        """Set when the response is complete, the client is gone or the application returned."""

    async def run(self, app: AsgiApp, scope: Scope) -> None:
        try:
            await app(scope, self.receive, self.send)
        finally:
            self._closed.set()

    def disconnect(self) -> None:
        self._gone = True
        self._closed.set()

    async def receive(self) -> Message:
        if not self._body_read and not self._gone:
            chunk = await self._request.content.readany()
            self._body_read = self._request.content.at_eof()
            return {"type": "http.request", "body": chunk, "more_body": not self._body_read}
        await self._closed.wait()
        return {"type": "http.disconnect"}

    async def send(self, message: Message) -> None:
        kind = message["type"]
        if kind == "http.response.start":
            if self._start is not None:
                raise AsgiProtocolError("http.response.start sent twice")
            self._start = message
        elif kind == "http.response.body" and not self._gone:
            try:
                await self._write(bytes(message.get("body", b"")), bool(message.get("more_body")))
            except ConnectionError:  # the client went away mid-write
                self.disconnect()
        # Other messages (trailers, debug, pathsend) are extensions this bridge does not offer.

    async def _write(self, body: bytes, more: bool) -> None:
        if self._start is None:
            raise AsgiProtocolError("http.response.body sent before http.response.start")
        if self._complete:
            raise AsgiProtocolError("http.response.body sent after the body ended")
        response = self._response or await self._prepare(None if more else len(body))
        if body:
            await response.write(body)
        if not more:
            await response.write_eof()
            self._complete = True
            self._closed.set()

    async def _prepare(self, length: int | None) -> web.StreamResponse:
        assert self._start is not None
        response = web.StreamResponse(status=int(self._start["status"]))
        for raw_name, raw_value in self._start.get("headers", ()):
            name = bytes(raw_name).decode("latin-1")
            if name.lower() not in HOP_BY_HOP:
                response.headers.add(name, bytes(raw_value).decode("latin-1"))
        if length is not None and "Content-Length" not in response.headers:
            response.content_length = length
        if "Content-Type" not in response.headers:  # aiohttp would say octet-stream
            response.content_type = "text/plain"
        await response.prepare(self._request)
        self._response = response
        return response

    async def finish(self) -> web.StreamResponse:
        """The response, ended, once the application has returned."""
        if self._start is None:
            raise AsgiProtocolError("the application returned without sending a response")
        if not self._complete and not self._gone:
            await self._write(b"", more=False)
        if self._response is None:  # the client left before any of it was written
            return web.Response(status=int(self._start["status"]))
        return self._response
