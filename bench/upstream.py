"""A minimal, fast OpenAI-compatible upstream for benchmarks.

Raw asyncio protocol on uvloop — no framework, no per-request allocations
beyond the request bytes — so the upstream is never what a benchmark measures.

* ``POST .../chat/completions`` and ``.../completions``: a fixed chat
  completion JSON body, or, when the request body says ``"stream": true``,
  an SSE stream of ``--chunks`` events ``--chunk-delay`` seconds apart
  (the first one at once) followed by ``data: [DONE]``.
* ``POST .../embeddings``: a fixed embedding body.
* ``GET .../models``: a one-model listing. Anything else: 404.

HTTP/1.1 keep-alive, ``Content-Length`` request bodies, pipelining tolerated.
Run it alone with ``python bench/upstream.py --port 0``; it prints one JSON
line ``{"listening": "http://127.0.0.1:PORT"}`` once it accepts connections.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys
from typing import Any, cast

import orjson

MODEL = "bench-upstream"

CHAT_BODY = orjson.dumps(
    {
        "id": "chatcmpl-bench0000000000000000000000",
        "object": "chat.completion",
        "created": 1700000000,
        "model": MODEL,
        "system_fingerprint": "fp_bench",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "Hello! How can I help you today?"},
                "logprobs": None,
                "finish_reason": "stop",
            }
        ],
        "usage": {"prompt_tokens": 12, "completion_tokens": 9, "total_tokens": 21},
    }
)
EMBED_BODY = orjson.dumps(
    {
        "object": "list",
        "data": [{"object": "embedding", "index": 0, "embedding": [0.0125] * 16}],
        "model": MODEL,
        "usage": {"prompt_tokens": 4, "total_tokens": 4},
    }
)
MODELS_BODY = orjson.dumps(
    {"object": "list", "data": [{"id": MODEL, "object": "model", "owned_by": "bench"}]}
)
NOT_FOUND_BODY = orjson.dumps({"error": {"message": "not found", "type": "invalid_request_error"}})


def _response(status: str, body: bytes, content_type: bytes = b"application/json") -> bytes:
    return (
        b"HTTP/1.1 " + status.encode() + b"\r\n"
        b"Content-Type: " + content_type + b"\r\n"
        b"Content-Length: " + str(len(body)).encode() + b"\r\n"
        b"\r\n" + body
    )


CHAT_RESPONSE = _response("200 OK", CHAT_BODY)
EMBED_RESPONSE = _response("200 OK", EMBED_BODY)
MODELS_RESPONSE = _response("200 OK", MODELS_BODY)
NOT_FOUND_RESPONSE = _response("404 Not Found", NOT_FOUND_BODY)
BAD_REQUEST_RESPONSE = _response("400 Bad Request", NOT_FOUND_BODY)
STREAM_HEAD = (
    b"HTTP/1.1 200 OK\r\n"
    b"Content-Type: text/event-stream\r\n"
    b"Cache-Control: no-cache\r\n"
    b"Transfer-Encoding: chunked\r\n"
    b"\r\n"
)


def _chunked(data: bytes) -> bytes:
    return b"%x\r\n%b\r\n" % (len(data), data)


def _event(index: int, content: str, finish: str | None) -> bytes:
    delta = {"role": "assistant", "content": content} if index == 0 else {"content": content}
    chunk = {
        "id": "chatcmpl-bench0000000000000000000000",
        "object": "chat.completion.chunk",
        "created": 1700000000,
        "model": MODEL,
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
    }
    return b"data: " + orjson.dumps(chunk) + b"\n\n"


def stream_events(chunks: int) -> list[bytes]:
    """The SSE events of one stream, each already framed as an HTTP chunk."""
    events = [_event(i, f"tok{i} ", "stop" if i == chunks - 1 else None) for i in range(chunks)]
    events[-1] += b"data: [DONE]\n\n"
    return [_chunked(event) for event in events]


def _wants_stream(body: bytes) -> bool:
    if b'"stream"' not in body:
        return False
    try:
        parsed: Any = orjson.loads(body)
    except orjson.JSONDecodeError:
        return False
    return isinstance(parsed, dict) and parsed.get("stream") is True


class UpstreamProtocol(asyncio.Protocol):
    """One client connection: parse requests from the buffer, answer them in order."""

    def __init__(self, events: list[bytes], chunk_delay: float) -> None:
        self._events = events
        self._chunk_delay = chunk_delay
        self._buffer = bytearray()
        self._transport: asyncio.Transport | None = None
        self._streaming: asyncio.Task[None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's isn't a subclass

    def connection_lost(self, exc: Exception | None) -> None:
        if self._streaming is not None:
            self._streaming.cancel()
        self._transport = None

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        if self._streaming is None:
            self._serve_buffered()

    def _serve_buffered(self) -> None:
        transport = self._transport
        while transport is not None:
            end = self._buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            head = bytes(self._buffer[:end]).lower()
            length = _content_length(head)
            if length is None:
                transport.write(BAD_REQUEST_RESPONSE)
                transport.close()
                return
            total = end + 4 + length
            if len(self._buffer) < total:
                return
            body = bytes(self._buffer[end + 4 : total])
            del self._buffer[:total]
            if self._answer(transport, head, body):
                return  # a stream owns the connection until it ends
            if b"\r\nconnection: close" in head:
                transport.close()
                return

    def _answer(self, transport: asyncio.Transport, head: bytes, body: bytes) -> bool:
        """Write the response, or start a stream and return True."""
        line_end = head.find(b"\r\n")
        method, _, rest = head[:line_end].partition(b" ")
        path = rest.partition(b" ")[0].partition(b"?")[0]
        if method == b"post" and path.endswith(b"completions"):
            if _wants_stream(body):
                transport.write(STREAM_HEAD + self._events[0])
                self._streaming = asyncio.get_running_loop().create_task(self._stream())
                return True
            transport.write(CHAT_RESPONSE)
        elif method == b"post" and path.endswith(b"embeddings"):
            transport.write(EMBED_RESPONSE)
        elif method == b"get" and path.endswith(b"models"):
            transport.write(MODELS_RESPONSE)
        else:
            transport.write(NOT_FOUND_RESPONSE)
        return False

    async def _stream(self) -> None:
        for event in self._events[1:]:
            await asyncio.sleep(self._chunk_delay)
            if self._transport is None:
                return
            self._transport.write(event)
        if self._transport is None:
            return
        self._transport.write(b"0\r\n\r\n")
        self._streaming = None
        self._serve_buffered()


def _content_length(head: bytes) -> int | None:
    """The request's Content-Length (0 when absent); None for chunked bodies."""
    if b"\r\ntransfer-encoding:" in head:
        return None
    at = head.find(b"\r\ncontent-length:")
    if at < 0:
        return 0
    start = at + len(b"\r\ncontent-length:")
    stop = head.find(b"\r\n", start)
    try:
        return int(head[start : stop if stop >= 0 else len(head)].strip())
    except ValueError:
        return None


async def serve(host: str, port: int, chunks: int, chunk_delay: float) -> None:
    loop = asyncio.get_running_loop()
    events = stream_events(chunks)
    server = await loop.create_server(
        lambda: UpstreamProtocol(events, chunk_delay), host, port, backlog=4096, reuse_address=True
    )
    bound = server.sockets[0].getsockname()
    sys.stdout.write(orjson.dumps({"listening": f"http://{bound[0]}:{bound[1]}"}).decode() + "\n")
    sys.stdout.flush()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with server:
        await stop.wait()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--chunks", type=int, default=20, help="SSE events per stream")
    parser.add_argument("--chunk-delay", type=float, default=0.005, help="seconds between events")
    args = parser.parse_args()
    if args.chunks < 1:
        parser.error("--chunks must be at least 1")
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a modelpool dependency on POSIX
        asyncio.run(serve(args.host, args.port, args.chunks, args.chunk_delay))
        return 0
    with contextlib.suppress(KeyboardInterrupt):
        uvloop.run(serve(args.host, args.port, args.chunks, args.chunk_delay))
    return 0


if __name__ == "__main__":
    sys.exit(main())
