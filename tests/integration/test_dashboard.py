"""GET /admin/dashboard.json (and the page): what operators see, from the real app.

The daemon is the in-process app (``start_daemon``) against the validating fake
upstreams; every figure is checked against the config or computed by hand.
"""

from __future__ import annotations

import base64
import hashlib
from pathlib import Path
from typing import Any
from unittest import mock

import pytest
import yaml
from aiohttp import web
from aiohttp.test_utils import make_mocked_request
from fake_upstream import CHAT, FakeUpstream, Reply
from proxy_harness import (
    API_KEY,
    CAPABILITIES,
    Daemon,
    StartDaemon,
    chain_config,
    chat,
    provider,
    single_pool_config,
)

from modelpool.app import ACCOUNTANT, HOLDER, build_app
from modelpool.config.load import load_config
from modelpool.usage.store import StoreError

DASHBOARD = "/admin/dashboard"
JSON = "/admin/dashboard.json"
CLIENT_KEY = "sk-client-dashboard-0123456789"
ADMIN_TOKEN = "admin-token-dashboard-0123456789"
PRICE = {"input_per_mtok": 1000.0, "output_per_mtok": 2000.0}
FAKE_ANSWER_COST = (3 * 1000.0 + 2 * 2000.0) / 1e6
"""The fake's default answer uses 3 prompt and 2 completion tokens."""


async def dashboard(daemon: Daemon, **headers: str) -> dict[str, Any]:
    async with daemon.http.get(JSON, headers=headers) as response:
        assert response.status == 200, await response.text()
        assert response.headers["Cache-Control"] == "no-store"
        body: dict[str, Any] = await response.json()
        return body


def two_pools(url: str) -> dict[str, Any]:
    """Pool ``fast`` (two models on the fake), pool ``spare`` (the mock), one model in no pool."""
    model = {"provider": "up", "capabilities": CAPABILITIES, "price": PRICE}
    return {
        "version": 1,
        "providers": {"up": provider(url), "mock": {"type": "mock"}},
        "models": {
            "a": model | {"upstream_model": "up-a"},
            "b": model | {"upstream_model": "up-b"},
            "m": {"provider": "mock", "capabilities": CAPABILITIES},
            "loose": model | {"upstream_model": "up-loose"},
        },
        "pools": {
            "fast": {"strategy": "weighted", "members": [{"model": "a", "weight": 3}, "b"],
                     "failover": ["spare"], "limits": {"rpm": 100}},
            "spare": {"members": ["m"], "queue": {"max_waiting": 7}},
        },
    }  # fmt: skip


async def test_every_pool_and_member_of_the_config_is_there(
    start_daemon: StartDaemon, fake: FakeUpstream
) -> None:
    daemon = await start_daemon(two_pools(fake.base_url))
    body = await dashboard(daemon)

    pools = {pool["name"]: pool for pool in body["pools"]}
    assert list(pools) == ["fast", "spare"]
    assert [m["model"] for m in pools["fast"]["members"]] == ["a", "b"]
    assert pools["fast"]["members"][0]["weight"] == 3
    assert pools["fast"]["strategy"] == "weighted"
    assert pools["fast"]["failover"] == ["spare"]
    assert pools["fast"]["limits"]["rpm"]["limit"] == 100
    assert pools["spare"]["members"] == [{"model": "m", "weight": 1.0, "priority": 0}]
    assert pools["spare"]["queue"] == {"depth": 0, "max_waiting": 7}
    assert all(pool["can_serve"] for pool in body["pools"])

    assert set(body["models"]) == {"a", "b", "m", "loose"}
    assert not body["models"]["loose"]["pooled"]
    for name, model in body["models"].items():
        assert model["breaker"]["state"] == "closed", name
        assert model["in_flight"] == 0
    assert body["models"]["a"] | {"breaker": None, "limits": None} == {
        "provider": "up", "type": "openai", "in_flight": 0, "breaker": None, "limits": None,
        "latency_s": {"p50": None, "p95": None, "count": 0},
        "ttft_s": {"p50": None, "p95": None, "count": 0},
        "attempts": 0, "failed": 0, "error_rate": None, "health": "unknown", "pooled": True,
    }  # fmt: skip
    assert body["generation"] == 1
    assert body["ready"] is True
    assert body["last_reload"]["result"] == "applied"
    assert len(body["history"]["points"]) == 60


async def test_no_secret_and_no_upstream_url_in_the_json_or_the_page(
    start_daemon: StartDaemon, fake: FakeUpstream
) -> None:
    daemon = await start_daemon(two_pools(fake.base_url))
    await daemon.http.post(CHAT, json=chat("fast"))
    for path in (JSON, DASHBOARD, f"{DASHBOARD}/assets/dashboard.js"):
        text = await (await daemon.http.get(path)).text()
        assert API_KEY not in text, path
        assert f":{fake.port}" not in text, path


async def test_a_failing_upstream_shows_its_breaker_open(
    start_daemon: StartDaemon, fake: FakeUpstream, fake2: FakeUpstream
) -> None:
    config = chain_config([fake.base_url, fake2.base_url])
    config["breakers"] = {"failure_threshold": 1, "cooldown": {"initial": "30s"}}
    daemon = await start_daemon(config)
    fake.script(CHAT, Reply.error(500, "boom"))
    async with daemon.http.post(CHAT, json=chat()) as response:
        assert response.status == 200
        assert response.headers["x-modelpool-model"] == "m2"

    body = await dashboard(daemon)
    broken = body["models"]["m1"]
    assert broken["breaker"]["state"] == "open"
    assert "500" in broken["breaker"]["reason"]
    assert 25 < broken["breaker"]["reopens_in_s"] <= 30
    assert broken["breaker"]["trips"] == 1
    assert (broken["attempts"], broken["failed"], broken["error_rate"]) == (1, 1, 1.0)
    healthy = body["models"]["m2"]
    assert healthy["breaker"] | {"trips": 0} == {
        "state": "closed", "reason": None, "reopens_in_s": None, "rate_limited": False,
        "trips": 0, "consecutive_failures": 0,
    }  # fmt: skip
    assert (healthy["attempts"], healthy["failed"], healthy["error_rate"]) == (1, 0, 0.0)
    assert body["pools"][0]["can_serve"] is True


async def test_latency_and_time_to_first_token_come_from_the_histogram(
    start_daemon: StartDaemon, fake: FakeUpstream
) -> None:
    daemon = await start_daemon(single_pool_config(fake.base_url))
    fake.script(CHAT, Reply(delay=0.3))
    async with daemon.http.post(CHAT, json=chat()) as response:
        assert response.status == 200
    fake.script(CHAT, Reply.stream("a", "b"))
    async with daemon.http.post(CHAT, json=chat(stream=True)) as response:
        await response.read()

    model = (await dashboard(daemon))["models"]["m"]
    assert model["latency_s"]["count"] == 1
    assert 0.25 < model["latency_s"]["p50"] <= 0.5  # the bucket (0.25, 0.5] holds the 0.3 s
    assert model["ttft_s"]["count"] == 1
    assert model["ttft_s"]["p95"] <= 0.25


def budget_config(url: str) -> dict[str, Any]:
    config = single_pool_config(url)
    config["models"]["m"]["price"] = PRICE
    config["clients"] = {
        "agent-a": {
            "key_sha256": hashlib.sha256(CLIENT_KEY.encode()).hexdigest(),
            "budget": {"usd_per_day": 5, "tokens_per_month": 1000},
        },
        "agent-b": {"key_sha256": hashlib.sha256(b"sk-unused-0123456789").hexdigest()},
    }
    return config


async def test_spend_today_and_budgets_per_client(
    start_daemon: StartDaemon, fake: FakeUpstream
) -> None:
    daemon = await start_daemon(budget_config(fake.base_url))
    auth = {"Authorization": f"Bearer {CLIENT_KEY}"}
    for _ in range(3):
        async with daemon.http.post(CHAT, json=chat(), headers=auth) as response:
            assert response.status == 200

    body = await dashboard(daemon)
    clients = {client["name"]: client for client in body["clients"]["list"]}
    assert list(clients) == ["agent-a", "agent-b"]
    a = clients["agent-a"]
    assert a["today"] | {"cost_usd": None} == {
        "requests": 3, "errors": 0, "tokens": 15, "cost_usd": None, "cost_unknown": 0,
    }  # fmt: skip
    assert a["today"]["cost_usd"] == pytest.approx(3 * FAKE_ANSWER_COST)
    assert a["month"]["cost_usd"] == pytest.approx(3 * FAKE_ANSWER_COST)
    usd, tokens = a["budgets"]
    assert (usd["unit"], usd["period"], usd["cap"]) == ("usd", "day", 5.0)
    assert usd["spent"] == pytest.approx(3 * FAKE_ANSWER_COST)
    assert usd["reserved"] == 0.0
    assert usd["resets_at"] > body["now"]
    assert (tokens["unit"], tokens["period"], tokens["cap"], tokens["spent"]) == (
        "tokens", "month", 1000.0, 15.0,
    )  # fmt: skip
    assert clients["agent-b"]["budgets"] == []
    assert clients["agent-b"]["today"]["requests"] == 0
    assert body["clients"]["store"] is True

    last_hour = [p for p in body["history"]["points"] if p is not None]
    assert sum(p["requests"] for p in last_hour) == 3
    assert sum(p["cost_usd"] for p in last_hour) == pytest.approx(3 * FAKE_ANSWER_COST)


def write(path: str, config: dict[str, Any]) -> None:
    Path(path).write_text(yaml.safe_dump(config, sort_keys=False))


async def test_the_last_reload_and_its_diff_are_shown(
    start_daemon: StartDaemon, fake: FakeUpstream
) -> None:
    config = single_pool_config(fake.base_url)
    daemon = await start_daemon(config)
    path = daemon.app[HOLDER].current.config.source
    config["pools"]["q"] = {"members": ["m"]}
    write(path, config)
    assert (await daemon.http.post("/admin/reload")).status == 200
    body = await dashboard(daemon)
    assert body["generation"] == 2
    assert [pool["name"] for pool in body["pools"]] == ["p", "q"]
    reload = body["last_reload"]
    assert (reload["result"], reload["trigger"], reload["errors"]) == ("applied", "admin", [])
    assert reload["diff"]["pools"]["added"] == ["q"]

    config["pools"]["q"]["failover"] = ["nowhere"]
    write(path, config)
    assert (await daemon.http.post("/admin/reload")).status == 422
    body = await dashboard(daemon)
    assert body["generation"] == 2
    assert body["last_reload"]["result"] == "rejected"
    assert any("nowhere" in error for error in body["last_reload"]["errors"])


# --------------------------------------------------------------------------- access


async def test_with_a_token_page_assets_and_json_all_need_it(
    start_daemon: StartDaemon, fake: FakeUpstream
) -> None:
    """Same auth as every /admin/* path. A browser opening the page is asked for the
    token by HTTP Basic (any user name, the token as password), which it then sends with
    the page's every request; scripts send it as a Bearer token."""
    config = single_pool_config(fake.base_url)
    config["server"] = {"admin_token": ADMIN_TOKEN}
    daemon = await start_daemon(config)
    bearer = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    basic = {"Authorization": "Basic " + base64.b64encode(f"ops:{ADMIN_TOKEN}".encode()).decode()}
    refused = [
        {},
        {"Authorization": "Bearer not-the-token-0123456789"},
        {"Authorization": "Basic " + base64.b64encode(b"ops:not-the-token").decode()},
        {"Authorization": "Basic " + base64.b64encode(ADMIN_TOKEN.encode()).decode()},  # no ':'
        {"Authorization": "Basic %%% not base64"},
    ]
    pages = (DASHBOARD, f"{DASHBOARD}/assets/dashboard.js", f"{DASHBOARD}/assets/dashboard.css")

    for path in (*pages, JSON, "/admin/status"):
        for headers in refused:
            async with daemon.http.get(path, headers=headers) as response:
                assert response.status == 401, (path, headers)
                assert (await response.json())["error"]["type"] == "authentication_error"
                challenge = response.headers.get("WWW-Authenticate")
                # the page's refusal makes a browser ask for the token; a JSON one does not
                if path in pages:
                    assert challenge == 'Basic realm="modelpool admin", charset="UTF-8"'
                else:
                    assert challenge is None, path
        for headers in (bearer, basic):
            async with daemon.http.get(path, headers=headers) as response:
                assert response.status == 200, (path, headers)
    assert (await dashboard(daemon, **basic))["generation"] == 1
    async with daemon.http.get(DASHBOARD, headers=basic) as response:
        assert "default-src 'none'" in response.headers["Content-Security-Policy"]
    assert (await daemon.http.get(f"{DASHBOARD}/assets/../app.py", headers=basic)).status == 404
    assert (await daemon.http.get(f"{DASHBOARD}/assets/secrets.js", headers=basic)).status == 404


def _handler(app: web.Application, path: str) -> Any:
    for resource in app.router.resources():
        if resource.canonical == path:
            return next(iter(resource)).handler
    raise AssertionError(f"no route for {path}")


def _request_from(peer: str, path: str) -> web.Request:
    transport = mock.Mock()
    transport.get_extra_info.side_effect = lambda name, default=None: (
        (peer, 40000) if name == "peername" else default
    )
    return make_mocked_request("GET", path, transport=transport)


@pytest.mark.parametrize("path", [JSON, DASHBOARD])
async def test_without_a_token_only_loopback_peers_may_look(tmp_path: Path, path: str) -> None:
    config = single_pool_config("http://127.0.0.1:9/v1") | {"usage": {"store": "none"}}
    write(str(tmp_path / "pools.yaml"), config)
    app = build_app(load_config(tmp_path / "pools.yaml", env={}))
    handler = _handler(app, path)
    assert (await handler(_request_from("127.0.0.1", path))).status == 200
    assert (await handler(_request_from("::1", path))).status == 200
    with pytest.raises(web.HTTPForbidden):
        await handler(_request_from("192.0.2.7", path))


async def test_without_a_readable_store_spend_comes_from_the_budget_meters(
    start_daemon: StartDaemon, fake: FakeUpstream, monkeypatch: pytest.MonkeyPatch
) -> None:
    daemon = await start_daemon(budget_config(fake.base_url))
    auth = {"Authorization": f"Bearer {CLIENT_KEY}"}
    async with daemon.http.post(CHAT, json=chat(), headers=auth) as response:
        assert response.status == 200
    store = daemon.app[ACCOUNTANT].store

    async def unreadable(query: Any) -> Any:
        raise StoreError("disk on fire")

    monkeypatch.setattr(store, "report", unreadable)
    body = await dashboard(daemon)
    assert body["clients"]["error"] == "usage store unavailable"  # and no detail of why
    usd, tokens = body["clients"]["list"][0]["budgets"]
    assert usd["spent"] == pytest.approx(FAKE_ANSWER_COST)  # the meter's count
    assert tokens["spent"] == 5.0
