"""The OpenAPI document (GET /openapi.json) is valid, complete, and true to the daemon.

Valid: OpenAPI 3.1 by openapi-spec-validator. Complete: it names exactly the
routes the app registers, no more, no fewer. True: every error status the
fuzzer (tests/e2e/test_openapi_fuzz.py) cannot provoke against the offline
example — keys, budgets, limits, body size, upstream failures of each kind,
a rejected reload — is provoked here against the real app and scripted
upstreams, and the answer is checked against what the document says for that
operation and status: the content type, the required headers and the body's
schema, in the API format of the endpoint called.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from fake_upstream import CHAT, FakeUpstream, Reply
from jsonschema import Draft202012Validator
from openapi_spec_validator import OpenAPIV31SpecValidator
from proxy_harness import Daemon, StartDaemon, chain_config, chat, single_pool_config

from modelpool.app import build_app
from modelpool.config.load import load_config
from modelpool.openapi import document

DOCUMENT: dict[str, Any] = json.loads(document())
ROOT = Path(__file__).resolve().parents[2]
KEY = "mp-openapi-test-key"
ADMIN_TOKEN = "mp-openapi-admin-token"


def message(model: str = "p", **extra: Any) -> dict[str, Any]:
    """A minimal Anthropic Messages request body."""
    return {
        "model": model,
        "max_tokens": 16,
        "messages": [{"role": "user", "content": "hi"}],
        **extra,
    }


# --------------------------------------------------------------------- the document itself


async def test_served_document_is_valid_openapi_3_1(daemon: Daemon) -> None:
    async with daemon.http.get("/openapi.json") as response:
        assert response.status == 200
        assert response.content_type == "application/json"
        served = await response.read()
    assert served == document()
    OpenAPIV31SpecValidator(json.loads(served)).validate()


def test_document_names_exactly_the_routes_the_app_registers(tmp_path: Path) -> None:
    config = tmp_path / "pools.yaml"
    config.write_text((ROOT / "examples" / "pools.yaml").read_text())
    app = build_app(load_config(config, env={}))
    registered = {
        (route.method.lower(), route.resource.canonical)
        for route in app.router.routes()
        if route.resource is not None and route.method != "HEAD"  # aiohttp adds HEAD to GETs
    }
    documented = {(method, path) for path, item in DOCUMENT["paths"].items() for method in item}
    missing = "routes the app serves that daemon/modelpool/openapi.json does not document"
    assert registered - documented == set(), missing
    assert documented - registered == set(), "openapi.json documents routes the app lacks"


# --------------------------------------------------------------------- checking an answer


def validator(schema: Mapping[str, Any]) -> Draft202012Validator:
    """A validator resolving the document's ``#/components/...`` references."""
    return Draft202012Validator({**schema, "components": DOCUMENT["components"]})


def resolved(item: Mapping[str, Any]) -> Mapping[str, Any]:
    ref = item.get("$ref")
    if not isinstance(ref, str):
        return item
    node: Any = DOCUMENT
    for part in ref.removeprefix("#/").split("/"):
        node = node[part]
    return resolved(node)


def documented_response(method: str, path: str, status: int) -> Mapping[str, Any]:
    responses = DOCUMENT["paths"][path.partition("?")[0]][method.lower()]["responses"]
    spec = responses.get(str(status)) or responses.get(f"{status // 100}XX")
    assert spec is not None, f"{method} {path} answered {status}, which it does not document"
    return resolved(spec)


async def conforms(response: aiohttp.ClientResponse, spec: Mapping[str, Any]) -> Any:
    """Check ``response`` against a documented response; return its JSON body."""
    content = spec["content"]
    assert response.content_type in content, (response.content_type, list(content))
    for name, header in spec.get("headers", {}).items():
        header = resolved(header)
        value = response.headers.get(name)
        if value is None:
            assert not header.get("required"), f"required header {name} missing"
            continue
        schema = header["schema"]
        kind = schema.get("type")
        typed = int(value) if kind == "integer" else float(value) if kind == "number" else value
        validator(schema).validate(typed)
    body = await response.json(content_type=None)
    validator(content[response.content_type]["schema"]).validate(body)
    return body


async def call(
    daemon: Daemon,
    method: str,
    path: str,
    status: int,
    body: Any = None,
    headers: Mapping[str, str] | None = None,
) -> Any:
    """Call the daemon, expect ``status``, check the answer against the document."""
    async with daemon.http.request(method, path, json=body, headers=headers) as response:
        text = await response.text()
        assert response.status == status, text
        return await conforms(response, documented_response(method, path, status))


def anthropic(body: Any) -> str:
    assert body["type"] == "error", body
    kind: str = body["error"]["type"]
    return kind


def openai(body: Any) -> str | int | None:
    code: str | int | None = body["error"]["code"]
    return code


# --------------------------------------------------------------------- request errors


@pytest.fixture
async def keyed(start_daemon: StartDaemon, fake: FakeUpstream) -> Daemon:
    """Clients configured: ``agent`` may use pool ``p`` only; an admin token; a tiny body limit."""
    config = single_pool_config(fake.base_url)
    config["models"]["other"] = {"provider": "up", "capabilities": ["chat"]}
    config["pools"]["q"] = {"members": ["other"]}
    config["clients"] = {
        "agent": {"key_sha256": hashlib.sha256(KEY.encode()).hexdigest(), "pools": ["p"]}
    }
    config["server"] = {"admin_token": ADMIN_TOKEN, "max_body_bytes": "1KiB"}
    return await start_daemon(config)


async def test_keys_and_pools_errors_as_documented(keyed: Daemon) -> None:
    bearer = {"Authorization": f"Bearer {KEY}"}
    for path, body, decode in (
        ("/v1/chat/completions", chat(), openai),
        ("/v1/messages", message(), anthropic),
        ("/v1/messages/count_tokens", message(), anthropic),
    ):
        assert decode(await call(keyed, "POST", path, 401, body)) in (
            "invalid_api_key",
            "authentication_error",
        )
        wrong = {"x-api-key": "not-a-key"}
        await call(keyed, "POST", path, 401, body, headers=wrong)
        await call(keyed, "POST", path, 403, {**body, "model": "q"}, headers=bearer)
        await call(keyed, "POST", path, 413, {**body, "pad": "x" * 2048}, headers=bearer)
        await call(keyed, "POST", path, 400, {"model": "p"}, headers=bearer)
    await call(keyed, "GET", "/v1/models", 401)
    await call(keyed, "POST", "/v1/embeddings", 401, {"model": "p", "input": "x"})
    await call(keyed, "POST", "/v1/completions", 401, {"model": "p", "prompt": "x"})


async def test_admin_errors_as_documented(keyed: Daemon) -> None:
    for method, path in (
        ("GET", "/admin/status"),
        ("GET", "/admin/config"),
        ("GET", "/admin/usage"),
        ("POST", "/admin/reload"),
        ("GET", "/admin/dashboard"),
        ("GET", "/admin/dashboard.json"),
    ):
        await call(keyed, method, path, 401)
        await call(keyed, method, path, 401, headers={"Authorization": "Bearer wrong"})
    admin = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    await call(keyed, "GET", "/admin/usage?by=nonsense", 400, headers=admin)
    await call(keyed, "GET", "/admin/usage?since=someday", 400, headers=admin)
    await call(keyed, "GET", "/admin/status", 200, headers=admin)
    await call(keyed, "GET", "/admin/config", 200, headers=admin)
    await call(keyed, "GET", "/admin/usage", 200, headers=admin)
    await call(keyed, "POST", "/admin/reload", 200, headers=admin)


async def test_no_usage_store_is_a_documented_404(
    start_daemon: StartDaemon, fake: FakeUpstream
) -> None:
    daemon = await start_daemon({**single_pool_config(fake.base_url), "usage": {"store": "none"}})
    assert openai(await call(daemon, "GET", "/admin/usage", 404)) is None


async def test_a_rejected_reload_is_a_documented_422(
    start_daemon: StartDaemon, fake: FakeUpstream, tmp_path: Path
) -> None:
    daemon = await start_daemon(single_pool_config(fake.base_url))
    (tmp_path / "pools-0.yaml").write_text("version: 1\npools: {p: {members: [ghost]}}\n")
    outcome = await call(daemon, "POST", "/admin/reload", 422)
    assert outcome["result"] == "rejected"
    assert outcome["errors"]


async def test_answers_as_documented(daemon: Daemon) -> None:
    """The fuzzer checks these too; here they run in every integration run, cheaply."""
    await call(daemon, "POST", "/v1/chat/completions", 200, chat())
    await call(daemon, "POST", "/v1/messages", 200, message())
    await call(daemon, "POST", "/v1/embeddings", 200, {"model": "p", "input": ["a", "b"]})
    await call(daemon, "POST", "/v1/messages/count_tokens", 200, message())
    await call(daemon, "GET", "/v1/models", 200)
    await call(daemon, "GET", "/readyz", 200)
    await call(daemon, "GET", "/healthz", 200)


async def test_unknown_pools_as_documented(daemon: Daemon) -> None:
    for path, body in (
        ("/v1/chat/completions", chat("nope")),
        ("/v1/messages", message("nope")),
        ("/v1/messages/count_tokens", message("nope")),
        ("/v1/embeddings", {"model": "nope", "input": "x"}),
        ("/v1/completions", {"model": "nope", "prompt": "x"}),
    ):
        await call(daemon, "POST", path, 404, body)


async def test_unknown_paths_and_methods_as_documented(daemon: Daemon) -> None:
    for path, kind in (("/v1/chat/completions", "OpenAIError"), ("/v1/messages", "AnthropicError")):
        async with daemon.http.get(path) as response:
            assert response.status == 405
            body = await conforms(
                response, resolved(DOCUMENT["components"]["responses"]["MethodNotAllowed"])
            )
            validator({"$ref": f"#/components/schemas/{kind}"}).validate(body)
    async with daemon.http.get("/v2/nothing") as response:
        assert response.status == 404
        await conforms(response, resolved(DOCUMENT["components"]["responses"]["UnknownPath"]))


async def test_an_unreadable_request_is_answered_as_documented(daemon: Daemon) -> None:
    huge = {"X-Filler": "x" * 20_000}
    async with daemon.http.post("/v1/messages", json={}, headers=huge) as response:
        assert response.status == 431
        await conforms(response, resolved(DOCUMENT["components"]["responses"]["UnreadableRequest"]))


# --------------------------------------------------------------------- budgets and limits


async def test_budget_402_and_429_as_documented(
    start_daemon: StartDaemon, fake: FakeUpstream
) -> None:
    config = single_pool_config(fake.base_url)
    config["clients"] = {
        "agent": {
            "key_sha256": hashlib.sha256(KEY.encode()).hexdigest(),
            "budget": {"usd_per_month": 0, "status": 402},
        },
        "other": {
            "key_sha256": hashlib.sha256(b"other-key").hexdigest(),
            "budget": {"usd_per_day": 0},
        },
    }
    daemon = await start_daemon(config)
    key, other = {"Authorization": f"Bearer {KEY}"}, {"x-api-key": "other-key"}
    assert openai(await call(daemon, "POST", "/v1/chat/completions", 402, chat(), key)) == (
        "budget_exceeded"
    )
    assert anthropic(await call(daemon, "POST", "/v1/messages", 402, message(), key)) == (
        "billing_error"
    )
    await call(daemon, "POST", "/v1/chat/completions", 429, chat(), other)
    assert anthropic(await call(daemon, "POST", "/v1/messages", 429, message(), other)) == (
        "rate_limit_error"
    )


# --------------------------------------------------------------------- upstream failures


@pytest.mark.parametrize(
    ("reply", "status", "code", "kind"),
    [
        (Reply.error(500), 502, "upstream_error", "api_error"),
        (Reply.error(429, retry_after="1"), 429, "rate_limit_exceeded", "rate_limit_error"),
        (Reply.error(401), 502, "upstream_auth_failed", "api_error"),
        (Reply.error(422, "unprocessable"), 422, None, None),
        (Reply(delay=1.0), 504, "upstream_timeout", "api_error"),
    ],
    ids=["5xx", "429", "upstream-401", "422-relayed", "timeout"],
)
async def test_upstream_failures_as_documented(
    start_daemon: StartDaemon,
    fake: FakeUpstream,
    reply: Reply,
    status: int,
    code: str | None,
    kind: str | None,
) -> None:
    config = chain_config([fake.base_url], attempts=1, timeouts={"first_byte": "200ms"})
    daemon = await start_daemon(config)
    fake.script(CHAT, reply)
    body = await call(daemon, "POST", "/v1/chat/completions", status, chat())
    if code is not None:
        assert openai(body) == code
    fake.script(CHAT, reply)
    body = await call(daemon, "POST", "/v1/messages", status, message())
    if kind is not None:
        assert anthropic(body) == kind


async def test_unreachable_upstreams_are_a_documented_503(
    start_daemon: StartDaemon, closed_port: int
) -> None:
    config = chain_config([f"http://127.0.0.1:{closed_port}/v1"], attempts=1)
    config["breakers"] = {"failure_threshold": 1, "cooldown": {"initial": "60s"}}
    daemon = await start_daemon(config)
    assert openai(await call(daemon, "POST", "/v1/chat/completions", 503, chat())) == (
        "upstream_unavailable"
    )
    # The breaker is open now: refused at once, with when to come back.
    body = await call(daemon, "POST", "/v1/messages", 503, message())
    assert anthropic(body) == "overloaded_error"
    assert openai(await call(daemon, "POST", "/v1/chat/completions", 503, chat())) == (
        "all_upstreams_down"
    )
    readiness = await call(daemon, "GET", "/readyz", 503)
    assert readiness["ready"] is False
