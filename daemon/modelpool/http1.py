"""A lean HTTP/1.1 client for upstream calls: keep-alive connections driven as
asyncio protocols, responses parsed by llhttp (through ``httptools``).

Each upstream attempt is one request head written in one call and one parser
fed straight from ``data_received``; a request that finds an idle pooled
connection never awaits before it writes. aiohttp's client spent about a third
of the proxy's CPU per request on its general machinery (request and response
objects, URL and header multidicts, payload writers, trace signals); see
bench/README.md for the profile.

This module knows sockets, bytes and deadlines, nothing about models: it raises
``HttpError`` subclasses and ``modelpool.upstream`` says what they mean.

Deadlines cost one loop timer per wait, armed lazily: moving a deadline later
only stores a number, and a timer that fires early re-arms itself.
"""

from __future__ import annotations

import asyncio
import functools
import os
import socket
import ssl
from collections import deque
from collections.abc import Mapping
from typing import NamedTuple, NoReturn, cast
from urllib.parse import urlsplit

import httptools

BUFFER_HIGH = 256 * 1024
"""Stop reading from an upstream while this much body waits for its consumer."""

MAX_HEAD_BYTES = 64 * 1024
"""The most bytes a response head may take: status line and headers, and any 1xx
interim responses before it. Providers send a few KiB; llhttp itself has no limit."""

MAX_HEADERS = 256
"""The most header lines one response may carry (providers send a few dozen)."""


class HttpError(Exception):
    """An HTTP exchange failed below the level of status codes."""


class ConnectFailed(HttpError):
    """No connection: refused, unreachable, DNS, TLS. The message names no address."""


class ConnectTimeout(HttpError):
    """The connection was not up within the connect deadline."""


class Disconnected(HttpError):
    """The upstream closed the connection before the response was whole."""


class Malformed(HttpError):
    """The upstream's bytes are not an HTTP/1.1 response."""


class Expired(HttpError):
    """A deadline passed; ``phase`` is the one its caller gave it."""

    def __init__(self, phase: str) -> None:
        super().__init__(phase)
        self.phase = phase


class Origin(NamedTuple):
    scheme: str
    host: str
    port: int


class Target(NamedTuple):
    """A URL split once into what a request head and a connection pool need."""

    origin: Origin
    path: str
    host_header: str


@functools.lru_cache(maxsize=4096)
def target(url: str) -> Target:
    """Split ``url``; cached, as each route calls the same few URLs."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"not an http(s) URL: {url!r}")
    default = 443 if parts.scheme == "https" else 80
    port = parts.port or default
    host = parts.hostname
    shown = f"[{host}]" if ":" in host else host
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    host_header = shown if port == default else f"{shown}:{port}"
    return Target(Origin(parts.scheme, host, port), path, host_header)


def request_head(
    method: str, where: Target, headers: Mapping[str, str], length: int | None
) -> bytes:
    """The request line and headers, ``Content-Length`` included when there is a body.

    A CR or LF in a header would smuggle a header (or a second request) into the
    upstream connection: such a header is refused.
    """
    lines = [f"{method} {where.path} HTTP/1.1\r\nHost: {where.host_header}\r\n"]
    for name, value in headers.items():
        if "\n" in value or "\r" in value or "\n" in name or "\r" in name:
            raise ValueError(f"header {name.strip()!r} contains a line break")
        lines.append(f"{name}: {value}\r\n")
    if length is not None:
        lines.append(f"Content-Length: {length}\r\n")
    lines.append("\r\n")
    return "".join(lines).encode("utf-8")


@functools.cache
def tls_context() -> ssl.SSLContext:
    """The system's trust store with certificate and host name checks (built once)."""
    return ssl.create_default_context()


def describe_os_error(exc: OSError) -> str:
    """Why a connect failed, never naming the address (messages reach clients)."""
    if isinstance(exc, socket.gaierror):
        return "cannot resolve the upstream host name"
    if isinstance(exc, ssl.SSLError):
        return f"TLS failed: {exc.reason or type(exc).__name__}"
    if exc.errno:
        return os.strerror(exc.errno)
    return type(exc).__name__


class Response:
    """One response as it arrives; also the parser's callback target.

    Body bytes queue here until read; ``read_chunk`` returns ``b""`` once the
    response is whole. Only the task reading waits, so one waiter is enough.
    """

    __slots__ = (
        "_buffered",
        "_chunks",
        "_complete",
        "_connection",
        "_deadline",
        "_error",
        "_framed",
        "_head_bytes",
        "_header_bytes",
        "_informational",
        "_keep_alive",
        "_loop",
        "_parser",
        "_phase",
        "_timer",
        "_waiter",
        "headers",
        "reason",
        "status",
    )

    def __init__(self, connection: Connection, loop: asyncio.AbstractEventLoop) -> None:
        self._connection = connection
        self._loop = loop
        self._parser = httptools.HttpResponseParser(self)
        self._chunks: deque[bytes] = deque()
        self._buffered = 0
        self._complete = False
        self._keep_alive = False
        self._framed = False
        self._informational = False
        self._head_bytes = 0
        """Bytes received while the head was still incomplete."""
        self._header_bytes = 0
        """Bytes of the header names and values parsed so far."""
        self._error: HttpError | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._deadline: float | None = None
        self._phase = ""
        self.status = 0
        self.reason = b""
        self.headers: list[tuple[bytes, bytes]] = []

    # ------------------------------------------------------------------ reading

    def header(self, name: bytes) -> str | None:
        """The first value of header ``name`` (lower case), decoded, or None."""
        for key, value in self.headers:
            if key.lower() == name:
                return value.decode("latin-1")
        return None

    async def head(self, deadline: float, phase: str) -> None:
        """Wait until the status line and headers are in."""
        while not self.status:
            await self._wait(deadline, phase)

    async def read_chunk(self, deadline: float, phase: str) -> bytes:
        """The next body bytes as they came, ``b""`` at the end of the body."""
        while not self._chunks:
            if self._complete:
                return b""
            await self._wait(deadline, phase)
        chunk = self._chunks.popleft()
        self._buffered -= len(chunk)
        if self._buffered < BUFFER_HIGH:
            self._connection.resume_reading()
        return chunk

    @property
    def complete(self) -> bool:
        return self._complete

    async def _wait(self, deadline: float, phase: str) -> None:
        if self._error is not None:
            raise self._error
        self._deadline, self._phase = deadline, phase
        timer = self._timer
        if timer is None or timer.when() > deadline:
            if timer is not None:
                timer.cancel()
            self._timer = self._loop.call_at(deadline, self._on_timer)
        self._waiter = waiter = self._loop.create_future()
        try:
            await waiter
        finally:
            self._waiter = None
            self._deadline = None
        if self._error is not None:
            raise self._error

    def _on_timer(self) -> None:
        self._timer = None
        deadline = self._deadline
        if deadline is None or self._complete or self._error is not None:
            return  # nobody is waiting: the next wait arms a timer again
        if self._loop.time() < deadline:
            self._timer = self._loop.call_at(deadline, self._on_timer)
            return
        self._fail(Expired(self._phase))
        self._connection.abort()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _fail(self, error: HttpError) -> None:
        if self._error is None and not self._complete:
            self._error = error
            self._wake()

    def _stop_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    # ------------------------------------------------------------ from the socket

    def feed(self, data: bytes) -> None:
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._malformed(str(exc))
            return
        if not self.status:  # all of ``data`` was head: llhttp buffers a header line whole
            self._head_bytes += len(data)
            if self._head_bytes > MAX_HEAD_BYTES:
                self._malformed(f"response head larger than {MAX_HEAD_BYTES} bytes")

    def _malformed(self, why: str) -> None:
        """Fail with ``why`` (the first reason given stays) and stop reading at once."""
        self._fail(Malformed(f"malformed response from the upstream: {why}"))
        self._connection.abort()

    def lost(self) -> None:
        """The connection closed: a body without length ends here, anything else broke."""
        if self._complete:
            return
        if self.status and not self._framed and not self._informational:
            self._finish(keep_alive=False)
            return
        started = "in the middle of the response" if self.status else "before responding"
        self._fail(Disconnected(f"upstream closed the connection {started}"))

    def _finish(self, keep_alive: bool) -> None:
        self._complete = True
        self._keep_alive = keep_alive and self._error is None
        self._stop_timer()
        self._wake()

    # ------------------------------------------------------------ parser callbacks

    def on_message_begin(self) -> None:
        if self._complete:  # a second response to one request: not ours to read as body
            raise Malformed("bytes after the response")  # the parser stops; feed aborts

    def on_status(self, reason: bytes) -> None:
        self.reason = reason

    def on_header(self, name: bytes, value: bytes) -> None:
        self._header_bytes += len(name) + len(value)
        if len(self.headers) >= MAX_HEADERS:
            self._refuse_head(f"more than {MAX_HEADERS} headers")
        if self._header_bytes > MAX_HEAD_BYTES:
            self._refuse_head(f"response head larger than {MAX_HEAD_BYTES} bytes")
        self.headers.append((name, value))
        lower = name.lower()
        if lower == b"content-length" or lower == b"transfer-encoding":
            self._framed = True

    def _refuse_head(self, why: str) -> NoReturn:
        self._malformed(why)
        raise Malformed(why)  # stops the parser; the reason given first is the one kept

    def on_headers_complete(self) -> None:
        status = self._parser.get_status_code()
        if 100 <= status < 200:  # 100 Continue and friends: the real answer follows
            self._informational = True
            self.headers.clear()
            self._framed = False
            return
        self.status = status
        self._wake()

    def on_body(self, body: bytes) -> None:
        self._chunks.append(body)
        self._buffered += len(body)
        if self._buffered >= BUFFER_HIGH:
            self._connection.pause_reading()
        self._wake()

    def on_message_complete(self) -> None:
        if self._informational:
            self._informational = False
            return
        if self.status and not self._complete:
            self._finish(self._parser.should_keep_alive())

    # ------------------------------------------------------------------- ending

    def release(self) -> None:
        """Done with this response: a whole keep-alive one returns its connection to
        the pool, any other closes it (unread bytes cannot be skipped safely)."""
        self._stop_timer()
        connection = self._connection
        if self._complete and self._keep_alive and not self._chunks:
            connection.finished(self)
        else:
            connection.finished(None)


class Connection(asyncio.Protocol):
    """One keep-alive connection to an origin; at most one response at a time."""

    def __init__(self, pool: Pool) -> None:
        self.pool = pool
        self.transport: asyncio.Transport | None = None
        self.response: Response | None = None
        self.closed = False
        self.owned = False
        """Counted in the pool (set once the connect succeeded)."""
        self.idle_since = 0.0
        self._paused = False

    @property
    def usable(self) -> bool:
        """Open and not closing: an upstream's close is seen a loop turn before it is done."""
        transport = self.transport
        return not self.closed and transport is not None and not transport.is_closing()

    def send(self, head: bytes, body: bytes | None, loop: asyncio.AbstractEventLoop) -> Response:
        assert self.transport is not None, "sent on a connection not yet made"
        response = self.response = Response(self, loop)
        if body:
            self.transport.writelines((head, body))
        else:
            self.transport.write(head)
        return response

    def finished(self, response: Response | None) -> None:
        """The current response is done with: reuse the connection, or close it."""
        self.response = None
        if response is None or not self.usable:
            self.abort()
        else:
            self.pool.give_back(self)

    def pause_reading(self) -> None:
        if not self._paused and self.transport is not None:
            self._paused = True
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        if self._paused and self.transport is not None and not self.closed:
            self._paused = False
            self.transport.resume_reading()

    def abort(self) -> None:
        if not self.closed and self.transport is not None:
            self.closed = True
            self.transport.abort()

    def close(self) -> None:
        if not self.closed and self.transport is not None:
            self.closed = True
            self.transport.close()

    # ------------------------------------------------------------------ protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass

    def data_received(self, data: bytes) -> None:
        response = self.response
        if response is None:  # bytes nobody asked for: the connection cannot be trusted
            self.abort()
            return
        response.feed(data)

    def eof_received(self) -> bool:
        return False  # close our side too

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.response is not None:
            self.response.lost()
        if self.owned:
            self.owned = False
            self.pool.forget(self)


class Pool:
    """Keep-alive connections to one origin, at most ``limit`` open at once.

    A request takes the most recently used idle connection, else opens one,
    else queues; a full pool is a queue, never a connect failure.
    """

    def __init__(self, origin: Origin, limit: int, keepalive: float = 30.0) -> None:
        self.origin = origin
        self.limit = limit
        self.keepalive = keepalive
        self.open = 0
        """Connections open or being opened."""
        self._idle: list[Connection] = []
        self._waiters: deque[asyncio.Future[Connection | None]] = deque()
        self._closed = False

    def take_idle(self, now: float) -> Connection | None:
        """An idle connection still worth using, without waiting, or None."""
        idle = self._idle
        while idle:
            connection = idle.pop()
            if connection.usable and now - connection.idle_since < self.keepalive:
                return connection
            connection.close()
        return None

    async def acquire(self, connect_timeout: float, total_at: float) -> Connection:
        """A connection: idle, newly opened, or handed over by a request finishing.

        The queue wait is bounded by ``total_at`` only; connecting by
        ``connect_timeout`` as well.
        """
        loop = asyncio.get_running_loop()
        connection = self.take_idle(loop.time())
        if connection is not None:
            return connection
        if self._closed:
            raise ConnectFailed("connection pool closed")
        if self.open < self.limit:
            self.open += 1
        else:
            handed = await self._queue(loop, total_at)
            if handed is not None:
                return handed
        try:
            return await self._connect(loop, connect_timeout, total_at)
        except BaseException:
            self._free_slot()
            raise

    async def _queue(self, loop: asyncio.AbstractEventLoop, total_at: float) -> Connection | None:
        """Wait for a connection (or, on None, a slot already counted for us)."""
        waiter: asyncio.Future[Connection | None] = loop.create_future()
        self._waiters.append(waiter)
        try:
            async with asyncio.timeout_at(total_at):
                return await waiter
        except BaseException as exc:
            if waiter.done() and not waiter.cancelled() and waiter.exception() is None:
                self._hand_back(waiter.result())  # handed over just as we gave up
            if isinstance(exc, TimeoutError):
                raise Expired("total") from None
            raise

    def _hand_back(self, handed: Connection | None) -> None:
        if handed is None:
            self._free_slot()
        else:
            self.give_back(handed)

    async def _connect(
        self, loop: asyncio.AbstractEventLoop, connect_timeout: float, total_at: float
    ) -> Connection:
        scheme, host, port = self.origin
        tls = tls_context() if scheme == "https" else None
        connect_at = loop.time() + connect_timeout
        try:
            async with asyncio.timeout_at(min(connect_at, total_at)):
                _, connection = await loop.create_connection(
                    lambda: Connection(self),
                    host,
                    port,
                    ssl=tls,
                    server_hostname=host if tls is not None else None,
                )
        except TimeoutError:
            if connect_at <= total_at:
                raise ConnectTimeout(f"connect timeout after {connect_timeout:g}s") from None
            raise Expired("total") from None
        except OSError as exc:
            raise ConnectFailed(f"cannot connect: {describe_os_error(exc)}") from None
        if self._closed:
            connection.close()
            raise ConnectFailed("connection pool closed")
        connection.owned = True
        return connection

    def give_back(self, connection: Connection) -> None:
        """A connection whose response is whole: to the next waiter, else idle."""
        if self._closed:
            connection.close()
            return
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(connection)
                return
        connection.idle_since = asyncio.get_running_loop().time()
        self._idle.append(connection)

    def forget(self, connection: Connection) -> None:
        """A counted connection closed: its slot goes to the next waiter."""
        if connection in self._idle:
            self._idle.remove(connection)
        self._free_slot()

    def _free_slot(self) -> None:
        self.open -= 1
        while self._waiters and not self._closed:
            waiter = self._waiters.popleft()
            if not waiter.done():
                self.open += 1
                waiter.set_result(None)
                return

    def close(self) -> None:
        """Close idle connections; busy ones close when their response ends."""
        self._closed = True
        for connection in self._idle:
            connection.close()
        self._idle.clear()
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_exception(ConnectFailed("connection pool closed"))
