"""/mcp on the real `modelpool run` process, with the official MCP Python client.

Two clients with keys, three pools of mock models (one member always failing, so a
breaker is open), a few proxy requests first so usage is not zero; then each tool's
answer is checked against /admin/status and /admin/usage, and each client against
what it may see.
"""

from __future__ import annotations

import hashlib
import json
import textwrap
import time
import urllib.request
from collections.abc import Iterator
from typing import Any

import aiohttp
import openai
import pytest
from e2e_daemon import Daemon, finish, start_daemon
from mcp_client import INITIALIZE, PROTOCOL_HEADERS, call, call_error, mcp_session, read_json

pytestmark = pytest.mark.e2e

KEY_A = "mp-e2e-mcp-agent-a"
KEY_B = "mp-e2e-mcp-agent-b"
TOOLS = ["list_pools", "list_models", "pool_status", "usage_report", "recommend_model"]


def sha(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


CONFIG = f"""\
version: 1
providers:
  mock: {{type: mock, mock: {{latency: 5ms}}}}
  broken: {{type: mock, mock: {{failure_rate: 1.0, failure_status: 500}}}}
models:
  small:
    provider: mock
    capabilities: [chat, completions, stream]
    context_window: 16000
    price: {{input_per_mtok: 0.10, output_per_mtok: 0.40}}
  big:
    provider: mock
    capabilities: [chat, stream, tools]
    context_window: 200000
    price: {{input_per_mtok: 3.0, output_per_mtok: 15.0}}
  flaky:
    provider: broken
    capabilities: [chat, completions, stream]
    context_window: 16000
    price: {{input_per_mtok: 0.01, output_per_mtok: 0.01}}
  embedder:
    provider: mock
    capabilities: [embeddings]
    price: {{input_per_mtok: 0.02, output_per_mtok: 0}}
pools:
  cheap: {{strategy: priority, members: [flaky, small], failover: [smart]}}
  smart: {{members: [big]}}
  embed: {{members: [embedder]}}
breakers: {{failure_threshold: 2, cooldown: {{initial: 5m, max: 10m}}}}
clients:
  agent-a:
    key_sha256: "{sha(KEY_A)}"
    pools: [cheap, smart]
    budget: {{usd_per_day: 5}}
  agent-b:
    key_sha256: "{sha(KEY_B)}"
    pools: [embed]
usage:
  store: usage.db
  flush_interval: 200ms
"""


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    """The daemon, after agent-a's 4 chat requests and agent-b's 2 embeddings."""
    directory = tmp_path_factory.mktemp("mcp")
    config = directory / "pools.yaml"
    config.write_text(textwrap.dedent(CONFIG))
    running = start_daemon(config, directory / "log")
    try:
        with openai.OpenAI(base_url=running.v1, api_key=KEY_A, max_retries=0) as sdk:
            for model in ("cheap", "cheap", "cheap", "smart"):
                message = {"role": "user", "content": "count these words please"}
                sdk.chat.completions.create(model=model, messages=[message])
        with openai.OpenAI(base_url=running.v1, api_key=KEY_B, max_retries=0) as sdk:
            for _ in range(2):
                sdk.embeddings.create(model="embed", input="hello")
        yield running
    finally:
        finish(running)


def get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=10) as response:
        return json.load(response)


def today() -> str:
    return time.strftime("%Y-%m-%d", time.gmtime())


async def test_agent_a_sees_its_pools_and_models_with_health(daemon: Daemon) -> None:
    async with mcp_session(f"{daemon.url}/mcp", KEY_A) as session:
        assert session.initialize_result is not None
        assert session.initialize_result.server_info.name == "modelpool"
        assert [t.name for t in (await session.list_tools()).tools] == TOOLS

        pools = {p["name"]: p for p in (await call(session, "list_pools"))["pools"]}
        assert list(pools) == ["cheap", "smart"]
        assert pools["cheap"]["strategy"] == "priority"
        assert pools["cheap"]["members"] == ["flaky", "small"]
        assert pools["cheap"]["failover"] == ["smart"]
        assert pools["cheap"]["capabilities"] == ["chat", "completions", "stream"]
        assert pools["cheap"]["context_window"] == 16000
        assert pools["cheap"]["price"]["input_per_mtok"] == {"min": 0.01, "max": 0.1}
        assert pools["cheap"]["health"]["members_up"] == 1  # flaky's breaker is open

        models = {m["name"]: m for m in (await call(session, "list_models"))["models"]}
        assert set(models) == {"small", "big", "flaky"}  # never agent-b's embedder
        assert models["big"]["capabilities"] == ["chat", "stream", "tools"]
        assert models["big"]["context_window"] == 200000
        assert models["big"]["price"]["output_per_mtok"] == 15.0
        assert models["flaky"]["health"]["status"] == "down"
        assert models["flaky"]["health"]["breaker"] == "open"
        assert models["small"]["health"]["status"] == "up"

        registry = await read_json(session, "modelpool://models")
        assert {m["name"] for m in registry["models"]} == set(models)


async def test_pool_status_agrees_with_admin_status(daemon: Daemon) -> None:
    async with mcp_session(f"{daemon.url}/mcp", KEY_A) as session:
        status = await call(session, "pool_status", {"pool": "cheap"})
        resource = await read_json(session, "modelpool://pools/cheap")
    admin = get_json(f"{daemon.url}/admin/status")
    assert status["generation"] == admin["generation"] == 1
    assert status["queue_depth"] == admin["pools"]["cheap"]["queue_depth"] == 0
    assert status["limits"] == admin["pools"]["cheap"]["limits"]
    assert status["in_flight"] == 0
    for member in status["members"]:
        seen = admin["models"][member["model"]]
        assert member["breaker"]["state"] == seen["breaker"]["state"]
        assert member["breaker"]["reason"] == seen["breaker"]["reason"]
        assert member["in_flight"] == seen["in_flight"]
        assert member["requests"] == seen["requests"]
        assert member["errors"] == seen["errors"]
        assert member["limits"] == seen["limits"]
    members = {m["model"]: m for m in status["members"]}
    assert members["flaky"]["breaker"]["state"] == "open"
    assert members["flaky"]["errors"] == 2
    assert members["small"]["breaker"]["state"] == "closed"
    assert members["small"]["requests"] == 3
    assert [settled(m) for m in resource["members"]] == [settled(m) for m in status["members"]]


def settled(member: dict[str, Any]) -> dict[str, Any]:
    """A member without what changes by the millisecond (time left in an open breaker)."""
    del member["breaker"]["retry_in_s"], member["health"]["retry_in_s"]
    return member


async def test_usage_report_agrees_with_admin_usage_and_is_only_the_callers(
    daemon: Daemon,
) -> None:
    async with mcp_session(f"{daemon.url}/mcp", KEY_A) as session:
        usage = await call(session, "usage_report")
    admin = get_json(f"{daemon.url}/admin/usage?client=agent-a&since={today()}&by=pool,model")
    assert usage["client"] == "agent-a"
    assert usage["today"]["total"] == admin["total"]
    assert usage["today"]["rows"] == admin["rows"]
    assert usage["today"]["total"]["requests"] == 4
    assert usage["this_month"]["total"]["requests"] == 4
    assert {r["pool"] for r in usage["today"]["rows"]} == {"cheap", "smart"}
    meters = [m for m in admin["budgets"] if m["scope"] == "client" and m["name"] == "agent-a"]
    assert [m["spent"] for m in usage["budgets"]] == pytest.approx([m["spent"] for m in meters])
    assert usage["budget"]["usd_per_day"] == 5.0

    async with mcp_session(f"{daemon.url}/mcp", KEY_B) as session:
        usage = await call(session, "usage_report")
    assert usage["client"] == "agent-b"
    assert usage["today"]["total"]["requests"] == 2
    assert [r["pool"] for r in usage["today"]["rows"]] == ["embed"]
    assert usage["budgets"] == []


async def test_recommend_model_skips_open_breakers_small_windows_and_missing_tools(
    daemon: Daemon,
) -> None:
    async with mcp_session(f"{daemon.url}/mcp", KEY_A) as session:
        cheap = await call(session, "recommend_model", {"prompt_tokens": 2000})
        assert (cheap["pool"], cheap["model"]) == ("cheap", "small")  # flaky is open
        assert cheap["preference"] == "balanced"

        tools = await call(
            session,
            "recommend_model",
            {"capabilities": ["chat", "tools"], "prompt_tokens": 2000, "preference": "cost"},
        )
        assert (tools["pool"], tools["model"]) == ("smart", "big")
        assert "no member has every capability" in tools["rejected"]["cheap"]

        long = await call(
            session, "recommend_model", {"prompt_tokens": 50_000, "preference": "latency"}
        )
        assert long["pool"] == "smart"
        assert "exceeds the context window" in long["rejected"]["cheap"]
        assert long["reason"].startswith("lowest observed latency")  # big has served once


async def test_agent_b_sees_only_its_own_pool(daemon: Daemon) -> None:
    async with mcp_session(f"{daemon.url}/mcp", KEY_B, header="x-api-key") as session:
        assert [p["name"] for p in (await call(session, "list_pools"))["pools"]] == ["embed"]
        assert [m["name"] for m in (await call(session, "list_models"))["models"]] == ["embedder"]
        refused = await call_error(session, "pool_status", {"pool": "cheap"})
        assert refused == "you may not use pool 'cheap'; yours: embed"
        uris = {r.uri for r in (await session.list_resources()).resources}
        assert uris == {
            "modelpool://pools",
            "modelpool://models",
            "modelpool://usage",
            "modelpool://pools/embed",
        }


@pytest.mark.parametrize(
    "headers",
    [{}, {"Authorization": "Bearer wrong"}, {"x-api-key": "wrong"}],
    ids=["no-key", "wrong-bearer", "wrong-x-api-key"],
)
async def test_without_a_known_key_it_is_refused(daemon: Daemon, headers: dict[str, str]) -> None:
    async with (
        aiohttp.ClientSession() as http,
        http.post(
            f"{daemon.url}/mcp", json=INITIALIZE, headers=PROTOCOL_HEADERS | headers
        ) as response,
    ):
        assert response.status == 401
        body = await response.json()
        assert body["error"]["message"] in (
            "invalid API key",
            "missing API key: send 'Authorization: Bearer <key>' or 'x-api-key'",
        )
