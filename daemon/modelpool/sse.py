"""Just enough Server-Sent Events parsing to judge a stream's first event."""

from __future__ import annotations

from typing import Any

import orjson

MAX_HEAD = 64 * 1024
"""Read at most this much looking for the first event; past it, relay as is."""


def first_event(buffer: bytes) -> tuple[str, bytes] | None:
    """The first complete non-comment event in ``buffer`` as (event type, data), or None.

    Comment lines (``: ping``) are keep-alives, not events.
    """
    normalized = buffer.replace(b"\r\n", b"\n")
    for block in normalized.split(b"\n\n")[:-1]:
        kind, data = "message", []
        for line in block.split(b"\n"):
            if line.startswith(b":") or not line:
                continue
            field, _, value = line.partition(b":")
            value = value[1:] if value.startswith(b" ") else value
            if field == b"event":
                kind = value.decode("utf-8", "replace")
            elif field == b"data":
                data.append(value)
        if data or kind != "message":
            return kind, b"\n".join(data)
    return None


def error_in(kind: str, data: bytes) -> dict[str, Any] | None:
    """The error object if this event reports one (OpenAI error chunk, ``event: error``)."""
    if data == b"[DONE]":
        return None
    try:
        payload = orjson.loads(data)
    except orjson.JSONDecodeError:
        return {"message": "unparseable first event"} if kind == "error" else None
    if not isinstance(payload, dict):
        return None
    error = payload.get("error")
    if isinstance(error, dict):
        return error
    if kind == "error" or payload.get("type") == "error":
        return {"message": str(error or payload.get("message") or "error event")}
    return None


def stream_usage(chunk: bytes) -> int | None:
    """Total tokens from a ``usage`` object in this chunk's data lines, if one is complete here."""
    for line in chunk.split(b"\n"):
        if not line.startswith(b"data:") or b'"usage"' not in line:
            continue
        try:
            payload = orjson.loads(line[5:])
        except orjson.JSONDecodeError:
            continue
        usage = payload.get("usage") if isinstance(payload, dict) else None
        if isinstance(usage, dict):
            total = usage.get("total_tokens")
            if isinstance(total, int):
                return total
            counted = [v for k, v in usage.items() if k.endswith("_tokens") and isinstance(v, int)]
            return sum(counted) if counted else None
    return None


class UsageScan:
    """The stream's ``usage`` total, found in whole lines however the reads split them.

    A usage event can arrive in the same read as the first event (the head)
    or be cut across two reads; only complete lines are parsed, the
    unfinished last line is kept for the next read.
    """

    __slots__ = ("partial", "total")

    def __init__(self) -> None:
        self.partial = b""
        self.total: int | None = None

    def feed(self, chunk: bytes) -> None:
        if self.partial:
            chunk = self.partial + chunk
        end = chunk.rfind(b"\n") + 1
        rest = chunk[end:]
        self.partial = rest if len(rest) <= MAX_HEAD else b""
        if end and chunk.find(b'"usage"', 0, end) >= 0:
            self.total = stream_usage(chunk[:end]) or self.total
