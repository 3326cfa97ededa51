"""Usage accounting end to end: every request priced and recorded once, budgets enforced.

The daemon is the real app; the usage store is the real SQLite file beside
the config; upstreams are the validating fakes, scripted with exact usage.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
import yaml
from aiohttp import web
from fake_upstream import (
    CHAT,
    MESSAGES,
    FakeUpstream,
    Reply,
    anthropic_message,
    anthropic_stream,
    chat_chunk,
    sse,
)
from proxy_harness import Daemon, StartDaemon, hang_up, provider, raw_request

from modelpool.app import ACCOUNTANT, build_app
from modelpool.config.load import load_config
from modelpool.usage.record import Totals
from modelpool.usage.store import Query

PRICE = {
    "input_per_mtok": 3.0,
    "output_per_mtok": 15.0,
    "cache_read_per_mtok": 0.3,
    "cache_write_per_mtok": 3.75,
}
OPENAI_USAGE = {
    "prompt_tokens": 1200,
    "completion_tokens": 345,
    "total_tokens": 1545,
    "prompt_tokens_details": {"cached_tokens": 1000},
}
ANTHROPIC_USAGE = {
    "input_tokens": 50,
    "output_tokens": 345,
    "cache_read_input_tokens": 1000,
    "cache_creation_input_tokens": 150,
}
KEY_A = "sk-client-a-0123456789"


def sha(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def config(kind: str, url: str, **extra: Any) -> dict[str, Any]:
    caps = ["chat", "stream", "tools"]
    model: dict[str, Any] = {"provider": "up", "upstream_model": "up-m", "capabilities": caps}
    model["price"] = PRICE
    return {
        "version": 1,
        "providers": {"up": provider(url, kind)},
        "models": {"m": model},
        "pools": {"p": {"members": ["m"]}},
        "usage": {"flush_interval": "100ms"},
    } | extra


async def totals(daemon: Daemon, **query: Any) -> Totals:
    store = daemon.app[ACCOUNTANT].store
    assert store is not None
    rows = await store.report(Query(group_by=(), **query))
    return rows[0].totals if rows else Totals()


def chat(**extra: Any) -> dict[str, Any]:
    return {"model": "p", "messages": [{"role": "user", "content": "hi"}]} | extra


def message(**extra: Any) -> dict[str, Any]:
    return {
        "model": "p",
        "max_tokens": 500,
        "messages": [{"role": "user", "content": "hi"}],
    } | extra


# what OPENAI_USAGE and ANTHROPIC_USAGE cost at PRICE, by hand
OPENAI_COST = (200 * 3.0 + 1000 * 0.3 + 345 * 15.0) / 1e6
ANTHROPIC_COST = (50 * 3.0 + 1000 * 0.3 + 150 * 3.75 + 345 * 15.0) / 1e6


def openai_answer() -> dict[str, Any]:
    message = {"role": "assistant", "content": "ok"}
    choice = {"index": 0, "message": message, "finish_reason": "stop"}
    return {"id": "c", "object": "chat.completion", "model": "up-m", "choices": [choice],
            "usage": OPENAI_USAGE}  # fmt: skip


def openai_stream() -> list[bytes]:
    usage_chunk = {"id": "c", "object": "chat.completion.chunk", "model": "up-m", "choices": [],
                   "usage": OPENAI_USAGE}  # fmt: skip
    return [chat_chunk("o"), chat_chunk("k", finish="stop"), sse(usage_chunk), sse("[DONE]")]


@pytest.mark.parametrize(
    ("kind", "ingress", "stream", "expected"),
    [
        ("openai", "chat", False, (200, 345, 1000, 0, OPENAI_COST)),
        ("openai", "chat", True, (200, 345, 1000, 0, OPENAI_COST)),
        ("openai", "messages", False, (200, 345, 1000, 0, OPENAI_COST)),
        ("openai", "messages", True, (200, 345, 1000, 0, OPENAI_COST)),
        ("anthropic", "messages", False, (50, 345, 1000, 150, ANTHROPIC_COST)),
        ("anthropic", "messages", True, (50, 345, 1000, 150, ANTHROPIC_COST)),
        ("anthropic", "chat", False, (50, 345, 1000, 150, ANTHROPIC_COST)),
        ("anthropic", "chat", True, (50, 345, 1000, 150, ANTHROPIC_COST)),
    ],
)
async def test_usage_and_cost_are_recorded_exactly_for_every_format(
    start_daemon: StartDaemon,
    fake: FakeUpstream,
    kind: str,
    ingress: str,
    stream: bool,
    expected: tuple[int, int, int, int, float],
) -> None:
    if kind == "openai":
        fake.script(CHAT, Reply(chunks=openai_stream()) if stream else Reply(json=openai_answer()))
        daemon = await start_daemon(config("openai", fake.base_url))
    else:
        reply = (
            Reply(chunks=anthropic_stream(["ok"], usage=ANTHROPIC_USAGE))
            if stream
            else Reply(json=anthropic_message(["ok"], usage=ANTHROPIC_USAGE))
        )
        fake.script(MESSAGES, reply)
        daemon = await start_daemon(config("anthropic", fake.root))
    path, body = (
        ("/v1/chat/completions", chat()) if ingress == "chat" else ("/v1/messages", message())
    )
    async with daemon.http.post(path, json=body | {"stream": stream}) as response:
        assert response.status == 200
        await response.read()

    got = await totals(daemon)
    assert (got.input_tokens, got.output_tokens, got.cache_read_tokens, got.cache_write_tokens) == (
        expected[:4]
    )
    assert got.cost_usd == pytest.approx(expected[4], abs=1e-9)
    assert (got.requests, got.errors, got.cancelled, got.cost_unknown) == (1, 0, 0, 0)


async def test_retries_and_failovers_are_counted_once_and_failures_as_errors(
    start_daemon: StartDaemon, fake: FakeUpstream, fake2: FakeUpstream
) -> None:
    fake.script(CHAT, Reply.error(500))
    fake2.script(CHAT, Reply(json=openai_answer()))
    cfg = config("openai", fake.base_url)
    cfg["providers"]["up2"] = provider(fake2.base_url)
    cfg["models"]["m2"] = cfg["models"]["m"] | {"provider": "up2"}
    cfg["pools"]["p"] = {"strategy": "priority", "members": ["m", "m2"]}
    daemon = await start_daemon(cfg)
    async with daemon.http.post("/v1/chat/completions", json=chat()) as response:
        assert response.headers["x-modelpool-attempts"] == "2"
    fake2.script(CHAT, Reply.error(500))
    async with daemon.http.post("/v1/chat/completions", json=chat()) as response:
        assert response.status >= 500

    store = daemon.app[ACCOUNTANT].store
    assert store is not None
    rows = {r.key[0]: r.totals for r in await store.report(Query(group_by=("model",)))}
    assert rows["m2"].requests == 1
    assert rows["m2"].output_tokens == 345
    assert rows["-"].requests == 1
    assert rows["-"].errors == 1
    assert rows["-"].tokens == 0
    assert set(rows) == {"m2", "-"}  # the failed attempt at m is not usage


async def test_a_client_gone_mid_stream_is_charged_for_what_was_generated(
    start_daemon: StartDaemon, fake: FakeUpstream
) -> None:
    chunks = [chat_chunk(f" w{i}") for i in range(20)]
    fake.script(CHAT, Reply(chunks=chunks, stall_after=12))
    daemon = await start_daemon(config("openai", fake.base_url))
    body = orjson.dumps(chat(stream=True))
    reader, writer = await raw_request(daemon.port, "POST", "/v1/chat/completions", body)
    await reader.readuntil(b"w11")  # twelve events relayed, then the upstream stalls
    await hang_up(writer)
    await daemon.settled(within=2.0)
    got = await totals(daemon)
    assert got.cancelled == 1
    assert got.output_tokens == 10  # one per relayed event past the first two
    assert got.input_tokens >= 1
    assert got.cost_usd > 0


async def test_a_model_without_a_price_is_cost_unknown_not_free(
    start_daemon: StartDaemon, fake: FakeUpstream
) -> None:
    cfg = config("openai", fake.base_url)
    del cfg["models"]["m"]["price"]
    fake.script(CHAT, Reply(json=openai_answer()))
    daemon = await start_daemon(cfg)
    async with daemon.http.post("/v1/chat/completions", json=chat()) as response:
        assert response.status == 200
    got = await totals(daemon)
    assert (got.cost_unknown, got.cost_usd, got.output_tokens) == (1, 0.0, 345)
    metrics = await (await daemon.http.get("/metrics")).text()
    assert 'modelpool_cost_unknown_requests_total{client="-",model="m",pool="p"} 1.0' in metrics


UNPRICED = "model has no price: its requests are counted as cost_unknown, not $0"


def unpriced_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [getattr(r, "model", "") for r in caplog.records if r.getMessage() == UNPRICED]


def with_models(cfg: dict[str, Any], **prices: dict[str, float] | None) -> dict[str, Any]:
    """``cfg`` plus a model per keyword on the same provider, priced or (None) not."""
    for name, price in prices.items():
        cfg["models"][name] = {"provider": "up", "upstream_model": f"up-{name}"}
        if price is not None:
            cfg["models"][name]["price"] = price
    return cfg


async def test_a_model_without_a_price_is_warned_about_at_startup(
    start_daemon: StartDaemon, fake: FakeUpstream, caplog: pytest.LogCaptureFixture
) -> None:
    cfg = with_models(config("openai", fake.base_url), free=None, also_free=None, paid=PRICE)
    cfg["providers"]["mock"] = {"type": "mock"}
    cfg["models"]["mocked"] = {"provider": "mock"}  # the mock costs nothing: no warning
    caplog.set_level(logging.WARNING)
    await start_daemon(cfg)
    assert unpriced_warnings(caplog) == ["also_free", "free"]


async def test_a_reload_that_adds_a_model_without_a_price_warns_about_it_alone(
    start_daemon: StartDaemon, fake: FakeUpstream, caplog: pytest.LogCaptureFixture
) -> None:
    cfg = with_models(config("openai", fake.base_url), free=None, paid=PRICE)
    daemon = await start_daemon(cfg)
    caplog.clear()
    caplog.set_level(logging.WARNING)
    cfg = with_models(cfg, new_free=None)
    del cfg["models"]["paid"]["price"]  # a model that lost its price is news too
    assert (await daemon.reload(cfg))["result"] == "applied"
    assert unpriced_warnings(caplog) == ["new_free", "paid"]  # not `free` again


# --------------------------------------------------------------- budgets


def budget_config(fake: FakeUpstream, budget: dict[str, Any], **client: Any) -> dict[str, Any]:
    cfg = config("openai", fake.base_url)
    cfg["clients"] = {"a": {"key_sha256": sha(KEY_A), "budget": budget} | client}
    return cfg


async def test_a_client_over_budget_gets_429_with_when_it_resets_in_its_own_api(
    start_daemon: StartDaemon, fake: FakeUpstream
) -> None:
    fake.script(CHAT, Reply(json=openai_answer()))
    daemon = await start_daemon(budget_config(fake, {"usd_per_day": 0.001}))
    headers = {"Authorization": f"Bearer {KEY_A}"}
    async with daemon.http.post("/v1/chat/completions", json=chat(), headers=headers) as response:
        assert response.status == 200  # 0.0060 spent of 0.001: over, by this one request
    async with daemon.http.post("/v1/chat/completions", json=chat(), headers=headers) as response:
        assert response.status == 429
        assert 0 < int(response.headers["Retry-After"]) <= 86400
        error = await response.json()
    assert error["error"]["code"] == "budget_exceeded"
    assert "client 'a' has used its budget of $0.001 per day" in error["error"]["message"]
    assert "resets at" in error["error"]["message"]
    async with daemon.http.post(
        "/v1/messages", json=message(), headers={"x-api-key": KEY_A}
    ) as response:
        assert response.status == 429
        assert (await response.json())["type"] == "error"
    assert len(fake.requests) == 1


async def test_a_budget_can_answer_402(start_daemon: StartDaemon, fake: FakeUpstream) -> None:
    daemon = await start_daemon(budget_config(fake, {"usd_per_month": 0, "status": 402}))
    headers = {"Authorization": f"Bearer {KEY_A}"}
    async with daemon.http.post("/v1/chat/completions", json=chat(), headers=headers) as response:
        assert response.status == 402
    assert fake.requests == []


async def status_of_chat(daemon: Daemon) -> int:
    """The status of one chat request (max_tokens 100) sent with client a's key."""
    headers = {"Authorization": f"Bearer {KEY_A}"}
    body = chat(max_tokens=100)
    async with daemon.http.post("/v1/chat/completions", json=body, headers=headers) as response:
        await response.read()
        return response.status


async def test_fifty_concurrent_requests_cannot_overshoot_a_budget_by_more_than_one(
    start_daemon: StartDaemon, fake: FakeUpstream
) -> None:
    # each request costs exactly its worst case: max_tokens 100 output + ~1 prompt token
    answer = openai_answer() | {"usage": {"prompt_tokens": 1, "completion_tokens": 100}}
    fake.script(CHAT, Reply(json=answer, delay=0.05))
    cost = (1 * 3.0 + 100 * 15.0) / 1e6
    budget = cost * 50 / 3  # the 50 requests cost 3 times the budget
    daemon = await start_daemon(budget_config(fake, {"usd_per_day": budget}))

    statuses = await asyncio.gather(*(status_of_chat(daemon) for _ in range(50)))
    admitted = statuses.count(200)
    assert statuses.count(429) == 50 - admitted
    got = await totals(daemon)
    assert got.cost_usd <= budget + cost + 1e-12
    assert admitted >= 16  # the budget itself was used


async def test_budgets_survive_a_reload_and_a_restart(tmp_path: Path, fake: FakeUpstream) -> None:
    fake.script(CHAT, Reply(json=openai_answer()))
    path = tmp_path / "pools.yaml"
    cfg = budget_config(fake, {"usd_per_day": 0.005})
    path.write_text(yaml.safe_dump(cfg))
    headers = {"Authorization": f"Bearer {KEY_A}"}

    async def run(expect: list[int], reload: bool = False) -> None:
        app = build_app(load_config(path, env={}))
        runner = web.AppRunner(app, handler_cancellation=True)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        url = f"http://127.0.0.1:{runner.addresses[0][1]}"
        try:
            async with aiohttp.ClientSession(url) as http:
                for status in expect:
                    if reload:
                        cfg["pools"]["p"]["description"] = "changed"
                        path.write_text(yaml.safe_dump(cfg))
                        async with http.post("/admin/reload") as response:
                            assert response.status == 200
                    async with http.post("/v1/chat/completions", json=chat(), headers=headers) as r:
                        assert r.status == status
        finally:
            await runner.cleanup()

    await run([200])  # spends 0.0060 of 0.005
    await run([429], reload=True)  # a restart, then a reload: still over
    assert len(fake.requests) == 1


async def test_a_reload_keeps_what_a_live_meter_spent(
    start_daemon: StartDaemon, fake: FakeUpstream
) -> None:
    """With no store the meter is the only record of the spend: a reload that reset it
    (or rebuilt the budget book) would admit the next request."""
    fake.script(CHAT, Reply(json=openai_answer()))
    cfg = budget_config(fake, {"usd_per_day": 0.005})
    cfg["usage"] = {"store": "none"}
    daemon = await start_daemon(cfg)
    headers = {"Authorization": f"Bearer {KEY_A}"}
    async with daemon.http.post("/v1/chat/completions", json=chat(), headers=headers) as r:
        assert r.status == 200  # spends 0.0060 of 0.005
    cfg["pools"]["p"]["description"] = "changed"
    cfg["clients"]["a"]["budget"]["usd_per_day"] = 0.0055  # a changed cap, the spend kept
    assert (await daemon.reload(cfg))["result"] == "applied"
    async with daemon.http.post("/v1/chat/completions", json=chat(), headers=headers) as r:
        assert r.status == 429
        assert "budget of $0.0055 per day" in (await r.json())["error"]["message"]
    assert len(fake.requests) == 1


async def test_a_reload_keeps_what_a_live_meter_reserved(
    start_daemon: StartDaemon, fake: FakeUpstream
) -> None:
    """A request in flight holds a reservation that only the meter knows (nothing is settled,
    nothing flushed in an hour): after a reload it must still keep the next one out."""
    answer = openai_answer() | {"usage": {"prompt_tokens": 1, "completion_tokens": 100}}
    fake.script(CHAT, Reply(json=answer, delay=0.5))
    cfg = budget_config(fake, {"usd_per_day": 0.001})  # one reservation (~0.0015) fills it
    cfg["usage"]["flush_interval"] = "1h"
    daemon = await start_daemon(cfg)

    first = asyncio.create_task(status_of_chat(daemon))
    await fake.wait_for_requests(1)
    cfg["pools"]["p"]["description"] = "changed"
    assert (await daemon.reload(cfg))["result"] == "applied"
    assert await status_of_chat(daemon) == 429
    assert not first.done()  # the reservation was still open when the refusal came
    assert await first == 200
    assert len(fake.requests) == 1


async def test_admin_usage_reports_exactly_and_lists_budgets_and_keys_stay_out(
    start_daemon: StartDaemon, fake: FakeUpstream, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    fake.script(CHAT, Reply(json=openai_answer()))
    daemon = await start_daemon(budget_config(fake, {"usd_per_day": 5, "tokens_per_month": 10**6}))
    headers = {"Authorization": f"Bearer {KEY_A}"}
    for _ in range(3):
        async with daemon.http.post("/v1/chat/completions", json=chat(), headers=headers) as r:
            assert r.status == 200
    async with daemon.http.get("/admin/usage", params={"by": "client,model"}) as response:
        assert response.status == 200
        report = await response.json()
    assert report["group_by"] == ["client", "model"]
    [row] = report["rows"]
    assert (row["client"], row["model"], row["requests"]) == ("a", "m", 3)
    assert row["cost_usd"] == pytest.approx(3 * OPENAI_COST, abs=1e-9)
    budgets = {(b["unit"], b["period"]): b for b in report["budgets"]}
    assert budgets["usd", "day"]["spent"] == pytest.approx(3 * OPENAI_COST, abs=1e-9)
    assert budgets["tokens", "month"]["spent"] == 3 * 1545
    async with daemon.http.get("/admin/usage", params={"by": "colour"}) as response:
        assert response.status == 400

    store = daemon.app[ACCOUNTANT].store
    assert store is not None
    await store.flush()
    stored = await asyncio.to_thread(_files_bytes, tmp_path, "usage.db*")
    assert stored  # the store is there, in files
    assert KEY_A.encode() not in stored
    assert sha(KEY_A).encode() not in stored
    assert KEY_A not in caplog.text


def _files_bytes(directory: Path, pattern: str) -> bytes:
    return b"".join(path.read_bytes() for path in directory.glob(pattern))
