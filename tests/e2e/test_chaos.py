"""Chaos: the real `modelpool run` under steady load while its upstreams die, hang and return.

Three `modelpool fake-upstream` processes (one per member of pool ``p``,
round robin) serve the module's tests; each test starts its own daemon
(fresh breakers, its own config), all on loopback, drives a steady load
(``RATE`` requests per second, every third one streaming) and switches
faults on the fakes at run time (``POST /_fault``). It watches the breakers
through ``GET /metrics`` (``modelpool_breaker_state``, polled every
``POLL_S``) and counts what reached each upstream with ``GET /_stats``.

What each scenario measures is printed (``pytest -s``): client-visible
error rates per phase (non-streaming and streaming apart), time from the
fault to the breaker opening, time from the recovery to the breaker
closing, latencies. Every process is stopped by its PID with SIGTERM and
must exit 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import re
import time
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
import yaml
from e2e_daemon import Daemon, DaemonFactory
from fake_upstreams import Fake, start_fakes, stop_fakes

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

RATE = 40.0
"""Client requests per second, steady."""
STREAM_EVERY = 3
"""Every third request streams."""
POLL_S = 0.02
THRESHOLD = 3
COOLDOWN_S = 1.0
COOLDOWN_MAX_S = 4.0
ATTEMPTS = 3
CLIENT_TIMEOUT_S = 5.0
CONTROL_TIMEOUT = aiohttp.ClientTimeout(total=5)
WARM_S = 0.6
"""Steady load before the first fault."""
SETTLE_S = 0.8
"""Steady load after the last breaker closed."""
FAST_503_P99_S = 0.1
FAST_503_MAX_S = 0.2
MODELS = ("m1", "m2", "m3")
CLOSED, OPEN = 0, 1
"""modelpool_breaker_state values."""
BODY = {"model": "p", "messages": [{"role": "user", "content": "hello chaos"}]}


# --------------------------------------------------------------------------- processes


@pytest.fixture(scope="module")
def fakes(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[Fake]]:
    """The three fakes, shared by the module's tests (each test puts them back to ``ok``)."""
    started = start_fakes(tmp_path_factory.mktemp("fakes"), len(MODELS))
    try:
        yield started
    finally:
        stop_fakes(started)


def chaos_config(
    fakes: Sequence[Fake],
    *,
    timeouts: dict[str, str] | None = None,
    max_connections: int = 16,
    pools: dict[str, Any] | None = None,
    breakers: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Pool ``p`` over m1..m3, round robin, one provider (one fake) each, small breakers."""
    retry = {"attempts": ATTEMPTS, "backoff": {"initial": "20ms", "max": "100ms"}}
    pool = {"strategy": "round_robin", "members": list(MODELS), "retry": retry}
    providers, models = {}, {}
    for i, (fake, model) in enumerate(zip(fakes, MODELS, strict=True), start=1):
        providers[f"u{i}"] = {
            "type": "openai",
            "base_url": f"{fake.url}/v1",
            "api_key": f"sk-chaos-test-key-000{i}",
            "max_connections": max_connections,
            "timeouts": {"connect": "1s", "first_byte": "2s", "idle": "2s", "total": "10s"}
            | (timeouts or {}),
        }
        models[model] = {"provider": f"u{i}", "capabilities": ["chat", "stream"]}
    return {
        "version": 1,
        "server": {"access_log": False},
        "providers": providers,
        "models": models,
        "pools": pools or {"p": pool},
        "breakers": breakers
        or {
            "failure_threshold": THRESHOLD,
            "cooldown": {"initial": f"{COOLDOWN_S}s", "max": f"{COOLDOWN_MAX_S}s", "multiplier": 2},
        },
    }


def start(daemon_factory: DaemonFactory, directory: Path, config: dict[str, Any]) -> Daemon:
    path = directory / "pools.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    daemon: Daemon = daemon_factory(path)
    return daemon


# --------------------------------------------------------------------------- load


@dataclass
class Outcome:
    """One client request as the client saw it."""

    route: str
    stream: bool
    started: float
    ended: float = 0.0
    status: int = 0
    """0: no HTTP answer at all (connection error or client timeout)."""
    model: str | None = None
    attempts: int | None = None
    code: str | None = None
    retry_after: str | None = None
    clean: bool = False
    """200 and a whole answer: JSON with choices, or a stream ending in [DONE] with no error."""
    detail: str = ""

    @property
    def latency(self) -> float:
        return self.ended - self.started


class Load:
    """Fires requests at ``rate`` per second from ``__aenter__`` to ``__aexit__``, keeping all."""

    def __init__(self, url: str, rate: float = RATE, routes: Sequence[str] = ("p",)) -> None:
        self.url = url
        self.rate = rate
        self.routes = routes
        self.outcomes: list[Outcome] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self._stop = asyncio.Event()
        self._runner: asyncio.Task[None] | None = None
        self._http: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> Load:
        self._http = aiohttp.ClientSession(
            self.url,
            connector=aiohttp.TCPConnector(limit=400),
            timeout=aiohttp.ClientTimeout(total=CLIENT_TIMEOUT_S),
        )
        self._runner = asyncio.create_task(self._run())
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._stop.set()
        assert self._runner is not None
        assert self._http is not None
        await self._runner
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=CLIENT_TIMEOUT_S + 1)
        for task in self._tasks:
            task.cancel()
        await self._http.close()

    async def _run(self) -> None:
        begin = time.monotonic()
        for i in range(10**6):
            if self._stop.is_set():
                return
            outcome = Outcome(
                route=self.routes[i % len(self.routes)],
                stream=i % STREAM_EVERY == STREAM_EVERY - 1,
                started=time.monotonic(),
            )
            self.outcomes.append(outcome)
            task = asyncio.create_task(self._one(outcome))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
            delay = begin + (i + 1) / self.rate - time.monotonic()
            if delay > 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stop.wait(), delay)

    async def _one(self, outcome: Outcome) -> None:
        assert self._http is not None
        try:
            body = {**BODY, "model": outcome.route, "stream": outcome.stream}
            async with self._http.post("/v1/chat/completions", json=body) as response:
                outcome.status = response.status
                outcome.model = response.headers.get("x-modelpool-model")
                attempts = response.headers.get("x-modelpool-attempts")
                outcome.attempts = int(attempts) if attempts is not None else None
                outcome.retry_after = response.headers.get("Retry-After")
                raw = await response.read()
            outcome.ended = time.monotonic()
            judge(outcome, raw)
        except (aiohttp.ClientError, TimeoutError) as exc:
            outcome.detail = f"{type(exc).__name__}: {exc}"
        finally:
            outcome.ended = outcome.ended or time.monotonic()

    def between(self, begin: float, end: float = float("inf")) -> list[Outcome]:
        """The requests that started in [begin, end) (all finished once the load stopped)."""
        return [o for o in self.outcomes if begin <= o.started < end]


def judge(outcome: Outcome, raw: bytes) -> None:
    """Fill in ``clean``, ``code`` and ``detail`` from a response body."""
    if outcome.status != 200:
        try:
            error = orjson.loads(raw)["error"]
            outcome.code, outcome.detail = error.get("code"), error.get("message", "")
        except (orjson.JSONDecodeError, KeyError, TypeError):
            outcome.detail = raw[:200].decode(errors="replace")
        return
    if not outcome.stream:
        try:
            outcome.clean = bool(orjson.loads(raw)["choices"][0]["message"]["content"])
        except (orjson.JSONDecodeError, KeyError, IndexError, TypeError):
            outcome.detail = f"not a whole answer: {raw[:200]!r}"
        return
    data = [line.removeprefix(b"data: ") for line in raw.split(b"\n") if line.startswith(b"data: ")]
    errors = [d for d in data if d != b"[DONE]" and b'"error"' in d]
    outcome.clean = bool(data) and data[-1] == b"[DONE]" and not errors
    if not outcome.clean:
        outcome.detail = f"unclean stream: {raw[-300:]!r}"


# --------------------------------------------------------------------------- watching


class Breakers:
    """Polls ``/metrics`` every ``POLL_S``; remembers when each breaker state was first seen."""

    PATTERN = re.compile(rb'^modelpool_breaker_state\{model="([^"]+)"\} ([0-9.]+)$', re.MULTILINE)

    def __init__(self, http: aiohttp.ClientSession) -> None:
        self.http = http
        self.latest: dict[str, int] = {}
        self.changes: list[tuple[float, str, int]] = []
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Breakers:
        await self._poll_once()
        self._task = asyncio.create_task(self._poll())
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task

    async def _poll_once(self) -> None:
        async with self.http.get("/metrics") as response:
            text = await response.read()
        now = time.monotonic()
        for model, value in self.PATTERN.findall(text):
            name, state = model.decode(), int(float(value))
            if self.latest.get(name) != state:
                self.changes.append((now, name, state))
            self.latest[name] = state

    async def _poll(self) -> None:
        while True:
            await asyncio.sleep(POLL_S)
            await self._poll_once()

    async def seen(self, model: str, state: int, after: float, within: float) -> float:
        """When ``model`` was first seen in ``state`` at or after ``after`` (bounded wait)."""
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            for at, name, value in self.changes:
                if at >= after and name == model and value == state:
                    return at
            if self.latest.get(model) == state and not any(
                at >= after and name == model for at, name, _ in self.changes
            ):
                # already in that state when ``after`` came: count it from ``after``
                return after
            await asyncio.sleep(POLL_S / 2)
        raise AssertionError(f"breaker of {model} not {state} within {within}s: {self.changes}")


class Control:
    """Talks to the fakes: their fault scripts and their counters."""

    def __init__(self, http: aiohttp.ClientSession, fakes: Sequence[Fake]) -> None:
        self.http = http
        self.fakes = fakes

    async def fault(self, fake: Fake, *steps: str, loop: bool = False) -> float:
        """Replace ``fake``'s script; returns when it took effect."""
        async with self.http.post(
            f"{fake.url}/_fault", json={"steps": list(steps), "loop": loop}
        ) as r:
            assert r.status == 200, await r.text()
        return time.monotonic()

    async def stats(self, fake: Fake) -> dict[str, Any]:
        async with self.http.get(f"{fake.url}/_stats") as response:
            assert response.status == 200
            data: dict[str, Any] = await response.json()
            return data

    async def failed(self, fake: Fake, kind: str) -> int:
        """Chat requests ``fake`` answered with the fault ``kind`` so far."""
        stats = await self.stats(fake)
        return int(stats["requests"].get("/v1/chat/completions", {}).get(kind, 0))

    async def totals(self) -> list[int]:
        return [int((await self.stats(fake))["total"]) for fake in self.fakes]


@pytest.fixture
async def control(fakes: list[Fake]) -> AsyncIterator[Control]:
    """Control of the shared fakes, each put back to ``ok`` with nothing in flight."""
    async with aiohttp.ClientSession(timeout=CONTROL_TIMEOUT) as http:
        control = Control(http, fakes)
        for fake in fakes:
            await control.fault(fake, "ok")
            assert (await control.stats(fake))["in_flight"] == 0
        yield control


# --------------------------------------------------------------------------- reporting


def percentile(values: Sequence[float], share: float) -> float:
    """Nearest-rank percentile; 0 for no values."""
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(share * len(ordered)) - 1))]


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.0f} ms"


@dataclass
class Report:
    scenario: str
    lines: list[str] = field(default_factory=list)

    def errors(self, phase: str, outcomes: Sequence[Outcome]) -> None:
        for stream, kind in ((False, "non-stream"), (True, "stream")):
            mine = [o for o in outcomes if o.stream is stream]
            bad = [o for o in mine if not o.clean]
            rate = len(bad) / len(mine) if mine else 0.0
            self.lines.append(
                f"{phase:<24} {kind:<10} errors {len(bad):>4}/{len(mine):<4} = {rate:6.1%}"
            )

    def add(self, line: str) -> None:
        self.lines.append(line)

    def show(self) -> None:
        print(f"\n=== chaos: {self.scenario}")
        for line in self.lines:
            print(f"    {line}")


def failures_of(outcomes: Sequence[Outcome], *, stream: bool | None = None) -> list[Outcome]:
    return [o for o in outcomes if not o.clean and (stream is None or o.stream is stream)]


def describe(outcomes: Sequence[Outcome], limit: int = 5) -> str:
    return "; ".join(
        f"{'stream' if o.stream else 'plain'} {o.status} {o.code} {o.detail[:160]}"
        for o in outcomes[:limit]
    )


def check_attempts(
    report: Report,
    outcomes: Sequence[Outcome],
    at_upstreams: int,
    caps: Mapping[str, int] | None = None,
) -> None:
    """Attempts per client request never exceed its route's cap: by header, and at the upstreams.

    With every request answered, the upstreams must have seen exactly the
    attempts the responses own up to (``x-modelpool-attempts``): no hidden retry.
    """
    caps = caps or {"p": ATTEMPTS}
    unanswered = sum(1 for o in outcomes if o.status == 0)
    claimed = sum(o.attempts or 0 for o in outcomes)
    for route, cap in caps.items():
        mine = [o for o in outcomes if o.route == route]
        counts = [o.attempts for o in mine if o.attempts is not None]
        assert all(0 <= n <= cap for n in counts), (route, cap, sorted(set(counts)))
        spread = {n: counts.count(n) for n in sorted(set(counts))}
        report.add(f"route {route} (cap {cap}): x-modelpool-attempts spread {spread}")
    assert at_upstreams <= sum(caps[o.route] for o in outcomes)
    if not unanswered:
        assert at_upstreams == claimed, f"{at_upstreams} at the upstreams, {claimed} claimed"
    report.add(
        f"attempts: {len(outcomes)} client requests, {at_upstreams} reached the upstreams "
        f"({at_upstreams / max(1, len(outcomes)):.2f} per request), "
        f"{claimed} per x-modelpool-attempts, {unanswered} unanswered"
    )


# --------------------------------------------------------------------------- scenarios


@pytest.mark.parametrize("fault", ["status=503", "reset"])
async def test_one_of_three_dies_then_recovers(
    fault: str,
    fakes: list[Fake],
    daemon_factory: DaemonFactory,
    control: Control,
    tmp_path: Path,
) -> None:
    daemon = start(daemon_factory, tmp_path, chaos_config(fakes))
    dead = fakes[0]
    report = Report(f"a. one of three dies ({fault}), then recovers")
    upstream_before = sum(await control.totals())
    async with (
        aiohttp.ClientSession(daemon.url, timeout=CONTROL_TIMEOUT) as admin,
        Breakers(admin) as breakers,
        Load(daemon.url) as load,
    ):
        t0 = time.monotonic()
        await asyncio.sleep(WARM_S)
        kind = fault.split("=")[0]
        before = await control.failed(dead, kind)
        t_inject = await control.fault(dead, fault)
        t_open = await breakers.seen("m1", OPEN, t_inject, within=3)
        at_open = await control.failed(dead, kind)
        # a window well inside the first cooldown: nothing may reach the dead upstream
        window_start = (await control.stats(dead))["total"]
        window_began = time.monotonic()
        await asyncio.sleep(max(0.0, t_open + COOLDOWN_S * 0.7 - time.monotonic()))
        window_end = (await control.stats(dead))["total"]
        window = time.monotonic() - window_began
        # stay dead past a half-open trial, so the cooldown grows, then come back
        await asyncio.sleep(max(0.0, t_open + 1.6 - time.monotonic()))
        t_recover = await control.fault(dead, "ok")
        t_closed = await breakers.seen("m1", CLOSED, t_recover, within=COOLDOWN_MAX_S + 2)
        await asyncio.sleep(SETTLE_S)
        t_end = time.monotonic()
    upstream_after = sum(await control.totals())

    everything = load.between(t0)
    report.errors("before the fault", load.between(t0, t_inject))
    report.errors("m1 dead", load.between(t_inject, t_recover))
    report.errors("m1 back, breaker open", load.between(t_recover, t_closed))
    report.errors("breaker closed again", load.between(t_closed, t_end))
    opened_after = at_open - before
    report.add(
        f"breaker m1 opened {ms(t_open - t_inject)} after the fault "
        f"(threshold {THRESHOLD}; m1 answered {opened_after} requests with {kind} by then)"
    )
    report.add(
        f"requests reaching m1 while open: {window_end - window_start} in a {ms(window)} window"
    )
    report.add(f"breaker m1 closed {ms(t_closed - t_recover)} after the upstream recovered")
    back = [o for o in load.between(t_closed + 0.2, t_end) if o.clean]
    by_m1 = sum(o.model == "m1" for o in back)
    report.add(f"after closing, m1 served {by_m1}/{len(back)} requests")
    check_attempts(report, everything, upstream_after - upstream_before)
    report.add(
        f"latency p50 {ms(percentile([o.latency for o in everything], 0.5))}, "
        f"p99 {ms(percentile([o.latency for o in everything], 0.99))}"
    )
    report.show()

    assert not failures_of(everything, stream=False), describe(failures_of(everything))
    assert not failures_of(everything, stream=True), describe(failures_of(everything))
    # + requests already in flight to m1 when its third failure opened the breaker
    assert opened_after <= THRESHOLD + 2, "the breaker let too many failures through"
    assert window_end - window_start <= 1, "requests reached a model whose breaker was open"
    assert by_m1 >= len(back) // 6, "m1 does not serve again after its breaker closed"


async def test_all_three_die_then_fast_503s(
    fakes: list[Fake],
    daemon_factory: DaemonFactory,
    control: Control,
    tmp_path: Path,
) -> None:
    daemon = start(daemon_factory, tmp_path, chaos_config(fakes))
    report = Report("b. all three die → fast 503s, then recover")
    upstream_before = sum(await control.totals())
    async with (
        aiohttp.ClientSession(daemon.url, timeout=CONTROL_TIMEOUT) as admin,
        Breakers(admin) as breakers,
        Load(daemon.url) as load,
    ):
        t0 = time.monotonic()
        await asyncio.sleep(WARM_S)
        t_inject = time.monotonic()
        await asyncio.gather(*(control.fault(f, "status=503") for f in fakes))
        opened = [await breakers.seen(m, OPEN, t_inject, within=3) for m in MODELS]
        t_all_open = max(opened)
        counts_open = await control.totals()
        await asyncio.sleep(max(0.0, min(opened) + COOLDOWN_S * 0.7 - time.monotonic()))
        t_window_end = time.monotonic()
        counts_window = await control.totals()
        await asyncio.sleep(max(0.0, t_all_open + 1.3 - time.monotonic()))
        t_recover = time.monotonic()
        await asyncio.gather(*(control.fault(f, "ok") for f in fakes))
        closed = [
            await breakers.seen(m, CLOSED, t_recover, within=COOLDOWN_MAX_S + 2) for m in MODELS
        ]
        t_all_closed = max(closed)
        await asyncio.sleep(SETTLE_S)
        t_end = time.monotonic()
    upstream_after = sum(await control.totals())

    everything = load.between(t0)
    all_open = load.between(t_all_open + POLL_S, t_window_end)
    fast = [o for o in load.between(t_inject) if o.code == "all_upstreams_down"]
    fast_latency = [o.latency for o in fast]
    report.errors("before the fault", load.between(t0, t_inject))
    report.errors("all dead, opening", load.between(t_inject, t_all_open))
    report.errors("all dead, all open", all_open)
    report.errors("back, breakers open", load.between(t_recover, t_all_closed))
    report.errors("breakers closed again", load.between(t_all_closed, t_end))
    for model, at in zip(MODELS, opened, strict=True):
        report.add(f"breaker {model} opened {ms(at - t_inject)} after the fault")
    for model, at in zip(MODELS, closed, strict=True):
        report.add(f"breaker {model} closed {ms(at - t_recover)} after recovery")
    report.add(
        f"fast 503s: {len(fast)}, p50 {ms(percentile(fast_latency, 0.5))}, "
        f"p99 {ms(percentile(fast_latency, 0.99))}, max {ms(max(fast_latency, default=0))}; "
        f"Retry-After seen {sorted({o.retry_after for o in fast}, key=str)}"
    )
    window_hits = sum(counts_window) - sum(counts_open)
    report.add(f"requests reaching any upstream while all open: {window_hits}")
    check_attempts(report, everything, upstream_after - upstream_before)
    report.show()

    assert all_open, "no request was made while every breaker was open"
    assert all(o.code == "all_upstreams_down" and o.status == 503 for o in all_open), describe(
        [o for o in all_open if o.code != "all_upstreams_down"]
    )
    assert all(o.retry_after is not None and int(o.retry_after) >= 1 for o in fast)
    assert percentile(fast_latency, 0.99) < FAST_503_P99_S
    assert max(fast_latency) < FAST_503_MAX_S
    assert window_hits == 0, "requests reached upstreams whose breakers were open"
    after = load.between(t_all_closed + 0.1, t_end)
    assert after
    assert not failures_of(after), describe(failures_of(after))


async def test_a_hung_upstream_does_not_exhaust_the_pool(
    fakes: list[Fake],
    daemon_factory: DaemonFactory,
    control: Control,
    tmp_path: Path,
) -> None:
    max_connections = 4
    config = chaos_config(fakes, timeouts={"first_byte": "500ms"}, max_connections=max_connections)
    daemon = start(daemon_factory, tmp_path, config)
    hung = fakes[0]
    report = Report("c. a hung upstream (max_connections 4, first_byte 500ms)")
    in_flight: list[int] = []

    async def watch_in_flight(stop: asyncio.Event) -> None:
        while not stop.is_set():
            in_flight.append(int((await control.stats(hung))["in_flight"]))
            await asyncio.sleep(POLL_S)

    upstream_before = sum(await control.totals())
    async with (
        aiohttp.ClientSession(daemon.url, timeout=CONTROL_TIMEOUT) as admin,
        Breakers(admin) as breakers,
        Load(daemon.url) as load,
    ):
        stop = asyncio.Event()
        watcher = asyncio.create_task(watch_in_flight(stop))
        t0 = time.monotonic()
        await asyncio.sleep(WARM_S)
        t_inject = await control.fault(hung, "hang=30s")
        t_open = await breakers.seen("m1", OPEN, t_inject, within=4)
        await asyncio.sleep(max(0.0, t_open + 1.8 - time.monotonic()))
        t_recover = await control.fault(hung, "ok")
        t_closed = await breakers.seen("m1", CLOSED, t_recover, within=COOLDOWN_MAX_S + 2)
        await asyncio.sleep(SETTLE_S)
        t_end = time.monotonic()
        stop.set()
        await watcher
    for _ in range(100):  # the daemon lets go of every hung request (bounded wait)
        final = await control.stats(hung)
        if final["in_flight"] == 0:
            break
        await asyncio.sleep(0.02)
    upstream_after = sum(await control.totals())

    everything = load.between(t0)
    during = load.between(t_inject, t_recover)
    served = [o for o in during if o.clean]
    report.errors("before the hang", load.between(t0, t_inject))
    report.errors("m1 hung", during)
    report.errors("m1 back, breaker open", load.between(t_recover, t_closed))
    report.errors("breaker closed again", load.between(t_closed, t_end))
    report.add(f"breaker m1 opened {ms(t_open - t_inject)} after the hang began")
    report.add(f"breaker m1 closed {ms(t_closed - t_recover)} after the upstream recovered")
    report.add(
        f"while hung: {len(served)}/{len(during)} served "
        f"({len(served) / max(1e-9, t_recover - t_inject):.1f}/s at {RATE:.0f}/s offered), "
        f"by {sorted({o.model for o in served}, key=str)}; latency p50 "
        f"{ms(percentile([o.latency for o in during], 0.5))}, "
        f"p99 {ms(percentile([o.latency for o in during], 0.99))}, "
        f"max {ms(max((o.latency for o in during), default=0))}"
    )
    report.add(
        f"in flight at the hung upstream: max {max(in_flight)} (pool {max_connections}), "
        f"{final['in_flight']} at the end, {final['abandoned']} abandoned by the daemon"
    )
    check_attempts(report, everything, upstream_after - upstream_before)
    report.show()

    assert not failures_of(everything, stream=False), describe(failures_of(everything))
    assert not failures_of(everything, stream=True), describe(failures_of(everything))
    assert max(in_flight) <= max_connections
    assert final["in_flight"] == 0, "the daemon still holds requests to the hung upstream"
    assert max(o.latency for o in during) < 2.5
    assert len(served) >= 0.8 * RATE * (t_recover - t_inject), "throughput fell while m1 hung"


async def test_attempts_counted_at_the_upstreams_never_exceed_the_cap(
    fakes: list[Fake], daemon_factory: DaemonFactory, control: Control, tmp_path: Path
) -> None:
    """Members fail often, breakers never open, the budget is ample: only the caps bind.

    The pools nest (p → q → r, one member each) and the inner ones allow more
    attempts: a request to ``p`` still gets at most ``p``'s cap, however deep
    its failover chain goes; one to ``q`` gets ``q``'s.
    """
    caps = {"p": 2, "q": 4}
    retry = {
        "backoff": {"initial": "10ms", "max": "50ms"},
        "budget": {"ratio": 1.0, "min_per_second": 1000},
    }
    pools = {
        "p": {"members": ["m1"], "failover": ["q"], "retry": {**retry, "attempts": caps["p"]}},
        "q": {"members": ["m2"], "failover": ["r"], "retry": {**retry, "attempts": caps["q"]}},
        "r": {"members": ["m3"], "retry": {**retry, "attempts": 5}},
    }
    breakers = {
        "failure_threshold": 1_000_000,
        "failure_rate": {"threshold": 1.0, "window": "1s", "min_requests": 1_000_000},
    }
    daemon = start(daemon_factory, tmp_path, chaos_config(fakes, pools=pools, breakers=breakers))
    report = Report("d. attempts caps (p: 2, q: 4, chain p → q → r), every member failing often")
    scripts = [("status=500", "ok"), ("reset", "status=502", "ok"), ("status=503", "status=429")]
    for fake, steps in zip(fakes, scripts, strict=True):
        await control.fault(fake, *steps, loop=True)
    upstream_before = sum(await control.totals())
    async with Load(daemon.url, routes=list(caps)) as load:
        t0 = time.monotonic()
        await asyncio.sleep(2.0)
    upstream_after = sum(await control.totals())

    everything = load.between(t0)
    report.errors("members failing", everything)
    check_attempts(report, everything, upstream_after - upstream_before, caps)
    report.show()

    assert everything
    for route, cap in caps.items():
        attempts = {o.attempts for o in everything if o.route == route}
        assert cap in attempts, f"no request to {route} needed all {cap} attempts: {attempts}"
