"""Breakers, retry rounds, the retry budget and stream-aware failover, against real sockets."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import orjson
from fake_upstream import CHAT, FakeUpstream, Reply, chat_chunk, sse
from proxy_harness import Daemon, StartDaemon, chain_config, chat, read_sse

from modelpool.app import HOLDER
from modelpool.breaker import State


async def post(daemon: Daemon, **extra: Any) -> tuple[int, dict[str, str], Any]:
    async with daemon.http.post(CHAT, json=chat(**extra)) as response:
        return response.status, dict(response.headers), await response.json()


def with_breaker(config: dict[str, Any], **breaker: Any) -> dict[str, Any]:
    config["breakers"] = breaker
    return config


def breaker_of(daemon: Daemon, model: str) -> Any:
    return daemon.app[HOLDER].current.models[model].state.breaker


async def test_an_error_event_before_any_content_fails_over_to_one_clean_stream(
    start_daemon: StartDaemon, fake: FakeUpstream, fake2: FakeUpstream
) -> None:
    overloaded = sse({"error": {"message": "overloaded", "type": "server_error"}})
    fake.script(CHAT, Reply(chunks=[b": ping\n\n", overloaded, sse("[DONE]")]))
    fake2.script(CHAT, Reply.stream("good", "answer"))
    daemon = await start_daemon(chain_config([fake.base_url, fake2.base_url]))
    async with daemon.http.post(CHAT, json=chat(stream=True)) as response:
        assert response.status == 200
        assert response.headers["x-modelpool-model"] == "m2"
        assert response.headers["x-modelpool-failovers"] == "1"
        events = await read_sse(response)
    assert b"overloaded" not in b"".join(e.data for e in events)
    assert events[-1].data == b"[DONE]"
    assert breaker_of(daemon, "m1").consecutive_failures == 1


async def test_an_invalid_request_error_event_is_not_retried(
    start_daemon: StartDaemon, fake: FakeUpstream, fake2: FakeUpstream
) -> None:
    bad = sse({"error": {"message": "context too long", "type": "invalid_request_error"}})
    fake.script(CHAT, Reply(chunks=[bad]))
    daemon = await start_daemon(chain_config([fake.base_url, fake2.base_url]))
    async with daemon.http.post(CHAT, json=chat(stream=True)) as response:
        assert response.status == 400
        assert "context too long" in (await response.text())
    assert not fake2.requests
    assert breaker_of(daemon, "m1").consecutive_failures == 0


async def test_a_200_that_is_not_json_fails_over(
    start_daemon: StartDaemon, fake: FakeUpstream, fake2: FakeUpstream
) -> None:
    fake.script(CHAT, Reply(body=b"<html>gateway page</html>"))
    daemon = await start_daemon(chain_config([fake.base_url, fake2.base_url]))
    status, headers, body = await post(daemon)
    assert status == 200
    assert headers["x-modelpool-model"] == "m2"
    assert body["object"] == "chat.completion"


async def test_an_open_breaker_keeps_every_request_away_from_its_model(
    start_daemon: StartDaemon, fake: FakeUpstream, fake2: FakeUpstream
) -> None:
    fake.script(CHAT, *(Reply.error(500) for _ in range(50)))
    config = with_breaker(
        chain_config([fake.base_url, fake2.base_url]),
        failure_threshold=2,
        cooldown={"initial": "30s", "max": "1m"},
    )
    daemon = await start_daemon(config)
    for _ in range(10):
        status, headers, _ = await post(daemon)
        assert status == 200
        assert headers["x-modelpool-model"] == "m2"
    assert len(fake.requests) == 2, "requests reached a model whose breaker was open"
    breaker = breaker_of(daemon, "m1")
    assert breaker.state is State.OPEN
    assert "HTTP 500" in breaker.reason


async def test_all_breakers_open_answers_503_at_once_with_retry_after(
    start_daemon: StartDaemon, fake: FakeUpstream, fake2: FakeUpstream
) -> None:
    for f in (fake, fake2):
        f.script(CHAT, *(Reply.error(503, "down for maintenance") for _ in range(10)))
    config = with_breaker(
        chain_config([fake.base_url, fake2.base_url], attempts=2),
        failure_threshold=1,
        cooldown={"initial": "20s", "max": "1m"},
    )
    daemon = await start_daemon(config)
    first, _, _ = await post(daemon)
    assert first == 502
    contacted = len(fake.requests) + len(fake2.requests)
    started = time.monotonic()
    status, headers, body = await post(daemon)
    assert time.monotonic() - started < 0.5
    assert status == 503
    assert body["error"]["code"] == "all_upstreams_down"
    assert "down for maintenance" in body["error"]["message"]
    assert 15 <= int(headers["Retry-After"]) <= 20
    assert headers["x-modelpool-attempts"] == "0"
    assert len(fake.requests) + len(fake2.requests) == contacted


async def test_after_the_cooldown_exactly_one_trial_reaches_the_model(
    start_daemon: StartDaemon, fake: FakeUpstream, fake2: FakeUpstream
) -> None:
    fake.script(CHAT, Reply.error(500), Reply(delay=0.3))
    config = with_breaker(
        chain_config([fake.base_url, fake2.base_url]),
        failure_threshold=1,
        cooldown={"initial": "200ms", "max": "1s"},
    )
    daemon = await start_daemon(config)
    await post(daemon)
    assert breaker_of(daemon, "m1").state is State.OPEN
    await asyncio.sleep(0.25)
    results = await asyncio.gather(*(post(daemon) for _ in range(5)))
    served_by = sorted(headers["x-modelpool-model"] for _, headers, _ in results)
    assert served_by == ["m1", "m2", "m2", "m2", "m2"]
    assert len(fake.requests) == 2
    assert breaker_of(daemon, "m1").state is State.CLOSED


async def test_a_short_retry_after_on_the_only_member_is_waited_out(
    start_daemon: StartDaemon, fake: FakeUpstream
) -> None:
    fake.script(CHAT, Reply.error(429, "slow down", retry_after="1"), Reply())
    daemon = await start_daemon(chain_config([fake.base_url]))
    started = time.monotonic()
    status, headers, _ = await post(daemon)
    waited = time.monotonic() - started
    assert status == 200
    assert headers["x-modelpool-attempts"] == "2"
    assert 0.9 <= waited < 3


async def test_the_retry_budget_stops_retries_once_spent(
    start_daemon: StartDaemon, fake: FakeUpstream, fake2: FakeUpstream
) -> None:
    fake.script(CHAT, *(Reply.error(500) for _ in range(40)))
    fake2.script(CHAT, *(Reply.error(500) for _ in range(40)))
    config = with_breaker(
        chain_config([fake.base_url, fake2.base_url], attempts=2), failure_threshold=1000
    )
    config["pools"]["p"]["retry"]["budget"] = {"ratio": 0, "min_per_second": 0}
    daemon = await start_daemon(config)
    attempts = [int((await post(daemon))[1]["x-modelpool-attempts"]) for _ in range(15)]
    assert attempts == [2] * 10 + [1] * 5  # a reserve of 10 retries, then none


async def test_keep_alive_comments_reset_the_idle_timer(
    start_daemon: StartDaemon, fake: FakeUpstream
) -> None:
    """A reasoning model that pings every 100ms for 1s is not killed by a 300ms idle timeout."""
    pings = [b": ping\n\n"] * 10
    fake.script(
        CHAT, Reply(chunks=[*pings, chat_chunk("thought hard"), sse("[DONE]")], chunk_delay=0.1)
    )
    daemon = await start_daemon(chain_config([fake.base_url], timeouts={"idle": "300ms"}))
    async with daemon.http.post(CHAT, json=chat(stream=True)) as response:
        assert response.status == 200
        events = await read_sse(response, within=5)
    assert sum(e.raw == b": ping" for e in events) == 10, "keep-alives are relayed too"
    data = [e.data for e in events if not e.raw.startswith(b":")]
    contents = [orjson.loads(d)["choices"][0]["delta"].get("content") for d in data[:-1]]
    assert contents == ["thought hard"]
    assert events[-1].data == b"[DONE]"
    assert len(fake.requests) == 1


async def test_a_long_stream_is_not_a_slow_model(
    start_daemon: StartDaemon, fake: FakeUpstream
) -> None:
    """The latency a model is judged by is its time to first byte, not the stream's length."""
    fake.script(CHAT, Reply.stream(*(f"w{i}" for i in range(8)), chunk_delay=0.1))
    daemon = await start_daemon(chain_config([fake.base_url]))
    async with daemon.http.post(CHAT, json=chat(stream=True)) as response:
        await read_sse(response)
    await daemon.settled()
    latency = daemon.app[HOLDER].current.models["m1"].state.latency_ewma
    assert latency is not None
    assert latency < 0.3
