"""aiohttp's HTTP server, answering requests it cannot even parse in JSON.

A request whose head is malformed or too large never reaches a handler or a
middleware: aiohttp answers it itself, in plain text quoting the offending
bytes, and logs a traceback quoting them again. Those bytes may be a client's
key (an oversized ``Authorization`` header) and every junk request would
write an ERROR with a traceback. Here such a request gets a JSON error that
both SDKs read (OpenAI's ``error.message``/``type``/``code`` and Anthropic's
``type: error`` envelope in one body, since the path may not be known yet)
and a one-line warning that names the peer and the reason, never the bytes.

It also bounds how many connections are open at once (``server.max_connections``,
idle keep-alive ones included): one past the bound is answered 503 with
``Retry-After`` and closed before anything is read, so a flood of slow or idle
clients cannot use up the process's file descriptors.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

import orjson
from aiohttp import web
from aiohttp.http_exceptions import BadHttpMessage, LineTooLong
from aiohttp.web_protocol import RequestHandler
from aiohttp.web_request import BaseRequest

log = logging.getLogger("modelpool.http")

MAX_FIELD_SIZE = 16384
"""The longest request line or header a client may send, in bytes."""
LIMITS = {"max_line_size": MAX_FIELD_SIZE, "max_field_size": MAX_FIELD_SIZE}
"""aiohttp's ``handler_args`` for those bounds (it also caps a request at 128 headers)."""


def unreadable_request(status: int, exc: BaseException | None) -> tuple[int, str, str]:
    """(status, code, message) for a request aiohttp refused, with nothing of its bytes."""
    if isinstance(exc, LineTooLong) or (
        isinstance(exc, BadHttpMessage) and "Too many headers" in exc.message
    ):
        message = f"the request line or headers are too large (at most {MAX_FIELD_SIZE} bytes each)"
        return 431, "request_header_too_large", message
    if status >= 500:
        return status, "internal_error", "modelpool failed to handle this request"
    return status, "bad_request", "the request is not valid HTTP/1.1"


def error_json(status: int, code: str, message: str) -> bytes:
    kind = "invalid_request_error" if status < 500 else "api_error"
    error = {"type": kind, "message": message, "param": None, "code": code}
    return orjson.dumps({"type": "error", "error": error})


class _Connection(RequestHandler):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        manager = self._manager
        if isinstance(manager, _Server) and len(manager.connections) >= manager.cap():
            self._refuse(transport, manager.cap())
            return
        super().connection_made(transport)

    def _refuse(self, transport: asyncio.BaseTransport, cap: int) -> None:
        """Over server.max_connections: a 503 the SDKs retry, then close, reading nothing."""
        self.force_close()  # anything the client sends meanwhile is ignored
        message = f"modelpool has {cap} connections open (server.max_connections); retry shortly"
        body = error_json(503, "too_many_connections", message)
        head = (
            "HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\nRetry-After: 1\r\nConnection: close\r\n\r\n"
        )
        assert isinstance(transport, asyncio.WriteTransport)
        transport.write(head.encode() + body)
        transport.close()
        log.warning("refused a connection", extra={"why": "max_connections", "cap": cap})

    def handle_error(
        self,
        request: BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        status, code, said = unreadable_request(status, exc)
        if status >= 500:  # modelpool's own failure: the traceback is for its developers
            log.error("request failed outside every handler", exc_info=exc)
        else:
            log.warning(
                "refused an unreadable request", extra={"peer": request.remote, "why": code}
            )
        if request.writer.output_size > 0:
            raise ConnectionError("a response was under way; the connection is cut instead")
        response = web.Response(
            status=status, body=error_json(status, code, said), content_type="application/json"
        )
        response.force_close()
        return response


class _Server(web.Server):
    cap: Callable[[], int]
    """The most connections open at once (read per new connection: reloads apply)."""

    def __call__(self) -> RequestHandler:
        return _Connection(self, loop=self._loop, **self._kwargs)


class ProxyRunner(web.AppRunner):
    """An AppRunner whose connections answer unparseable requests as above, and which
    refuses connections beyond ``max_connections()`` (every listener counted)."""

    def __init__(
        self, app: web.Application, *, max_connections: Callable[[], int], **kwargs: Any
    ) -> None:
        super().__init__(app, **kwargs)
        self._cap = max_connections

    async def _make_server(self) -> web.Server:
        server = await super()._make_server()
        server.__class__ = _Server  # aiohttp builds it; only the connection class differs
        assert isinstance(server, _Server)
        server.cap = self._cap
        return server
