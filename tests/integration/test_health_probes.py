"""Active health checks against real fake upstreams: probes alone open and close breakers.

The daemon runs with ``health=True`` (as ``modelpool run`` does), intervals of
100 ms, and no client traffic unless a test sends some: whatever the breakers
do here, the probes did.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from aiohttp import web
from fake_upstream import CHAT, MESSAGES, FakeUpstream, Reply
from proxy_harness import CAPABILITIES, Daemon, chain_config, chat, provider, single_pool_config

from modelpool.app import HOLDER, build_app
from modelpool.config.load import load_config

MODELS = "/v1/models"
FAST = {"interval": "100ms", "timeout": "300ms"}
QUICK_BREAKER = {"failure_threshold": 2, "cooldown": {"initial": "200ms", "max": "1s"}}

StartHealthy = Callable[[dict[str, Any]], Awaitable[Daemon]]


@pytest.fixture
async def start_healthy(tmp_path: Path) -> AsyncIterator[StartHealthy]:
    """Like ``start_daemon``, with the health checker running; the config stays at pools.yaml."""
    runners: list[tuple[web.AppRunner, aiohttp.ClientSession]] = []

    async def start(config: dict[str, Any]) -> Daemon:
        path = tmp_path / "pools.yaml"
        path.write_text(yaml.safe_dump(config, sort_keys=False))
        runner = web.AppRunner(build_app(load_config(path, env={}), health=True))
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        port = runner.addresses[0][1]
        http = aiohttp.ClientSession(f"http://127.0.0.1:{port}")
        runners.append((runner, http))
        return Daemon(runner.app, f"http://127.0.0.1:{port}", port, http)

    yield start
    for runner, http in reversed(runners):
        await http.close()
        await runner.cleanup()


async def eventually(check: Callable[[], bool], within: float = 1.5) -> None:
    """Wait until ``check()`` holds, polling; fail the test after ``within`` seconds."""
    for _ in range(int(within / 0.02)):
        if check():
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"not true within {within}s")


async def status(daemon: Daemon) -> Any:
    async with daemon.http.get("/admin/status") as response:
        assert response.status == 200
        return await response.json()


def breaker_state(daemon: Daemon, model: str) -> str:
    return daemon.app[HOLDER].current.models[model].state.breaker.state.value


def probes(fake: FakeUpstream, path: str = MODELS) -> list[Any]:
    return [r for r in fake.requests if r.path == path]


def healthy_config(*urls: str, **health: Any) -> dict[str, Any]:
    """Pool ``p`` of m1..mN (priority order), one provider each, probed every 100 ms."""
    config = chain_config(list(urls))
    for name in config["providers"]:
        config["providers"][name]["health"] = {**FAST, **health}
    for model in config["models"].values():
        model["breaker"] = QUICK_BREAKER
    return config


async def test_a_healthy_provider_is_probed_and_stays_closed(
    start_healthy: StartHealthy, fake: FakeUpstream
) -> None:
    daemon = await start_healthy(healthy_config(fake.base_url))
    await eventually(lambda: _count(fake, 3))
    assert all(r.method == "GET" for r in probes(fake))
    assert probes(fake)[0].headers["Authorization"].startswith("Bearer sk-test")
    assert not probes(fake, CHAT)  # the default probe costs nothing
    report = await status(daemon)
    health = report["providers"]["u1"]["health"]
    assert health["status"] == "healthy"
    assert health["latency_ms"] >= 0
    assert report["models"]["m1"]["breaker"]["state"] == "closed"
    metrics = await (await daemon.http.get("/metrics")).text()
    assert 'modelpool_health_status{provider="u1"} 1.0' in metrics


def _count(fake: FakeUpstream, n: int, path: str = MODELS) -> bool:
    return len(probes(fake, path)) >= n


async def test_probes_open_a_dead_providers_breakers_and_requests_go_elsewhere(
    start_healthy: StartHealthy, fake: FakeUpstream, fake2: FakeUpstream
) -> None:
    daemon = await start_healthy(healthy_config(fake.base_url, fake2.base_url))
    await eventually(lambda: _count(fake, 1))
    fake.script(MODELS, Reply.error(503, "down for maintenance"))

    await eventually(lambda: _is(daemon, "m1", "open"))
    model = (await status(daemon))["models"]["m1"]
    assert model["breaker"]["reason"].startswith("health probe: ")
    assert "down for maintenance" in model["breaker"]["reason"]
    assert model["breaker"]["half_open_at"] > model["breaker"]["opened_at"]
    assert model["requests"] == 0  # no client traffic opened it

    response = await daemon.http.post("/v1/chat/completions", json=chat())
    assert response.status == 200
    assert response.headers["x-modelpool-model"] == "m2"
    assert not probes(fake, CHAT)  # the dead member was never touched
    assert (await status(daemon))["providers"]["u1"]["health"]["status"] == "unhealthy"


def _is(daemon: Daemon, model: str, state: str) -> bool:
    return breaker_state(daemon, model) == state


async def test_a_probe_closes_the_breaker_when_the_provider_returns(
    start_healthy: StartHealthy, fake: FakeUpstream
) -> None:
    daemon = await start_healthy(healthy_config(fake.base_url))
    fake.script(MODELS, Reply.error(500))
    await eventually(lambda: _is(daemon, "m1", "open"))
    ready = await daemon.http.get("/readyz")
    assert ready.status == 503
    assert (await ready.json())["pools"] == {"p": False}

    fake.script(MODELS, Reply())
    await eventually(lambda: _is(daemon, "m1", "closed"))  # the half-open trial was a probe
    assert not probes(fake, CHAT)
    assert (await daemon.http.get("/readyz")).status == 200
    breaker = (await status(daemon))["models"]["m1"]["breaker"]
    assert (breaker["state"], breaker["trips"], breaker["reason"]) == ("closed", 0, "")


async def test_a_probe_that_hangs_fails_within_its_timeout(
    start_healthy: StartHealthy, fake: FakeUpstream
) -> None:
    daemon = await start_healthy(healthy_config(fake.base_url, timeout="150ms"))
    fake.script(MODELS, Reply(delay=2.0))
    await eventually(lambda: _is(daemon, "m1", "open"))
    health = (await status(daemon))["providers"]["u1"]["health"]
    assert health["status"] == "unhealthy"
    assert 100 <= health["latency_ms"] < 400


@pytest.mark.parametrize("code", [400, 404, 405])
async def test_a_probe_rejected_for_its_shape_is_misconfigured_and_opens_nothing(
    start_healthy: StartHealthy, fake: FakeUpstream, code: int
) -> None:
    fake.script(MODELS, Reply.error(code, "no such endpoint"))
    daemon = await start_healthy(healthy_config(fake.base_url))
    await eventually(lambda: _count(fake, 4))
    report = await status(daemon)
    health = report["providers"]["u1"]["health"]
    assert health["status"] == "misconfigured"
    assert f"HTTP {code}" in health["reason"]
    breaker = report["models"]["m1"]["breaker"]
    assert (breaker["state"], breaker["consecutive_failures"]) == ("closed", 0)
    metrics = await (await daemon.http.get("/metrics")).text()
    assert 'modelpool_health_status{provider="u1"} -1.0' in metrics


async def test_completion_probes_only_for_models_that_opt_in(
    start_healthy: StartHealthy, fake: FakeUpstream
) -> None:
    config = single_pool_config(fake.base_url, health=FAST)
    config["models"]["probed"] = {
        "provider": "up",
        "upstream_model": "up-probed",
        "capabilities": CAPABILITIES,
        "health": {"probe": "chat", "interval": "100ms"},
    }
    daemon = await start_healthy(config)
    await eventually(lambda: _count(fake, 3, CHAT))
    bodies = [r.json for r in probes(fake, CHAT)]
    assert {b["model"] for b in bodies} == {"up-probed"}
    assert all(b["max_tokens"] == 1 and not b.get("stream") for b in bodies)
    assert probes(fake)  # the free list probe still runs for the provider
    report = await status(daemon)
    assert report["models"]["probed"]["health"]["status"] == "healthy"
    assert "health" not in report["models"]["m"]


async def test_a_completion_probe_rejected_with_400_is_misconfigured(
    start_healthy: StartHealthy, fake: FakeUpstream
) -> None:
    fake.script(CHAT, Reply.error(400, "max_tokens is not supported with this model"))
    config = single_pool_config(fake.base_url, health={**FAST, "probe": "chat"})
    config["models"]["m"]["health"] = {"probe": "chat"}
    config["models"]["m"]["breaker"] = QUICK_BREAKER
    daemon = await start_healthy(config)
    await eventually(lambda: _count(fake, 3, CHAT))
    report = await status(daemon)
    assert report["models"]["m"]["health"]["status"] == "misconfigured"
    assert "max_tokens is not supported" in report["models"]["m"]["health"]["reason"]
    assert report["models"]["m"]["breaker"]["state"] == "closed"
    assert not probes(fake)  # probe: chat sends no list request


async def test_readyz_lists_pools_and_counts_failover_pools(
    start_healthy: StartHealthy, fake: FakeUpstream, fake2: FakeUpstream
) -> None:
    config = healthy_config(fake.base_url, fake2.base_url)
    config["pools"] = {
        "first": {"members": ["m1"], "failover": ["second"]},
        "second": {"members": ["m2"]},
    }
    daemon = await start_healthy(config)
    fake.script(MODELS, Reply.error(502))
    await eventually(lambda: _is(daemon, "m1", "open"))
    response = await daemon.http.get("/readyz")
    assert response.status == 200
    assert (await response.json())["pools"] == {"first": True, "second": True}

    fake2.script(MODELS, Reply.error(502))
    await eventually(lambda: _is(daemon, "m2", "open"))
    response = await daemon.http.get("/readyz")
    assert response.status == 503
    assert (await response.json())["pools"] == {"first": False, "second": False}


async def test_a_reload_that_removes_a_provider_stops_probing_it(
    start_healthy: StartHealthy, fake: FakeUpstream, fake2: FakeUpstream, tmp_path: Path
) -> None:
    config = healthy_config(fake.base_url, fake2.base_url)
    daemon = await start_healthy(config)
    await eventually(lambda: _count(fake2, 2))

    config["providers"] = {"u1": config["providers"]["u1"], "u3": provider(fake2.root + "/v2")}
    config["providers"]["u3"]["health"] = FAST
    config["models"]["m2"]["provider"] = "u3"
    (tmp_path / "pools.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    reload = await daemon.http.post("/admin/reload")
    assert (await reload.json())["result"] == "applied"
    await eventually(lambda: _count(fake2, 2, "/v2/models"))  # the added one is probed

    await asyncio.sleep(0.05)  # a probe already in flight may still land
    before = len(probes(fake2))
    await asyncio.sleep(0.4)
    assert len(probes(fake2)) == before  # u2's /v1/models is no longer asked
    assert len(probes(fake, MODELS)) >= 5  # while u1 goes on
    assert set((await status(daemon))["providers"]) == {"u1", "u3"}


async def test_an_anthropic_provider_is_probed_in_its_own_api(
    start_healthy: StartHealthy, fake: FakeUpstream
) -> None:
    config = single_pool_config(fake.root, type_="anthropic", health=FAST)
    config["models"]["m"]["capabilities"] = ["chat", "stream"]
    config["models"]["m"]["health"] = {"probe": "chat", "interval": "100ms"}
    daemon = await start_healthy(config)
    await eventually(lambda: _count(fake, 2) and _count(fake, 2, MESSAGES))
    listing = probes(fake)[0]
    assert listing.headers["x-api-key"].startswith("sk-test")
    assert listing.headers["anthropic-version"] == "2023-06-01"
    assert "Authorization" not in listing.headers
    completion = probes(fake, MESSAGES)[0]
    assert completion.rejected is None  # a valid Messages request
    assert completion.json["max_tokens"] == 1
    report = await status(daemon)
    assert report["providers"]["up"]["health"]["status"] == "healthy"
