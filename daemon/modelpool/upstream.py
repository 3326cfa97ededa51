"""The one aiohttp client seam: pooled keep-alive sessions with per-phase deadlines.

Phases of one attempt, each with its own deadline (``Timeouts``):

* waiting for a free pooled connection: bounded only by ``total`` — a busy
  pool is a queue, never a connect failure;
* connecting (TCP + TLS): ``connect``;
* connection ready → response headers: ``first_byte``;
* between body chunks: ``idle``;
* the whole attempt: ``total``.

One asyncio deadline is rescheduled as the attempt moves through the phases
(aiohttp's trace hooks say when a connection is queued, created or reused),
so a request costs one timer, not one per phase. This module states facts
(status, phase, Retry-After) and never decides what is retryable.
"""

from __future__ import annotations

import asyncio
import email.utils
import os
import time
from collections.abc import AsyncIterator, Iterable, Mapping
from types import SimpleNamespace

import aiohttp
import orjson

from modelpool.config.spec import Timeouts
from modelpool.errors import (
    UpstreamConnectError,
    UpstreamStatusError,
    UpstreamStreamBroken,
    UpstreamTimeout,
)

ERROR_BODY_LIMIT = 64 * 1024
MAX_ANSWER_BYTES = 64 * 1024 * 1024
"""The largest whole (non-streamed) answer read from an upstream."""


class _Attempt:
    """Deadline bookkeeping for one attempt, reachable from aiohttp's trace hooks."""

    __slots__ = ("deadline", "first_byte", "phase", "total_at")

    def __init__(self, first_byte: float, total_at: float) -> None:
        self.first_byte = first_byte
        self.total_at = total_at
        self.phase = "first_byte"
        self.deadline: asyncio.Timeout | None = None

    def reschedule(self, when: float) -> None:
        if self.deadline is not None and not self.deadline.expired():
            self.deadline.reschedule(min(when, self.total_at))


async def _queued_start(session: object, ctx: SimpleNamespace, params: object) -> None:
    attempt: _Attempt = ctx.trace_request_ctx
    attempt.phase = "total"
    attempt.reschedule(attempt.total_at)


async def _connection_ready(session: object, ctx: SimpleNamespace, params: object) -> None:
    attempt: _Attempt = ctx.trace_request_ctx
    attempt.phase = "first_byte"
    attempt.reschedule(asyncio.get_running_loop().time() + attempt.first_byte)


def _trace_config() -> aiohttp.TraceConfig:
    trace = aiohttp.TraceConfig(trace_config_ctx_factory=SimpleNamespace)
    trace.on_connection_queued_start.append(_queued_start)
    trace.on_connection_queued_end.append(_connection_ready)
    trace.on_connection_create_end.append(_connection_ready)
    trace.on_connection_reuseconn.append(_connection_ready)
    return trace


class HttpTransport:
    """A keep-alive connection pool to one upstream endpoint.

    The session is created lazily on first use, inside the event loop, so the
    routing table can be compiled anywhere (even in a worker thread).
    """

    def __init__(self, max_connections: int) -> None:
        self.max_connections = max_connections
        self.active = 0
        """Attempts between ``post`` and the response's ``close``."""
        self.retired = False
        """No table refers to this pool any more: close it once ``active`` reaches 0."""
        self._session: aiohttp.ClientSession | None = None
        self._closing: asyncio.Task[None] | None = None

    def done(self) -> None:
        """One attempt finished with this transport."""
        self.active -= 1
        if self.active == 0 and self.retired and self._session is not None:
            self._closing = asyncio.get_running_loop().create_task(self.aclose())

    def _ensure_session(self) -> aiohttp.ClientSession:
        if self._session is None:
            connector = aiohttp.TCPConnector(
                limit=self.max_connections,
                limit_per_host=0,
                ttl_dns_cache=300,
                keepalive_timeout=30,
            )
            self._session = aiohttp.ClientSession(
                connector=connector,
                trace_configs=[_trace_config()],
                timeout=aiohttp.ClientTimeout(total=None),
                auto_decompress=False,
                skip_auto_headers=("User-Agent",),
            )
        return self._session

    async def post(
        self, url: str, headers: Mapping[str, str], body: bytes, timeouts: Timeouts, model: str
    ) -> HttpResponse:
        """Send ``body``; return once a 2xx status arrived, else raise an UpstreamError."""
        return await self.request("POST", url, headers, body, timeouts, model)

    async def get(
        self, url: str, headers: Mapping[str, str], timeouts: Timeouts, model: str
    ) -> HttpResponse:
        """A GET on the same pooled connections and deadlines (health probes use it)."""
        return await self.request("GET", url, headers, None, timeouts, model)

    async def request(
        self,
        method: str,
        url: str,
        headers: Mapping[str, str],
        body: bytes | None,
        timeouts: Timeouts,
        model: str,
    ) -> HttpResponse:
        """One attempt: return once a 2xx status arrived, else raise an UpstreamError."""
        session = self._ensure_session()
        loop = asyncio.get_running_loop()
        start = loop.time()
        attempt = _Attempt(timeouts.first_byte, start + timeouts.total)
        per_request = aiohttp.ClientTimeout(total=None, sock_connect=timeouts.connect)
        self.active += 1
        try:
            # until a trace hook says the connection is ready (first_byte starts then), only
            # ``total`` bounds the attempt; timeout_at: these are loop times, not delays
            async with asyncio.timeout_at(attempt.total_at) as dl:
                attempt.deadline = dl
                response = await session.request(
                    method,
                    url,
                    data=body,
                    headers=headers,
                    timeout=per_request,
                    trace_request_ctx=attempt,
                )
                if response.status >= 400:
                    raise await _status_error(response, model)
        except aiohttp.ConnectionTimeoutError:
            self.done()
            raise UpstreamConnectError(
                f"{model}: connect timeout after {timeouts.connect:g}s", model=model
            ) from None
        except TimeoutError:
            self.done()
            limit = timeouts.total if attempt.phase == "total" else timeouts.first_byte
            message = f"{model}: no response within {limit:g}s ({attempt.phase})"
            raise UpstreamTimeout(message, phase=attempt.phase, model=model) from None
        except aiohttp.ClientError as exc:
            self.done()
            raise UpstreamConnectError(f"{model}: {_describe(exc)}", model=model) from None
        except BaseException:
            self.done()
            raise
        return HttpResponse(self, response, timeouts.idle, attempt.total_at, model)

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


def _describe(exc: aiohttp.ClientError) -> str:
    if isinstance(exc, aiohttp.ClientConnectorError):
        error = exc.os_error  # its str() names the address: keep only the reason
        reason = os.strerror(error.errno) if error.errno else type(error).__name__
        return f"cannot connect: {reason}"  # never the address: messages reach clients
    if isinstance(exc, aiohttp.ServerDisconnectedError):
        return "upstream closed the connection before responding"
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


async def _status_error(response: aiohttp.ClientResponse, model: str) -> UpstreamStatusError:
    try:
        body = await response.content.read(ERROR_BODY_LIMIT)
    except (aiohttp.ClientError, TimeoutError):
        body = b""
    finally:
        response.close()
    status = response.status
    detail = upstream_message(body) or response.reason or ""
    return UpstreamStatusError(
        f"{model}: HTTP {status}: {detail}".rstrip(": "),
        status=status,
        body=body,
        retry_after=parse_retry_after(response.headers.get("Retry-After")),
        model=model,
    )


def upstream_message(body: bytes) -> str:
    """The human message inside an OpenAI- or Anthropic-style error body."""
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        return body[:200].decode("utf-8", "replace").strip()
    error = data.get("error") if isinstance(data, dict) else None
    if isinstance(error, dict) and isinstance(error.get("message"), str):
        return str(error["message"])[:500]
    if isinstance(error, str):
        return error[:500]
    return ""


def parse_retry_after(value: str | None) -> float | None:
    """Seconds from a Retry-After header (delta-seconds or an HTTP date)."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


class HttpResponse:
    """A 2xx upstream response whose body is read under idle/total deadlines."""

    __slots__ = (
        "_idle",
        "_model",
        "_response",
        "_total_at",
        "_transport",
        "content_type",
        "status",
    )

    def __init__(
        self,
        transport: HttpTransport,
        response: aiohttp.ClientResponse,
        idle: float,
        total_at: float,
        model: str,
    ) -> None:
        self._transport: HttpTransport | None = transport
        self._response = response
        self._idle = idle
        self._total_at = total_at
        self._model = model
        self.status = response.status
        self.content_type = response.headers.get("Content-Type", "application/json")

    def _deadline(self) -> float:
        return min(asyncio.get_running_loop().time() + self._idle, self._total_at)

    async def read(self) -> bytes:
        """The whole body, under the same idle (between chunks) and total deadlines as a
        stream; a body over MAX_ANSWER_BYTES is the upstream's garbage, not kept."""
        parts, size = [], 0
        async for chunk in self.chunks():
            size += len(chunk)
            if size > MAX_ANSWER_BYTES:
                message = f"{self._model}: answer larger than {MAX_ANSWER_BYTES} bytes"
                raise UpstreamStreamBroken(message, model=self._model)
            parts.append(chunk)
        return b"".join(parts)

    async def chunks(self) -> AsyncIterator[bytes]:
        content = self._response.content
        # asyncio.timeout raises TimeoutError only when its block exits (inside,
        # the read sees CancelledError), so the translation wraps the block.
        try:
            async with asyncio.timeout(None) as deadline:
                while True:
                    deadline.reschedule(self._deadline())
                    try:
                        chunk = await content.readany()
                    except aiohttp.ClientError as exc:
                        message = f"{self._model}: stream broken: {_describe(exc)}"
                        raise UpstreamStreamBroken(message, model=self._model) from None
                    if not chunk:
                        return
                    deadline.reschedule(None)
                    yield chunk
        except TimeoutError:
            raise self._timeout() from None

    def _timeout(self) -> UpstreamTimeout:
        loop_time = asyncio.get_running_loop().time()
        phase = "total" if loop_time >= self._total_at else "idle"
        message = f"{self._model}: upstream went silent ({phase} timeout)"
        return UpstreamTimeout(message, phase=phase, model=self._model)

    def close(self) -> None:
        if self._transport is not None:
            self._transport.done()
            self._transport = None
        self._response.close() if not self._response.content.is_eof() else self._response.release()


class Transports:
    """Connection pools by endpoint; survive reloads while their endpoint does."""

    def __init__(self) -> None:
        self._pools: dict[tuple[str, int], HttpTransport] = {}

    def get(self, endpoint: str, max_connections: int) -> HttpTransport:
        key = (endpoint, max_connections)
        transport = self._pools.get(key)
        if transport is None:
            transport = self._pools[key] = HttpTransport(max_connections)
        return transport

    async def reconcile(self, live: Iterable[tuple[str, int]]) -> None:
        """Retire pools no table uses: closed now if idle, else when their last attempt ends.

        A request still running on an old table may start another attempt on a
        retired pool; it gets a connection, and the pool closes again after it.
        """
        keep = set(live)
        for key, transport in list(self._pools.items()):
            if key not in keep:
                del self._pools[key]
                transport.retired = True
                if transport.active == 0:
                    await transport.aclose()

    async def aclose(self) -> None:
        for transport in self._pools.values():
            await transport.aclose()
        self._pools.clear()
