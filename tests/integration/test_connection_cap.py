"""server.max_connections: connections past the bound get a 503 the SDKs retry, at once,
and are closed; the bound follows reloads; connections within it are served as usual."""

from __future__ import annotations

import asyncio

import orjson
from fake_upstream import CHAT, FakeUpstream, Reply
from proxy_harness import Daemon, StartDaemon, chat, hang_up, single_pool_config

CAP = 3


async def opened(daemon: Daemon) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection("127.0.0.1", daemon.port)


async def answer_without_asking(reader: asyncio.StreamReader) -> tuple[int, bytes, bytes]:
    """(status, head, body) of what the daemon says to a connection that sent nothing."""
    data = await asyncio.wait_for(reader.read(), 2.0)  # read() ends when the daemon closes
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), head, body


async def capped(start_daemon: StartDaemon, fake: FakeUpstream, cap: int = CAP) -> Daemon:
    config = single_pool_config(fake.base_url)
    config["server"] = {"max_connections": cap}
    return await start_daemon(config)


async def test_a_connection_past_the_cap_is_refused_with_503_and_closed(
    start_daemon: StartDaemon, fake: FakeUpstream
) -> None:
    daemon = await capped(start_daemon, fake)
    idle = [await opened(daemon) for _ in range(CAP)]  # idle keep-alive clients count too
    await asyncio.sleep(0.05)

    reader, writer = await opened(daemon)
    status, head, body = await answer_without_asking(reader)
    await hang_up(writer)

    assert status == 503
    assert b"Retry-After: 1" in head
    error = orjson.loads(body)
    assert error["type"] == "error"  # read by both SDKs, as the path is not known yet
    assert error["error"]["code"] == "too_many_connections"
    assert fake.requests == []

    await hang_up(idle.pop()[1])  # one leaves: the next client is served
    await asyncio.sleep(0.05)
    async with daemon.http.post("/v1/chat/completions", json=chat()) as response:
        assert response.status == 200
    for _, idle_writer in idle:
        await hang_up(idle_writer)


async def test_clients_within_the_cap_are_all_served(
    start_daemon: StartDaemon, fake: FakeUpstream
) -> None:
    daemon = await capped(start_daemon, fake, cap=20)
    fake.script(CHAT, Reply(delay=0.1))  # every client holds its connection at the same time

    async def one(session_port: int) -> int:
        reader, writer = await asyncio.open_connection("127.0.0.1", session_port)
        body = orjson.dumps(chat())
        writer.write(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Connection: close\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
        )
        status = int((await reader.readline()).split(b" ", 2)[1])
        await reader.read()
        await hang_up(writer)
        return status

    assert await asyncio.gather(*(one(daemon.port) for _ in range(15))) == [200] * 15


async def test_a_reload_moves_the_cap(start_daemon: StartDaemon, fake: FakeUpstream) -> None:
    daemon = await capped(start_daemon, fake, cap=1)
    first = await opened(daemon)
    await asyncio.sleep(0.05)
    reader, writer = await opened(daemon)
    assert (await answer_without_asking(reader))[0] == 503
    await hang_up(writer)
    await hang_up(first[1])
    await asyncio.sleep(0.05)

    config = single_pool_config(fake.base_url)
    config["server"] = {"max_connections": 2}
    assert (await daemon.reload(config))["result"] == "applied"  # its connection stays open

    second = await opened(daemon)  # two now: the session's and this one
    await asyncio.sleep(0.05)
    async with daemon.http.post("/v1/chat/completions", json=chat()) as response:
        assert response.status == 200
    reader, writer = await opened(daemon)
    assert (await answer_without_asking(reader))[0] == 503
    await hang_up(writer)
    await hang_up(second[1])
