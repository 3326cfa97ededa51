"""Request ids and the access log: one line per request, no prompt content.

The outermost middleware names each request (the client's ``x-request-id``
when it is a sane token, else a fresh one), makes the id current for every
log line the request causes, returns it in the ``x-request-id`` header of
every response (streams included), and logs one ``access`` line when the
request ends: method, path, status, duration and — for proxied requests —
client, pool, model, attempts, outcome, tokens and cost. Never a body.
"""

from __future__ import annotations

import itertools
import logging
import re
import secrets
import time
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from modelpool.logs import REQUEST_ID, batched_record
from modelpool.usage.accounting import Bill

log = logging.getLogger("modelpool.access")

HEADER = "x-request-id"
REQUEST_ID_KEY = web.RequestKey("request_id", str)
STARTED = web.RequestKey("started", float)
"""perf_counter() when the request reached modelpool (its overhead counts from here)."""
TRACE = web.RequestKey("trace", dict[str, Any])
"""What the proxy handler leaves for the access log (see ProxyRequest.trace)."""
_SANE = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
MAX_PATH = 200
"""Longer paths are cut in the log: a junk path must not make a huge line."""

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


_PREFIX = secrets.token_hex(5)
_serial = itertools.count(1)


def request_id(request: web.Request) -> str:
    """The client's own id when sane, else this process's random prefix and a serial:
    unique without a random read per request."""
    given = request.headers.get(HEADER)
    if given is not None and _SANE.match(given):
        return given
    return f"{_PREFIX}{next(_serial):06x}"


def access_middleware(enabled: Callable[[], bool]) -> Any:
    """The middleware; ``enabled`` says (per request) whether access lines are wanted."""

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        rid = request[REQUEST_ID_KEY] = request_id(request)
        token = REQUEST_ID.set(rid)
        started = request[STARTED] = time.perf_counter()
        status = 500
        try:
            response = await handler(request)
            status = response.status
            return response
        except web.HTTPException as exc:
            status = exc.status
            raise
        finally:
            if enabled() and log.isEnabledFor(logging.INFO):
                _log(request, status, time.perf_counter() - started)
            REQUEST_ID.reset(token)

    return middleware


async def add_request_id(request: web.Request, response: web.StreamResponse) -> None:
    """on_response_prepare: every response, streams included, names its request."""
    rid = request.get(REQUEST_ID_KEY)
    if rid is not None:
        response.headers[HEADER] = rid


def _log(request: web.Request, status: int, seconds: float) -> None:
    fields: dict[str, Any] = {
        "request_id": request.get(REQUEST_ID_KEY),
        "method": request.method,
        "path": request.path[:MAX_PATH],
        "status": status,
        "duration_ms": round(seconds * 1000, 2),
    }
    trace = request.get(TRACE)
    bill = trace.get("bill") if trace is not None else None
    if isinstance(bill, Bill):
        fields |= _bill_fields(bill)
    batched_record(log, "access", fields)


def _bill_fields(bill: Bill) -> dict[str, Any]:
    usage = bill.usage
    return {
        "client": bill.client,
        "pool": bill.pool,
        "model": bill.model,
        "attempts": bill.attempts,
        "outcome": bill.outcome,
        "input_tokens": usage.prompt_tokens if usage else 0,
        "output_tokens": usage.output_tokens if usage else 0,
        "cost_usd": bill.cost,
    }
