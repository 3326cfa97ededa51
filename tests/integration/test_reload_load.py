"""Hot reload under load (issue 3, SPEC §4): 60 reloads while ~240 requests are in flight.

The real daemon (``build_app`` served by an ``AppRunner`` with
``handler_cancellation=True``) proxies to two fake upstreams. 240 client
workers keep one request each in flight the whole time — half of them
streams, many of those lasting 1-3 s — while the test rewrites the YAML and
reloads 60 times: valid edits (weights, strategy, timeouts, connection
limits), rejected edits (a half-written file, an unknown member, a bad enum,
a bad duration), a pool removed and added back, a model and its pool removed
and added back, and the provider key rotated.

Which table a request started on is recorded exactly: a test middleware,
innermost (so nothing awaits between it and the handler's one read of
``holder.current``), notes the generation it saw. That is checked against
wall-clock order too: a request sent after a reload returned must be on
that generation or a later one, and one answered before a reload began on
an earlier one. Each request carries its id to the upstream (``user``), so
every upstream request is matched to the generation whose key it must carry.
"""

from __future__ import annotations

import asyncio
import random
import resource
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
import yaml
from aiohttp import web
from fake_upstream import FakeUpstream, Received, Reply
from proxy_harness import CAPABILITIES, read_sse

from modelpool.app import HOLDER, REGISTRY, RELOADER, TRANSPORTS, build_app
from modelpool.config.load import load_config
from modelpool.table import RoutingTable, TableHolder
from modelpool.upstream import HttpTransport, Transports

pytestmark = pytest.mark.slow

CHAT = "/v1/chat/completions"
WORKERS = 240
CYCLES = 6
"""Each cycle is 10 reloads (7 applied, 3 rejected): 60 reloads in all."""
PAUSE = 0.04
"""Seconds between two reloads, so traffic runs on every generation."""
SLOW_WORDS = ("one", " two", " three", " four", " five", " six")
ROUTES = ("stable", "backup", "extra", "solo", "m1", "m4", "m5")
ROUTE_WEIGHTS = (30, 15, 20, 10, 10, 5, 10)
TIMEOUTS = {"connect": "5s", "first_byte": "10s", "idle": "10s", "total": "30s"}


class PacedUpstream(FakeUpstream):
    """The fake upstream; a stream request with ``x_chunk_delay`` gets a slow stream."""

    async def _respond(
        self, request: web.Request, received: Received, reply: Reply
    ) -> web.StreamResponse:
        body = received.json
        if isinstance(body, dict) and body.get("stream") and body.get("x_chunk_delay"):
            reply = Reply.stream(*SLOW_WORDS, chunk_delay=float(body["x_chunk_delay"]))
        return await super()._respond(request, received, reply)


# ---------------------------------------------------------------------- the config


@dataclass(frozen=True)
class Shape:
    """What the next config looks like; each reload changes one thing."""

    step: int = 0
    key: int = 0
    """Provider ``a``'s key is ``key_for(key)``: bumped to rotate it."""
    weights: tuple[int, int] = (1, 1)
    strategy: str = "round_robin"
    total: str = "30s"
    extra: bool = True
    """Pool ``extra`` is present."""
    solo: bool = True
    """Model ``m5`` and pool ``solo`` are present."""
    connections: int = 300
    """Provider ``b``'s max_connections: a change swaps its connection pool."""


def key_for(index: int) -> str:
    return f"sk-rotating-{index:03d}-0123456789abcdef"


B_KEY = "sk-static-b-0123456789abcdef"


def config_for(shape: Shape, url_a: str, url_b: str) -> dict[str, Any]:
    def model(provider: str, name: str) -> dict[str, Any]:
        return {"provider": provider, "upstream_model": f"up-{name}", "capabilities": CAPABILITIES}

    models = {
        "m1": model("a", "m1"),
        "m2": model("a", "m2"),
        "m3": model("b", "m3"),
        "m4": model("b", "m4"),
    }
    w1, w2 = shape.weights
    pools: dict[str, Any] = {
        "stable": {
            "strategy": shape.strategy,
            "members": [{"model": "m1", "weight": w1}, {"model": "m3", "weight": w2}],
            "timeouts": {"total": shape.total},
            "retry": {"attempts": 1},  # a failure must reach the client, not be retried away
        },
        "backup": {"members": ["m2", "m4"], "retry": {"attempts": 1}},
    }
    if shape.extra:
        pools["extra"] = {"members": ["m2", "m3"], "retry": {"attempts": 1}}
    if shape.solo:
        models["m5"] = model("b", "m5")
        pools["solo"] = {"members": ["m5"], "retry": {"attempts": 1}}
    return {
        "version": 1,
        "providers": {
            "a": {
                "type": "openai",
                "base_url": url_a,
                "api_key": key_for(shape.key),
                "timeouts": TIMEOUTS,
                "max_connections": 300,
            },
            "b": {
                "type": "openai",
                "base_url": url_b,
                "api_key": B_KEY,
                "timeouts": TIMEOUTS,
                "max_connections": shape.connections,
            },
        },
        "models": models,
        "pools": pools,
    }


def render(shape: Shape, url_a: str, url_b: str) -> str:
    # The step in a comment: every write has new bytes, so no valid one is "unchanged".
    text = yaml.safe_dump(config_for(shape, url_a, url_b), sort_keys=False)
    return f"# step {shape.step}\n{text}"


Edit = Callable[[Shape, str], tuple[Shape, str | None]]
"""(current shape, its YAML) → (next shape, or the same one if the edit is invalid; the broken
YAML for an invalid edit, else None)."""


def weights(shape: Shape, text: str) -> tuple[Shape, str | None]:
    w1, w2 = shape.weights
    return replace(shape, weights=(w2 % 4 + 1, w1)), None


def strategy_and_timeout(shape: Shape, text: str) -> tuple[Shape, str | None]:
    strategy = {"round_robin": "weighted", "weighted": "priority"}.get(
        shape.strategy, "round_robin"
    )
    total = "40s" if shape.total == "30s" else "30s"
    return replace(shape, strategy=strategy, total=total), None


def rotate_key(shape: Shape, text: str) -> tuple[Shape, str | None]:
    return replace(shape, key=shape.key + 1), None


def remove_extra(shape: Shape, text: str) -> tuple[Shape, str | None]:
    return replace(shape, extra=False), None


def add_extra(shape: Shape, text: str) -> tuple[Shape, str | None]:
    return replace(shape, extra=True), None


def toggle_solo(shape: Shape, text: str) -> tuple[Shape, str | None]:
    return replace(shape, solo=not shape.solo), None


def connections(shape: Shape, text: str) -> tuple[Shape, str | None]:
    return replace(shape, connections=700 - shape.connections), None


def half_written(shape: Shape, text: str) -> tuple[Shape, str | None]:
    return shape, text[: len(text) // 2] + "\n  - {unclosed: [\n"


def unknown_member(shape: Shape, text: str) -> tuple[Shape, str | None]:
    return shape, text.replace("members:\n    - m2\n    - m4", "members:\n    - m2\n    - m44")


def bad_value(shape: Shape, text: str) -> tuple[Shape, str | None]:
    if shape.step % 20 < 10:
        return shape, text.replace(f"strategy: {shape.strategy}", "strategy: fastest")
    return shape, text.replace(f"total: {shape.total}", "total: soon")


CYCLE: tuple[Edit, ...] = (
    weights,
    half_written,
    remove_extra,
    rotate_key,
    unknown_member,
    add_extra,
    strategy_and_timeout,
    bad_value,
    toggle_solo,
    connections,
)


# ---------------------------------------------------------------------- records


@dataclass(frozen=True)
class Snapshot:
    """What one generation serves: its routes and the key each provider sends."""

    generation: int
    routes: frozenset[str]
    keys: Mapping[str, str]

    @classmethod
    def of(cls, table: RoutingTable) -> Snapshot:
        keys = {
            name: spec.api_key.reveal()
            for name, spec in table.config.providers.items()
            if spec.api_key is not None
        }
        return cls(table.generation, frozenset(table.routes), keys)


@dataclass(frozen=True)
class ReloadRecord:
    step: int
    edit: str
    result: str
    generation: int
    """The generation serving once the reload returned."""
    began: float
    returned: float
    before: Snapshot
    after: Snapshot


@dataclass
class Call:
    id: int
    route: str
    kind: str
    """``slow`` (a 1-3 s stream), ``stream`` (a quick one) or ``json``."""
    sent: float = 0.0
    done: float = 0.0
    status: int = 0
    problem: str | None = None
    """Why the answer is not a complete, correct one (None: it is)."""


@dataclass
class Run:
    calls: list[Call] = field(default_factory=list)
    reloads: list[ReloadRecord] = field(default_factory=list)
    generation_of: dict[int, int] = field(default_factory=dict)
    """Request id → the generation its handler took, recorded by the middleware."""
    peak_in_flight: int = 0


# ---------------------------------------------------------------------- the daemon


def generation_recorder(holder: TableHolder, seen: dict[int, int]) -> Any:
    """Innermost middleware: nothing awaits between it and the handler's read of the table."""

    @web.middleware
    async def record(
        request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        test_id = request.headers.get("x-test-id")
        if test_id is not None:
            seen[int(test_id)] = holder.current.generation
        return await handler(request)

    return record


@asynccontextmanager
async def serve(app: web.Application) -> AsyncIterator[str]:
    runner = web.AppRunner(app, handler_cancellation=True, access_log=None)
    await runner.setup()
    try:
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        yield f"http://127.0.0.1:{runner.addresses[0][1]}"
    finally:
        await runner.cleanup()


def record_transports(transports: Transports) -> list[HttpTransport]:
    """Every connection pool the daemon ever creates, to check each retired one closes."""
    created: list[HttpTransport] = []
    get = transports.get

    def recording_get(endpoint: str, max_connections: int) -> HttpTransport:
        transport = get(endpoint, max_connections)
        if all(transport is not seen for seen in created):
            created.append(transport)
        return transport

    transports.get = recording_get  # type: ignore[method-assign]
    return created


def enough_file_descriptors(needed: int = 4096) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < needed:
        target = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))


# ---------------------------------------------------------------------- traffic


async def one_call(http: aiohttp.ClientSession, call: Call, rng: random.Random) -> None:
    body: dict[str, Any] = {
        "model": call.route,
        "messages": [{"role": "user", "content": "hi"}],
        "user": f"call-{call.id}",
    }
    if call.kind != "json":
        body["stream"] = True
    if call.kind == "slow":
        body["x_chunk_delay"] = round(rng.uniform(0.17, 0.5), 3)  # 6 gaps: 1-3 s
    call.sent = time.monotonic()
    try:
        async with http.post(CHAT, json=body, headers={"x-test-id": str(call.id)}) as response:
            call.status = response.status
            call.problem = await judge(response, call)
    except (aiohttp.ClientError, TimeoutError) as exc:
        call.problem = f"client error: {type(exc).__name__}: {exc}"
    call.done = time.monotonic()


async def judge(response: aiohttp.ClientResponse, call: Call) -> str | None:
    """Why this answer is not complete and correct; None when it is."""
    if response.status == 404:
        error = orjson.loads(await response.read()).get("error", {})
        return None if error.get("code") == "model_not_found" else f"404 body: {error}"
    if response.status != 200:
        return f"HTTP {response.status}: {(await response.read())[:300]!r}"
    model = response.headers.get("x-modelpool-model", "?")
    if call.kind == "json":
        answer = orjson.loads(await response.read())
        content = answer["choices"][0]["message"]["content"]
        return None if content == f"hello from up-{model}" else f"wrong body: {answer}"
    events = [event.data for event in await read_sse(response, within=20.0)]
    words = len(SLOW_WORDS) if call.kind == "slow" else 3
    if events[-1:] != [b"[DONE]"] or len(events) != words + 1:
        return f"truncated stream: {events}"
    if any(b'"error"' in data for data in events):
        return f"error inside the stream: {events}"
    return None


async def worker(
    index: int, http: aiohttp.ClientSession, run: Run, stop: asyncio.Event, ids: Iterator[int]
) -> None:
    rng = random.Random(index)
    while not stop.is_set():
        kind = rng.choices(("slow", "stream", "json"), weights=(35, 15, 50))[0]
        route = rng.choices(ROUTES, weights=ROUTE_WEIGHTS)[0]
        call = Call(next(ids), route, kind)
        run.calls.append(call)
        await one_call(http, call, rng)
        await asyncio.sleep(rng.uniform(0, 0.02))


async def reload_all(
    app: web.Application,
    admin: aiohttp.ClientSession,
    path: Path,
    urls: tuple[str, str],
    run: Run,
    in_flight: Callable[[], int],
) -> None:
    """Apply CYCLES x CYCLE edits, recording when each reload began and returned."""
    holder, reloader = app[HOLDER], app[RELOADER]
    shape = Shape()
    for step in range(1, CYCLES * len(CYCLE) + 1):
        edit = CYCLE[(step - 1) % len(CYCLE)]
        current = replace(shape, step=step)
        candidate, broken = edit(current, render(current, *urls))
        text = broken if broken is not None else render(candidate, *urls)
        assert text != render(current, *urls), f"step {step}: {edit.__name__} changed nothing"
        await asyncio.to_thread(path.write_text, text)
        before_table = holder.current
        began = time.monotonic()
        if step % 4 == 0:  # some through the admin endpoint, as an operator would
            async with admin.post("/admin/reload") as response:
                outcome = await response.json()
                assert response.status == (422 if outcome["result"] == "rejected" else 200)
        else:
            outcome = (await reloader.reload("test")).as_json()
        returned = time.monotonic()
        expected = "rejected" if broken is not None else "applied"
        assert outcome["result"] == expected, f"step {step} ({edit.__name__}): {outcome}"
        if expected == "rejected":
            assert outcome["errors"], outcome
            assert holder.current is before_table, "a rejected reload replaced the table"
            async with admin.get("/admin/status") as response:
                status = await response.json()
            assert status["generation"] == before_table.generation
            assert status["last_reload"]["result"] == "rejected"
            assert status["last_reload"]["errors"] == outcome["errors"]
        else:
            assert holder.current.generation == before_table.generation + 1
            shape = candidate
        run.reloads.append(
            ReloadRecord(
                step,
                edit.__name__,
                outcome["result"],
                outcome["generation"],
                began,
                returned,
                Snapshot.of(before_table),
                Snapshot.of(holder.current),
            )
        )
        run.peak_in_flight = max(run.peak_in_flight, in_flight())
        await asyncio.sleep(PAUSE)


# ---------------------------------------------------------------------- the test


async def test_sixty_reloads_under_load_fail_nothing(tmp_path: Path) -> None:
    enough_file_descriptors()
    fake_a, fake_b = await PacedUpstream().start(), await PacedUpstream().start()
    urls = (fake_a.base_url, fake_b.base_url)
    path = tmp_path / "pools.yaml"
    path.write_text(render(Shape(), *urls))
    app = build_app(load_config(path, env={}))
    run = Run()
    app.middlewares.append(generation_recorder(app[HOLDER], run.generation_of))
    created = record_transports(app[TRANSPORTS])
    snapshots = {1: Snapshot.of(app[HOLDER].current)}

    def in_flight() -> int:
        return sum(state.in_flight for state in app[REGISTRY].models())

    try:
        async with serve(app) as url:
            limits = aiohttp.TCPConnector(limit=0)
            timeout = aiohttp.ClientTimeout(total=30)
            async with (
                aiohttp.ClientSession(url, connector=limits, timeout=timeout) as http,
                aiohttp.ClientSession(url) as admin,
            ):
                stop = asyncio.Event()
                ids = iter(range(1, 10**9))
                workers = [
                    asyncio.create_task(worker(i, http, run, stop, ids)) for i in range(WORKERS)
                ]
                await asyncio.sleep(0.5)  # every worker has a request in flight
                try:
                    await reload_all(app, admin, path, urls, run, in_flight)
                finally:
                    stop.set()
                    await asyncio.gather(*workers)
                await settled(in_flight)
                await check_state_released(app, created)
                async with admin.get("/metrics") as response:
                    metrics = await response.text()
    finally:
        await fake_a.close()
        await fake_b.close()
    for record in run.reloads:
        if record.result == "applied":
            snapshots[record.generation] = record.after

    applied = [r for r in run.reloads if r.result == "applied"]
    rejected = [r for r in run.reloads if r.result == "rejected"]
    assert (len(run.reloads), len(applied), len(rejected)) == (60, 42, 18)
    assert [r.generation for r in applied] == list(range(2, 2 + len(applied)))
    assert app[HOLDER].current.generation == 1 + len(applied)
    assert f'modelpool_config_reloads_total{{result="applied"}} {len(applied)}.0' in metrics
    assert f'modelpool_config_reloads_total{{result="rejected"}} {len(rejected)}.0' in metrics
    assert f"modelpool_config_generation {1 + len(applied)}.0" in metrics

    check_every_call(run, snapshots)
    check_generations_against_the_clock(run, applied)
    check_keys_at_the_upstream(run, snapshots, fake_a, fake_b, applied)
    check_coverage(run, applied)


def check_every_call(run: Run, snapshots: Mapping[int, Snapshot]) -> None:
    """Zero failures: each call is a complete 200, or a 404 because its table lacks the route."""
    problems = [c for c in run.calls if c.problem is not None]
    assert not problems, f"{len(problems)} failed calls, e.g. {problems[:3]}"
    for call in run.calls:
        generation = run.generation_of[call.id]
        expected = 200 if call.route in snapshots[generation].routes else 404
        assert call.status == expected, (call, generation, sorted(snapshots[generation].routes))


def check_generations_against_the_clock(run: Run, applied: list[ReloadRecord]) -> None:
    """A call sent after a swap returned is on it or later; one answered before a reload
    began is on an earlier generation. So a 404 for a removed pool only ever answers a
    call that started after that removal's swap."""
    for call in run.calls:
        generation = run.generation_of[call.id]
        for reload in applied:
            if reload.returned < call.sent:
                assert generation >= reload.generation, (call, reload)
            if call.done < reload.began:
                assert generation < reload.generation, (call, reload)


def check_keys_at_the_upstream(
    run: Run,
    snapshots: Mapping[int, Snapshot],
    fake_a: FakeUpstream,
    fake_b: FakeUpstream,
    applied: list[ReloadRecord],
) -> None:
    """Each upstream request carries the key of the table its call started on, so none
    that started after a rotation's swap carries the old key."""
    sent = {call.id: call.sent for call in run.calls}
    for provider, fake in (("a", fake_a), ("b", fake_b)):
        for received in fake.requests:
            call_id = int(received.json["user"].removeprefix("call-"))
            key = snapshots[run.generation_of[call_id]].keys[provider]
            assert received.headers["Authorization"] == f"Bearer {key}", (provider, call_id)
    rotations = [r for r in applied if r.edit == "rotate_key"]
    assert len(rotations) == CYCLES
    for rotation in rotations:
        old = f"Bearer {rotation.before.keys['a']}"
        assert old != f"Bearer {rotation.after.keys['a']}"
        late = [
            r
            for r in fake_a.requests
            if sent[int(r.json["user"].removeprefix("call-"))] > rotation.returned
        ]
        assert late, "no upstream request started after a key rotation"
        assert all(r.headers["Authorization"] != old for r in late)


def check_coverage(run: Run, applied: list[ReloadRecord]) -> None:
    """The run exercised what it claims: load, long streams across swaps, removed routes."""
    assert len(run.calls) >= 600, len(run.calls)  # ~1,700 on an idle 2-core machine
    assert run.peak_in_flight >= 100, run.peak_in_flight
    streams = [c for c in run.calls if c.kind != "json"]
    assert len(streams) * 3 >= len(run.calls) - 100  # about half the calls stream

    def spans(call: Call, reload: ReloadRecord) -> bool:
        return call.sent < reload.began and call.done > reload.returned

    slow = [c for c in run.calls if c.kind == "slow"]
    assert max(c.done - c.sent for c in slow) >= 1.0
    assert sum(any(spans(c, r) for r in applied) for c in slow) >= 100  # ~500
    removals = [r for r in applied if r.before.routes - r.after.routes]
    assert len(removals) == CYCLES + CYCLES // 2  # `extra` every cycle, `m5` + `solo` every other
    kept_alive = [
        c
        for c in slow
        for r in removals
        if c.route in r.before.routes - r.after.routes and spans(c, r) and c.status == 200
    ]
    assert kept_alive, "no stream on a removed route outlived the removal"
    assert sum(c.status == 404 for c in run.calls) >= 10
    print(
        f"\n{len(run.calls)} calls ({len(slow)} slow streams), peak in flight"
        f" {run.peak_in_flight}, {sum(any(spans(c, r) for r in applied) for c in slow)} slow"
        f" streams spanned a swap, {len(kept_alive)} outlived the removal of their route,"
        f" {sum(c.status == 404 for c in run.calls)} answered 404"
    )


async def settled(in_flight: Callable[[], int], within: float = 10.0) -> None:
    deadline = time.monotonic() + within
    while in_flight():
        assert time.monotonic() < deadline, f"{in_flight()} requests still in flight"
        await asyncio.sleep(0.01)


async def check_state_released(app: web.Application, created: list[HttpTransport]) -> None:
    """Nothing the last table does not use is still held: model state, pool state, pools."""
    table, registry = app[HOLDER].current, app[REGISTRY]
    assert {s.identity for s in registry.models()} == {m.identity for m in table.models.values()}
    assert all(s.on_idle is None for s in registry.models())
    assert set(registry.pools()) == {pool.state_key for pool in table.routes.values()}
    live = {key for model in table.models.values() if (key := model.transport_key)}
    assert set(app[TRANSPORTS]._pools) == live
    retired = [t for t in created if t not in app[TRANSPORTS]._pools.values()]
    assert retired, "no connection pool was ever retired"
    for transport in retired:
        assert (transport.retired, transport.active, transport.closed) == (True, 0, True)
