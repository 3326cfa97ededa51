"""Admin endpoints: token-protected, loopback-only without a token, never showing a secret."""

from __future__ import annotations

from pathlib import Path
from typing import Any
from unittest import mock

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, make_mocked_request

from modelpool.admin import AdminApi
from modelpool.app import HOLDER, METRICS, RELOADER, build_app
from modelpool.config.load import load_config

API_KEY = "sk-live-very-secret-provider-key"
ADMIN_TOKEN = "admin-token-0123456789abcdef"

CONFIG = """\
version: 1
server:
  admin_token: ${env:ADMIN_TOKEN}
providers:
  up:
    type: openai
    base_url: http://127.0.0.1:9/v1
    api_key: ${env:OPENAI_KEY}
    headers: {X-Extra: "${env:OPENAI_KEY}"}
  mock: {type: mock}
models:
  real: {provider: up, upstream_model: gpt-4o}
  fake: {provider: mock}
pools:
  p: {members: [fake]}
"""


@pytest.fixture
async def client(tmp_path: Path, aiohttp_client: Any) -> TestClient[Any, Any]:
    path = tmp_path / "pools.yaml"
    path.write_text(CONFIG)
    config = load_config(path, env={"ADMIN_TOKEN": ADMIN_TOKEN, "OPENAI_KEY": API_KEY})
    return await aiohttp_client(build_app(config))  # type: ignore[no-any-return]


AUTH = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


@pytest.mark.parametrize(
    ("method", "path"),
    [("GET", "/admin/status"), ("GET", "/admin/config"), ("POST", "/admin/reload")],
)
async def test_admin_needs_the_token(client: TestClient[Any, Any], method: str, path: str) -> None:
    assert (await client.request(method, path)).status == 401
    wrong = {"Authorization": "Bearer nope-nope-nope-nope"}
    assert (await client.request(method, path, headers=wrong)).status == 401
    assert (await client.request(method, path, headers=AUTH)).status in (200, 422)


async def test_config_is_served_redacted(client: TestClient[Any, Any]) -> None:
    response = await client.get("/admin/config", headers=AUTH)
    text = await response.text()
    assert API_KEY not in text
    assert ADMIN_TOKEN not in text
    config = (await response.json())["config"]
    assert config["providers"]["up"]["api_key"] == "***"
    assert config["providers"]["up"]["headers"] == {"X-Extra": "***"}
    assert config["models"]["real"]["upstream_model"] == "gpt-4o"
    assert config["pools"]["p"]["members"][0]["model"] == "fake"


async def test_no_secret_in_status_metrics_or_models(client: TestClient[Any, Any]) -> None:
    for path in ("/admin/status", "/metrics", "/v1/models"):
        text = await (await client.get(path, headers=AUTH)).text()
        assert API_KEY not in text, path
        assert ADMIN_TOKEN not in text, path


async def test_status_reports_generation_digest_and_last_reload(
    client: TestClient[Any, Any],
) -> None:
    status = await (await client.get("/admin/status", headers=AUTH)).json()
    app = client.server.app
    assert status["generation"] == 1
    assert status["config"]["digest"] == app[HOLDER].current.config.digest
    assert status["last_reload"]["result"] == "applied"
    assert status["last_reload"]["trigger"] == "startup"


def _request_from(peer: str) -> web.Request:
    transport = mock.Mock()
    transport.get_extra_info.side_effect = lambda name, default=None: (
        (peer, 40000) if name == "peername" else default
    )
    return make_mocked_request("GET", "/admin/status", transport=transport)


async def test_without_a_token_only_loopback_peers_may_look(tmp_path: Path) -> None:
    path = tmp_path / "pools.yaml"
    path.write_text(
        CONFIG.replace("  admin_token: ${env:ADMIN_TOKEN}\n", "  listen: 127.0.0.1:0\n")
    )
    app = build_app(load_config(path, env={"OPENAI_KEY": API_KEY}))
    admin = AdminApi(app[HOLDER], app[RELOADER], app[METRICS])
    admin._authorize(_request_from("127.0.0.1"))
    admin._authorize(_request_from("::1"))
    with pytest.raises(web.HTTPForbidden):
        admin._authorize(_request_from("192.0.2.7"))
