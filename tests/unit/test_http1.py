"""The lean HTTP/1.1 client against real loopback servers that send exactly the bytes
a test scripts: framing, keep-alive, faults, deadlines and the connection pool.

Every server listens on 127.0.0.1; every wait is bounded. The scenarios that
touch the transport most (framing, flow control, faults) run again under
uvloop, the loop the daemon runs on.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import time
import tracemalloc
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any

import pytest
import uvloop

from modelpool import http1
from modelpool.config.spec import Timeouts
from modelpool.errors import (
    UpstreamConnectError,
    UpstreamStreamBroken,
    UpstreamTimeout,
)
from modelpool.upstream import HttpTransport

HOST = "127.0.0.1"


# --------------------------------------------------------------------------- scripted server


class Peer:
    """One accepted connection: read requests off it, write scripted bytes to it."""

    def __init__(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, server: Scripted
    ) -> None:
        self.reader = reader
        self.writer = writer
        self.server = server

    async def request(self) -> bytes:
        """One whole request (head and Content-Length body), recorded on the server."""
        head = await asyncio.wait_for(self.reader.readuntil(b"\r\n\r\n"), 5)
        length = 0
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        body = await asyncio.wait_for(self.reader.readexactly(length), 5) if length else b""
        self.server.requests.append(head + body)
        return head + body

    async def send(self, *parts: bytes, gap: float = 0.0) -> None:
        """Write ``parts`` one write (and drain) each, ``gap`` seconds apart."""
        for part in parts:
            self.writer.write(part)
            await self.writer.drain()
            if gap:
                await asyncio.sleep(gap)

    async def until_closed(self, limit: float = 5.0) -> None:
        """Wait (at most ``limit``) for the client to close; stray bytes are recorded."""
        with contextlib.suppress(TimeoutError, ConnectionError):
            async with asyncio.timeout(limit):
                while data := await self.reader.read(65536):
                    self.server.stray.append(data)
        self.server.closed_by_client += 1

    def reset(self) -> None:
        """Close with a TCP RST rather than a FIN."""
        sock = self.writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.writer.transport.abort()


Script = Callable[[Peer], Awaitable[None]]


class Scripted:
    """A loopback TCP server that runs ``script`` for each connection it accepts."""

    def __init__(self, script: Script) -> None:
        self.script = script
        self.connections = 0
        self.closed_by_client = 0
        self.requests: list[bytes] = []
        self.stray: list[bytes] = []
        self.port = 0
        self._server: asyncio.Server | None = None
        self._tasks: list[asyncio.Task[Any]] = []
        self._writers: list[asyncio.StreamWriter] = []

    async def start(self) -> Scripted:
        self._server = await asyncio.start_server(self._serve, HOST, 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    def url(self, path: str = "/") -> str:
        return f"http://{HOST}:{self.port}{path}"

    @property
    def origin(self) -> http1.Origin:
        return http1.Origin("http", HOST, self.port)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        task = asyncio.current_task()
        assert task is not None
        self._tasks.append(task)  # any other failure of the script is raised at teardown
        self._writers.append(writer)
        try:
            await self.script(Peer(reader, writer, self))
        except (ConnectionError, asyncio.IncompleteReadError):
            pass  # the client hung up: what some tests are after
        finally:
            writer.close()

    async def wait_for(self, what: Callable[[], bool], limit: float = 2.0) -> None:
        """Poll ``what`` until it holds, at most ``limit`` seconds."""
        for _ in range(int(limit / 0.005)):
            if what():
                return
            await asyncio.sleep(0.005)
        raise AssertionError(f"still not so after {limit}s")

    async def aclose(self) -> None:
        assert self._server is not None
        self._server.close()
        running = [task for task in self._tasks if not task.done()]
        for task in running:
            task.cancel()
        for writer in self._writers:
            writer.close()
        if running:
            await asyncio.wait(running, timeout=1)
        await asyncio.wait_for(self._server.wait_closed(), 1)
        done = [task for task in self._tasks if task.done() and task not in running]
        failures = [task.exception() for task in done if task.exception() is not None]
        assert not failures, failures


Start = Callable[[Script], Awaitable[Scripted]]


@contextlib.asynccontextmanager
async def servers() -> AsyncIterator[Start]:
    started: list[Scripted] = []

    async def start(script: Script) -> Scripted:
        server = await Scripted(script).start()
        started.append(server)
        return server

    try:
        yield start
    finally:
        for server in started:
            await server.aclose()


@pytest.fixture
async def serve() -> AsyncIterator[Start]:
    async with servers() as start:
        yield start


def replies(*answers: bytes, close: bool = False) -> Script:
    """Answer the requests on each connection with ``answers`` in turn; then close, or
    wait for the client to."""

    async def script(peer: Peer) -> None:
        for answer in answers:
            await peer.request()
            await peer.send(answer)
        if close:
            return
        await peer.until_closed()

    return script


def ok(body: bytes = b"ok", *extra: str) -> bytes:
    head = "".join(f"{line}\r\n" for line in extra)
    return b"HTTP/1.1 200 OK\r\n%sContent-Length: %d\r\n\r\n%s" % (head.encode(), len(body), body)


def chunked(*pieces: bytes) -> bytes:
    """``pieces`` in chunked transfer-encoding, last chunk included."""
    return b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in pieces if p) + b"0\r\n\r\n"


CHUNKED_HEAD = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"


# --------------------------------------------------------------------------- client helpers


async def begin(
    pool: http1.Pool,
    path: str = "/",
    *,
    method: str = "GET",
    headers: Mapping[str, str] | None = None,
    body: bytes | None = None,
    first_byte: float = 2.0,
) -> http1.Response:
    """Send one request on a pooled connection; return once the status is in."""
    loop = asyncio.get_running_loop()
    where = http1.target(f"http://{HOST}:{pool.origin.port}{path}")
    head = http1.request_head(method, where, headers or {}, None if body is None else len(body))
    connection = await pool.acquire(1.0, loop.time() + 5)
    response = connection.send(head, body, loop)
    try:
        await response.head(loop.time() + first_byte, "first_byte")
    except BaseException:
        response.release()
        raise
    return response


async def read_all(response: http1.Response, idle: float = 2.0) -> list[bytes]:
    """Every body chunk as it came (bounded: a body of more than 100k chunks is a bug)."""
    loop = asyncio.get_running_loop()
    chunks: list[bytes] = []
    for _ in range(100_000):
        chunk = await response.read_chunk(loop.time() + idle, "idle")
        if not chunk:
            return chunks
        chunks.append(chunk)
    raise AssertionError("endless body")


async def exchange(pool: http1.Pool, path: str = "/", **kwargs: Any) -> tuple[int, bytes]:
    """One whole request and response; the connection is released after."""
    response = await begin(pool, path, **kwargs)
    try:
        return response.status, b"".join(await read_all(response))
    finally:
        response.release()


async def collect(chunks: AsyncIterator[bytes], into: list[bytes]) -> None:
    """Append each chunk to ``into`` until the body ends (or breaks)."""
    async for chunk in chunks:
        into.append(chunk)


async def read_until_error(pool: http1.Pool, into: list[bytes]) -> None:
    """Read one response into ``into``; a body read as complete fails the test."""
    response = await begin(pool)
    try:
        loop = asyncio.get_running_loop()
        for _ in range(10):
            chunk = await response.read_chunk(loop.time() + 2, "idle")
            assert chunk, "a cut body read as complete"
            into.append(chunk)
    finally:
        response.release()


def upstream_timeouts(**override: float) -> Timeouts:
    return Timeouts(**{"connect": 1.0, "first_byte": 2.0, "idle": 2.0, "total": 5.0, **override})


def free_port() -> int:
    """A loopback port nobody listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
    return port


# --------------------------------------------------------------------------- target and head


@pytest.mark.parametrize(
    ("url", "origin", "path", "host_header"),
    [
        ("http://example.com", ("http", "example.com", 80), "/", "example.com"),
        ("https://example.com/v1/", ("https", "example.com", 443), "/v1/", "example.com"),
        ("http://example.com:80/a", ("http", "example.com", 80), "/a", "example.com"),
        ("https://example.com:443/a", ("https", "example.com", 443), "/a", "example.com"),
        ("http://example.com:8080/a", ("http", "example.com", 8080), "/a", "example.com:8080"),
        ("https://example.com:80/a", ("https", "example.com", 80), "/a", "example.com:80"),
        ("http://Example.COM/a", ("http", "example.com", 80), "/a", "example.com"),
        (
            "https://r.openai.azure.com/openai/models?api-version=2024-10-21",
            ("https", "r.openai.azure.com", 443),
            "/openai/models?api-version=2024-10-21",
            "r.openai.azure.com",
        ),
        ("http://h?x=1&y=2", ("http", "h", 80), "/?x=1&y=2", "h"),
        ("http://h/p?#frag", ("http", "h", 80), "/p", "h"),
        ("http://[::1]:8080/v1", ("http", "::1", 8080), "/v1", "[::1]:8080"),
        ("https://[2001:db8::1]/v1", ("https", "2001:db8::1", 443), "/v1", "[2001:db8::1]"),
        ("http://127.0.0.1:9/x", ("http", "127.0.0.1", 9), "/x", "127.0.0.1:9"),
    ],
)
def test_target_splits_a_url(
    url: str, origin: tuple[str, str, int], path: str, host_header: str
) -> None:
    where = http1.target(url)
    assert where.origin == http1.Origin(*origin)
    assert where.path == path
    assert where.host_header == host_header


@pytest.mark.parametrize(
    "url",
    ["ftp://example.com/x", "ws://example.com/", "example.com/v1", "http:///v1", "http://h:99999/"],
)
def test_target_refuses_what_is_not_an_http_url(url: str) -> None:
    with pytest.raises(ValueError, match=r"not an http\(s\) URL|Port out of range"):
        http1.target(url)


def test_the_request_head_is_line_host_headers_in_order_then_length() -> None:
    where = http1.target("https://api.example.com/v1/chat/completions?x=1")
    headers = {"Content-Type": "application/json", "Authorization": "Bearer k", "X-A": "b"}
    assert http1.request_head("POST", where, headers, 7) == (
        b"POST /v1/chat/completions?x=1 HTTP/1.1\r\n"
        b"Host: api.example.com\r\n"
        b"Content-Type: application/json\r\n"
        b"Authorization: Bearer k\r\n"
        b"X-A: b\r\n"
        b"Content-Length: 7\r\n"
        b"\r\n"
    )
    assert http1.request_head("GET", where, {}, None) == (
        b"GET /v1/chat/completions?x=1 HTTP/1.1\r\nHost: api.example.com\r\n\r\n"
    )
    assert b"Content-Length: 0\r\n" in http1.request_head("POST", where, {}, 0)


@pytest.mark.parametrize(
    "headers",
    [
        {"X-Key": "k\r\nX-Injected: 1"},
        {"X-Key": "k\nGET /admin HTTP/1.1"},
        {"X-Key": "k\r"},
        {"X-Key\r\nX-Injected": "1"},
        {"X-Key\n": "1"},
    ],
)
def test_a_header_with_a_line_break_is_refused(headers: dict[str, str]) -> None:
    where = http1.target("http://example.com/")
    with pytest.raises(ValueError, match="line break"):
        http1.request_head("GET", where, headers, None)


async def test_a_header_with_a_line_break_sends_nothing(serve: Start) -> None:
    server = await serve(replies(ok()))
    transport = HttpTransport(max_connections=2)
    evil = {"Authorization": "Bearer k\r\nX-Injected: 1"}
    with pytest.raises(UpstreamConnectError, match="line break"):
        await transport.post(server.url("/v1"), evil, b"{}", upstream_timeouts(), "m")
    await asyncio.sleep(0.05)
    assert server.connections == 0
    assert server.requests == []
    assert transport.active == 0
    transport.close()


async def test_the_request_goes_out_as_written(serve: Start) -> None:
    server = await serve(replies(ok(b"1"), ok(b"2"), ok(b"3")))
    transport = HttpTransport(max_connections=1)
    headers = {"Content-Type": "application/json", "Authorization": "Bearer k"}
    timeouts = upstream_timeouts()
    response = await transport.post(server.url("/v1/chat?x=1"), headers, b'{"a":1}', timeouts, "m")
    assert await response.read() == b"1"
    response.close()
    response = await transport.get(server.url("/v1/models"), {"X-A": "b"}, timeouts, "m")
    assert await response.read() == b"2"
    response.close()
    response = await transport.post(server.url("/empty"), {}, b"", timeouts, "m")
    assert await response.read() == b"3"
    response.close()
    host = f"Host: {HOST}:{server.port}".encode()
    assert server.requests == [
        b"POST /v1/chat?x=1 HTTP/1.1\r\n%s\r\nContent-Type: application/json\r\n"
        b'Authorization: Bearer k\r\nContent-Length: 7\r\n\r\n{"a":1}' % host,
        b"GET /v1/models HTTP/1.1\r\n%s\r\nX-A: b\r\n\r\n" % host,
        b"POST /empty HTTP/1.1\r\n%s\r\nContent-Length: 0\r\n\r\n" % host,
    ]
    assert server.connections == 1
    transport.close()


# --------------------------------------------------------------------------- framing


async def test_a_content_length_body_is_read_whole(serve: Start) -> None:
    server = await serve(replies(ok(b"hello world", "Content-Type: text/plain", "X-Two: 2")))
    pool = http1.Pool(server.origin, 4)
    response = await begin(pool)
    assert (response.status, response.reason) == (200, b"OK")
    assert response.header(b"content-type") == "text/plain"
    assert response.header(b"x-two") == "2"
    assert response.header(b"x-missing") is None
    assert b"".join(await read_all(response)) == b"hello world"
    assert response.complete
    response.release()
    pool.close()


async def test_a_chunked_body_split_across_many_writes_arrives_whole(serve: Start) -> None:
    pieces = [b"data: %d\n\n" % i for i in range(20)]
    wire = CHUNKED_HEAD + chunked(*pieces)
    slices = [wire[i : i + 7] for i in range(0, len(wire), 7)]

    async def script(peer: Peer) -> None:
        await peer.request()
        await peer.send(*slices, gap=0.001)
        await peer.request()
        await peer.send(ok(b"again"))
        await peer.until_closed()

    server = await serve(script)
    pool = http1.Pool(server.origin, 1)
    response = await begin(pool)
    chunks = await read_all(response)
    response.release()
    assert b"".join(chunks) == b"".join(pieces)
    assert len(chunks) > 1  # handed on as it came, not buffered whole
    assert await exchange(pool) == (200, b"again")  # and the connection was reusable
    assert server.connections == 1
    pool.close()


async def test_a_body_delimited_by_the_close_is_complete_and_not_reused(serve: Start) -> None:
    async def script(peer: Peer) -> None:
        await peer.request()
        await peer.send(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\n", b"abc", b"def")
        # returning closes the connection: the end of the body

    server = await serve(script)
    pool = http1.Pool(server.origin, 2)
    response = await begin(pool)
    assert b"".join(await read_all(response)) == b"abcdef"
    assert response.complete
    response.release()
    await server.wait_for(lambda: pool.open == 0)
    assert await exchange(pool) == (200, b"abcdef")
    assert server.connections == 2
    pool.close()


async def test_keep_alive_reuses_one_connection(serve: Start) -> None:
    server = await serve(replies(ok(b"first"), ok(b"second")))
    pool = http1.Pool(server.origin, 4)
    assert await exchange(pool, "/a") == (200, b"first")
    assert pool.open == 1
    assert await exchange(pool, "/b", method="POST", body=b"x") == (200, b"second")
    assert pool.open == 1
    assert server.connections == 1
    assert [r.split(b" ")[1] for r in server.requests] == [b"/a", b"/b"]
    pool.close()


@pytest.mark.parametrize(
    "answer",
    [
        ok(b"ok", "Connection: close"),
        b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok",
    ],
    ids=["connection-close", "http-1.0"],
)
async def test_a_response_that_ends_the_connection_is_not_reused(
    serve: Start, answer: bytes
) -> None:
    server = await serve(replies(answer))  # the server itself would go on
    pool = http1.Pool(server.origin, 4)
    assert await exchange(pool) == (200, b"ok")
    assert await exchange(pool) == (200, b"ok")
    assert server.connections == 2
    await server.wait_for(lambda: server.closed_by_client == 2)
    assert pool.open == 0
    pool.close()


@pytest.mark.parametrize("gap", [0.0, 0.02], ids=["one-write", "two-writes"])
async def test_a_100_continue_comes_before_the_real_response(serve: Start, gap: float) -> None:
    interim = b"HTTP/1.1 100 Continue\r\nX-Interim: yes\r\n\r\n"

    async def script(peer: Peer) -> None:
        await peer.request()
        if gap:
            await peer.send(interim, ok(b"real", "X-Final: 1"), gap=gap)
        else:
            await peer.send(interim + ok(b"real", "X-Final: 1"))
        await peer.request()
        await peer.send(ok(b"next"))
        await peer.until_closed()

    server = await serve(script)
    pool = http1.Pool(server.origin, 1)
    response = await begin(pool, method="POST", body=b"{}")
    assert (response.status, response.reason) == (200, b"OK")
    assert response.header(b"x-interim") is None
    assert response.header(b"x-final") == "1"
    assert b"".join(await read_all(response)) == b"real"
    response.release()
    assert await exchange(pool) == (200, b"next")
    assert server.connections == 1
    pool.close()


async def test_a_status_without_body_is_complete_at_once(serve: Start) -> None:
    server = await serve(replies(b"HTTP/1.1 204 No Content\r\n\r\n", ok(b"after")))
    pool = http1.Pool(server.origin, 1)
    assert await exchange(pool) == (204, b"")
    assert await exchange(pool) == (200, b"after")
    assert server.connections == 1
    pool.close()


async def test_a_large_body_streams_through_with_flow_control(serve: Start) -> None:
    body = bytes(range(256)) * (6 * 4096)  # 6 MiB
    piece = 64 * 1024

    async def script(peer: Peer) -> None:
        await peer.request()
        await peer.send(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body))
        for start in range(0, len(body), piece):
            await peer.send(body[start : start + piece])
        await peer.request()
        await peer.send(ok(b"small"))
        await peer.until_closed()

    server = await serve(script)
    pool = http1.Pool(server.origin, 1)
    response = await begin(pool)
    transport = response._connection.transport
    assert transport is not None
    await server.wait_for(lambda: not transport.is_reading())  # the reader stopped reading
    chunks = await read_all(response)
    assert transport.is_reading()  # and started again once the consumer caught up
    assert len(b"".join(chunks)) == len(body)
    assert b"".join(chunks) == body
    response.release()
    assert await exchange(pool) == (200, b"small")
    assert server.connections == 1
    pool.close()


async def test_a_large_chunked_body_arrives_intact_through_upstream(serve: Start) -> None:
    pieces = [bytes([i % 251]) * 40_000 for i in range(100)]  # about 4 MB

    async def script(peer: Peer) -> None:
        await peer.request()
        await peer.send(CHUNKED_HEAD)
        for piece in pieces:
            await peer.send(chunked(piece)[: -len(b"0\r\n\r\n")])
        await peer.send(b"0\r\n\r\n")
        await peer.until_closed()

    server = await serve(script)
    transport = HttpTransport(max_connections=1)
    response = await transport.post(server.url(), {}, b"{}", upstream_timeouts(), "m")
    assert await response.read() == b"".join(pieces)
    response.close()
    assert transport.active == 0
    transport.close()


# --------------------------------------------------------------------------- faults


async def test_malformed_bytes_before_the_head_are_malformed(serve: Start) -> None:
    server = await serve(replies(b"SMTP ready\r\n\r\n"))
    pool = http1.Pool(server.origin, 1)
    with pytest.raises(http1.Malformed, match="malformed response"):
        await begin(pool)
    await server.wait_for(lambda: pool.open == 0)
    pool.close()


def broken_mid_body() -> Script:
    async def script(peer: Peer) -> None:
        await peer.request()
        await peer.send(CHUNKED_HEAD + b"5\r\nhello\r\n", b"ZZ\r\n", gap=0.02)
        await peer.until_closed()

    return script


async def test_malformed_bytes_mid_body_are_an_error(serve: Start) -> None:
    server = await serve(broken_mid_body())
    pool = http1.Pool(server.origin, 1)
    response = await begin(pool)
    assert await response.read_chunk(asyncio.get_running_loop().time() + 2, "idle") == b"hello"
    with pytest.raises(http1.Malformed):
        await read_all(response)
    response.release()
    await server.wait_for(lambda: pool.open == 0)
    pool.close()


async def test_malformed_bytes_through_upstream(serve: Start) -> None:
    garbage = await serve(replies(b"\x16\x03\x01 not http at all\r\n\r\n"))
    broken = await serve(broken_mid_body())
    transport = HttpTransport(max_connections=2)
    with pytest.raises(UpstreamConnectError, match=r"^m: malformed response"):
        await transport.post(garbage.url(), {}, b"{}", upstream_timeouts(), "m")
    response = await transport.post(broken.url(), {}, b"{}", upstream_timeouts(), "m")
    seen: list[bytes] = []
    with pytest.raises(UpstreamStreamBroken, match=r"^m: stream broken: malformed response"):
        await collect(response.chunks(), seen)
    assert seen == [b"hello"]
    response.close()
    assert transport.active == 0
    transport.close()


# --------------------------------------------------------------------------- oversized heads

FLOOD_PIECE = 64 * 1024
FLOOD_PIECES = 256
"""A flooding upstream offers 16 MiB of head, 256 times what a client accepts."""


def head_lines(count: int, value: bytes = b"v", start: int = 0) -> bytes:
    return b"".join(b"x-filler-%06d: %s\r\n" % (start + i, value) for i in range(count))


def many_headers(i: int) -> bytes:
    """Piece ``i`` of a head that never ends: ~2,700 short header lines."""
    line = len(head_lines(1))
    return head_lines(FLOOD_PIECE // line, start=i * (FLOOD_PIECE // line))


def one_endless_header(i: int) -> bytes:
    """Piece ``i`` of a single header whose value never ends."""
    return b"x-huge: " + b"a" * (FLOOD_PIECE - 8) if i == 0 else b"a" * FLOOD_PIECE


class Flood:
    """An upstream answering with ``first``, then head bytes as fast as the client reads
    them (a bounded loop); records what it wrote and whether it was cut off."""

    def __init__(
        self, piece: Callable[[int], bytes], first: bytes = b"HTTP/1.1 200 OK\r\n"
    ) -> None:
        self.piece = piece
        self.first = first
        self.written = 0
        self.cut = False

    async def __call__(self, peer: Peer) -> None:
        await peer.request()
        try:
            await peer.send(self.first)
            for i in range(FLOOD_PIECES):
                piece = self.piece(i)
                await peer.send(piece)
                self.written += len(piece)
        except ConnectionError:
            self.cut = True
            return
        await peer.until_closed()


async def refused_head(pool: http1.Pool) -> tuple[http1.Response, str, float, int]:
    """Send one request and expect its head refused: the response, the error, how long
    the refusal took and the peak of memory allocated meanwhile (server side included)."""
    loop = asyncio.get_running_loop()
    connection = await pool.acquire(1.0, loop.time() + 5)
    started = time.monotonic()
    tracing = tracemalloc.is_tracing()
    if not tracing:
        tracemalloc.start()
    tracemalloc.reset_peak()
    try:
        head = http1.request_head(
            "GET", http1.target(f"http://{HOST}:{pool.origin.port}/"), {}, None
        )
        response = connection.send(head, None, loop)
        with pytest.raises(http1.Malformed) as caught:
            await response.head(loop.time() + 4, "first_byte")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        if not tracing:
            tracemalloc.stop()
    response.release()
    return response, str(caught.value), time.monotonic() - started, peak


@pytest.mark.parametrize("piece", [many_headers, one_endless_header], ids=["many", "one"])
async def test_an_endless_head_is_malformed_and_stops_being_read(
    serve: Start, piece: Callable[[int], bytes]
) -> None:
    flood = Flood(piece)
    server = await serve(flood)
    pool = http1.Pool(server.origin, 1)
    response, error, took, peak = await refused_head(pool)
    assert error.startswith("malformed response from the upstream: ")
    assert error.endswith(
        f"more than {http1.MAX_HEADERS} headers"
        if piece is many_headers
        else f"response head larger than {http1.MAX_HEAD_BYTES} bytes"
    )
    assert len(response.headers) <= http1.MAX_HEADERS
    assert took < 2.0, "refused only at the first-byte deadline"
    assert peak < 8 * 1024 * 1024, f"{peak} bytes allocated while refusing the head"
    await server.wait_for(lambda: flood.cut)  # the connection was closed under its writes
    assert flood.written < FLOOD_PIECE * FLOOD_PIECES
    await server.wait_for(lambda: pool.open == 0)
    pool.close()


async def test_an_endless_run_of_interim_responses_is_malformed(serve: Start) -> None:
    interim = b"HTTP/1.1 100 Continue\r\n\r\n"
    flood = Flood(lambda i: interim * (FLOOD_PIECE // len(interim)), first=interim)
    server = await serve(flood)
    pool = http1.Pool(server.origin, 1)
    _, error, took, _ = await refused_head(pool)
    assert error.endswith(f"response head larger than {http1.MAX_HEAD_BYTES} bytes")
    assert took < 2.0
    await server.wait_for(lambda: flood.cut)
    pool.close()


async def test_a_head_at_both_limits_is_read(serve: Start) -> None:
    """256 headers (Content-Length the last) of about 63 KiB, written in 4 KiB pieces."""
    head = b"HTTP/1.1 200 OK\r\n" + head_lines(http1.MAX_HEADERS - 1, b"v" * 225)
    head += b"Content-Length: 2\r\n\r\nok"
    assert http1.MAX_HEAD_BYTES - 4096 < len(head) <= http1.MAX_HEAD_BYTES

    async def script(peer: Peer) -> None:
        await peer.request()
        await peer.send(*(head[i : i + 4096] for i in range(0, len(head), 4096)))
        await peer.until_closed()

    server = await serve(script)
    pool = http1.Pool(server.origin, 1)
    response = await begin(pool)
    assert len(response.headers) == http1.MAX_HEADERS
    assert b"".join(await read_all(response)) == b"ok"
    response.release()
    pool.close()


async def test_one_header_too_many_is_malformed(serve: Start) -> None:
    server = await serve(replies(ok(b"ok", *["x-a: b"] * http1.MAX_HEADERS)))
    pool = http1.Pool(server.origin, 1)
    with pytest.raises(http1.Malformed, match=f"more than {http1.MAX_HEADERS} headers$"):
        await begin(pool)
    await server.wait_for(lambda: pool.open == 0)
    pool.close()


async def test_an_oversized_head_through_upstream_is_malformed(serve: Start) -> None:
    flood = Flood(many_headers)
    server = await serve(flood)
    transport = HttpTransport(max_connections=1)
    expected = rf"^m: malformed response from the upstream: more than {http1.MAX_HEADERS} headers$"
    with pytest.raises(UpstreamConnectError, match=expected):
        await transport.post(server.url(), {}, b"{}", upstream_timeouts(), "m")
    assert transport.active == 0
    await server.wait_for(lambda: flood.cut)
    transport.close()


async def test_a_disconnect_before_the_response_is_disconnected(serve: Start) -> None:
    async def script(peer: Peer) -> None:
        await peer.request()

    server = await serve(script)
    pool = http1.Pool(server.origin, 1)
    with pytest.raises(http1.Disconnected, match="before responding"):
        await begin(pool)
    assert pool.open == 0
    pool.close()


@pytest.mark.parametrize(
    ("sent", "error"),
    [
        (b"HTTP/1.1 200 OK\r\nContent-Le", "before responding"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n12345", "in the middle"),
        (CHUNKED_HEAD + b"5\r\n12345\r\n", "in the middle"),
        (CHUNKED_HEAD + b"5\r\n12345\r\n0\r\n", "in the middle"),
    ],
    ids=["in-the-head", "short-length", "chunked-no-last", "chunked-no-trailer-end"],
)
async def test_a_disconnect_mid_response_is_an_error_not_a_short_body(
    serve: Start, sent: bytes, error: str
) -> None:
    async def script(peer: Peer) -> None:
        await peer.request()
        await peer.send(sent)

    server = await serve(script)
    pool = http1.Pool(server.origin, 1)
    parts: list[bytes] = []
    with pytest.raises(http1.Disconnected, match=error):
        await read_until_error(pool, parts)
    assert b"".join(parts) in (b"", b"12345")
    assert pool.open == 0
    pool.close()


async def test_a_disconnect_mid_body_through_upstream_is_a_broken_stream(serve: Start) -> None:
    async def script(peer: Peer) -> None:
        await peer.request()
        await peer.send(b'HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n{"partial":')

    server = await serve(script)
    transport = HttpTransport(max_connections=1)
    response = await transport.post(server.url(), {}, b"{}", upstream_timeouts(), "m")
    with pytest.raises(UpstreamStreamBroken, match="in the middle of the response"):
        await response.read()
    response.close()
    assert transport.active == 0
    transport.close()


async def test_a_reset_before_the_response_is_disconnected(serve: Start) -> None:
    async def script(peer: Peer) -> None:
        await peer.request()
        peer.reset()

    server = await serve(script)
    pool = http1.Pool(server.origin, 1)
    with pytest.raises(http1.Disconnected):
        await begin(pool)
    pool.close()


async def test_bytes_nobody_asked_for_make_an_idle_connection_unusable(serve: Start) -> None:
    async def script(peer: Peer) -> None:
        await peer.request()
        await peer.send(ok(b"one"))
        await asyncio.sleep(0.05)  # the client has the connection idle by now
        await peer.send(ok(b"unasked"))
        await peer.until_closed()

    server = await serve(script)
    pool = http1.Pool(server.origin, 1)
    assert await exchange(pool) == (200, b"one")
    assert pool.open == 1
    await server.wait_for(lambda: server.closed_by_client == 1)
    await server.wait_for(lambda: pool.open == 0)
    assert await exchange(pool) == (200, b"one")
    assert server.connections == 2
    pool.close()


@pytest.mark.parametrize(
    "extra",
    [ok(b"evil"), b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", b"garbage"],
    ids=["whole-response", "empty-response", "garbage"],
)
async def test_bytes_after_the_response_are_not_body_and_end_the_connection(
    serve: Start, extra: bytes
) -> None:
    server = await serve(replies(ok(b"ok") + extra, ok(b"ok") + extra))
    pool = http1.Pool(server.origin, 1)
    response = await begin(pool)
    assert b"".join(await read_all(response)) == b"ok"
    assert response.status == 200
    response.release()
    assert await exchange(pool) == (200, b"ok")
    assert server.connections == 2
    pool.close()


async def test_a_closed_idle_connection_is_replaced(serve: Start) -> None:
    server = await serve(replies(ok(b"one"), close=True))  # like a server's idle timeout
    pool = http1.Pool(server.origin, 1)
    assert await exchange(pool) == (200, b"one")
    await server.wait_for(lambda: pool.open == 0)
    assert await exchange(pool) == (200, b"one")
    assert server.connections == 2
    pool.close()


async def test_an_idle_connection_past_keepalive_is_not_reused(serve: Start) -> None:
    server = await serve(replies(ok(b"one"), ok(b"two")))
    pool = http1.Pool(server.origin, 1, keepalive=0.05)
    assert await exchange(pool) == (200, b"one")
    await asyncio.sleep(0.1)
    assert await exchange(pool) == (200, b"one")
    assert server.connections == 2
    pool.close()


# --------------------------------------------------------------------------- deadlines


def silent_after(*sent: bytes) -> Script:
    async def script(peer: Peer) -> None:
        await peer.request()
        await peer.send(*sent)
        await peer.until_closed()

    return script


async def test_no_head_by_the_first_byte_deadline_expires(serve: Start) -> None:
    server = await serve(silent_after())
    pool = http1.Pool(server.origin, 1)
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(http1.Expired) as caught:
        await begin(pool, first_byte=0.1)
    assert caught.value.phase == "first_byte"
    assert 0.09 <= loop.time() - started < 1.0
    await server.wait_for(lambda: server.closed_by_client == 1)  # the attempt was aborted
    assert pool.open == 0
    pool.close()


async def test_silence_between_chunks_expires_idle(serve: Start) -> None:
    server = await serve(silent_after(CHUNKED_HEAD + b"5\r\nhello\r\n"))
    pool = http1.Pool(server.origin, 1)
    response = await begin(pool)
    loop = asyncio.get_running_loop()
    assert await response.read_chunk(loop.time() + 0.1, "idle") == b"hello"
    started = loop.time()
    with pytest.raises(http1.Expired) as caught:
        await response.read_chunk(loop.time() + 0.1, "idle")
    assert caught.value.phase == "idle"
    assert 0.09 <= loop.time() - started < 1.0
    response.release()
    await server.wait_for(lambda: server.closed_by_client == 1)
    pool.close()


async def test_a_deadline_moved_later_does_not_fire_at_the_earlier_time(serve: Start) -> None:
    go = asyncio.Event()

    async def script(peer: Peer) -> None:
        await peer.request()
        await peer.send(CHUNKED_HEAD + b"1\r\na\r\n")
        await go.wait()
        await peer.send(b"1\r\nb\r\n0\r\n\r\n")
        await peer.until_closed()

    server = await serve(script)
    pool = http1.Pool(server.origin, 1)
    response = await begin(pool)
    loop = asyncio.get_running_loop()
    assert await response.read_chunk(loop.time() + 0.05, "idle") == b"a"  # timer armed at +0.05
    loop.call_later(0.15, go.set)
    assert await response.read_chunk(loop.time() + 0.5, "idle") == b"b"  # waits past +0.05
    assert await response.read_chunk(loop.time() + 0.5, "idle") == b""
    response.release()
    pool.close()


async def test_a_trickling_upstream_expires_total(serve: Start) -> None:
    async def script(peer: Peer) -> None:
        await peer.request()
        await peer.send(CHUNKED_HEAD)
        for _ in range(100):  # 5 s at most
            await peer.send(b"1\r\n.\r\n")
            await asyncio.sleep(0.05)

    server = await serve(script)
    transport = HttpTransport(max_connections=1)
    timeouts = upstream_timeouts(idle=0.2, total=0.4)
    loop = asyncio.get_running_loop()
    started = loop.time()
    response = await transport.post(server.url(), {}, b"{}", timeouts, "m")
    got: list[bytes] = []
    with pytest.raises(UpstreamTimeout) as caught:
        await collect(response.chunks(), got)
    assert caught.value.phase == "total"
    assert caught.value.message == "m: upstream went silent (total timeout)"
    assert 0.35 <= loop.time() - started < 1.0
    assert b"".join(got).startswith(b"...")
    response.close()
    transport.close()


async def test_no_head_through_upstream_is_a_first_byte_timeout(serve: Start) -> None:
    server = await serve(silent_after())
    transport = HttpTransport(max_connections=1)
    with pytest.raises(UpstreamTimeout) as caught:
        await transport.post(server.url(), {}, b"{}", upstream_timeouts(first_byte=0.1), "m")
    assert caught.value.phase == "first_byte"
    assert caught.value.message == "m: no response within 0.1s (first_byte)"
    assert transport.active == 0
    with pytest.raises(UpstreamTimeout) as caught:  # total shorter than first_byte: total
        await transport.post(
            server.url(), {}, b"{}", upstream_timeouts(first_byte=1.0, total=0.1), "m"
        )
    assert caught.value.phase == "total"
    transport.close()


async def test_the_idle_deadline_does_not_run_while_the_consumer_holds_a_chunk(
    serve: Start,
) -> None:
    go = asyncio.Event()

    async def script(peer: Peer) -> None:
        await peer.request()
        await peer.send(CHUNKED_HEAD + b"5\r\nfirst\r\n")
        await asyncio.wait_for(go.wait(), 5)
        await peer.send(b"6\r\nsecond\r\n0\r\n\r\n")
        await peer.until_closed()

    server = await serve(script)
    transport = HttpTransport(max_connections=1)
    response = await transport.post(server.url(), {}, b"{}", upstream_timeouts(idle=0.1), "m")
    got = []
    async for chunk in response.chunks():
        got.append(chunk)
        if chunk == b"first":
            await asyncio.sleep(0.3)  # three idle deadlines' worth, holding the chunk
            go.set()
    assert got == [b"first", b"second"]
    response.close()
    transport.close()


# --------------------------------------------------------------------------- the pool


async def test_a_full_pool_queues_and_hands_the_connection_over(serve: Start) -> None:
    server = await serve(replies(ok(b"one"), ok(b"two")))
    pool = http1.Pool(server.origin, 1)
    first = await begin(pool)
    second = asyncio.create_task(exchange(pool))
    await asyncio.sleep(0.05)
    assert not second.done()  # queued, not failed and not a second connection
    assert pool.open == 1
    assert b"".join(await read_all(first)) == b"one"
    first.release()
    assert await asyncio.wait_for(second, 2) == (200, b"two")
    assert server.connections == 1
    assert pool.open == 1
    pool.close()


async def test_a_queued_waiter_past_total_expires(serve: Start) -> None:
    server = await serve(replies(ok(b"one"), ok(b"two")))
    pool = http1.Pool(server.origin, 1)
    first = await begin(pool)
    loop = asyncio.get_running_loop()
    with pytest.raises(http1.Expired) as caught:
        await pool.acquire(1.0, loop.time() + 0.1)
    assert caught.value.phase == "total"
    assert pool.open == 1
    await read_all(first)
    first.release()
    assert await exchange(pool) == (200, b"two")
    assert server.connections == 1
    pool.close()


async def test_a_full_pool_through_upstream_times_out_total_not_connect(serve: Start) -> None:
    server = await serve(replies(ok(b"one")))
    transport = HttpTransport(max_connections=1)
    first = await transport.post(server.url(), {}, b"{}", upstream_timeouts(), "m")
    with pytest.raises(UpstreamTimeout) as caught:
        await transport.post(server.url(), {}, b"{}", upstream_timeouts(total=0.1), "m")
    assert caught.value.phase == "total"
    assert transport.active == 1
    first.close()
    assert transport.active == 0
    transport.close()


@pytest.mark.parametrize(
    "how",
    ["then-reused", "then-closed", "cancelled-as-handed-over"],
)
async def test_a_cancelled_waiter_does_not_leak_its_slot(serve: Start, how: str) -> None:
    first_answer = ok(b"one", "Connection: close") if how == "then-closed" else ok(b"one")
    server = await serve(replies(first_answer, ok(b"two"), ok(b"three")))
    pool = http1.Pool(server.origin, 1)
    first = await begin(pool)
    loop = asyncio.get_running_loop()
    waiter = asyncio.create_task(pool.acquire(1.0, loop.time() + 5))
    await asyncio.sleep(0.02)
    assert not waiter.done()
    await read_all(first)
    if how == "cancelled-as-handed-over":
        first.release()  # the connection goes to the waiter...
        waiter.cancel()  # ...which is cancelled before it runs
    else:
        waiter.cancel()
        await asyncio.sleep(0)
        first.release()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    if how == "then-closed":
        await server.wait_for(lambda: pool.open == 0)
    else:
        assert pool.open == 1  # the one connection, idle again
    for _ in range(2):
        assert (await exchange(pool))[0] == 200
    if how == "then-closed":  # each answer closes its connection
        assert server.connections == 3
        await server.wait_for(lambda: pool.open == 0)
    else:
        assert server.connections == 1
        assert pool.open == 1
    pool.close()


def hangs_up_on(signal: asyncio.Event) -> Script:
    """Answer one request, then close the (keep-alive) connection when told to."""

    async def script(peer: Peer) -> None:
        await peer.request()
        await peer.send(ok(b"one"))
        await asyncio.wait_for(signal.wait(), 5)

    return script


async def close_seen(connection: http1.Connection) -> None:
    """Return in the loop turn where the upstream's close was seen but not yet completed:
    the transport is closing, ``connection_lost`` is still to come."""
    transport = connection.transport
    assert transport is not None
    for _ in range(10_000):
        if transport.is_closing():
            break
        await asyncio.sleep(0)
    assert transport.is_closing()
    assert not connection.closed


async def test_a_connection_closing_as_it_is_handed_over_is_not_used(serve: Start) -> None:
    """The upstream closes a keep-alive connection just as a queued request would get it:
    that request must get a new connection, not a dead one (where it would wait out its
    first_byte deadline, or under uvloop fail with a RuntimeError)."""
    hang_up = asyncio.Event()
    server = await serve(hangs_up_on(hang_up))
    pool = http1.Pool(server.origin, 1)
    first = await begin(pool)
    waiter = asyncio.create_task(exchange(pool, first_byte=2.0))
    await asyncio.sleep(0.02)
    assert b"".join(await read_all(first)) == b"one"
    hang_up.set()
    await close_seen(first._connection)
    first.release()
    assert await asyncio.wait_for(waiter, 1) == (200, b"one")
    assert server.connections == 2
    pool.close()


async def test_an_idle_connection_seen_closing_is_not_taken(serve: Start) -> None:
    hang_up = asyncio.Event()
    server = await serve(hangs_up_on(hang_up))
    pool = http1.Pool(server.origin, 1)
    first = await begin(pool)
    assert b"".join(await read_all(first)) == b"one"
    first.release()
    assert pool.open == 1  # idle
    hang_up.set()
    await close_seen(first._connection)
    async with asyncio.timeout(1):  # not wait_for: its new task would start a turn later
        assert await exchange(pool) == (200, b"one")
    assert server.connections == 2
    pool.close()


async def test_a_connection_closed_just_after_the_hand_over_fails_fast(serve: Start) -> None:
    """Closed after it was handed over, before the new owner writes: the request fails
    at once as a disconnect (a connect error upstream of here), whatever the loop."""
    server = await serve(replies(ok(b"one"), ok(b"two")))
    pool = http1.Pool(server.origin, 1)
    first = await begin(pool)
    waiter = asyncio.create_task(exchange(pool, first_byte=2.0))
    await asyncio.sleep(0.02)
    await read_all(first)
    first.release()  # handed over; the waiter runs a turn later
    transport = first._connection.transport
    assert transport is not None
    transport.close()  # what seeing the upstream's FIN does
    with pytest.raises(http1.Disconnected, match="before responding"):
        await asyncio.wait_for(waiter, 1)
    await server.wait_for(lambda: pool.open == 0)
    assert await exchange(pool) == (200, b"one")
    pool.close()


async def test_a_closed_pool_refuses_and_fails_its_waiters(serve: Start) -> None:
    server = await serve(replies(ok(b"one")))
    pool = http1.Pool(server.origin, 1)
    first = await begin(pool)
    loop = asyncio.get_running_loop()
    waiter = asyncio.create_task(pool.acquire(1.0, loop.time() + 5))
    await asyncio.sleep(0.02)
    pool.close()
    with pytest.raises(http1.ConnectFailed, match="closed"):
        await waiter
    await read_all(first)
    first.release()  # a busy connection closes when its response ends
    await server.wait_for(lambda: server.closed_by_client == 1)
    with pytest.raises(http1.ConnectFailed, match="closed"):
        await pool.acquire(1.0, loop.time() + 5)


# --------------------------------------------------------------------------- connecting


async def test_a_refused_connect_fails_without_naming_the_address() -> None:
    port = free_port()
    pool = http1.Pool(http1.Origin("http", HOST, port), 2)
    loop = asyncio.get_running_loop()
    with pytest.raises(http1.ConnectFailed) as caught:
        await pool.acquire(1.0, loop.time() + 5)
    assert str(caught.value) == "cannot connect: Connection refused"
    assert HOST not in str(caught.value)
    assert str(port) not in str(caught.value)
    assert pool.open == 0

    transport = HttpTransport(max_connections=1)
    url = f"http://{HOST}:{port}/v1"
    with pytest.raises(UpstreamConnectError) as error:
        await transport.post(url, {}, b"{}", upstream_timeouts(), "m")
    assert error.value.message == "m: cannot connect: Connection refused"
    assert transport.active == 0


async def test_a_slow_connect_is_a_connect_timeout(monkeypatch: pytest.MonkeyPatch) -> None:
    loop = asyncio.get_running_loop()

    async def never(*args: object, **kwargs: object) -> None:
        await asyncio.sleep(10)

    monkeypatch.setattr(loop, "create_connection", never)
    pool = http1.Pool(http1.Origin("http", HOST, 9), 1)
    started = loop.time()
    with pytest.raises(http1.ConnectTimeout, match=r"connect timeout after 0\.05s"):
        await pool.acquire(0.05, loop.time() + 5)
    assert loop.time() - started < 1.0
    assert pool.open == 0
    with pytest.raises(http1.Expired) as caught:  # total comes first: that is the phase
        await pool.acquire(1.0, loop.time() + 0.05)
    assert caught.value.phase == "total"
    assert pool.open == 0

    transport = HttpTransport(max_connections=1)
    with pytest.raises(UpstreamConnectError) as error:
        await transport.post(f"http://{HOST}:9/", {}, b"{}", upstream_timeouts(connect=0.05), "m")
    assert error.value.message == "m: connect timeout after 0.05s"
    assert transport.active == 0


async def test_a_cancelled_connect_frees_its_slot(monkeypatch: pytest.MonkeyPatch) -> None:
    loop = asyncio.get_running_loop()

    async def never(*args: object, **kwargs: object) -> None:
        await asyncio.sleep(10)

    monkeypatch.setattr(loop, "create_connection", never)
    pool = http1.Pool(http1.Origin("http", HOST, 9), 1)
    task = asyncio.create_task(pool.acquire(5.0, loop.time() + 5))
    await asyncio.sleep(0.02)
    assert pool.open == 1
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert pool.open == 0


# --------------------------------------------------------------------------- under uvloop

UVLOOP_CASES = [
    test_the_request_goes_out_as_written,
    test_a_content_length_body_is_read_whole,
    test_a_chunked_body_split_across_many_writes_arrives_whole,
    test_a_body_delimited_by_the_close_is_complete_and_not_reused,
    test_keep_alive_reuses_one_connection,
    test_a_status_without_body_is_complete_at_once,
    test_a_large_body_streams_through_with_flow_control,
    test_a_large_chunked_body_arrives_intact_through_upstream,
    test_malformed_bytes_through_upstream,
    test_an_oversized_head_through_upstream_is_malformed,
    test_a_disconnect_before_the_response_is_disconnected,
    test_a_disconnect_mid_body_through_upstream_is_a_broken_stream,
    test_a_reset_before_the_response_is_disconnected,
    test_bytes_nobody_asked_for_make_an_idle_connection_unusable,
    test_a_closed_idle_connection_is_replaced,
    test_no_head_by_the_first_byte_deadline_expires,
    test_silence_between_chunks_expires_idle,
    test_the_idle_deadline_does_not_run_while_the_consumer_holds_a_chunk,
    test_a_full_pool_queues_and_hands_the_connection_over,
    test_a_connection_closing_as_it_is_handed_over_is_not_used,
    test_an_idle_connection_seen_closing_is_not_taken,
    test_a_connection_closed_just_after_the_hand_over_fails_fast,
]


@pytest.mark.parametrize("case", UVLOOP_CASES, ids=lambda case: case.__name__[5:])
def test_under_uvloop(case: Callable[[Start], Awaitable[None]]) -> None:
    async def main() -> None:
        async with servers() as start:
            await case(start)

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(main())
