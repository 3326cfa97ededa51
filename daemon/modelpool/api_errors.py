"""The one place where errors become HTTP responses in the client's API format.

Handlers raise errors from ``modelpool.errors``; :func:`error_middleware`
catches them and renders them in the API the client speaks — OpenAI's
``{"error": {...}}`` or Anthropic's ``{"type": "error", "error": {...}}``
(on ``/v1/messages``) — with the right status, ``Retry-After`` for every
429, and never a stack trace. An upstream's own error is passed on as it
came when it is already in the client's format, else re-said in it.
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
    BudgetExceeded,
    ModelpoolError,
    NoCapacity,
    RequestError,
    RoutingError,
    SharedStateUnavailable,
    ShuttingDown,
    UpstreamError,
    UpstreamStatusError,
)
from modelpool.request import Api

log = logging.getLogger("modelpool.api")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

KEPT_HEADERS = ("Allow", "WWW-Authenticate")
"""Headers of an aiohttp HTTP error that its JSON rendering keeps (405's, 401's)."""

_OPENAI_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "invalid_request_error",
    405: "invalid_request_error",
    408: "invalid_request_error",
    413: "invalid_request_error",
    422: "invalid_request_error",
    429: "rate_limit_error",
}
_ANTHROPIC_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "billing_error",
    403: "permission_error",
    404: "not_found_error",
    405: "invalid_request_error",
    408: "invalid_request_error",
    413: "request_too_large",
    422: "invalid_request_error",
    429: "rate_limit_error",
    503: "overloaded_error",
    529: "overloaded_error",
}


def error_body(
    status: int,
    message: str,
    *,
    code: str | None,
    param: str | None = None,
    api: Api = "openai",
) -> bytes:
    if api == "anthropic":
        error = {"type": _ANTHROPIC_TYPES.get(status, "api_error"), "message": message}
        return orjson.dumps({"type": "error", "error": error})
    kind = _OPENAI_TYPES.get(status, "api_error")
    return orjson.dumps({"error": {"message": message, "type": kind, "param": param, "code": code}})


def error_response(
    status: int,
    message: str,
    *,
    code: str | None,
    param: str | None = None,
    retry_after: float | None = None,
    headers: dict[str, str] | None = None,
    api: Api = "openai",
) -> web.Response:
    out = dict(headers or {})
    if status == 429 or retry_after is not None:
        out["Retry-After"] = str(max(1, math.ceil(retry_after or 1)))
    body = error_body(status, message, code=code, param=param, api=api)
    return web.Response(status=status, body=body, content_type="application/json", headers=out)


def render(exc: ModelpoolError, api: Api = "openai") -> web.Response:
    """The response for ``exc``; attempt counts ride along in x-modelpool-attempts."""
    if isinstance(exc, RequestError):
        return error_response(exc.status, exc.message, code=exc.code, param=exc.param, api=api)
    if isinstance(exc, AllAttemptsFailed | AllDown):
        attempts = len(exc.attempts) if isinstance(exc, AllAttemptsFailed) else exc.attempts
        return error_response(
            exc.status,
            exc.message,
            code=exc.code,
            retry_after=exc.retry_after,
            headers={"x-modelpool-attempts": str(attempts)},
            api=api,
        )
    if isinstance(exc, NoCapacity | BudgetExceeded | ShuttingDown | SharedStateUnavailable):
        return error_response(
            exc.status, exc.message, code=exc.code, retry_after=exc.retry_after, api=api
        )
    if isinstance(exc, RoutingError):
        return error_response(exc.status, exc.message, code=exc.code, api=api)
    if isinstance(exc, UpstreamStatusError):
        return _upstream_refusal(exc, api)
    if isinstance(exc, UpstreamError):
        return error_response(502, exc.message, code="upstream_error", api=api)
    return error_response(500, "internal error", code="internal_error", api=api)


def _upstream_refusal(exc: UpstreamStatusError, api: Api) -> web.Response:
    """A request-scoped upstream error (400, 404, 422…) goes back as the upstream said it,
    re-said in the client's API when the upstream speaks the other one.

    401/403 are about *modelpool's* credentials, not the client's, so they
    become a 502 that says so instead of telling the client its key is wrong.
    """
    if exc.status in (401, 403):
        message = (
            f"upstream rejected modelpool's credentials for model {exc.model!r} (HTTP {exc.status})"
        )
        return error_response(502, message, code="upstream_auth_failed", api=api)
    shape, said = _error_shape(exc.body)
    if shape == api:
        body = exc.body
    else:
        body = error_body(exc.status, said or exc.message, code="upstream_error", api=api)
    return web.Response(status=exc.status, body=body, content_type="application/json")


def _error_shape(body: bytes) -> tuple[Api | None, str | None]:
    """Which API's error format ``body`` is in, and its message."""
    try:
        data: Any = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None, None
    error = data.get("error") if isinstance(data, dict) else None
    if not isinstance(error, dict):
        return None, None
    message = error.get("message")
    text = message if isinstance(message, str) else None
    return ("anthropic" if data.get("type") == "error" else "openai"), text


def api_of(request: web.Request) -> Api:
    """The API a client speaks, by the endpoint it called."""
    return "anthropic" if request.path.startswith("/v1/messages") else "openai"


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except ModelpoolError as exc:
        return render(exc, api_of(request))
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        message = f"{exc.reason}: {request.method} {request.path}"
        headers = {name: exc.headers[name] for name in KEPT_HEADERS if name in exc.headers}
        return error_response(exc.status, message, code=None, headers=headers, api=api_of(request))
    except Exception:
        if request.writer.output_size:
            # The status line is already out: a second response would corrupt the
            # stream, so let aiohttp cut the connection, which the client sees.
            raise
        log.exception("unhandled error serving %s %s", request.method, request.path)
        return error_response(500, "internal error", code="internal_error", api=api_of(request))
