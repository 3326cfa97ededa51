"""The one place where errors become HTTP responses in the client's API format.

Handlers raise errors from ``modelpool.errors``; :func:`error_middleware`
catches them and renders an OpenAI-style ``{"error": {...}}`` body with the
right status, ``Retry-After`` for every 429, and never a stack trace.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from aiohttp import web

from modelpool.errors import (
    AllAttemptsFailed,
    AllDown,
    ModelpoolError,
    NoCapacity,
    RequestError,
    RoutingError,
    UpstreamError,
    UpstreamStatusError,
)

log = logging.getLogger("modelpool.api")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "invalid_request_error",
    405: "invalid_request_error",
    413: "invalid_request_error",
    429: "rate_limit_error",
}


def error_body(status: int, message: str, *, code: str | None, param: str | None = None) -> bytes:
    error = {
        "message": message,
        "type": _TYPES.get(status, "api_error"),
        "param": param,
        "code": code,
    }
    return orjson.dumps({"error": error})


def error_response(
    status: int,
    message: str,
    *,
    code: str | None,
    param: str | None = None,
    retry_after: float | None = None,
    headers: dict[str, str] | None = None,
) -> web.Response:
    out = dict(headers or {})
    if status == 429 or retry_after is not None:
        out["Retry-After"] = str(max(1, math.ceil(retry_after or 1)))
    body = error_body(status, message, code=code, param=param)
    return web.Response(status=status, body=body, content_type="application/json", headers=out)


def render(exc: ModelpoolError) -> web.Response:
    """The response for ``exc``; attempt counts ride along in x-modelpool-attempts."""
    if isinstance(exc, RequestError):
        return error_response(exc.status, exc.message, code=exc.code, param=exc.param)
    if isinstance(exc, AllAttemptsFailed):
        headers = {"x-modelpool-attempts": str(len(exc.attempts))}
        return error_response(
            exc.status, exc.message, code=exc.code, retry_after=exc.retry_after, headers=headers
        )
    if isinstance(exc, AllDown):
        headers = {"x-modelpool-attempts": str(exc.attempts)}
        return error_response(
            exc.status, exc.message, code=exc.code, retry_after=exc.retry_after, headers=headers
        )
    if isinstance(exc, NoCapacity):
        return error_response(429, exc.message, code=exc.code, retry_after=exc.retry_after)
    if isinstance(exc, RoutingError):
        return error_response(exc.status, exc.message, code=exc.code)
    if isinstance(exc, UpstreamStatusError):
        return _upstream_refusal(exc)
    if isinstance(exc, UpstreamError):
        return error_response(502, exc.message, code="upstream_error")
    return error_response(500, "internal error", code="internal_error")


def _upstream_refusal(exc: UpstreamStatusError) -> web.Response:
    """A request-scoped upstream error (400, 404, 422…) goes back as the upstream said it.

    401/403 are about *modelpool's* credentials, not the client's, so they
    become a 502 that says so instead of telling the client its key is wrong.
    """
    if exc.status in (401, 403):
        message = (
            f"upstream rejected modelpool's credentials for model {exc.model!r} (HTTP {exc.status})"
        )
        return error_response(502, message, code="upstream_auth_failed")
    body = (
        exc.body
        if _is_error_json(exc.body)
        else error_body(exc.status, exc.message, code="upstream_error")
    )
    return web.Response(status=exc.status, body=body, content_type="application/json")


def _is_error_json(body: bytes) -> bool:
    try:
        data: Any = orjson.loads(body)
    except orjson.JSONDecodeError:
        return False
    return isinstance(data, dict) and isinstance(data.get("error"), dict)


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except ModelpoolError as exc:
        return render(exc)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        message = f"{exc.reason}: {request.method} {request.path}"
        headers = {"Allow": exc.headers["Allow"]} if "Allow" in exc.headers else None
        return error_response(exc.status, message, code=None, headers=headers)
    except Exception:
        if request.writer.output_size:
            # The status line is already out: a second response would corrupt the
            # stream, so let aiohttp cut the connection, which the client sees.
            raise
        log.exception("unhandled error serving %s %s", request.method, request.path)
        return error_response(500, "internal error", code="internal_error")
