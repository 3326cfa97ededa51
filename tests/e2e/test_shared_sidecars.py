"""Three real daemons on one real Redis act as one: a client's rpm and tpm, a budget and an
upstream's Retry-After are shared; with Redis killed they fail open or closed as configured,
never hang, and pick Redis up again when it is back."""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import json
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from e2e_daemon import Daemon, finish, start_daemon
from fake_upstream import CHAT, Reply
from threaded_fakes import ThreadedFakes

from redis_server import RedisServer

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

KEY = "sk-shared-client-0123456789"
REPLY = " ".join(f"w{i}" for i in range(200))


def config(redis: str, **overrides: Any) -> dict[str, Any]:
    client: dict[str, Any] = {"key_sha256": hashlib.sha256(KEY.encode()).hexdigest()}
    client |= overrides.pop("client", {})
    document: dict[str, Any] = {
        "version": 1,
        "providers": {"mock": {"type": "mock", "mock": {"reply": REPLY}}},
        "models": {
            "m": {"provider": "mock", "price": {"input_per_mtok": 100, "output_per_mtok": 1000}}
        },
        "pools": {"p": {"members": ["m"], "queue": {"timeout": "100ms"}}},
        "clients": {"agent": client},
        "shared_state": {"redis": redis, "replicas": 3, "sync_interval": "200ms"},
        "usage": {"flush_interval": "100ms"},
    }
    for key, value in overrides.items():
        document[key] = value if not isinstance(value, dict) else document.get(key, {}) | value
    return document


@pytest.fixture
def sidecars(tmp_path: Path) -> Iterator[list[Daemon]]:
    started: list[Daemon] = []
    yield started
    for daemon in started:
        finish(daemon)


def start(sidecars: list[Daemon], tmp_path: Path, document: dict[str, Any], n: int = 3) -> None:
    for _ in range(n):
        directory = tmp_path / f"sidecar-{len(sidecars)}"
        directory.mkdir()
        path = directory / "pools.yaml"
        path.write_text(yaml.safe_dump(document, sort_keys=False))
        sidecars.append(start_daemon(path, directory / "log"))


async def burst(urls: list[str], count: int, body: dict[str, Any]) -> list[tuple[int, Any]]:
    """``count`` requests at once, spread over the sidecars; (status, JSON) each."""
    headers = {"Authorization": f"Bearer {KEY}"}

    async def one(i: int, http: aiohttp.ClientSession) -> tuple[int, Any]:
        async with http.post(f"{urls[i % len(urls)]}/v1/chat/completions", json=body) as r:
            return r.status, await r.json()

    async with aiohttp.ClientSession(headers=headers) as http:
        return await asyncio.gather(*(one(i, http) for i in range(count)))


def chat(**extra: Any) -> dict[str, Any]:
    return {"model": "p", "messages": [{"role": "user", "content": "hi"}]} | extra


def test_three_sidecars_admit_exactly_the_clients_rpm(
    redis_server: RedisServer, sidecars: list[Daemon], tmp_path: Path
) -> None:
    start(sidecars, tmp_path, config(redis_server.url, client={"limits": {"rpm": 10}}))
    results = asyncio.run(burst([d.url for d in sidecars], 30, chat(max_tokens=5)))
    statuses = [status for status, _ in results]
    assert statuses.count(200) == 10
    assert statuses.count(429) == 20


def test_three_sidecars_share_the_clients_tpm(
    redis_server: RedisServer, sidecars: list[Daemon], tmp_path: Path
) -> None:
    document = config(redis_server.url, client={"limits": {"tpm": 1000}})
    document["shared_state"]["timeout"] = "1s"  # a late reply would fall back to a local share
    start(sidecars, tmp_path, document)
    began = time.monotonic()
    results = asyncio.run(burst([d.url for d in sidecars], 30, chat(max_tokens=100)))
    level = asyncio.run(tpm_level(redis_server))
    elapsed = time.monotonic() - began
    used = sum(body["usage"]["total_tokens"] for status, body in results if status == 200)
    one = max(body["usage"]["total_tokens"] for status, body in results if status == 200)
    assert all(admin(d, "/admin/status")["shared_state"]["up"] for d in sidecars)
    assert 1000 - one <= used <= 1000 + one  # within one request's tokens, either way
    # Every admitted token was counted in Redis (the bucket leaks 1000/60 a second since):
    # a request a sidecar admitted from its local share would be missing here.
    assert level + 1000 / 60 * elapsed >= used - 1


async def tpm_level(redis_server: RedisServer) -> float:
    """The level of the one tpm bucket in Redis."""
    import redis.asyncio as aioredis

    async with aioredis.from_url(redis_server.url, decode_responses=True) as client:
        [key] = [key async for key in client.scan_iter("modelpool:limit:*:tpm")]
        return float(await client.hget(key, "level") or 0)


def test_a_shared_budget_is_overshot_by_at_most_one_reservation_per_sidecar(
    redis_server: RedisServer, sidecars: list[Daemon], tmp_path: Path
) -> None:
    # each request: ~1 prompt token at $100/M + 20 output tokens at $1000/M ≈ $0.0201
    document = config(redis_server.url, client={"budget": {"usd_per_day": 0.2}})
    start(sidecars, tmp_path, document)
    results = asyncio.run(burst([d.url for d in sidecars], 50, chat(max_tokens=20)))
    spent = sum(
        (b["usage"]["prompt_tokens"] * 100 + b["usage"]["completion_tokens"] * 1000) / 1e6
        for status, b in results
        if status == 200
    )
    refused = [b for status, b in results if status == 429]
    assert refused
    assert all(b["error"]["code"] == "budget_exceeded" for b in refused)
    assert 0.2 <= spent <= 0.2 + 3 * 0.0202


def test_an_upstreams_retry_after_seen_by_one_sidecar_stops_the_others(
    redis_server: RedisServer, sidecars: list[Daemon], tmp_path: Path
) -> None:
    fakes = ThreadedFakes(1)
    try:
        fakes.script(0, CHAT, Reply.error(429, "slow down", retry_after="30"))
        document = config(redis_server.url)
        document["providers"]["up"] = {
            "type": "openai",
            "base_url": f"http://127.0.0.1:{fakes.fakes[0].port}/v1",
            "api_key": "sk-test",
        }
        document["models"]["limited"] = {"provider": "up"}
        document["pools"]["p"] = {"strategy": "priority", "members": ["limited", "m"]}
        start(sidecars, tmp_path, document)
        first, *others = [d.url for d in sidecars]
        [(status, _)] = asyncio.run(burst([first], 1, chat()))
        assert status == 200  # failed over to the mock
        assert len(fakes.requests(0)) == 1
        time.sleep(1.0)  # a few sync intervals
        results = asyncio.run(burst(others, 10, chat()))
        assert [status for status, _ in results] == [200] * 10
        assert len(fakes.requests(0)) == 1  # nobody else asked the cooling upstream
    finally:
        fakes.close()


def test_fail_open_keeps_serving_without_redis_and_picks_it_up_again(
    redis_server: RedisServer, sidecars: list[Daemon], tmp_path: Path
) -> None:
    start(sidecars, tmp_path, config(redis_server.url, client={"limits": {"rpm": 600}}), n=1)
    [daemon] = sidecars
    assert asyncio.run(burst([daemon.url], 5, chat(max_tokens=5)))[0][0] == 200
    redis_server.kill()
    began = time.monotonic()
    results = asyncio.run(burst([daemon.url], 20, chat(max_tokens=5)))
    assert [status for status, _ in results] == [200] * 20  # local share: 600/3 rpm
    assert time.monotonic() - began < 5
    status = admin(daemon, "/admin/status")["shared_state"]
    assert status["up"] is False
    assert status["mode"].startswith("fail_open")
    assert "modelpool_shared_state_up 0.0" in admin_text(daemon, "/metrics")
    redis_server.start()
    deadline = time.monotonic() + 5
    while not admin(daemon, "/admin/status")["shared_state"]["up"]:
        asyncio.run(burst([daemon.url], 1, chat(max_tokens=5)))
        assert time.monotonic() < deadline, "Redis came back but the sidecar did not notice"
        time.sleep(0.2)
    assert "modelpool_shared_state_up 1.0" in admin_text(daemon, "/metrics")


def test_fail_closed_answers_503_at_once_without_redis(
    redis_server: RedisServer, sidecars: list[Daemon], tmp_path: Path
) -> None:
    document = config(redis_server.url, client={"limits": {"rpm": 600}})
    document["shared_state"]["on_failure"] = "fail_closed"
    start(sidecars, tmp_path, document, n=1)
    [daemon] = sidecars
    redis_server.kill()
    began = time.monotonic()
    results = asyncio.run(burst([daemon.url], 10, chat(max_tokens=5)))
    assert time.monotonic() - began < 5
    assert {status for status, _ in results} == {503}
    assert all(b["error"]["code"] == "shared_state_unavailable" for _, b in results)


def admin_text(daemon: Daemon, path: str) -> str:
    with urllib.request.urlopen(f"{daemon.url}{path}", timeout=5) as response:
        text: str = response.read().decode()
    return text


def admin(daemon: Daemon, path: str) -> Any:
    return json.loads(admin_text(daemon, path))


def test_usage_acknowledged_while_redis_was_away_is_written_when_it_returns(
    tmp_path: Path, sidecars: list[Daemon]
) -> None:
    server = RedisServer(tmp_path / "redis", ("--appendonly", "yes", "--appendfsync", "always"))
    server.start()
    try:
        document = config(server.url)
        document["usage"] = {"store": server.url, "flush_interval": "100ms"}
        start(sidecars, tmp_path, document, n=1)
        [daemon] = sidecars
        first = asyncio.run(burst([daemon.url], 10, chat(max_tokens=5)))
        time.sleep(0.5)  # flushed
        server.kill()
        second = asyncio.run(burst([daemon.url], 10, chat(max_tokens=5)))
        assert [s for s, _ in first + second] == [200] * 20
        server.start()  # appendonly: what was written before the kill is still there
        deadline = time.monotonic() + 10
        report: Any = None
        while not (report and report["rows"] and report["rows"][0]["requests"] == 20):
            assert time.monotonic() < deadline, report
            time.sleep(0.2)
            report = usage_report(daemon)
        time.sleep(0.5)
        assert admin(daemon, "/admin/usage?by=client")["rows"][0]["requests"] == 20  # once
    finally:
        for daemon in sidecars:
            finish(daemon)
        sidecars.clear()
        server.stop()


def usage_report(daemon: Daemon) -> Any:
    """/admin/usage, or None while it answers 503 (the store has not reconnected yet)."""
    try:
        return admin(daemon, "/admin/usage?by=client")
    except urllib.error.HTTPError as exc:
        if exc.code != 503:
            raise
        return None


@dataclasses.dataclass(frozen=True)
class Answer:
    began: float
    """time.monotonic() when the request was sent."""
    took: float
    status: int
    retry_after: str | None
    code: str | None
    cost: float


async def load(url: str, until: float, concurrency: int = 8) -> list[Answer]:
    """Requests back to back on ``concurrency`` connections until ``until`` (monotonic);
    a request that hangs fails the test (the client gives up after 5 s)."""
    headers = {"Authorization": f"Bearer {KEY}"}
    timeout = aiohttp.ClientTimeout(total=5)

    async def one(http: aiohttp.ClientSession) -> Answer:
        began = time.monotonic()
        async with http.post(f"{url}/v1/chat/completions", json=chat(max_tokens=5)) as r:
            body = await r.json()
        usage = body.get("usage") or {}
        cost = (
            usage.get("prompt_tokens", 0) * 100 + usage.get("completion_tokens", 0) * 1000
        ) / 1e6
        code = body["error"]["code"] if "error" in body else None
        took = time.monotonic() - began
        return Answer(began, took, r.status, r.headers.get("Retry-After"), code, cost)

    async def worker(http: aiohttp.ClientSession) -> list[Answer]:
        return [await one(http) for _ in iter(lambda: time.monotonic() < until, False)]

    async with aiohttp.ClientSession(headers=headers, timeout=timeout) as http:
        answers = await asyncio.gather(*(worker(http) for _ in range(concurrency)))
    return [answer for answers_of_one in answers for answer in answers_of_one]


async def kill_mid_load(daemon: Daemon, redis: RedisServer) -> tuple[list[Answer], Any, float]:
    """Load for 3 s; Redis is killed 0.6 s in (requests in flight: the upstream takes
    0.3 s) and started again, empty, 0.6 s later. The answers, /admin/status during the
    outage, and when Redis was back (monotonic)."""
    began = time.monotonic()
    loading = asyncio.create_task(load(daemon.url, began + 3.0))
    await asyncio.sleep(0.6)
    redis.kill()
    await asyncio.sleep(0.6)
    during = await asyncio.to_thread(admin, daemon, "/admin/status")
    await asyncio.to_thread(redis.start)
    back = time.monotonic()
    return await loading, during, back


async def usd_spent_in_redis(redis: RedisServer) -> float:
    import redis.asyncio as aioredis

    async with aioredis.from_url(redis.url, decode_responses=True) as client:
        [key] = [key async for key in client.scan_iter("modelpool:budget:client:*:usd:day:*")]
        return float(await client.hget(key, "spent") or 0)


@pytest.mark.parametrize("mode", ["fail_open", "fail_closed"])
def test_redis_killed_mid_load_and_restarted(
    mode: str, redis_server: RedisServer, sidecars: list[Daemon], tmp_path: Path
) -> None:
    client = {"limits": {"rpm": 6000}, "budget": {"usd_per_day": 100}}
    document = config(redis_server.url, client=client)
    document["providers"]["mock"]["mock"]["latency"] = "300ms"
    document["shared_state"]["on_failure"] = mode
    start(sidecars, tmp_path, document, n=1)
    [daemon] = sidecars
    answers, during, back = asyncio.run(kill_mid_load(daemon, redis_server))

    assert max(answer.took for answer in answers) < 2.0  # nobody waited on a dead Redis
    assert during["shared_state"]["up"] is False
    assert during["shared_state"]["mode"].startswith(mode)
    refused = [answer for answer in answers if answer.status != 200]
    if mode == "fail_open":
        assert refused == []
    else:
        assert refused, "nothing was refused while Redis was away"
        assert {(a.status, a.code) for a in refused} == {(503, "shared_state_unavailable")}
        assert all(a.retry_after is not None and int(a.retry_after) >= 1 for a in refused)
    # Back within two sync intervals (0.2 s): no stale connection fails anyone after that.
    late = [answer for answer in answers if answer.began > back + 0.4]
    assert late
    assert {answer.status for answer in late} == {200}
    results = asyncio.run(burst([daemon.url], 20, chat(max_tokens=5)))
    assert [status for status, _ in results] == [200] * 20
    assert admin(daemon, "/admin/status")["shared_state"]["up"] is True
    # Redis came back empty; the budget meter came back with everything spent, the spend
    # settled during the outage included.
    time.sleep(0.3)  # the last settlements are written in the background
    spent = sum(answer.cost for answer in answers if answer.status == 200)
    spent += sum(
        (b["usage"]["prompt_tokens"] * 100 + b["usage"]["completion_tokens"] * 1000) / 1e6
        for _, b in results
    )
    assert asyncio.run(usd_spent_in_redis(redis_server)) == pytest.approx(spent)
