"""Each fault as behaviour on one aiohttp request, given the answer a healthy server would send.

The server runs with ``handler_cancellation=True``, so a client that leaves
cancels the handler: a hang or a stall ends when the client gives up, and
waits here are bounded by the fault's ``max`` in case it never does. Faults
that cut the connection themselves return normally.

For a request that did not ask for a stream, the stream-shaped faults act on
the plain JSON body instead: drip sends its slices slowly, truncate cuts the
body short of its Content-Length, stall stops sending part-way, and
error_in_stream answers 200 with an OpenAI error object as the JSON body.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import socket
import struct
from collections.abc import Awaitable, Callable, Mapping

import orjson
from aiohttp import web

from modelpool.fakeup.answers import INVALID_JSON, PING, Answer, error_body, sse
from modelpool.fakeup.script import Fault, Kind

STREAM_ERROR = "The server had an error while processing your request."

Behaviour = Callable[[web.Request, Fault, Answer], Awaitable[web.StreamResponse]]


async def perform(request: web.Request, fault: Fault, answer: Answer) -> web.StreamResponse:
    """Answer ``request`` the way ``fault`` says, after its latency."""
    if fault.latency:
        await asyncio.sleep(fault.latency)
    return await _BEHAVIOURS[fault.kind](request, fault, answer)


async def _serve(request: web.Request, fault: Fault, answer: Answer) -> web.StreamResponse:
    """ok, latency and drip: the whole answer, dripped when the fault says so."""
    if not fault.drip:
        return web.Response(
            status=answer.status, body=answer.body, content_type=answer.content_type
        )
    response = await _start(request, answer)
    await _send(response, answer, fault, len(answer.pieces))
    await response.write_eof()
    return response


async def _status(request: web.Request, fault: Fault, answer: Answer) -> web.StreamResponse:
    headers: dict[str, str] = {}
    if fault.retry_after is not None:
        headers["Retry-After"] = fault.retry_after
    if fault.retry_after_ms is not None:
        headers["retry-after-ms"] = str(fault.retry_after_ms)
    body = orjson.dumps(error_body(fault.status, fault.message))
    return web.Response(
        status=fault.status, body=body, headers=headers, content_type="application/json"
    )


async def _reset(request: web.Request, fault: Fault, answer: Answer) -> web.StreamResponse:
    """A TCP RST before any byte of the response: SO_LINGER 0, then abort."""
    transport = request.transport
    if transport is not None:
        sock = transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    return _cut(request)


async def _hang(request: web.Request, fault: Fault, answer: Answer) -> web.StreamResponse:
    await asyncio.sleep(fault.max)
    return _cut(request)


async def _truncate(request: web.Request, fault: Fault, answer: Answer) -> web.StreamResponse:
    """The first pieces of a 200 answer, then the connection closes: no [DONE], no full body."""
    response = await _start(request, answer)
    await _send(response, answer, fault, min(fault.chunks, len(answer.pieces) - 1))
    return _cut(request, response, flush=True)


async def _stall(request: web.Request, fault: Fault, answer: Answer) -> web.StreamResponse:
    """The first pieces, then silence (or only pings) on an open connection."""
    response = await _start(request, answer)
    await _send(response, answer, fault, min(fault.chunks, len(answer.pieces) - 1))
    await _wait(response, fault.max, fault.ping if answer.stream else 0.0)
    return _cut(request, response)


async def _error_in_stream(
    request: web.Request, fault: Fault, answer: Answer
) -> web.StreamResponse:
    """200, and the first (only) event is an error, as OpenAI sends when it fails mid-stream."""
    error = error_body(500, fault.message or STREAM_ERROR)
    if not answer.stream:
        return web.Response(body=orjson.dumps(error), content_type="application/json")
    response = await _start(request, Answer(200, (), stream=True))
    await response.write(sse(error))
    await response.write_eof()
    return response


async def _invalid_json(request: web.Request, fault: Fault, answer: Answer) -> web.StreamResponse:
    return web.Response(body=INVALID_JSON, content_type="application/json")


# --------------------------------------------------------------------------- mechanics


async def _start(request: web.Request, answer: Answer) -> web.StreamResponse:
    """Send the status and headers; a JSON body announces its full length."""
    response = web.StreamResponse(status=answer.status)
    response.content_type = answer.content_type
    if answer.stream:
        response.headers["Cache-Control"] = "no-cache"
    else:
        response.content_length = len(answer.body)
    await response.prepare(request)
    return response


async def _send(response: web.StreamResponse, answer: Answer, fault: Fault, count: int) -> None:
    """The first ``count`` pieces, ``fault.drip`` apart (pinging meanwhile in a stream)."""
    for index, piece in enumerate(answer.pieces[: max(count, 0)]):
        if index and fault.drip:
            await _wait(response, fault.drip, fault.ping if answer.stream else 0.0)
        await response.write(piece)


async def _wait(response: web.StreamResponse, seconds: float, ping: float) -> None:
    """Sleep ``seconds``; with ``ping``, write an SSE comment every ``ping`` seconds meanwhile."""
    pings = math.ceil(seconds / ping - 1e-9) - 1 if ping else 0
    for _ in range(pings):
        await asyncio.sleep(ping)
        await response.write(PING)
    await asyncio.sleep(seconds - pings * ping)


def _cut(
    request: web.Request, response: web.StreamResponse | None = None, *, flush: bool = False
) -> web.StreamResponse:
    """Close the connection mid-answer and hand aiohttp a response it can no longer send.

    ``flush`` lets what was already written leave first (a FIN after the last
    piece); otherwise the connection is aborted at once. aiohttp treats the
    failed write of the returned response as a client that went away.
    """
    transport = request.transport
    if transport is not None and flush:
        transport.close()
    elif transport is not None:
        transport.abort()
    return response if response is not None else web.Response()


_BEHAVIOURS: Mapping[Kind, Behaviour] = {
    "ok": _serve,
    "latency": _serve,
    "drip": _serve,
    "status": _status,
    "reset": _reset,
    "hang": _hang,
    "truncate": _truncate,
    "stall": _stall,
    "error_in_stream": _error_in_stream,
    "invalid_json": _invalid_json,
}
