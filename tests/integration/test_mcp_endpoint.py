"""/mcp in-process: every transport mode with the official client, keys, origins, sessions
bound to their client, per-client views, live reloads, and the figures /admin/status shows.

The endpoint is mounted on the real app (build_app) as a sub-application at /t, so these
tests hold whether or not app.py serves its own /mcp, and can try each transport mode.
"""

from __future__ import annotations

import asyncio
import hashlib
import textwrap
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from mcp import Client
from mcp.shared.exceptions import MCPError
from mcp_client import (
    INITIALIZE,
    PROTOCOL_HEADERS,
    call,
    call_error,
    key_headers,
    mcp_session,
    read_json,
)

from modelpool.app import ACCOUNTANT, HEALTH, HOLDER, RELOADER, build_app
from modelpool.config.load import load_config
from modelpool.listeners import ADMIN_SOCKETS
from modelpool.mcp import McpEndpoint

KEY_A = "mp-mcp-agent-a"
KEY_B = "mp-mcp-agent-b"


def sha(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


MODELS = """\
version: 1
providers:
  mock: {type: mock}
  broken: {type: mock, mock: {failure_rate: 1.0, failure_status: 500}}
models:
  small:
    provider: mock
    capabilities: [chat, completions, stream]
    context_window: 16000
    price: {input_per_mtok: 0.10, output_per_mtok: 0.40}
  big:
    provider: mock
    capabilities: [chat, stream, tools]
    context_window: 200000
    price: {input_per_mtok: 3.0, output_per_mtok: 15.0}
  flaky:
    provider: broken
    capabilities: [chat, completions, stream]
    context_window: 16000
    price: {input_per_mtok: 0.01, output_per_mtok: 0.01}
  embedder:
    provider: mock
    capabilities: [embeddings]
    price: {input_per_mtok: 0.02, output_per_mtok: 0}
pools:
  cheap: {strategy: priority, members: [flaky, small], failover: [smart]}
  smart: {members: [big]}
  embed: {members: [embedder]}
breakers: {failure_threshold: 2}
usage: {store: usage.db}
"""
CLIENTS = f"""\
clients:
  agent-a:
    key_sha256: "{sha(KEY_A)}"
    pools: [cheap, smart]
    budget: {{usd_per_day: 5}}
  agent-b:
    key_sha256: "{sha(KEY_B)}"
    pools: [embed]
"""


class Daemon:
    """The real app in-process, with an McpEndpoint of the given mode at /t/mcp."""

    def __init__(self, app: web.Application, runner: web.AppRunner) -> None:
        self.app = app
        self.runner = runner
        self.url = f"http://127.0.0.1:{runner.addresses[0][1]}"
        self.mcp = f"{self.url}/t/mcp"
        self.stopped = False

    async def stop(self) -> None:
        if not self.stopped:
            self.stopped = True
            await self.runner.cleanup()

    async def proxy(self, path: str, body: dict[str, Any], key: str | None) -> dict[str, Any]:
        async with (
            aiohttp.ClientSession() as http,
            http.post(f"{self.url}{path}", json=body, headers=key_headers(key)) as response,
        ):
            assert response.status == 200, await response.text()
            answer: dict[str, Any] = await response.json()
            return answer

    async def get(self, path: str) -> Any:
        async with aiohttp.ClientSession() as http, http.get(f"{self.url}{path}") as response:
            assert response.status == 200, await response.text()
            return await response.json()


Start = Callable[..., Awaitable[Daemon]]


@pytest.fixture
async def start(tmp_path: Path) -> AsyncIterator[Start]:
    daemons: list[Daemon] = []

    async def run(config: str = MODELS + CLIENTS, **mode: bool) -> Daemon:
        path = tmp_path / "pools.yaml"
        path.write_text(textwrap.dedent(config))
        app = build_app(load_config(path))
        endpoint = McpEndpoint(app[HOLDER], app[ACCOUNTANT], health=app[HEALTH], **mode)
        sub = web.Application()
        sub[ADMIN_SOCKETS] = app[ADMIN_SOCKETS]
        sub.add_routes(endpoint.routes())
        sub.cleanup_ctx.append(endpoint.running)
        sub.on_shutdown.append(endpoint.closing)
        app.add_subapp("/t", sub)
        runner = web.AppRunner(app, handler_cancellation=True, shutdown_timeout=5)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        daemons.append(Daemon(app, runner))
        return daemons[-1]

    yield run
    for daemon in daemons:
        await daemon.stop()


def chat(model: str) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": "count these words"}]}


@pytest.mark.parametrize("stateless", [True, False], ids=["stateless", "sessions"])
@pytest.mark.parametrize("json_response", [False, True], ids=["sse", "json"])
async def test_every_transport_mode_speaks_the_protocol(
    start: Start, stateless: bool, json_response: bool
) -> None:
    daemon = await start(stateless=stateless, json_response=json_response)
    async with mcp_session(daemon.mcp, KEY_A) as session:
        tools = await session.list_tools()
        assert [t.name for t in tools.tools] == [
            "list_pools",
            "list_models",
            "pool_status",
            "usage_report",
            "recommend_model",
        ]
        assert all(t.annotations and t.annotations.read_only_hint for t in tools.tools)
        pools = await call(session, "list_pools")
        assert [p["name"] for p in pools["pools"]] == ["cheap", "smart"]
        resources = await session.list_resources()
        assert [r.uri for r in resources.resources] == [
            "modelpool://pools",
            "modelpool://models",
            "modelpool://usage",
            "modelpool://pools/cheap",
            "modelpool://pools/smart",
        ]
        templates = await session.list_resource_templates()
        assert [t.uri_template for t in templates.resource_templates] == [
            "modelpool://pools/{name}"
        ]
        assert await read_json(session, "modelpool://pools") == pools
        status = await read_json(session, "modelpool://pools/smart")
        assert status == await call(session, "pool_status", {"pool": "smart"})


@pytest.mark.parametrize("stateless", [True, False], ids=["stateless", "sessions"])
async def test_a_session_id_is_issued_only_with_sessions(start: Start, stateless: bool) -> None:
    daemon = await start(stateless=stateless, json_response=True)
    headers = PROTOCOL_HEADERS | key_headers(KEY_A)
    async with (
        aiohttp.ClientSession() as http,
        http.post(daemon.mcp, json=INITIALIZE, headers=headers) as response,
    ):
        assert response.status == 200
        assert response.headers["Content-Type"] == "application/json"
        assert (await response.json())["result"]["serverInfo"]["name"] == "modelpool"
        assert ("mcp-session-id" in response.headers) is not stateless


async def test_the_2026_stateless_protocol_works_too(start: Start) -> None:
    daemon = await start()
    import httpx2
    from mcp.client.streamable_http import streamable_http_client

    async with (
        httpx2.AsyncClient(headers=key_headers(KEY_B), timeout=10) as http,
        Client(streamable_http_client(daemon.mcp, http_client=http)) as client,
    ):
        assert client.session.protocol_version == "2026-07-28"
        result = await client.call_tool("list_pools", {})
        assert [p["name"] for p in result.structured_content["pools"]] == ["embed"]  # type: ignore[index]


@pytest.mark.parametrize(
    ("headers", "message"),
    [
        ({}, "missing API key"),
        ({"Authorization": "Bearer not-a-key"}, "invalid API key"),
        ({"x-api-key": "not-a-key"}, "invalid API key"),
    ],
)
async def test_without_a_known_key_it_is_401_in_a_json_error(
    start: Start, headers: dict[str, str], message: str
) -> None:
    daemon = await start()
    async with (
        aiohttp.ClientSession() as http,
        http.post(daemon.mcp, json=INITIALIZE, headers=PROTOCOL_HEADERS | headers) as response,
    ):
        assert response.status == 401
        assert response.headers["WWW-Authenticate"].startswith("Bearer")
        body = await response.json()
        assert body["jsonrpc"] == "2.0"
        assert body["id"] is None
        assert body["error"]["message"].startswith(message)


async def test_the_official_client_without_a_key_is_told_why(start: Start) -> None:
    daemon = await start()
    with pytest.raises(BaseExceptionGroup) as caught:
        async with mcp_session(daemon.mcp):
            pass
    [error] = leaves(caught.value)
    assert isinstance(error, MCPError)
    assert error.message.startswith("missing API key")


def leaves(group: BaseException) -> list[BaseException]:
    if isinstance(group, BaseExceptionGroup):
        return [leaf for inner in group.exceptions for leaf in leaves(inner)]
    return [group]


async def test_x_api_key_works_like_bearer(start: Start) -> None:
    daemon = await start()
    async with mcp_session(daemon.mcp, KEY_B, header="x-api-key") as session:
        assert [p["name"] for p in (await call(session, "list_pools"))["pools"]] == ["embed"]


async def test_a_client_sees_only_what_it_may_use(start: Start) -> None:
    daemon = await start()
    async with mcp_session(daemon.mcp, KEY_B) as session:
        models = await call(session, "list_models")
        assert [m["name"] for m in models["models"]] == ["embedder"]
        assert models["models"][0]["pools"] == ["embed"]
        assert models["models"][0]["direct"] is False
        message = await call_error(session, "pool_status", {"pool": "cheap"})
        assert message == "you may not use pool 'cheap'; yours: embed"
        uris = [r.uri for r in (await session.list_resources()).resources]
        assert "modelpool://pools/cheap" not in uris
        with pytest.raises(MCPError, match="you may not use pool 'smart'"):
            await session.read_resource("modelpool://pools/smart")
        answer = await call(session, "recommend_model", {"prompt_tokens": 100})
        assert answer["pool"] is None  # embed has no chat member
        assert set(answer["rejected"]) == {"embed"}

    async with mcp_session(daemon.mcp, KEY_A) as session:
        models = await call(session, "list_models")
        # the models behind cheap (and its failover pool smart) and smart
        assert {m["name"]: m["pools"] for m in models["models"]} == {
            "small": ["cheap"],
            "big": ["cheap", "smart"],
            "flaky": ["cheap"],
        }
        big = next(m for m in models["models"] if m["name"] == "big")
        assert big["capabilities"] == ["chat", "stream", "tools"]
        assert big["context_window"] == 200000
        assert big["price"]["input_per_mtok"] == 3.0
        assert big["health"]["status"] == "up"


async def test_a_session_belongs_to_the_client_that_opened_it(start: Start) -> None:
    daemon = await start(stateless=False, json_response=True)
    async with aiohttp.ClientSession() as http:
        opened = await http.post(
            daemon.mcp, json=INITIALIZE, headers=PROTOCOL_HEADERS | key_headers(KEY_A)
        )
        session_id = opened.headers["mcp-session-id"]
        listing = {"jsonrpc": "2.0", "id": 2, "method": "tools/list"}
        stolen = PROTOCOL_HEADERS | key_headers(KEY_B) | {"mcp-session-id": session_id}
        async with http.post(daemon.mcp, json=listing, headers=stolen) as response:
            assert response.status == 404


async def test_an_open_daemon_needs_no_key_but_refuses_other_origins(start: Start) -> None:
    daemon = await start(MODELS)
    async with mcp_session(daemon.mcp) as session:
        pools = await call(session, "list_pools")
        assert [p["name"] for p in pools["pools"]] == ["cheap", "smart", "embed"]
        usage = await call(session, "usage_report")
        assert usage["client"] == "-"
        assert usage["budget"] is None
    async with aiohttp.ClientSession() as http:
        for origin, status in [
            ("https://evil.example", 403),
            ("null", 403),
            ("http://localhost:6274", 200),
            ("http://127.0.0.1:3000", 200),
        ]:
            headers = PROTOCOL_HEADERS | {"Origin": origin}
            async with http.post(daemon.mcp, json=INITIALIZE, headers=headers) as response:
                assert response.status == status, origin


async def test_with_keys_a_keyed_request_from_any_origin_is_served(start: Start) -> None:
    daemon = await start()
    headers = PROTOCOL_HEADERS | key_headers(KEY_A) | {"Origin": "https://agent.example"}
    async with (
        aiohttp.ClientSession() as http,
        http.post(daemon.mcp, json=INITIALIZE, headers=headers) as response,
    ):
        assert response.status == 200


async def test_tools_read_the_table_current_at_call_time(start: Start, tmp_path: Path) -> None:
    daemon = await start()
    async with mcp_session(daemon.mcp, KEY_A) as session:
        assert (await call(session, "list_pools"))["generation"] == 1
        config = (MODELS + CLIENTS).replace("pools: [cheap, smart]", "pools: [smart]")
        (tmp_path / "pools.yaml").write_text(config)
        outcome = await daemon.app[RELOADER].reload("admin")
        assert outcome.result == "applied", outcome.as_json()
        pools = await call(session, "list_pools")  # same session, new table
        assert pools["generation"] == 2
        assert [p["name"] for p in pools["pools"]] == ["smart"]


async def test_pool_status_shows_what_admin_status_shows(start: Start) -> None:
    daemon = await start()
    for _ in range(3):  # flaky fails twice (500) and its breaker opens; small serves
        answer = await daemon.proxy("/v1/chat/completions", chat("cheap"), KEY_A)
        assert answer["choices"]
    admin = await daemon.get("/admin/status")
    async with mcp_session(daemon.mcp, KEY_A) as session:
        status = await call(session, "pool_status", {"pool": "cheap"})
        assert status["generation"] == admin["generation"]
        assert status["queue_depth"] == admin["pools"]["cheap"]["queue_depth"]
        assert status["limits"] == admin["pools"]["cheap"]["limits"]
        assert status["failover"] == ["smart"]
        assert status["can_serve"] is True
        for member in status["members"]:
            seen = admin["models"][member["model"]]
            assert member["breaker"]["state"] == seen["breaker"]["state"]
            assert member["breaker"]["reason"] == seen["breaker"]["reason"]
            assert member["in_flight"] == seen["in_flight"]
            assert member["requests"] == seen["requests"]
            assert member["errors"] == seen["errors"]
            assert member["limits"] == seen["limits"]
        states = {m["model"]: m["breaker"]["state"] for m in status["members"]}
        assert states == {"flaky": "open", "small": "closed"}
        pools = {p["name"]: p for p in (await call(session, "list_pools"))["pools"]}
        assert pools["cheap"]["health"] == {
            "status": "up",
            "members_up": 1,
            "members": 2,
            "can_serve": True,
        }
        answer = await call(
            session, "recommend_model", {"prompt_tokens": 1000, "preference": "cost"}
        )
        assert (answer["pool"], answer["model"]) == ("cheap", "small")  # not the open flaky
        assert answer["reason"].startswith("cheapest for 1000 prompt + 256 output tokens")


async def test_usage_report_is_the_callers_own(start: Start) -> None:
    daemon = await start()
    for _ in range(2):
        await daemon.proxy("/v1/chat/completions", chat("smart"), KEY_A)
    for _ in range(3):
        await daemon.proxy("/v1/embeddings", {"model": "embed", "input": "hi"}, KEY_B)
    async with mcp_session(daemon.mcp, KEY_A) as session:
        usage = await call(session, "usage_report")
    assert usage["client"] == "agent-a"
    assert usage["today"]["total"]["requests"] == 2
    assert usage["this_month"]["total"]["requests"] == 2
    assert [(r["pool"], r["model"]) for r in usage["today"]["rows"]] == [("smart", "big")]
    assert usage["today"]["total"]["cost_usd"] > 0
    assert usage["budget"] == {
        "usd_per_day": 5.0,
        "usd_per_month": None,
        "tokens_per_day": None,
        "tokens_per_month": None,
    }
    assert [(m["scope"], m["name"], m["period"]) for m in usage["budgets"]] == [
        ("client", "agent-a", "day")
    ]
    assert usage["budgets"][0]["spent"] == pytest.approx(usage["today"]["total"]["cost_usd"])

    async with mcp_session(daemon.mcp, KEY_B) as session:
        usage = await call(session, "usage_report")
    assert usage["client"] == "agent-b"
    assert usage["today"]["total"]["requests"] == 3
    assert {r["pool"] for r in usage["today"]["rows"]} == {"embed"}
    assert usage["budgets"] == []


async def test_bad_arguments_are_tool_errors_the_model_can_read(start: Start) -> None:
    daemon = await start()
    async with mcp_session(daemon.mcp, KEY_A) as session:
        assert await call_error(session, "recommend_model", {}) == (
            "arguments: 'prompt_tokens' is a required property"
        )
        message = await call_error(
            session, "recommend_model", {"prompt_tokens": 10, "capabilities": ["telepathy"]}
        )
        assert message.startswith("capabilities.0: 'telepathy' is not one of")
        message = await call_error(
            session, "recommend_model", {"prompt_tokens": 10, "preference": "vibes"}
        )
        assert message.startswith("preference: 'vibes' is not one of")
        assert (await call_error(session, "pool_status", {"pool": "nope"})).startswith(
            "unknown pool 'nope'; yours: cheap, smart"
        )
        assert (await call_error(session, "no_such_tool")).startswith("unknown tool")
        with pytest.raises(MCPError, match="unknown resource"):
            await session.read_resource("modelpool://nothing")


async def test_shutdown_does_not_wait_for_open_session_streams(start: Start) -> None:
    """With sessions, a client holds a GET stream open; on_shutdown ends it at once, so
    the server's shutdown (5 s timeout here, the grace period in the daemon) is not held."""
    daemon = await start(stateless=False)
    async with mcp_session(daemon.mcp, KEY_A) as session:
        await call(session, "list_pools")
        await asyncio.sleep(0.2)  # the client's standing GET stream is open by now
        began = time.monotonic()
        await daemon.stop()
        assert time.monotonic() - began < 2.0


async def test_stateless_offers_no_stream_so_get_and_delete_are_405(start: Start) -> None:
    daemon = await start()
    headers = {"Accept": "text/event-stream"} | key_headers(KEY_A)
    async with aiohttp.ClientSession() as http:
        for method in ("GET", "DELETE"):
            async with http.request(method, daemon.mcp, headers=headers) as response:
                assert response.status == 405
                assert response.headers["Allow"] == "POST"
