"""What reaches the upstream and what comes back: bodies, model rewrite, auth, headers, streams."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from fake_upstream import CHAT, COMPLETIONS, EMBEDDINGS, FakeUpstream, Reply
from proxy_harness import API_KEY, Daemon, StartDaemon, chat, read_sse, single_pool_config

# --------------------------------------------------------------------------- bodies


async def test_chat_body_is_forwarded_with_the_model_rewritten(
    daemon: Daemon, fake: FakeUpstream
) -> None:
    # The nameless tool, which a real upstream would refuse, shows that the
    # body is forwarded as it is, unread: the fake must not refuse it either.
    fake.validate = False
    body = chat(temperature=0.2, max_tokens=7, tools=[{"type": "function", "function": {}}])
    async with daemon.http.post("/v1/chat/completions", json=body) as response:
        assert response.status == 200
        assert response.content_type == "application/json"
        answer = await response.json()

    [received] = fake.requests
    assert received.method == "POST"
    assert received.path == CHAT
    assert received.json == {**body, "model": "up-m"}
    assert answer["object"] == "chat.completion"
    assert answer["choices"][0]["message"]["content"] == "hello from up-m"
    assert answer["usage"] == {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}


async def test_upstream_response_body_is_relayed_byte_for_byte(
    daemon: Daemon, fake: FakeUpstream
) -> None:
    raw = b'{"id":"x","object":"chat.completion","choices":[],"extra":{"kept":  true}}'
    fake.script(CHAT, Reply(body=raw))
    async with daemon.http.post("/v1/chat/completions", json=chat()) as response:
        assert response.status == 200
        assert await response.read() == raw


async def test_completions_are_forwarded(daemon: Daemon, fake: FakeUpstream) -> None:
    body = {"model": "p", "prompt": "Once upon", "max_tokens": 3}
    async with daemon.http.post("/v1/completions", json=body) as response:
        assert response.status == 200
        answer = await response.json()

    [received] = fake.requests
    assert received.path == COMPLETIONS
    assert received.json == {**body, "model": "up-m"}
    assert answer["choices"][0]["text"] == "hello from up-m"


async def test_embeddings_are_forwarded(daemon: Daemon, fake: FakeUpstream) -> None:
    body = {"model": "p", "input": ["a", "b"], "encoding_format": "float"}
    async with daemon.http.post("/v1/embeddings", json=body) as response:
        assert response.status == 200
        answer = await response.json()

    [received] = fake.requests
    assert received.path == EMBEDDINGS
    assert received.json == {**body, "model": "up-m"}
    assert [d["index"] for d in answer["data"]] == [0, 1]


async def test_a_model_can_be_named_directly(daemon: Daemon, fake: FakeUpstream) -> None:
    async with daemon.http.post("/v1/chat/completions", json=chat("m")) as response:
        assert response.status == 200
        assert response.headers["x-modelpool-model"] == "m"
    assert fake.requests[0].json["model"] == "up-m"


async def test_response_headers_name_pool_model_and_attempts(daemon: Daemon) -> None:
    async with daemon.http.post("/v1/chat/completions", json=chat()) as response:
        assert response.status == 200
        assert response.headers["x-modelpool-pool"] == "p"
        assert response.headers["x-modelpool-model"] == "m"
        assert response.headers["x-modelpool-attempts"] == "1"


# --------------------------------------------------------------------------- auth per provider


@pytest.mark.parametrize("type_", ["openai", "openai_compatible"])
async def test_openai_style_providers_send_a_bearer_key(
    type_: str, start_daemon: StartDaemon, fake: FakeUpstream
) -> None:
    daemon = await start_daemon(single_pool_config(fake.base_url, type_=type_))
    async with daemon.http.post("/v1/chat/completions", json=chat()) as response:
        assert response.status == 200

    [received] = fake.requests
    assert received.path == CHAT
    assert received.headers["Authorization"] == f"Bearer {API_KEY}"
    assert "api-key" not in received.headers


async def test_client_credentials_are_not_forwarded_upstream(
    daemon: Daemon, fake: FakeUpstream
) -> None:
    headers = {"Authorization": "Bearer client-key", "Cookie": "session=1"}
    async with daemon.http.post("/v1/chat/completions", json=chat(), headers=headers) as response:
        assert response.status == 200
    [received] = fake.requests
    assert received.headers["Authorization"] == f"Bearer {API_KEY}"
    assert "Cookie" not in received.headers


async def test_keyless_provider_sends_no_authorization(
    start_daemon: StartDaemon, fake: FakeUpstream
) -> None:
    config = single_pool_config(fake.base_url, type_="openai_compatible", api_key=None)
    daemon = await start_daemon(config)
    async with daemon.http.post("/v1/chat/completions", json=chat()) as response:
        assert response.status == 200
    assert "Authorization" not in fake.requests[0].headers


async def test_azure_uses_deployment_url_api_version_and_api_key_header(
    start_daemon: StartDaemon, fake: FakeUpstream
) -> None:
    config = single_pool_config(fake.root, type_="azure_openai", api_version="2024-06-01")
    config["models"]["m"]["upstream_model"] = "my-gpt4o-deployment"
    daemon = await start_daemon(config)
    async with daemon.http.post("/v1/chat/completions", json=chat()) as response:
        assert response.status == 200
    async with daemon.http.post("/v1/embeddings", json={"model": "p", "input": "x"}) as response:
        assert response.status == 200

    chat_call, embed_call = fake.requests
    assert chat_call.path == "/openai/deployments/my-gpt4o-deployment/chat/completions"
    assert embed_call.path == "/openai/deployments/my-gpt4o-deployment/embeddings"
    for received in fake.requests:
        assert received.query == {"api-version": "2024-06-01"}
        assert received.headers["api-key"] == API_KEY
        assert "Authorization" not in received.headers


@pytest.mark.parametrize("suffix", ["", "/v1"])
async def test_ollama_is_called_on_its_openai_compatible_v1_api(
    suffix: str, start_daemon: StartDaemon, fake: FakeUpstream
) -> None:
    config = single_pool_config(fake.root + suffix, type_="ollama", api_key=None)
    config["models"]["m"]["upstream_model"] = "llama3.2:3b"
    daemon = await start_daemon(config)
    async with daemon.http.post("/v1/chat/completions", json=chat()) as response:
        assert response.status == 200

    [received] = fake.requests
    assert received.path == CHAT
    assert received.json["model"] == "llama3.2:3b"
    assert "Authorization" not in received.headers


async def test_provider_headers_are_sent_upstream(
    start_daemon: StartDaemon, fake: FakeUpstream
) -> None:
    extra = {"OpenAI-Organization": "org-test", "X-Tenant": "blue"}
    daemon = await start_daemon(single_pool_config(fake.base_url, headers=extra))
    async with daemon.http.post("/v1/chat/completions", json=chat()) as response:
        assert response.status == 200

    headers = fake.requests[0].headers
    assert headers["OpenAI-Organization"] == "org-test"
    assert headers["X-Tenant"] == "blue"
    assert headers["Authorization"] == f"Bearer {API_KEY}"


# --------------------------------------------------------------------------- streaming


async def test_stream_is_relayed_chunk_by_chunk_as_it_is_sent(
    daemon: Daemon, fake: FakeUpstream
) -> None:
    words = ["one", "two", "three", "four", "five"]
    fake.script(CHAT, Reply.stream(*words, chunk_delay=0.2))
    async with daemon.http.post("/v1/chat/completions", json=chat(stream=True)) as response:
        assert response.status == 200
        assert response.content_type == "text/event-stream"
        assert response.headers["X-Accel-Buffering"] == "no"
        assert response.headers["x-modelpool-model"] == "m"
        events = await read_sse(response)

    sent = fake.requests[0].sent_at
    contents = [orjson.loads(e.data)["choices"][0]["delta"]["content"] for e in events[:-1]]
    assert contents == words
    assert events[-1].data == b"[DONE]"
    assert len(sent) == len(events) == 6
    # Each event reaches the client before the upstream sends the one two after
    # it: a buffering proxy would deliver them all at the end, ~1s late.
    for i, event in enumerate(events[:-2]):
        assert event.at < sent[i + 2], f"event {i} arrived after chunk {i + 2} was sent"


async def test_stream_first_chunk_arrives_before_upstream_finishes(
    daemon: Daemon, fake: FakeUpstream
) -> None:
    fake.script(CHAT, Reply.stream("a", "b", "c", chunk_delay=0.2))
    async with daemon.http.post("/v1/chat/completions", json=chat(stream=True)) as response:
        first = await response.content.readuntil(b"\n\n")
        assert fake.requests[0].done.is_set() is False
        assert len(fake.requests[0].sent_at) < 3
        rest = await read_sse(response)
    assert b'"content":"a"' in first
    assert rest[-1].data == b"[DONE]"


async def test_streamed_completions_are_relayed(daemon: Daemon, fake: FakeUpstream) -> None:
    body: dict[str, Any] = {"model": "p", "prompt": "x", "stream": True}
    async with daemon.http.post("/v1/completions", json=body) as response:
        assert response.status == 200
        assert response.content_type == "text/event-stream"
        events = await read_sse(response)
    assert fake.requests[0].path == COMPLETIONS
    # usage is asked for on the client's behalf (to count it) ...
    expected = {**body, "model": "up-m", "stream_options": {"include_usage": True}}
    assert fake.requests[0].json == expected
    assert events[-1].data == b"[DONE]"


# --------------------------------------------------------------------------- registry, health


async def test_models_lists_pools_and_models_without_urls_or_keys(
    start_daemon: StartDaemon, fake: FakeUpstream
) -> None:
    config = single_pool_config(fake.base_url, headers={"X-Secret-Header": "hdr-value-123"})
    config["models"]["m"].update(
        capabilities=["chat", "stream", "tools"],
        context_window=128000,
        price={"input_per_mtok": 2.5, "output_per_mtok": 10.0},
    )
    daemon = await start_daemon(config)
    async with daemon.http.get("/v1/models") as response:
        assert response.status == 200
        raw = await response.read()

    listing = orjson.loads(raw)
    assert listing["object"] == "list"
    entries = {entry["id"]: entry for entry in listing["data"]}
    assert set(entries) == {"p", "m"}
    assert entries["p"]["modelpool"]["kind"] == "pool"
    assert entries["p"]["modelpool"]["members"] == ["m"]
    model = entries["m"]["modelpool"]
    assert model["kind"] == "model"
    assert model["capabilities"] == ["chat", "stream", "tools"]
    assert model["context_window"] == 128000
    assert model["price"]["input_per_mtok"] == 2.5
    assert model["price"]["output_per_mtok"] == 10.0
    text = raw.decode()
    for leak in ("base_url", "127.0.0.1", f":{fake.port}", API_KEY, "hdr-value-123"):
        assert leak not in text
    assert not fake.requests


async def test_healthz_and_readyz(daemon: Daemon) -> None:
    async with daemon.http.get("/healthz") as response:
        assert response.status == 200
        assert await response.json() == {"status": "ok"}
    async with daemon.http.get("/readyz") as response:
        assert response.status == 200
        ready = await response.json()
    assert ready["ready"] is True
    assert ready["generation"] == 1
