"""Judging an upstream's answer before any of it is relayed.

A 200 is not yet a success: a body that is not JSON, a JSON error object, or
a stream whose first event is an error are failed attempts, worth another
member while the client has seen nothing. Pure functions of bytes, apart
from reading a stream's head.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import orjson

from modelpool.errors import UpstreamStatusError, UpstreamStreamBroken
from modelpool.sse import MAX_HEAD, error_in, first_event


def json_answer(body: bytes, model: str) -> dict[str, Any]:
    """The answer's JSON object. A 200 whose body is not a JSON object, or is an
    error object (either API's shape), is an upstream failure."""
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        data = None
    if not isinstance(data, dict):
        message = f"{model}: upstream answered 200 with a body that is not a JSON object"
        raise UpstreamStatusError(message, status=502, body=b"", model=model)
    error = data.get("error")
    if isinstance(error, dict):
        raise stream_error(error, body, model, where="upstream answered 200 with an error")
    return data


async def stream_head(rest: AsyncIterator[bytes], model: str) -> bytes:
    """Read up to the stream's first event; an error event there is a failed attempt."""
    head = b""
    while len(head) < MAX_HEAD:
        chunk = await anext(rest, b"")
        if not chunk:
            break
        head += chunk
        event = first_event(head)
        if event is not None:
            error = error_in(*event)
            if error is not None:
                raise stream_error(error, event[1], model)
            return head
    if not head:
        raise UpstreamStreamBroken(f"{model}: stream ended before any data", model=model)
    return head


_ERROR_TYPES = {
    "invalid_request_error": 400,
    "rate_limit_error": 429,
    "overloaded_error": 529,
    "api_error": 500,
    "server_error": 500,
}


def stream_error(
    error: dict[str, Any], data: bytes, model: str, where: str = "error event before any content"
) -> UpstreamStatusError:
    code = error.get("code")
    status = code if isinstance(code, int) and 400 <= code <= 599 else None
    status = status or _ERROR_TYPES.get(str(error.get("type")), 502)
    message = f"{model}: {where}: {error.get('message', '')}"
    return UpstreamStatusError(message, status=status, body=data, model=model)
