"""Upstream attempts: pooled keep-alive connections with per-phase deadlines.

Phases of one attempt, each with its own deadline (``Timeouts``):

* waiting for a free pooled connection: bounded only by ``total`` — a busy
  pool is a queue, never a connect failure;
* connecting (TCP + TLS): ``connect``;
* request written → response headers: ``first_byte``;
* between body chunks: ``idle``;
* the whole attempt: ``total``.

The wire work is ``modelpool.http1``'s; this module turns its failures into
the error taxonomy. It states facts (status, phase, Retry-After) and never
decides what is retryable.
"""

from __future__ import annotations

import asyncio
import email.utils
import time
from collections.abc import AsyncIterator, Iterable, Mapping

import orjson

from modelpool import http1
from modelpool.config.spec import Timeouts
from modelpool.errors import (
    UpstreamConnectError,
    UpstreamError,
    UpstreamStatusError,
    UpstreamStreamBroken,
    UpstreamTimeout,
)

ERROR_BODY_LIMIT = 64 * 1024
MAX_ANSWER_BYTES = 64 * 1024 * 1024
"""The largest whole (non-streamed) answer read from an upstream."""


class HttpTransport:
    """Keep-alive connection pools (one per origin, in practice one) for one endpoint."""

    def __init__(self, max_connections: int) -> None:
        self.max_connections = max_connections
        self.active = 0
        """Attempts between ``post`` and the response's ``close``."""
        self.retired = False
        """No table refers to this pool any more: close it once ``active`` reaches 0."""
        self.closed = False
        """Closed for good: its idle connections closed, busy ones close as they end."""
        self._pools: dict[http1.Origin, http1.Pool] = {}

    def done(self) -> None:
        """One attempt finished with this transport."""
        self.active -= 1
        if self.active == 0 and self.retired:
            self.close()

    def _pool(self, origin: http1.Origin) -> http1.Pool:
        pool = self._pools.get(origin)
        if pool is None:
            pool = self._pools[origin] = http1.Pool(origin, self.max_connections)
        return pool

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
        loop = asyncio.get_running_loop()
        now = loop.time()
        total_at = now + timeouts.total
        self.active += 1
        response: http1.Response | None = None
        try:
            where = http1.target(url)
            head = http1.request_head(method, where, headers, None if body is None else len(body))
            pool = self._pool(where.origin)
            connection = pool.take_idle(now)
            if connection is None:
                connection = await pool.acquire(timeouts.connect, total_at)
            response = connection.send(head, body, loop)
            first_byte_at = loop.time() + timeouts.first_byte
            if first_byte_at < total_at:
                await response.head(first_byte_at, "first_byte")
            else:
                await response.head(total_at, "total")
            if response.status >= 400:
                raise await _status_error(response, total_at, timeouts.idle, model)
        except BaseException as exc:
            if response is not None:
                response.release()
            self.done()
            if isinstance(exc, http1.HttpError | ValueError):
                raise _upstream_error(exc, timeouts, model) from None
            raise
        return HttpResponse(self, response, timeouts.idle, total_at, model)

    def close(self) -> None:
        self.closed = True
        for pool in self._pools.values():
            pool.close()
        self._pools.clear()


def _upstream_error(exc: Exception, timeouts: Timeouts, model: str) -> UpstreamError:
    if isinstance(exc, http1.Expired):
        limit = timeouts.total if exc.phase == "total" else timeouts.first_byte
        message = f"{model}: no response within {limit:g}s ({exc.phase})"
        return UpstreamTimeout(message, phase=exc.phase, model=model)
    return UpstreamConnectError(f"{model}: {exc}", model=model)


async def _status_error(
    response: http1.Response, total_at: float, idle: float, model: str
) -> UpstreamStatusError:
    parts: list[bytes] = []
    size = 0
    loop = asyncio.get_running_loop()
    try:
        while size < ERROR_BODY_LIMIT:
            chunk = await response.read_chunk(min(loop.time() + idle, total_at), "idle")
            if not chunk:
                break
            parts.append(chunk)
            size += len(chunk)
    except http1.HttpError:
        pass  # the status says enough; the body was a bonus
    body = b"".join(parts)[:ERROR_BODY_LIMIT]
    status = response.status
    detail = upstream_message(body) or response.reason.decode("latin-1", "replace")
    return UpstreamStatusError(
        f"{model}: HTTP {status}: {detail}".rstrip(": "),
        status=status,
        body=body,
        retry_after=parse_retry_after(response.header(b"retry-after")),
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
        response: http1.Response,
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
        self.content_type = response.header(b"content-type") or "application/json"

    async def read(self) -> bytes:
        """The whole body, under the same idle (between chunks) and total deadlines as a
        stream; a body over MAX_ANSWER_BYTES is the upstream's garbage, not kept."""
        parts, size = [], 0
        while chunk := await self._next():
            size += len(chunk)
            if size > MAX_ANSWER_BYTES:
                message = f"{self._model}: answer larger than {MAX_ANSWER_BYTES} bytes"
                raise UpstreamStreamBroken(message, model=self._model)
            parts.append(chunk)
        return parts[0] if len(parts) == 1 else b"".join(parts)

    async def chunks(self) -> AsyncIterator[bytes]:
        """Body bytes as they arrive, the idle deadline running only while waiting."""
        while chunk := await self._next():
            yield chunk

    async def _next(self) -> bytes:
        idle_at = asyncio.get_running_loop().time() + self._idle
        try:
            if idle_at < self._total_at:
                return await self._response.read_chunk(idle_at, "idle")
            return await self._response.read_chunk(self._total_at, "total")
        except http1.Expired as exc:
            message = f"{self._model}: upstream went silent ({exc.phase} timeout)"
            raise UpstreamTimeout(message, phase=exc.phase, model=self._model) from None
        except http1.HttpError as exc:
            message = f"{self._model}: stream broken: {exc}"
            raise UpstreamStreamBroken(message, model=self._model) from None

    def close(self) -> None:
        if self._transport is not None:
            self._response.release()
            self._transport.done()
            self._transport = None


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
                    transport.close()

    async def aclose(self) -> None:
        for transport in self._pools.values():
            transport.close()
        self._pools.clear()
