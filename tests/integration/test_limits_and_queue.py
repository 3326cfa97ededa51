"""Limits and the pool's waiting line, through the real app on loopback sockets.

Model limits (what an upstream account allows) make a member be skipped
while another member can serve; pool and client limits are taken once per
request; a request nobody can take now waits in the pool's FIFO line, and
a full line or a timeout is a 429 with ``Retry-After`` in OpenAI format.
Every test is bounded: queue timeouts are a few hundred milliseconds and
the fakes answer in milliseconds.
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import resource
import time
from collections.abc import Mapping, Sequence
from typing import Any

import aiohttp
import pytest
from fake_upstream import CHAT, FakeUpstream, Reply, chat_chunk, sse
from proxy_harness import CAPABILITIES, Daemon, StartDaemon, StartFake, chain_config, chat

from modelpool.app import DISPATCHER, HOLDER
from modelpool.dispatch import ProxyRequest
from modelpool.limits import TokenRate
from modelpool.tokens import estimate

MAX_TOKENS = 300
BODY = chat(max_tokens=MAX_TOKENS)
RESERVED = estimate("chat", BODY).total
"""What admission reserves for BODY: its tiny prompt plus max_tokens."""


def limited(
    urls: Sequence[str],
    *,
    models: Mapping[str, Mapping[str, Any]] | None = None,
    pool: Mapping[str, Any] | None = None,
    strategy: str = "priority",
) -> dict[str, Any]:
    """chain_config (pool ``p`` of m1..mN) with model limits, pool keys and a strategy."""
    config = chain_config(urls)
    for name, limits in (models or {}).items():
        config["models"][name]["limits"] = dict(limits)
    config["pools"]["p"].update({"strategy": strategy, **(pool or {})})
    return config


def answer(total_tokens: int) -> dict[str, Any]:
    """A chat completion whose usage says ``total_tokens``."""
    message = {"role": "assistant", "content": "ok"}
    usage = {
        "prompt_tokens": 1,
        "completion_tokens": total_tokens - 1,
        "total_tokens": total_tokens,
    }
    return {
        "id": "fake-usage",
        "object": "chat.completion",
        "model": "up",
        "choices": [{"index": 0, "message": message, "finish_reason": "stop"}],
        "usage": usage,
    }


def stream_with_usage(total_tokens: int, *, split: bool = False) -> Reply:
    """A chat stream whose final chunk carries ``usage`` (stream_options.include_usage).

    Unsplit, the chunks go out back to back (the daemon may read them all
    with the first event); split, the usage event is cut in two writes 10 ms
    apart, so it reaches the daemon in two reads.
    """
    usage = {
        "prompt_tokens": 1,
        "completion_tokens": total_tokens - 1,
        "total_tokens": total_tokens,
    }
    last = sse(
        {"id": "fake-usage", "object": "chat.completion.chunk", "choices": [], "usage": usage}
    )
    if not split:
        return Reply(chunks=[chat_chunk("ok"), last, sse("[DONE]")])
    cut = last.index(b'"usage"') + 4
    parts = [chat_chunk("ok"), last[:cut], last[cut:], sse("[DONE]")]
    return Reply(chunks=parts, chunk_delay=0.01)


async def post(
    daemon: Daemon, body: Mapping[str, Any], headers: Mapping[str, str] | None = None
) -> tuple[int, Mapping[str, str], Any, float]:
    """Status, headers, JSON body and seconds taken of one chat request."""
    started = time.monotonic()
    async with daemon.http.post(CHAT, json=body, headers=headers) as response:
        data = await response.json()
        return response.status, response.headers, data, time.monotonic() - started


def rate_limited(status: int, headers: Mapping[str, str], body: Any) -> dict[str, Any]:
    """Check a 429 is modelpool's: OpenAI-format error, Retry-After in whole seconds ≥ 1."""
    assert status == 429, body
    assert int(headers["Retry-After"]) >= 1, headers
    error: dict[str, Any] = body["error"]
    assert error["type"] == "rate_limit_error"
    assert error["code"] == "rate_limit_exceeded"
    assert set(error) == {"message", "type", "param", "code"}
    return error


def token_gate(daemon: Daemon, model: str) -> TokenRate:
    """The model's live tpm gate (state kept in the registry, not in the table)."""
    entry = daemon.app[HOLDER].current.models[model]
    gates = [g for g in entry.state.limits.gates(entry.spec.limits) if isinstance(g, TokenRate)]
    assert len(gates) == 1
    return gates[0]


# --------------------------------------------------------------------------- rpm


async def test_a_member_at_its_rpm_is_skipped_for_the_other_member(
    start_daemon: StartDaemon, fake: FakeUpstream, fake2: FakeUpstream
) -> None:
    config = limited(
        [fake.base_url, fake2.base_url], models={"m1": {"rpm": 5}}, strategy="round_robin"
    )
    daemon = await start_daemon(config)

    answers = await asyncio.gather(*(post(daemon, chat()) for _ in range(30)))

    assert [status for status, *_ in answers] == [200] * 30
    # Round robin puts m1 first for half the burst: it takes its 5, the rest skip to m2.
    assert len(fake.requests) == 5
    assert len(fake2.requests) == 25
    served = [headers["x-modelpool-model"] for _, headers, _, _ in answers]
    assert served.count("m1") == 5


# --------------------------------------------------------------------------- the line


async def test_pool_rpm_burst_serves_queues_then_refuses(
    start_daemon: StartDaemon, fake: FakeUpstream
) -> None:
    config = limited(
        [fake.base_url],
        pool={"limits": {"rpm": 3}, "queue": {"max_waiting": 2, "timeout": "300ms"}},
    )
    daemon = await start_daemon(config)

    answers = await asyncio.gather(*(post(daemon, chat()) for _ in range(10)))

    served = [a for a in answers if a[0] == 200]
    refused = [a for a in answers if a[0] != 200]
    assert len(served) == 3
    assert all(took < 0.25 for *_, took in served)
    assert len(fake.requests) == 3
    errors = [rate_limited(status, headers, body) for status, headers, body, _ in refused]
    timed_out = [a for a, e in zip(refused, errors, strict=True) if "timed out" in e["message"]]
    full = [a for a, e in zip(refused, errors, strict=True) if "is full" in e["message"]]
    messages = [e["message"] for e in errors]
    assert len(timed_out) == 2, messages
    assert len(full) == 5, messages
    # The line held 2 for its whole timeout; everyone after them was turned away at once.
    assert all(0.3 <= took < 0.6 for *_, took in timed_out)
    assert all(took < 0.25 for *_, took in full)
    # rpm 3 frees one request every 20 s: that is what the client is told to wait.
    assert {int(headers["Retry-After"]) for _, headers, _, _ in refused} <= {19, 20}


async def test_an_empty_line_refuses_at_once_when_every_member_is_limited(
    start_daemon: StartDaemon, fake: FakeUpstream, fake2: FakeUpstream
) -> None:
    config = limited(
        [fake.base_url, fake2.base_url],
        models={"m1": {"rpm": 1}, "m2": {"rpm": 1}},
        pool={"queue": {"max_waiting": 0, "timeout": "5s"}},
    )
    daemon = await start_daemon(config)

    first = [await post(daemon, chat()) for _ in range(2)]
    status, headers, body, took = await post(daemon, chat())

    assert [a[1]["x-modelpool-model"] for a in first] == ["m1", "m2"]
    error = rate_limited(status, headers, body)
    assert "is full" in error["message"]
    assert took < 0.25
    assert int(headers["Retry-After"]) == 60


async def test_limited_members_are_waited_on_then_refused_never_a_hang(
    start_daemon: StartDaemon, fake: FakeUpstream
) -> None:
    config = limited(
        [fake.base_url],
        models={"m1": {"max_concurrency": 1}},
        pool={"queue": {"max_waiting": 10, "timeout": "200ms"}},
    )
    fake.script(CHAT, Reply(delay=1.0))
    daemon = await start_daemon(config)

    slow = asyncio.create_task(post(daemon, chat()))
    await fake.wait_for_requests(1)
    status, headers, body, took = await post(daemon, chat())

    error = rate_limited(status, headers, body)
    assert "timed out after 0.2s" in error["message"]
    assert 0.2 <= took < 0.5
    assert len(fake.requests) == 1
    slow.cancel()


@pytest.mark.parametrize("level", ["pool", "model"])
async def test_queue_admission_is_fifo_and_prompt(
    start_daemon: StartDaemon, fake: FakeUpstream, level: str
) -> None:
    """One slot (a pool's or its model's max_concurrency): the line goes in arrival order,
    and a freed slot goes to the head of the line at once, not at its next poll."""
    clients, delay = 12, 0.02
    queue = {"max_waiting": 50, "timeout": "5s"}
    if level == "pool":
        config = limited([fake.base_url], pool={"limits": {"max_concurrency": 1}, "queue": queue})
    else:
        config = limited(
            [fake.base_url], models={"m1": {"max_concurrency": 1}}, pool={"queue": queue}
        )
    fake.script(CHAT, Reply(delay=delay))
    daemon = await start_daemon(config)

    tasks = []
    for i in range(clients):
        tasks.append(asyncio.create_task(post(daemon, chat(user=f"client-{i}"))))
        await asyncio.sleep(0.005)  # a known arrival order, all well inside one upstream call
    answers = await asyncio.gather(*tasks)

    assert [a[0] for a in answers] == [200] * clients
    assert [r.json["user"] for r in fake.requests] == [f"client-{i}" for i in range(clients)]
    assert fake.peak_in_flight == 1
    arrivals = [r.arrived_at for r in fake.requests]
    idle = sorted(later - earlier - delay for earlier, later in itertools.pairwise(arrivals))
    # From one upstream answer to the next request: relaying one answer and waking the head.
    # Waiting for the line's poll instead would leave the slot idle up to 50 ms each time.
    assert idle[len(idle) // 2] < 0.015, idle


@pytest.mark.parametrize("level", ["pool", "model"])
async def test_a_newcomer_does_not_take_the_slot_freed_for_the_head_of_the_line(
    start_daemon: StartDaemon, fake: FakeUpstream, level: str
) -> None:
    """The race the FIFO test above only sometimes hits, made certain: C arrives after the
    slot was freed and B woken, but before B ran. The slot is B's: C queues behind it."""
    queue = {"max_waiting": 10, "timeout": "2s"}
    if level == "pool":
        config = limited([fake.base_url], pool={"limits": {"max_concurrency": 1}, "queue": queue})
    else:
        config = limited(
            [fake.base_url], models={"m1": {"max_concurrency": 1}}, pool={"queue": queue}
        )
    daemon = await start_daemon(config)
    table = daemon.app[HOLDER].current
    dispatcher = daemon.app[DISPATCHER]

    def request(tag: str) -> ProxyRequest:
        return ProxyRequest("chat", "p", chat(user=tag), False)

    async def served_b() -> None:
        async with dispatcher.serve(table, request("b")):
            pass

    a = dispatcher.serve(table, request("a"))
    await a.__aenter__()  # A holds the only slot
    b = asyncio.create_task(served_b())
    await asyncio.sleep(0.05)
    assert table.routes["p"].state.queue.depth == 1  # B waits in line
    await a.__aexit__(None, None, None)  # frees the slot and wakes B, which has not run yet
    c = dispatcher.serve(table, request("c"))
    async with asyncio.timeout(2):
        await c.__aenter__()  # C, in the same turn of the loop
    await c.__aexit__(None, None, None)
    await b

    assert [r.json["user"] for r in fake.requests] == ["a", "b", "c"]


# --------------------------------------------------------------------------- concurrency


@pytest.fixture
def many_sockets() -> None:
    """500 clients need ~1,000 descriptors in this process: raise a low soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = 4096 if hard == resource.RLIM_INFINITY else min(4096, hard)
    if soft != resource.RLIM_INFINITY and soft < wanted:
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))


@pytest.mark.usefixtures("many_sockets")
async def test_max_concurrency_holds_under_500_concurrent_clients(
    start_daemon: StartDaemon, fake: FakeUpstream
) -> None:
    clients, cap, delay = 500, 4, 0.01
    config = limited(
        [fake.base_url],
        models={"m1": {"max_concurrency": cap}},
        pool={"queue": {"max_waiting": 1000, "timeout": "10s"}},
    )
    fake.script(CHAT, Reply(delay=delay))
    daemon = await start_daemon(config)
    connector = aiohttp.TCPConnector(limit=0)

    async def one(http: aiohttp.ClientSession) -> int:
        async with http.post(CHAT, json=chat()) as response:
            await response.read()
            return response.status

    started = time.monotonic()
    async with aiohttp.ClientSession(daemon.url, connector=connector) as http:
        statuses = await asyncio.gather(*(one(http) for _ in range(clients)))
    took = time.monotonic() - started

    assert statuses == [200] * clients
    assert len(fake.requests) == clients
    assert fake.peak_in_flight == cap
    assert took < 10, took  # ~2.5 s here, mostly the client, daemon and fake sharing one CPU
    await daemon.settled()


# --------------------------------------------------------------------------- tpm


async def test_tpm_rejection_starts_within_one_request_of_the_limit(
    start_daemon: StartDaemon, fake: FakeUpstream, fake2: FakeUpstream
) -> None:
    assert RESERVED == MAX_TOKENS + 1
    config = limited([fake.base_url, fake2.base_url], models={"m1": {"tpm": 1000}})
    fake.script(CHAT, Reply(json=answer(RESERVED)))  # used exactly what was reserved
    daemon = await start_daemon(config)

    served = [(await post(daemon, BODY))[1]["x-modelpool-model"] for _ in range(6)]

    # 3 * 301 = 903 fits in 1000; a 4th would make 1204.
    assert served == ["m1", "m1", "m1", "m2", "m2", "m2"]


async def test_tpm_on_a_single_member_queues_then_429(
    start_daemon: StartDaemon, fake: FakeUpstream
) -> None:
    config = limited(
        [fake.base_url],
        models={"m1": {"tpm": 1000}},
        pool={"queue": {"max_waiting": 10, "timeout": "100ms"}},
    )
    fake.script(CHAT, Reply(json=answer(RESERVED)))
    daemon = await start_daemon(config)

    answers = [await post(daemon, BODY) for _ in range(4)]

    assert [a[0] for a in answers] == [200, 200, 200, 429]
    status, headers, body, took = answers[3]
    rate_limited(status, headers, body)
    assert 0.1 <= took < 0.4
    # 903 + 301 - 1000 = 204 tokens over; at 1000 per minute they leak out in ~12.2 s.
    assert int(headers["Retry-After"]) in (12, 13)


@pytest.mark.parametrize("shape", ["json", "stream", "stream-split"])
async def test_tpm_settles_with_actual_usage_exactly_once(
    start_daemon: StartDaemon, fake: FakeUpstream, fake2: FakeUpstream, shape: str
) -> None:
    used = 150
    config = limited([fake.base_url, fake2.base_url], models={"m1": {"tpm": 1000}})
    replies = {
        "json": Reply(json=answer(used)),
        "stream": stream_with_usage(used),
        "stream-split": stream_with_usage(used, split=True),
    }
    fake.script(CHAT, replies[shape])
    daemon = await start_daemon(config)
    body = {**BODY, "stream": shape != "json"}
    started = time.monotonic()

    served = []
    for _ in range(7):
        async with daemon.http.post(CHAT, json=body) as response:
            assert response.status == 200
            await response.read()
            served.append(response.headers["x-modelpool-model"])
    await daemon.settled()
    elapsed = time.monotonic() - started

    # Reservations alone would let 3 through (3 * 301). Settled at 150 each, m1 holds
    # 150·n and takes another while 150·n + 301 ≤ 1000: n = 0..4, five requests.
    # No refund: 3 to m1; a double refund: every one to m1.
    assert served == ["m1"] * 5 + ["m2"] * 2
    leaked = elapsed * 1000 / 60
    headroom = token_gate(daemon, "m1").headroom()
    assert 1000 - 5 * used - 1 <= headroom <= 1000 - 5 * used + leaked + 1, (headroom, elapsed)


async def test_a_failed_attempt_gives_all_its_tokens_back(
    start_daemon: StartDaemon, fake: FakeUpstream, fake2: FakeUpstream
) -> None:
    config = limited([fake.base_url, fake2.base_url], models={"m1": {"tpm": 1000}})
    fake.script(CHAT, Reply.error(500), Reply.error(500), Reply(json=answer(RESERVED)))
    daemon = await start_daemon(config)

    failed_over = [(await post(daemon, BODY))[1]["x-modelpool-model"] for _ in range(2)]
    served = [(await post(daemon, BODY))[1]["x-modelpool-model"] for _ in range(4)]

    assert failed_over == ["m2", "m2"]  # m1 answered 500: nothing was used there
    assert served == ["m1", "m1", "m1", "m2"]


# --------------------------------------------------------------------------- clients

KEY_A = "mp-test-limits-client-a"
KEY_B = "mp-test-limits-client-b"


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


async def test_a_client_over_its_rpm_gets_429_while_another_is_unaffected(
    start_daemon: StartDaemon, fake: FakeUpstream
) -> None:
    config = limited([fake.base_url], pool={"queue": {"max_waiting": 10, "timeout": "100ms"}})
    config["clients"] = {
        "a": {
            "key_sha256": hashlib.sha256(KEY_A.encode()).hexdigest(),
            "limits": {"rpm": 2},
        },
        "b": {
            "key_sha256": hashlib.sha256(KEY_B.encode()).hexdigest(),
            "limits": {"rpm": 2},
        },
    }
    daemon = await start_daemon(config)

    a = [await post(daemon, chat(), bearer(KEY_A)) for _ in range(3)]
    b = [await post(daemon, chat(), bearer(KEY_B)) for _ in range(2)]

    assert [x[0] for x in a] == [200, 200, 429]
    status, headers, body, took = a[2]
    rate_limited(status, headers, body)
    assert took < 0.1  # its own rpm frees in ~30 s, past the queue timeout: refused at once
    assert 25 <= int(headers["Retry-After"]) <= 30  # rpm 2: one more every 30 s
    assert [x[0] for x in b] == [200, 200]
    assert len(fake.requests) == 4


async def test_a_client_limit_does_not_hold_up_other_clients_in_the_line(
    start_daemon: StartDaemon, fake: FakeUpstream
) -> None:
    """A client waiting for its own rpm sits in the pool's line; others are not behind it."""
    config = limited([fake.base_url], pool={"queue": {"max_waiting": 10, "timeout": "300ms"}})
    config["clients"] = {
        "a": {"key_sha256": hashlib.sha256(KEY_A.encode()).hexdigest(), "limits": {"rpm": 1}},
        "b": {"key_sha256": hashlib.sha256(KEY_B.encode()).hexdigest()},
    }
    daemon = await start_daemon(config)

    assert (await post(daemon, chat(), bearer(KEY_A)))[0] == 200
    waiting = asyncio.create_task(post(daemon, chat(), bearer(KEY_A)))
    await asyncio.sleep(0.05)
    status, _, _, took = await post(daemon, chat(), bearer(KEY_B))
    refused = await waiting

    assert status == 200
    assert took < 0.2, "client b waited behind client a's rpm"
    rate_limited(*refused[:3])


async def test_a_client_over_its_limit_does_not_hold_up_the_line_behind_it(
    start_daemon: StartDaemon, fake: FakeUpstream
) -> None:
    config = limited(
        [fake.base_url],
        pool={"limits": {"max_concurrency": 1}, "queue": {"max_waiting": 10, "timeout": "600ms"}},
    )
    config["clients"] = {
        "a": {"key_sha256": hashlib.sha256(KEY_A.encode()).hexdigest(), "limits": {"rpm": 1}},
        "b": {"key_sha256": hashlib.sha256(KEY_B.encode()).hexdigest()},
    }
    fake.script(CHAT, Reply(delay=0.1))
    daemon = await start_daemon(config)

    first = asyncio.create_task(post(daemon, chat(), bearer(KEY_A)))  # holds the pool's slot
    await fake.wait_for_requests(1)
    over = asyncio.create_task(post(daemon, chat(), bearer(KEY_A)))  # over a's rpm: in line
    await asyncio.sleep(0.02)
    status, _, _, took = await post(daemon, chat(), bearer(KEY_B))  # pool busy: in line too

    assert (await first)[0] == 200
    rate_limited(*(await over)[:3])
    assert status == 200
    assert took < 0.3, "b waited for a's rpm although the pool's slot was free after 0.1 s"


# --------------------------------------------------------------------------- mixed


async def test_every_429_from_a_limited_burst_carries_retry_after(
    start_daemon: StartDaemon, fake_factory: StartFake
) -> None:
    fakes = [await fake_factory() for _ in range(2)]
    for f in fakes:
        f.script(CHAT, Reply(delay=0.05))
    config = limited(
        [f.base_url for f in fakes],
        models={"m1": {"max_concurrency": 2, "rpm": 10}, "m2": {"max_concurrency": 2, "tpm": 2000}},
        pool={"queue": {"max_waiting": 5, "timeout": "200ms"}},
        strategy="round_robin",
    )
    for spec in config["models"].values():
        spec["capabilities"] = CAPABILITIES
    daemon = await start_daemon(config)

    answers = await asyncio.gather(*(post(daemon, BODY) for _ in range(40)))

    statuses = [a[0] for a in answers]
    assert set(statuses) <= {200, 429}, statuses
    assert statuses.count(200) >= 4
    for status, headers, body, took in answers:
        if status == 429:
            rate_limited(status, headers, body)
        assert took < 1.0
    assert max(f.peak_in_flight for f in fakes) <= 2
