"""Failover, retry classification and timeouts, against real sockets.

Members of pool ``p`` are tried in list order (``chain_config`` uses the
priority strategy with one tier per member), so each test knows which fake
upstream is asked first.
"""

from __future__ import annotations

import time
from typing import Any

import orjson
import pytest
from fake_upstream import CHAT, FakeUpstream, Reply, error_json
from proxy_harness import (
    Daemon,
    StartDaemon,
    StartFake,
    chain_config,
    chat,
    observed,
    provider,
    read_sse,
)

from modelpool.app import REGISTRY


async def post_chat(daemon: Daemon, **extra: Any) -> tuple[int, dict[str, str], Any]:
    async with daemon.http.post("/v1/chat/completions", json=chat(**extra)) as response:
        return response.status, dict(response.headers), await response.json()


# --------------------------------------------------------------------------- next member


async def test_connect_refused_fails_over_to_next_member(
    start_daemon: StartDaemon, fake: FakeUpstream, closed_port: int
) -> None:
    daemon = await start_daemon(chain_config([f"http://127.0.0.1:{closed_port}/v1", fake.base_url]))
    status, headers, body = await post_chat(daemon)

    assert status == 200
    assert headers["x-modelpool-model"] == "m2"
    assert headers["x-modelpool-attempts"] == "2"
    assert body["choices"][0]["message"]["content"] == "hello from up-m2"
    assert fake.requests[0].json["model"] == "up-m2"


@pytest.mark.parametrize("status", [500, 502, 503, 429])
async def test_retryable_status_fails_over_to_next_member(
    status: int, start_daemon: StartDaemon, fake: FakeUpstream, fake2: FakeUpstream
) -> None:
    fake.script(CHAT, Reply.error(status, "first is down", retry_after="1"))
    daemon = await start_daemon(chain_config([fake.base_url, fake2.base_url]))
    code, headers, _ = await post_chat(daemon)

    assert code == 200
    assert headers["x-modelpool-model"] == "m2"
    assert headers["x-modelpool-attempts"] == "2"
    assert len(fake.requests) == len(fake2.requests) == 1
    assert fake2.requests[0].json == {**chat(), "model": "up-m2"}


async def test_upstream_dropping_the_connection_before_headers_fails_over(
    start_daemon: StartDaemon, fake: FakeUpstream, fake2: FakeUpstream
) -> None:
    fake.script(CHAT, Reply(drop="before_headers"))
    daemon = await start_daemon(chain_config([fake.base_url, fake2.base_url]))
    status, headers, _ = await post_chat(daemon)
    assert status == 200
    assert headers["x-modelpool-model"] == "m2"


async def test_upstream_dropping_a_json_body_halfway_fails_over(
    start_daemon: StartDaemon, fake: FakeUpstream, fake2: FakeUpstream
) -> None:
    fake.script(CHAT, Reply(drop="after_headers"))
    daemon = await start_daemon(chain_config([fake.base_url, fake2.base_url]))
    status, headers, body = await post_chat(daemon)
    assert status == 200
    assert headers["x-modelpool-model"] == "m2"
    assert body["choices"][0]["message"]["content"] == "hello from up-m2"


async def test_failover_chain_reaches_another_pool(
    start_daemon: StartDaemon, fake: FakeUpstream, fake2: FakeUpstream
) -> None:
    fake.script(CHAT, Reply.error(503))
    config = chain_config([fake.base_url, fake2.base_url])
    config["pools"] = {
        "primary": {"members": ["m1"], "failover": ["backup"]},
        "backup": {"members": ["m2"]},
    }
    daemon = await start_daemon(config)
    status, headers, _ = await post_chat(daemon, model="primary")

    assert status == 200
    assert headers["x-modelpool-pool"] == "backup"
    assert headers["x-modelpool-model"] == "m2"
    assert headers["x-modelpool-attempts"] == "2"
    assert fake2.requests[0].json["model"] == "up-m2"


async def test_attempts_cap_bounds_upstream_tries(
    start_daemon: StartDaemon, fake_factory: StartFake
) -> None:
    fakes = [await fake_factory() for _ in range(4)]
    for fake in fakes:
        fake.script(CHAT, Reply.error(500, "boom"))
    daemon = await start_daemon(chain_config([f.base_url for f in fakes], attempts=2))
    status, headers, _ = await post_chat(daemon)

    assert status == 502
    assert headers["x-modelpool-attempts"] == "2"
    assert [len(f.requests) for f in fakes] == [1, 1, 0, 0]


async def test_a_member_that_recovers_serves_the_next_request(
    start_daemon: StartDaemon, fake: FakeUpstream, fake2: FakeUpstream
) -> None:
    fake.script(CHAT, Reply.error(503), Reply())
    daemon = await start_daemon(chain_config([fake.base_url, fake2.base_url]))
    assert (await post_chat(daemon))[1]["x-modelpool-model"] == "m2"
    assert (await post_chat(daemon))[1]["x-modelpool-model"] == "m1"


# --------------------------------------------------------------------------- nothing serves


async def test_all_failing_keeps_the_first_upstream_status_and_message(
    start_daemon: StartDaemon, fake: FakeUpstream, fake2: FakeUpstream
) -> None:
    fake.script(CHAT, Reply.error(500, "disk on fire"))
    fake2.script(CHAT, Reply.error(502, "bad gateway upstream"))
    daemon = await start_daemon(chain_config([fake.base_url, fake2.base_url]))
    status, headers, body = await post_chat(daemon)

    assert status == 502
    # attempts: 3 — each member once, then a backed-off retry of the first
    assert headers["x-modelpool-attempts"] == "3"
    assert (len(fake.requests), len(fake2.requests)) == (2, 1)
    assert headers["Content-Type"].startswith("application/json")
    error = body["error"]
    assert "HTTP 500" in error["message"]
    assert "disk on fire" in error["message"]
    assert error["type"] == "api_error"
    assert error["code"] == "upstream_error"


async def test_all_down_is_503(start_daemon: StartDaemon, closed_port: int) -> None:
    url = f"http://127.0.0.1:{closed_port}/v1"
    daemon = await start_daemon(chain_config([url, url]))
    status, headers, body = await post_chat(daemon)

    assert status == 503
    assert headers["x-modelpool-attempts"] == "3"
    assert body["error"]["code"] == "upstream_unavailable"
    assert "cannot connect" in body["error"]["message"]
    assert str(closed_port) not in body["error"]["message"]  # no upstream address to clients
    assert "Traceback" not in body["error"]["message"]


async def test_all_rate_limited_is_429_with_the_upstreams_retry_after(
    start_daemon: StartDaemon, fake: FakeUpstream
) -> None:
    fake.script(CHAT, Reply.error(429, "slow down", retry_after="7"))
    daemon = await start_daemon(chain_config([fake.base_url]))
    status, headers, body = await post_chat(daemon)

    assert status == 429
    assert headers["Retry-After"] == "7"
    assert "slow down" in body["error"]["message"]
    assert body["error"]["type"] == "rate_limit_error"


async def test_first_byte_timeout_everywhere_is_504(
    start_daemon: StartDaemon, fake: FakeUpstream
) -> None:
    fake.script(CHAT, Reply(delay=5))
    daemon = await start_daemon(chain_config([fake.base_url], timeouts={"first_byte": "200ms"}))
    started = time.monotonic()
    status, headers, body = await post_chat(daemon)

    assert time.monotonic() - started < 2
    assert status == 504
    assert headers["x-modelpool-attempts"] == "3"  # the one member, retried after backoff
    assert body["error"]["code"] == "upstream_timeout"
    for received in fake.requests:
        await observed(received.closed)


# --------------------------------------------------------------------------- never retried


@pytest.mark.parametrize("status", [400, 404, 422])
async def test_request_errors_are_not_retried_and_pass_through(
    status: int, start_daemon: StartDaemon, fake: FakeUpstream, fake2: FakeUpstream
) -> None:
    upstream_error = error_json(f"upstream says {status}", "invalid_request_error", "bad_param")
    fake.script(CHAT, Reply(status=status, json=upstream_error))
    daemon = await start_daemon(chain_config([fake.base_url, fake2.base_url]))
    code, _, body = await post_chat(daemon)

    assert code == status
    assert body == upstream_error
    assert len(fake.requests) == 1
    assert not fake2.requests


async def test_non_json_request_error_is_wrapped_in_openai_format(
    start_daemon: StartDaemon, fake: FakeUpstream
) -> None:
    fake.script(CHAT, Reply(status=400, body=b"plain text complaint"))
    daemon = await start_daemon(chain_config([fake.base_url]))
    code, _, body = await post_chat(daemon)
    assert code == 400
    assert "plain text complaint" in body["error"]["message"]


@pytest.mark.parametrize("status", [401, 403])
async def test_upstream_auth_rejection_is_a_502_about_modelpools_credentials(
    status: int, start_daemon: StartDaemon, fake: FakeUpstream, fake2: FakeUpstream
) -> None:
    fake.script(CHAT, Reply.error(status, "Incorrect API key provided: sk-...6789"))
    daemon = await start_daemon(chain_config([fake.base_url, fake2.base_url]))
    code, _, body = await post_chat(daemon)

    assert code == 502
    assert "upstream rejected modelpool's credentials" in body["error"]["message"]
    assert "m1" in body["error"]["message"]
    assert body["error"]["code"] == "upstream_auth_failed"
    assert len(fake.requests) == 1
    assert not fake2.requests


# --------------------------------------------------------------------------- timeouts


async def test_first_byte_timeout_fails_over_and_cancels_the_slow_upstream(
    start_daemon: StartDaemon, fake: FakeUpstream, fake2: FakeUpstream
) -> None:
    fake.script(CHAT, Reply(delay=5))
    config = chain_config([fake.base_url, fake2.base_url], timeouts={"first_byte": "200ms"})
    daemon = await start_daemon(config)
    started = time.monotonic()
    status, headers, _ = await post_chat(daemon)

    assert time.monotonic() - started < 1.5
    assert status == 200
    assert headers["x-modelpool-model"] == "m2"
    assert headers["x-modelpool-attempts"] == "2"
    await observed(fake.requests[0].closed)


async def test_stream_that_ends_before_any_data_fails_over(
    start_daemon: StartDaemon, fake: FakeUpstream, fake2: FakeUpstream
) -> None:
    fake.script(CHAT, Reply(chunks=[]))
    daemon = await start_daemon(chain_config([fake.base_url, fake2.base_url]))
    async with daemon.http.post("/v1/chat/completions", json=chat(stream=True)) as response:
        assert response.status == 200
        assert response.headers["x-modelpool-model"] == "m2"
        assert response.headers["x-modelpool-attempts"] == "2"
        events = await read_sse(response)
    assert events[-1].data == b"[DONE]"


async def test_stream_stalled_before_first_chunk_fails_over(
    start_daemon: StartDaemon, fake: FakeUpstream, fake2: FakeUpstream
) -> None:
    fake.script(CHAT, Reply.stream("never", stall_after=0))
    config = chain_config([fake.base_url, fake2.base_url], timeouts={"idle": "200ms"})
    daemon = await start_daemon(config)
    async with daemon.http.post("/v1/chat/completions", json=chat(stream=True)) as response:
        assert response.status == 200
        assert response.headers["x-modelpool-model"] == "m2"
        events = await read_sse(response)
    assert b"never" not in b"".join(e.raw for e in events)
    await observed(fake.requests[0].closed)


async def test_idle_stall_mid_stream_ends_the_stream_with_an_error_event(
    start_daemon: StartDaemon, fake: FakeUpstream, fake2: FakeUpstream
) -> None:
    fake.script(CHAT, Reply.stream("partial", "never", stall_after=1))
    config = chain_config([fake.base_url, fake2.base_url], timeouts={"idle": "300ms"})
    daemon = await start_daemon(config)
    started = time.monotonic()
    async with daemon.http.post("/v1/chat/completions", json=chat(stream=True)) as response:
        assert response.status == 200
        assert response.headers["x-modelpool-model"] == "m1"
        events = await read_sse(response, within=3)

    assert time.monotonic() - started < 2
    assert b'"content":"partial"' in events[0].raw
    error = orjson.loads(events[-1].data)["error"]
    assert "m1" in error["message"]
    assert "idle" in error["message"]
    assert error["code"] == "upstream_stream_error"
    assert not fake2.requests, "bytes were already sent: no failover mid-stream"
    await observed(fake.requests[0].closed)
    await daemon.settled()


async def test_stream_broken_mid_way_ends_with_an_error_event(
    start_daemon: StartDaemon, fake: FakeUpstream
) -> None:
    fake.script(CHAT, Reply(chunks=[b'data: {"n":1}\n\n'], drop="after_headers"))
    daemon = await start_daemon(chain_config([fake.base_url]))
    async with daemon.http.post("/v1/chat/completions", json=chat(stream=True)) as response:
        assert response.status == 200
        events = await read_sse(response, within=3)
    assert events[0].data == b'{"n":1}'
    assert orjson.loads(events[-1].data)["error"]["code"] == "upstream_stream_error"
    await daemon.settled()
    assert [state.errors for state in daemon.app[REGISTRY].models()] == [1]


async def test_provider_timeouts_are_per_provider(
    start_daemon: StartDaemon, fake: FakeUpstream, fake2: FakeUpstream
) -> None:
    """A slow first member with a generous first_byte is waited for, not failed over."""
    fake.script(CHAT, Reply(delay=0.4))
    config = chain_config([fake.base_url, fake2.base_url])
    config["providers"]["u2"] = provider(fake2.base_url, timeouts={"first_byte": "100ms"})
    daemon = await start_daemon(config)
    status, headers, _ = await post_chat(daemon)
    assert status == 200
    assert headers["x-modelpool-model"] == "m1"
    assert not fake2.requests
