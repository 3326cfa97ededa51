"""Load generators: wrk for request/response runs, a raw asyncio client for SSE streams.

Each function is one bounded measurement against one URL and returns plain
numbers; none of them knows what is behind the URL.

* ``wrk(...)`` without ``rate``: closed loop, every connection sends its next
  request as soon as the previous answer is complete (max throughput).
* ``wrk(..., rate=R)``: paced. A Lua ``delay()`` hands out send slots
  ``1/R`` apart from one shared schedule, so the offered load is ``R`` req/s
  as long as a connection is free (late slots are sent at once, catching up).
  Latency is wrk's own, from the moment each request is written.
* ``streams(...)``: ``concurrency`` keep-alive connections reading SSE streams
  back to back over raw sockets — no HTTP client library on the measured path,
  so time to first byte is not blurred by client overhead.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from procs import Processes

WRK_SCRIPT = """\
wrk.method = "POST"
wrk.body = [==[{body}]==]
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer bench"
{pacing}
function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRKJSON {{"requests":%d,"duration_us":%d,"connect":%d,"read":%d,"write":%d,'
    .. '"status":%d,"timeout":%d,"p50_us":%d,"p99_us":%d,"max_us":%d}}\\n',
    summary.requests, summary.duration, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(99), latency.max))
end
"""

WRK_PACING = """
local ffi = require("ffi")
ffi.cdef[[
typedef struct {{ long tv_sec; long tv_nsec; }} bench_timespec;
int clock_gettime(int clk_id, bench_timespec *tp);
]]
local ts = ffi.new("bench_timespec")
local interval_ms = 1000 / {rate}
local next_slot = nil

function delay()
  ffi.C.clock_gettime(1, ts)  -- CLOCK_MONOTONIC
  local now = tonumber(ts.tv_sec) * 1000 + tonumber(ts.tv_nsec) / 1e6
  if next_slot == nil then next_slot = now end
  local slot = next_slot
  next_slot = slot + interval_ms
  if slot <= now then return 0 end
  return math.floor(slot - now + 0.5)
end
"""


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (``q`` in 0..100) of unsorted ``values``; NaN when empty."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


@dataclass(frozen=True)
class WrkResult:
    rps: float
    p50_ms: float
    p99_ms: float
    max_ms: float
    requests: int
    errors: int
    non2xx: int = 0
    """Answers with a status other than 2xx/3xx (counted in ``errors`` too)."""


def wrk(
    procs: Processes,
    url: str,
    body: bytes,
    *,
    connections: int,
    duration: float,
    workdir: Path,
    cpu_prefix: list[str],
    rate: float | None = None,
) -> WrkResult:
    """POST ``body`` over ``connections`` keep-alive connections for ``duration`` seconds."""
    pacing = WRK_PACING.format(rate=rate) if rate else ""
    script_text = WRK_SCRIPT.format(body=body.decode(), pacing=pacing)
    script = workdir / f"wrk-{hashlib.sha1(script_text.encode()).hexdigest()[:12]}.lua"
    if not script.exists():
        script.write_text(script_text)
    argv = [
        *cpu_prefix,
        "wrk",
        "-t1",
        f"-c{connections}",
        f"-d{max(1, round(duration))}s",
        "--timeout",
        "5s",
        "-s",
        str(script),
        url,
    ]
    out = procs.run("wrk", argv, timeout=duration + 30)
    line = next((ln for ln in out.splitlines() if ln.startswith("WRKJSON ")), None)
    if line is None:
        raise RuntimeError(f"wrk printed no summary:\n{out}")
    raw: dict[str, int] = json.loads(line.removeprefix("WRKJSON "))
    errors = sum(raw[k] for k in ("connect", "read", "write", "status", "timeout"))
    return WrkResult(
        rps=raw["requests"] / (raw["duration_us"] / 1e6),
        p50_ms=raw["p50_us"] / 1000,
        p99_ms=raw["p99_us"] / 1000,
        max_ms=raw["max_us"] / 1000,
        requests=raw["requests"],
        errors=errors,
        non2xx=raw["status"],
    )


@dataclass(frozen=True)
class StreamResult:
    ttfb_p50_ms: float
    ttfb_p99_ms: float
    total_p50_ms: float
    total_p99_ms: float
    streams: int
    errors: int


class StreamError(Exception):
    """A stream did not answer 200 or ended before ``data: [DONE]``."""


@dataclass(frozen=True)
class _Head:
    status: int
    content_length: int | None
    chunked: bool
    keep_alive: bool

    @classmethod
    def parse(cls, raw: bytes) -> _Head:
        lines = raw.decode("latin-1").split("\r\n")
        version, _, rest = lines[0].partition(" ")
        fields: dict[str, str] = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            fields[name.strip().lower()] = value.strip().lower()
        length = fields.get("content-length")
        try:
            return cls(
                status=int(rest[:3]),
                content_length=int(length) if length is not None else None,
                chunked="chunked" in fields.get("transfer-encoding", ""),
                keep_alive=version == "HTTP/1.1" and fields.get("connection") != "close",
            )
        except ValueError:
            raise StreamError(f"malformed response head: {lines[0]!r}") from None


class SseConnection:
    """One keep-alive HTTP/1.1 connection that reads one SSE response at a time."""

    def __init__(self, host: str, port: int, path: str, body: bytes) -> None:
        self._host = host
        self._port = port
        self._request = (
            f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\n"
            "Content-Type: application/json\r\nAccept: text/event-stream\r\n"
            f"Authorization: Bearer bench\r\nContent-Length: {len(body)}\r\n\r\n"
        ).encode() + body
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    async def stream(self) -> tuple[float, float]:
        """Send the request; return (seconds to the first body byte, seconds to the end)."""
        if self._reader is None or self._writer is None:
            self._reader, self._writer = await asyncio.open_connection(self._host, self._port)
        reader = self._reader
        started = time.perf_counter()
        self._writer.write(self._request)
        try:
            head, first = await _read_head(reader)
            while not first:
                first = await _read_some(reader)
            ttfb = time.perf_counter() - started
            tail = await _read_rest(head, reader, first)
        except (OSError, StreamError):
            await self.close()
            raise
        total = time.perf_counter() - started
        if not head.keep_alive:
            await self.close()
        if b"[DONE]" not in tail:
            raise StreamError("stream ended before data: [DONE]")
        return ttfb, total

    async def close(self) -> None:
        writer, self._reader, self._writer = self._writer, None, None
        if writer is not None:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()


async def _read_some(reader: asyncio.StreamReader) -> bytes:
    data = await reader.read(65536)
    if not data:
        raise StreamError("connection closed mid-response")
    return data


async def _read_head(reader: asyncio.StreamReader) -> tuple[_Head, bytes]:
    """The response head (must be 200) and whatever body bytes came with it."""
    buffer = bytearray()
    while (end := buffer.find(b"\r\n\r\n")) < 0:
        buffer += await _read_some(reader)
    head = _Head.parse(bytes(buffer[:end]))
    if head.status != 200:
        raise StreamError(f"status {head.status}")
    return head, bytes(buffer[end + 4 :])


async def _read_rest(head: _Head, reader: asyncio.StreamReader, first: bytes) -> bytes:
    """Read the body to its end; return its last bytes (enough to find ``[DONE]``)."""
    tail = first[-256:]
    if head.content_length is not None:
        remaining = head.content_length - len(first)
        while remaining > 0:
            chunk = await _read_some(reader)
            remaining -= len(chunk)
            tail = (tail + chunk)[-256:]
        return tail
    if head.chunked:
        while not tail.endswith(b"\r\n0\r\n\r\n"):
            tail = (tail + await _read_some(reader))[-256:]
        return tail
    while chunk := await reader.read(65536):  # delimited by the connection closing
        tail = (tail + chunk)[-256:]
    return tail


async def _streams(url: str, body: bytes, concurrency: int, duration: float) -> StreamResult:
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    connections = [SseConnection(host, port, parts.path, body) for _ in range(concurrency)]
    ttfbs: list[float] = []
    totals: list[float] = []
    errors = 0

    async def run(connection: SseConnection, until: float, record: bool) -> None:
        nonlocal errors
        while True:
            try:
                ttfb, total = await connection.stream()
            except (OSError, StreamError):
                if record:
                    errors += 1
            else:
                if record:
                    ttfbs.append(ttfb)
                    totals.append(total)
            if time.perf_counter() >= until:
                return

    try:
        # One stream per connection first, unrecorded: connections open, caches warm.
        await asyncio.gather(*(run(c, 0.0, record=False) for c in connections))
        until = time.perf_counter() + duration
        await asyncio.gather(*(run(c, until, record=True) for c in connections))
    finally:
        for connection in connections:
            await connection.close()
    return StreamResult(
        ttfb_p50_ms=percentile(ttfbs, 50) * 1000,
        ttfb_p99_ms=percentile(ttfbs, 99) * 1000,
        total_p50_ms=percentile(totals, 50) * 1000,
        total_p99_ms=percentile(totals, 99) * 1000,
        streams=len(totals),
        errors=errors,
    )


def streams(url: str, body: bytes, *, concurrency: int, duration: float) -> StreamResult:
    """``concurrency`` clients reading SSE streams back to back for ``duration`` seconds."""

    async def bounded() -> StreamResult:
        async with asyncio.timeout(duration + 30):
            return await _streams(url, body, concurrency, duration)

    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a modelpool dependency on POSIX
        return asyncio.run(bounded())
    return uvloop.run(bounded())
