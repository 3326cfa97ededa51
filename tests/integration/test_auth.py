"""Client keys: 401 without a known key, 403 outside the client's pools, in the ingress API's
error format."""

from __future__ import annotations

import hashlib
import textwrap
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from proxy_harness import Daemon, StartDaemon

from modelpool.app import RELOADER, build_app
from modelpool.config.load import load_config

KEY = "mp-test-key-agent-a"
OTHER_KEY = "mp-test-key-agent-b"

CONFIG = f"""\
version: 1
providers:
  mock: {{type: mock}}
models:
  m1: {{provider: mock}}
  m2: {{provider: mock}}
pools:
  smart: {{members: [m1]}}
  cheap: {{members: [m2]}}
clients:
  agent-a:
    key_sha256: "{hashlib.sha256(KEY.encode()).hexdigest()}"
    pools: [smart]
  agent-b:
    key_sha256: "{hashlib.sha256(OTHER_KEY.encode()).hexdigest()}"
"""

ClientFactory = Callable[[Any], Awaitable[TestClient[Any, Any]]]


@pytest.fixture
async def client(tmp_path: Path, aiohttp_client: ClientFactory) -> TestClient[Any, Any]:
    path = tmp_path / "pools.yaml"
    path.write_text(textwrap.dedent(CONFIG))
    return await aiohttp_client(build_app(load_config(path)))


def chat(model: str) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": "hi"}]}


def message(model: str) -> dict[str, Any]:
    return chat(model) | {"max_tokens": 16}


async def test_missing_key_is_401_in_openai_format(client: TestClient[Any, Any]) -> None:
    response = await client.post("/v1/chat/completions", json=chat("smart"))
    assert response.status == 401
    error = (await response.json())["error"]
    assert error["type"] == "authentication_error"
    assert "Authorization: Bearer" in error["message"]


async def test_unknown_key_is_401(client: TestClient[Any, Any]) -> None:
    headers = {"Authorization": "Bearer not-a-known-key"}
    response = await client.post("/v1/chat/completions", json=chat("smart"), headers=headers)
    assert response.status == 401
    assert (await response.json())["error"]["message"] == "invalid API key"


async def test_refused_requests_are_counted_without_what_the_client_sent(
    client: TestClient[Any, Any],
) -> None:
    """Operators see a client with a stale key, or a broken one, in modelpool_requests_total;
    the key, an unknown pool's name or the bad body never become label values."""
    await client.post("/v1/chat/completions", json=chat("smart"))  # no key
    await client.post("/v1/chat/completions", json=chat("smart"), headers=bearer("sk-stale"))
    await client.post("/v1/chat/completions", json=chat("cheap"), headers=bearer(KEY))
    await client.post("/v1/chat/completions", json={"model": 7}, headers=bearer(KEY))
    await client.post("/v1/chat/completions", data=b"{oops", headers=bearer(OTHER_KEY))
    await client.post("/v1/chat/completions", json=chat("no-such"), headers=bearer(OTHER_KEY))

    text = await (await client.get("/metrics")).text()
    counted = {
        line.rpartition(" ")[0]: float(line.rpartition(" ")[2])
        for line in text.splitlines()
        if line.startswith("modelpool_requests_total{")
    }
    labels = 'modelpool_requests_total{{client="{}",model="-",outcome="rejected",pool="{}"}}'
    assert counted == {
        labels.format("other", "other"): 2.0,  # no key, a stale key
        labels.format("agent-a", "cheap"): 1.0,  # 403: a pool outside its list
        labels.format("agent-a", "other"): 1.0,  # 400: no pool named
        labels.format("agent-b", "other"): 2.0,  # 400 unreadable body, 404 unknown pool
    }
    assert "sk-stale" not in text
    assert "no-such" not in text


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


@pytest.mark.parametrize("header", ["Authorization", "x-api-key"])
async def test_known_key_is_served(client: TestClient[Any, Any], header: str) -> None:
    value = f"Bearer {KEY}" if header == "Authorization" else KEY
    response = await client.post(
        "/v1/chat/completions", json=chat("smart"), headers={header: value}
    )
    assert response.status == 200
    assert response.headers["x-modelpool-model"] == "m1"


async def test_pool_outside_the_clients_list_is_403(client: TestClient[Any, Any]) -> None:
    headers = {"Authorization": f"Bearer {KEY}"}
    response = await client.post("/v1/chat/completions", json=chat("cheap"), headers=headers)
    assert response.status == 403
    error = (await response.json())["error"]
    assert error["type"] == "permission_error"
    assert "allowed: smart" in error["message"]


async def test_models_list_shows_only_what_the_client_may_use(client: TestClient[Any, Any]) -> None:
    assert (await client.get("/v1/models")).status == 401
    limited = await client.get("/v1/models", headers={"Authorization": f"Bearer {KEY}"})
    assert [m["id"] for m in (await limited.json())["data"]] == ["smart"]
    everything = await client.get("/v1/models", headers={"x-api-key": OTHER_KEY})
    assert {m["id"] for m in (await everything.json())["data"]} == {"smart", "cheap", "m1", "m2"}


async def test_key_is_never_echoed(client: TestClient[Any, Any]) -> None:
    headers = {"Authorization": f"Bearer {KEY}"}
    response = await client.post("/v1/chat/completions", json=chat("cheap"), headers=headers)
    assert KEY not in await response.text()


@pytest.mark.parametrize(
    "headers",
    [{}, {"x-api-key": "not-a-known-key"}, {"Authorization": "Bearer not-a-known-key"}],
)
async def test_missing_or_unknown_key_is_401_in_anthropic_format(
    client: TestClient[Any, Any], headers: dict[str, str]
) -> None:
    response = await client.post("/v1/messages", json=message("smart"), headers=headers)
    assert response.status == 401
    body = await response.json()
    assert body["type"] == "error"
    assert body["error"]["type"] == "authentication_error"


async def test_pool_outside_the_clients_list_is_403_in_anthropic_format(
    client: TestClient[Any, Any],
) -> None:
    response = await client.post("/v1/messages", json=message("cheap"), headers={"x-api-key": KEY})
    assert response.status == 403
    body = await response.json()
    assert body["type"] == "error"
    assert body["error"]["type"] == "permission_error"
    assert "allowed: smart" in body["error"]["message"]


async def test_an_anthropic_key_is_served_beside_a_non_bearer_authorization(
    client: TestClient[Any, Any],
) -> None:
    """A proxy's ``Authorization: Basic …`` must not hide the client's ``x-api-key``."""
    headers = {"Authorization": "Basic dXNlcjpwYXNz", "x-api-key": KEY}
    response = await client.post("/v1/messages", json=message("smart"), headers=headers)
    assert response.status == 200
    assert response.headers["x-modelpool-model"] == "m1"


async def test_a_bearer_token_wins_over_x_api_key(client: TestClient[Any, Any]) -> None:
    headers = {"Authorization": f"Bearer {OTHER_KEY}", "x-api-key": KEY}
    response = await client.post("/v1/chat/completions", json=chat("cheap"), headers=headers)
    assert response.status == 200  # agent-b may use cheap; agent-a (the x-api-key) may not


# --------------------------------------------------------------- the loopback rule across reloads


def keyed_config(**server: str) -> dict[str, Any]:
    """Pool ``smart`` on the mock, with client agent-a, and ``server`` settings if any."""
    config: dict[str, Any] = {
        "version": 1,
        "providers": {"mock": {"type": "mock"}},
        "models": {"m1": {"provider": "mock"}},
        "pools": {"smart": {"members": ["m1"]}},
        "clients": {"agent-a": {"key_sha256": hashlib.sha256(KEY.encode()).hexdigest()}},
    }
    return config | ({"server": server} if server else {})


def without_clients(config: dict[str, Any], **server: str) -> dict[str, Any]:
    return {k: v for k, v in config.items() if k != "clients"} | {"server": server}


async def status_without_key(daemon: Daemon) -> int:
    async with daemon.http.post("/v1/chat/completions", json=chat("smart")) as response:
        return response.status


@pytest.mark.parametrize(
    ("bound", "started_with", "reloaded_with"),
    [
        # bound to 0.0.0.0 by the file; the reload moves `listen` to loopback (needs a restart)
        ("0.0.0.0", {"listen": "0.0.0.0:8787"}, {"listen": "127.0.0.1:8787"}),
        # `modelpool run --listen 0.0.0.0:…` over a file that names no address
        ("0.0.0.0", {}, {}),
        ("::", {}, {"listen": "[::1]:8787"}),
        ("192.0.2.7", {}, {}),
    ],
)
async def test_a_reload_cannot_open_a_daemon_bound_beyond_loopback(
    start_daemon: StartDaemon,
    bound: str,
    started_with: dict[str, str],
    reloaded_with: dict[str, str],
) -> None:
    config = keyed_config(**started_with)
    daemon = await start_daemon(config)
    # served on 127.0.0.1 here (tests stay on loopback); `modelpool run` tells the
    # reloader where it bound exactly like this
    daemon.app[RELOADER].listening_on([bound, "127.0.0.1"])
    outcome = await daemon.reload(without_clients(config, **reloaded_with))
    assert outcome["result"] == "rejected"
    assert outcome["generation"] == 1
    [error] = outcome["errors"]
    assert error.endswith(
        f"clients: refusing to remove every client while listening on non-loopback {bound!r}:"
        " the daemon would run open; restart it on a loopback address to run without keys"
    )
    assert await status_without_key(daemon) == 401  # the old table, keys and all
    async with daemon.http.get("/admin/status") as response:
        assert (await response.json())["last_reload"]["result"] == "rejected"
    async with daemon.http.get("/metrics") as response:
        assert 'modelpool_config_reloads_total{result="rejected"} 1.0' in await response.text()


async def test_a_daemon_bound_to_loopback_may_drop_its_clients(start_daemon: StartDaemon) -> None:
    config = keyed_config()
    daemon = await start_daemon(config)
    daemon.app[RELOADER].listening_on(["127.0.0.1", "::1", "localhost"])
    assert await status_without_key(daemon) == 401
    outcome = await daemon.reload(without_clients(config))
    assert (outcome["result"], outcome["generation"]) == ("applied", 2)
    assert await status_without_key(daemon) == 200


async def test_a_daemon_bound_beyond_loopback_may_change_its_clients(
    start_daemon: StartDaemon,
) -> None:
    config = keyed_config()
    daemon = await start_daemon(config)
    daemon.app[RELOADER].listening_on(["0.0.0.0"])
    changed = config | {"clients": {"agent-b": {"key_sha256": "b" * 64}}}
    assert (await daemon.reload(changed))["result"] == "applied"
    assert await status_without_key(daemon) == 401
