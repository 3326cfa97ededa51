"""A burst far above capacity against the real `modelpool run`: only 200s and clean 429/503s.

Two `modelpool fake-upstream` processes answer after 50 ms (or 600 ms);
each is one member of pool ``p`` with ``max_concurrency: 4``, so the pool
serves 8 at a time, and its line holds 20 for at most 1 s: with 50 ms the
line drains well within its timeout, with 600 ms the back of it times out.
300 clients send at once, every third one streaming. Whatever each gets must
be a whole answer (JSON with choices, or a stream ending in ``[DONE]``) or
an OpenAI-format 429/503 error with ``Retry-After`` — no other status, no
connection error, and nobody waits much longer than the queue timeout.
Every process is stopped by its PID with SIGTERM and must exit 0.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from e2e_daemon import DaemonFactory
from fake_upstreams import Fake, start_fakes, stop_fakes

pytestmark = pytest.mark.e2e

CLIENTS = 300
STREAM_EVERY = 3
CAP = 4
MAX_WAITING = 20
QUEUE_TIMEOUT_S = 1.0
MARGIN_S = 2.0
"""On top of the queue timeout: relaying, 300 connections at once on a busy machine."""
CLIENT_TIMEOUT_S = 10.0


@pytest.fixture
def fakes(tmp_path: Path, latency: str) -> Iterator[list[Fake]]:
    started = start_fakes(tmp_path, 2, fault=f"latency={latency}")
    try:
        yield started
    finally:
        stop_fakes(started)


def burst_config(fakes: Sequence[Fake]) -> dict[str, Any]:
    providers, models = {}, {}
    for i, fake in enumerate(fakes, start=1):
        providers[f"u{i}"] = {
            "type": "openai",
            "base_url": f"{fake.url}/v1",
            "api_key": f"sk-burst-test-key-000{i}",
            "timeouts": {"connect": "1s", "first_byte": "3s", "idle": "3s", "total": "10s"},
        }
        models[f"m{i}"] = {
            "provider": f"u{i}",
            "capabilities": ["chat", "stream"],
            "limits": {"max_concurrency": CAP},
        }
    pool = {
        "strategy": "round_robin",
        "members": list(models),
        "queue": {"max_waiting": MAX_WAITING, "timeout": f"{QUEUE_TIMEOUT_S:g}s"},
    }
    return {
        "version": 1,
        "server": {"access_log": False},
        "providers": providers,
        "models": models,
        "pools": {"p": pool},
    }


@dataclass
class Outcome:
    stream: bool
    took: float = 0.0
    status: int = 0
    """0: no HTTP answer (connection error or client timeout)."""
    retry_after: str | None = None
    error: dict[str, Any] | None = None
    whole: bool = False
    """A 200 with a whole answer: JSON with choices, or a stream ending in [DONE]."""
    detail: str = ""


async def one(http: aiohttp.ClientSession, stream: bool, go: asyncio.Event) -> Outcome:
    outcome = Outcome(stream)
    body = {"model": "p", "messages": [{"role": "user", "content": "burst"}], "stream": stream}
    await go.wait()
    started = time.monotonic()
    try:
        async with http.post("/v1/chat/completions", json=body) as response:
            outcome.status = response.status
            outcome.retry_after = response.headers.get("Retry-After")
            raw = await response.read()
            if response.status != 200:
                outcome.error = json.loads(raw)["error"]
            elif stream:
                text = raw.decode()
                outcome.whole = text.rstrip().endswith("data: [DONE]") and '"error"' not in text
            else:
                outcome.whole = bool(json.loads(raw).get("choices"))
    except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
        outcome.detail = f"{type(exc).__name__}: {exc}"
    outcome.took = time.monotonic() - started
    return outcome


async def in_flight_samples(urls: Sequence[str], until: asyncio.Event) -> list[int]:
    """Each fake's requests in flight (GET /_stats), sampled every 5 ms until ``until``."""
    samples: list[int] = []
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as http:
        while not until.is_set():
            for url in urls:
                async with http.get(f"{url}/_stats") as response:
                    samples.append((await response.json())["in_flight"])
            await asyncio.sleep(0.005)
    return samples


async def burst(url: str, fakes: Sequence[str]) -> tuple[list[Outcome], list[int]]:
    """Fire CLIENTS requests at once; return what each got and the fakes' in-flight samples."""
    connector = aiohttp.TCPConnector(limit=0)
    timeout = aiohttp.ClientTimeout(total=CLIENT_TIMEOUT_S)
    async with aiohttp.ClientSession(url, connector=connector, timeout=timeout) as http:
        go, done = asyncio.Event(), asyncio.Event()
        tasks = [asyncio.create_task(one(http, i % STREAM_EVERY == 0, go)) for i in range(CLIENTS)]
        await asyncio.sleep(0.05)  # every task is waiting on `go`
        sampler = asyncio.create_task(in_flight_samples(fakes, done))
        go.set()
        outcomes = await asyncio.gather(*tasks)
        done.set()
        return outcomes, await sampler


def rejections(metrics: str) -> Counter[str]:
    found: Counter[str] = Counter()
    pattern = r'^modelpool_rejections_total\{pool="p",reason="(\w+)"\} (\S+)$'
    for reason, value in re.findall(pattern, metrics, re.MULTILINE):
        found[reason] = int(float(value))
    return found


async def fetch(url: str) -> str:
    async with aiohttp.ClientSession() as http, http.get(url) as response:
        assert response.status == 200
        return await response.text()


@pytest.mark.parametrize(
    ("latency", "served", "timed_out"),
    [
        # 8 in flight, then the 20 in line, 8 at a time every 50 ms.
        ("50ms", 2 * CAP + MAX_WAITING, 0),
        # 8 in flight; at 600 ms the first 8 of the line; the other 12 time out at 1 s.
        ("600ms", 4 * CAP, MAX_WAITING - 2 * CAP),
    ],
)
def test_a_burst_far_above_capacity_gets_only_200_or_clean_429_503(
    fakes: list[Fake],
    daemon_factory: DaemonFactory,
    tmp_path: Path,
    latency: str,
    served: int,
    timed_out: int,
) -> None:
    config = tmp_path / "pools.yaml"
    config.write_text(yaml.safe_dump(burst_config(fakes), sort_keys=False))
    daemon = daemon_factory(config)

    outcomes, in_flight = asyncio.run(burst(daemon.url, [fake.url for fake in fakes]))
    metrics = asyncio.run(fetch(f"{daemon.url}/metrics"))
    served_upstream = 0
    for fake in fakes:
        stats = json.loads(asyncio.run(fetch(f"{fake.url}/_stats")))
        assert stats["in_flight"] == 0
        served_upstream += sum(stats["requests"]["/v1/chat/completions"].values())

    statuses = Counter(o.status for o in outcomes)
    slowest = max(o.took for o in outcomes)
    print(
        f"\nburst of {CLIENTS}, upstream latency {latency}: {dict(statuses)}; "
        f"slowest {slowest * 1000:.0f} ms; rejections {dict(rejections(metrics))}; "
        f"most in flight at one upstream: {max(in_flight)} ({len(in_flight)} samples)"
    )
    broken = [o for o in outcomes if o.status == 0]
    assert not broken, [o.detail for o in broken[:5]]
    assert set(statuses) <= {200, 429, 503}, statuses
    for o in outcomes:
        if o.status == 200:
            assert o.whole, o
            continue
        assert o.error is not None
        assert o.retry_after is not None, o
        assert int(o.retry_after) >= 1
        assert set(o.error) == {"message", "type", "param", "code"}
        expected = "rate_limit_error" if o.status == 429 else "api_error"
        assert o.error["type"] == expected, o
    # Nobody waits past the line's timeout (plus relaying); nothing hangs.
    assert slowest < QUEUE_TIMEOUT_S + MARGIN_S, slowest
    # Capacity is used, the line is honoured; the burst is far above both.
    full = sum(1 for o in outcomes if o.error and "is full" in o.error["message"])
    late = sum(1 for o in outcomes if o.error and "timed out" in o.error["message"])
    assert statuses[200] >= served, statuses
    assert late <= timed_out, (late, statuses)
    assert full >= CLIENTS - 2 * CAP - MAX_WAITING - 10, (full, statuses)
    # What the clients saw is what modelpool counted.
    assert rejections(metrics) == Counter(
        {k: v for k, v in {"queue_full": full, "queue_timeout": late}.items() if v}
    )
    assert full + late == statuses[429]
    # Every 200 was one upstream call (nothing failed, nothing retried), and no upstream
    # was seen with more than its cap in flight (sampled: the cap was reached, never passed).
    assert served_upstream == statuses[200]
    assert max(in_flight) == CAP, Counter(in_flight)
