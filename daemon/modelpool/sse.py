"""Server-Sent Events: judging a stream's first event, reading events, writing them."""

from __future__ import annotations

from typing import Any

import orjson

MAX_HEAD = 64 * 1024
"""Read at most this much looking for the first event; past it, relay as is."""
MAX_EVENT = 4 * 1024 * 1024
"""The largest single event a translated stream buffers before calling the stream broken."""


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


class Unfinished:
    """The unfinished tail of a byte stream, held as parts: a long event that
    arrives in many reads is joined once, when its end comes, not once per read.
    More than ``MAX_EVENT`` bytes without an end is a broken stream (ValueError)."""

    __slots__ = ("parts", "size")

    def __init__(self) -> None:
        self.parts: list[bytes] = []
        self.size = 0

    def hold(self, data: bytes) -> None:
        if data:
            self.parts.append(data)
            self.size += len(data)
            if self.size > MAX_EVENT:
                raise ValueError(f"an SSE event exceeds {MAX_EVENT} bytes")

    def join(self, chunk: bytes) -> bytes:
        """Everything held, then ``chunk``; nothing is held afterwards."""
        if not self.parts:
            return chunk
        self.parts.append(chunk)
        joined = b"".join(self.parts)
        self.parts, self.size = [], 0
        return joined


class EventReader:
    """Complete SSE events out of a byte stream, however the reads split it.

    ``feed`` returns the (event type, data) of every event completed by the
    chunk; comments and blank keep-alives are skipped. A pending event larger
    than ``MAX_EVENT`` is a broken stream, not something to buffer forever.
    """

    __slots__ = ("_held",)

    def __init__(self) -> None:
        self._held = Unfinished()

    @property
    def pending(self) -> bytes:
        return b"".join(self._held.parts)

    def feed(self, chunk: bytes) -> list[tuple[str, bytes]]:
        if b"\n" not in chunk:  # no event can end in this read
            self._held.hold(chunk)
            return []
        blocks = self._held.join(chunk).replace(b"\r\n", b"\n").split(b"\n\n")
        self._held.hold(blocks.pop())
        events = []
        for block in blocks:
            event = first_event(block + b"\n\n")
            if event is not None:
                events.append(event)
        return events


def data_event(payload: Any) -> bytes:
    """An OpenAI-style event: one ``data:`` line."""
    return b"data: " + orjson.dumps(payload) + b"\n\n"


def named_event(kind: str, payload: Any) -> bytes:
    """An Anthropic-style event: ``event:`` then ``data:``."""
    return b"event: " + kind.encode() + b"\ndata: " + orjson.dumps(payload) + b"\n\n"


DONE = b"data: [DONE]\n\n"
