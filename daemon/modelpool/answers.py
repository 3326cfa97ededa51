"""Judging an upstream's answer before any of it is relayed.

A 200 is not yet a success: a body that is not JSON, a JSON error object, or
a stream whose first event is an error are failed attempts, worth another
member while the client has seen nothing. Pure functions of bytes, apart
from reading a stream's head.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from typing import Any

import orjson

from modelpool.errors import UpstreamStatusError, UpstreamStreamBroken
from modelpool.sse import MAX_HEAD, error_in, first_event


def usage_of(body: bytes) -> int | None:
    """Total tokens in a JSON answer's ``usage``, when it has one."""
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    usage = data.get("usage") if isinstance(data, dict) else None
    return tokens_in(usage) if isinstance(usage, dict) else None


def tokens_in(usage: Mapping[str, Any]) -> int | None:
    total = usage.get("total_tokens")
    if isinstance(total, int):
        return total
    parts = [
        usage.get(k)
        for k in ("prompt_tokens", "completion_tokens", "input_tokens", "output_tokens")
    ]
    counted = [p for p in parts if isinstance(p, int)]
    return sum(counted) if counted else None


def json_body(body: bytes, model: str) -> bytes:
    """A 200 whose body is not JSON, or is an error object, is an upstream failure."""
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        message = f"{model}: upstream answered 200 with a body that is not JSON"
        raise UpstreamStatusError(message, status=502, body=b"", model=model) from None
    error = data.get("error") if isinstance(data, dict) else None
    if isinstance(error, dict):
        raise stream_error(error, body, model, where="upstream answered 200 with an error")
    return body


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
