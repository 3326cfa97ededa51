"""Request ids, the access log, and what the daemon keeps to itself."""

from __future__ import annotations

import asyncio
import logging

import orjson
import pytest
from fake_upstream import CHAT, FakeUpstream, Reply
from proxy_harness import Daemon, StartDaemon, chat, raw_request, single_pool_config

from modelpool import api, upstream

CANARY = "canary-prompt-words-7f3a"


def access_lines(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "modelpool.access"]


async def test_every_response_names_its_request_and_one_access_line_says_what_happened(
    daemon: Daemon, fake: FakeUpstream, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    body = chat(messages=[{"role": "user", "content": CANARY}])
    async with daemon.http.post("/v1/chat/completions", json=body) as response:
        rid = response.headers["x-request-id"]
    async with daemon.http.post("/v1/chat/completions", json=body | {"stream": True}) as stream:
        await stream.read()
        assert stream.headers["x-request-id"] != rid
    async with daemon.http.post("/v1/chat/completions", json=chat(model="nope")) as missing:
        assert missing.status == 404
        assert missing.headers["x-request-id"]

    lines = access_lines(caplog)
    assert [line.status for line in lines] == [200, 200, 404]  # type: ignore[attr-defined]
    first = lines[0]
    assert first.request_id == rid  # type: ignore[attr-defined]
    assert (first.pool, first.model, first.attempts, first.outcome) == ("p", "m", 1, "ok")  # type: ignore[attr-defined]
    assert (first.input_tokens, first.output_tokens) == (3, 2)  # type: ignore[attr-defined]
    assert first.duration_ms > 0  # type: ignore[attr-defined]
    assert lines[1].output_tokens == 2  # type: ignore[attr-defined]
    assert CANARY not in caplog.text  # never prompt content, even at DEBUG


async def test_a_sane_client_request_id_is_kept_and_junk_is_replaced(daemon: Daemon) -> None:
    async with daemon.http.get("/healthz", headers={"x-request-id": "trace-42.a_b:c"}) as r:
        assert r.headers["x-request-id"] == "trace-42.a_b:c"
    junk = "x" * 200 + "\u00e9"
    async with daemon.http.get("/healthz", headers={"x-request-id": junk}) as r:
        assert r.headers["x-request-id"] != junk
        assert len(r.headers["x-request-id"]) == 16


async def test_the_access_log_can_be_turned_off(
    start_daemon: StartDaemon, fake: FakeUpstream, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    config = single_pool_config(fake.base_url) | {"server": {"access_log": False}}
    daemon = await start_daemon(config)
    async with daemon.http.post("/v1/chat/completions", json=chat()) as response:
        assert response.status == 200
    assert access_lines(caplog) == []


async def test_a_client_trickling_its_body_gets_408(
    daemon: Daemon, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(api, "BODY_TIMEOUT", 0.3)
    body = orjson.dumps(chat())
    length = {"Content-Length": str(len(body))}  # announced whole, sent in part
    reader, writer = await raw_request(
        daemon.port, "POST", "/v1/chat/completions", body[:10], length
    )
    headers_and_body = await asyncio.wait_for(reader.read(4096), 5)
    writer.close()
    assert headers_and_body.startswith(b"HTTP/1.1 408")
    assert b'"code":"request_timeout"' in headers_and_body


async def test_an_answer_too_large_to_hold_is_the_upstreams_fault(
    start_daemon: StartDaemon,
    fake: FakeUpstream,
    fake2: FakeUpstream,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(upstream, "MAX_ANSWER_BYTES", 10_000)
    fake.script(CHAT, Reply(body=b'{"padding": "' + b"x" * 50_000 + b'"}'))
    from proxy_harness import chain_config

    daemon = await start_daemon(chain_config([fake.base_url, fake2.base_url]))
    async with daemon.http.post("/v1/chat/completions", json=chat()) as response:
        assert response.status == 200
        assert response.headers["x-modelpool-model"] == "m2"


async def test_admin_config_hides_upstream_urls_unless_asked(
    start_daemon: StartDaemon, fake: FakeUpstream
) -> None:
    daemon = await start_daemon(single_pool_config(fake.base_url))
    text = await (await daemon.http.get("/admin/config")).text()
    assert fake.base_url not in text
    assert "expose_upstream_urls" in text
    shown = await start_daemon(
        single_pool_config(fake.base_url) | {"server": {"expose_upstream_urls": True}}
    )
    assert fake.base_url in await (await shown.http.get("/admin/config")).text()


async def test_every_served_answer_says_modelpools_own_overhead(
    daemon: Daemon, fake: FakeUpstream
) -> None:
    fake.script(CHAT, Reply(delay=0.2))  # the upstream's 200 ms are not modelpool's
    async with daemon.http.post("/v1/chat/completions", json=chat()) as response:
        overhead_ms = float(response.headers["x-modelpool-overhead-ms"])
    assert 0 < overhead_ms < 150
    async with daemon.http.post("/v1/chat/completions", json=chat(stream=True)) as stream:
        assert float(stream.headers["x-modelpool-overhead-ms"]) > 0
        await stream.read()
    metrics = await (await daemon.http.get("/metrics")).text()
    assert "modelpool_overhead_seconds_count 2.0" in metrics
