"""Active health checks: classification, breaker feeding, targets, scheduling.

Tables are compiled from real YAML by the real loader; the list probe's HTTP
is answered by a real aiohttp server on 127.0.0.1; time is a FakeClock the
tests move.
"""

from __future__ import annotations

import asyncio
import itertools
import random
import textwrap
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from prometheus_client import generate_latest
from test_upstream import Answer, Upstream

from modelpool.breaker import Breaker, State
from modelpool.clock import FakeClock, SystemClock
from modelpool.compile import compile_table
from modelpool.config.load import load_config
from modelpool.config.spec import BreakerPolicy, ModelHealth
from modelpool.errors import (
    ConfigError,
    UpstreamConnectError,
    UpstreamError,
    UpstreamStatusError,
    UpstreamTimeout,
)
from modelpool.health import HealthChecker, Outcome, Target, classify, feed, targets
from modelpool.metrics import Metrics
from modelpool.state import StateRegistry
from modelpool.table import RoutingTable
from modelpool.upstream import Transports

POLICY = BreakerPolicy(failure_threshold=2, cooldown_initial=10.0, cooldown_max=80.0)
HEALTHY = Outcome("healthy")
DOWN = Outcome("unhealthy", "HTTP 503")
WRONG = Outcome("misconfigured", "HTTP 404")


def status_error(status: int, retry_after: float | None = None) -> UpstreamStatusError:
    message = f"up: HTTP {status}: nope"
    return UpstreamStatusError(message, status=status, body=b"", retry_after=retry_after)


# --------------------------------------------------------------------------- classify


@pytest.mark.parametrize(
    ("error", "status"),
    [
        (status_error(400), "misconfigured"),
        (status_error(404), "misconfigured"),
        (status_error(405), "misconfigured"),
        (status_error(422), "misconfigured"),
        (status_error(401), "unhealthy"),
        (status_error(403), "unhealthy"),
        (status_error(408), "unhealthy"),
        (status_error(429), "unhealthy"),
        (status_error(500), "unhealthy"),
        (status_error(503), "unhealthy"),
        (status_error(529), "unhealthy"),
        (UpstreamConnectError("up: cannot connect"), "unhealthy"),
        (UpstreamTimeout("up: no response", phase="first_byte"), "unhealthy"),
    ],
)
def test_classify(error: UpstreamError, status: str) -> None:
    assert classify(error).status == status


def test_rejected_credentials_say_so() -> None:
    assert classify(status_error(401)).reason == "credentials rejected (HTTP 401)"


def test_a_cooling_status_carries_its_retry_after() -> None:
    assert classify(status_error(503, retry_after=7.0)).retry_after == 7.0
    assert classify(status_error(500, retry_after=7.0)).retry_after is None


# --------------------------------------------------------------------------- feed


def opened(clock: FakeClock) -> Breaker:
    breaker = Breaker(clock)
    for _ in range(POLICY.failure_threshold):
        breaker.failed(POLICY, "HTTP 500")
    assert breaker.state is State.OPEN
    return breaker


def test_a_healthy_probe_is_no_breaker_event_while_closed() -> None:
    breaker = Breaker(FakeClock())
    breaker.failed(POLICY, "HTTP 500")
    feed(breaker, POLICY, HEALTHY)
    assert breaker.state is State.CLOSED
    assert breaker.consecutive_failures == 1  # a request's failure streak is not reset
    assert breaker.transitions == 0


def test_failed_probes_open_a_closed_breaker() -> None:
    breaker = Breaker(FakeClock())
    feed(breaker, POLICY, DOWN)
    assert breaker.state is State.CLOSED
    feed(breaker, POLICY, DOWN)
    assert breaker.state is State.OPEN
    assert breaker.reason == "health probe: HTTP 503"


def test_a_healthy_probe_leaves_an_open_breaker_alone_until_it_is_due() -> None:
    clock = FakeClock()
    breaker = opened(clock)
    clock.advance(9)
    feed(breaker, POLICY, HEALTHY)
    assert breaker.state is State.OPEN
    clock.advance(1)
    feed(breaker, POLICY, HEALTHY)
    assert breaker.state is State.CLOSED
    assert breaker.trips == 0


def test_a_failed_probe_when_due_is_a_failed_trial() -> None:
    clock = FakeClock()
    breaker = opened(clock)
    clock.advance(10)
    feed(breaker, POLICY, DOWN)
    assert breaker.state is State.OPEN
    assert breaker.trips == 2
    assert breaker.retry_in() == 20.0  # the cooldown doubled


def test_a_failed_probe_while_open_only_pushes_the_reopening_later() -> None:
    clock = FakeClock()
    breaker = opened(clock)
    clock.advance(5)
    feed(breaker, POLICY, DOWN)
    assert breaker.trips == 1
    assert breaker.retry_in() == 10.0


def test_a_probe_never_takes_a_trial_a_request_holds() -> None:
    clock = FakeClock()
    breaker = opened(clock)
    clock.advance(10)
    assert breaker.allow()  # a real request is the trial
    for outcome in (HEALTHY, DOWN):
        feed(breaker, POLICY, outcome)
        assert breaker.state is State.HALF_OPEN
        assert breaker.trial_in_flight


def test_a_misconfigured_probe_has_no_breaker_effect() -> None:
    clock = FakeClock()
    breaker = Breaker(clock)
    for _ in range(5):
        feed(breaker, POLICY, WRONG)
    assert breaker.state is State.CLOSED
    assert breaker.consecutive_failures == 0
    due = opened(clock)
    clock.advance(10)
    feed(due, POLICY, WRONG)
    assert due.state is State.OPEN


def test_a_retry_after_from_a_probe_cools_the_model() -> None:
    breaker = Breaker(FakeClock())
    feed(breaker, POLICY, Outcome("unhealthy", "HTTP 429", retry_after=3.0))
    assert breaker.state is State.OPEN
    assert breaker.rate_limited
    assert breaker.retry_in() == 3.0


# --------------------------------------------------------------------------- targets

BASE = "http://upstream.test/v1"


def compiled(tmp_path: Path, text: str) -> tuple[RoutingTable, Transports]:
    path = tmp_path / "pools.yaml"
    path.write_text(textwrap.dedent(text))
    transports = Transports()
    table = compile_table(
        load_config(path, env={}),
        generation=1,
        registry=StateRegistry(FakeClock()),
        transports=transports,
    )
    return table, transports


MIXED = f"""\
    version: 1
    providers:
      listed: {{type: openai, base_url: "{BASE}", api_key: sk-1,
               health: {{interval: 10s, timeout: 2s}}}}
      chatty: {{type: openai_compatible, base_url: "http://chatty.test/v1",
               health: {{interval: 20s, probe: chat}}}}
      passive: {{type: openai, base_url: "http://passive.test/v1"}}
      silent: {{type: openai, base_url: "http://silent.test/v1",
               health: {{interval: 5s, probe: none}}}}
      fake: {{type: mock, health: {{interval: 1s}}}}
    models:
      a: {{provider: listed}}
      b: {{provider: listed, health: {{probe: chat, interval: 1m, timeout: 3s}}}}
      c: {{provider: chatty, health: {{probe: chat}}}}
      d: {{provider: chatty}}
      e: {{provider: passive}}
      f: {{provider: silent}}
      g: {{provider: fake}}
    pools:
      p: {{members: [a, b, c, d, e, f, g]}}
"""


def test_targets_follow_the_config(tmp_path: Path) -> None:
    table, transports = compiled(tmp_path, MIXED)
    found = targets(table, transports)
    by_name = {_name(key): target for key, target in found.items()}
    assert set(by_name) == {"provider listed", "provider fake", "model b", "model c"}

    listed = by_name["provider listed"]
    assert (listed.interval, listed.timeout) == (10.0, 2.0)
    assert [m.name for m in listed.judged] == ["a"]  # b has a completion probe of its own
    b = by_name["model b"]
    assert (b.interval, b.timeout, [m.name for m in b.judged]) == (60.0, 3.0, ["b"])
    c = by_name["model c"]
    assert (c.interval, c.timeout) == (20.0, 5.0)  # the provider's interval, default timeout


def _name(key: object) -> str:
    assert isinstance(key, tuple)
    return f"{key[0]} {key[1] if key[0] == 'provider' else key[1].name}"


def test_a_model_health_block_is_loaded_with_its_defaults(tmp_path: Path) -> None:
    table, _ = compiled(tmp_path, MIXED)
    assert table.models["b"].spec.health == ModelHealth("chat", 60.0, 3.0)
    assert table.models["c"].spec.health == ModelHealth("chat", None, None)
    assert table.models["a"].spec.health is None


@pytest.mark.parametrize(
    ("provider_health", "model_health", "message"),
    [
        ("{interval: 5s, probe: none}", "{probe: chat}", "has health.probe none"),
        ("{timeout: 1s}", "{probe: chat}", "a completion probe needs an interval"),
        ("{interval: 5s, probe: chat}", "{probe: none}", "no model of this provider does"),
        ("{interval: 5s}", "{probe: chat}, capabilities: [embeddings]", "the chat capability"),
    ],
)
def test_completion_probes_that_could_never_run_are_config_errors(
    tmp_path: Path, provider_health: str, model_health: str, message: str
) -> None:
    text = f"""\
        version: 1
        providers:
          up: {{type: openai, base_url: "{BASE}", health: {provider_health}}}
        models:
          m: {{provider: up, health: {model_health}}}
        pools:
          p: {{members: [m]}}
    """
    with pytest.raises(ConfigError) as caught:
        compiled(tmp_path, text)
    assert message in str(caught.value)


def test_a_model_health_block_rejects_unknown_keys(tmp_path: Path) -> None:
    text = f"""\
        version: 1
        providers:
          up: {{type: openai, base_url: "{BASE}", health: {{interval: 5s}}}}
        models:
          m: {{provider: up, health: {{probe: chat, max_tokens: 1}}}}
        pools:
          p: {{members: [m]}}
    """
    with pytest.raises(ConfigError, match="max_tokens"):
        compiled(tmp_path, text)


# --------------------------------------------------------------------------- the list probe


@pytest.fixture
async def upstream() -> AsyncIterator[Upstream]:
    async with Upstream() as server:
        yield server


def listed_target(tmp_path: Path, base: str, extra: str = "") -> tuple[Target, Transports]:
    table, transports = compiled(
        tmp_path,
        f"""\
        version: 1
        providers:
          up: {{type: openai, base_url: "{base}", api_key: sk-unit-1234, health: {{interval: 1s}}
               {extra}}}
        models:
          m: {{provider: up}}
        pools:
          p: {{members: [m]}}
        """,
    )
    [target] = targets(table, transports).values()
    return target, transports


async def test_the_list_probe_gets_models_with_the_key(tmp_path: Path, upstream: Upstream) -> None:
    target, transports = listed_target(tmp_path, upstream.url("/v1"))
    upstream.answer = Answer(body=b'{"data": []}')
    await target.probe()
    [request] = upstream.seen
    assert (request.method, request.path_qs) == ("GET", "/v1/models")
    assert request.headers["Authorization"] == "Bearer sk-unit-1234"
    await transports.aclose()


@pytest.mark.parametrize(
    ("status", "outcome"), [(404, "misconfigured"), (401, "unhealthy"), (502, "unhealthy")]
)
async def test_the_list_probe_raises_the_status(
    tmp_path: Path, upstream: Upstream, status: int, outcome: str
) -> None:
    target, transports = listed_target(tmp_path, upstream.url("/v1"))
    upstream.answer = Answer(status=status, body=b"{}")
    with pytest.raises(UpstreamStatusError) as caught:
        await target.probe()
    assert caught.value.status == status
    assert classify(caught.value).status == outcome
    await transports.aclose()


async def test_azure_lists_models_under_openai_with_the_api_version(
    tmp_path: Path, upstream: Upstream
) -> None:
    base = upstream.url()
    table, transports = compiled(
        tmp_path,
        f"""\
        version: 1
        providers:
          az: {{type: azure_openai, base_url: "{base}", api_key: k-az-1234,
               api_version: "2024-10-21", health: {{interval: 1s}}}}
        models:
          m: {{provider: az}}
        pools:
          p: {{members: [m]}}
        """,
    )
    [target] = targets(table, transports).values()
    await target.probe()
    [request] = upstream.seen
    assert (request.method, request.path_qs) == ("GET", "/openai/models?api-version=2024-10-21")
    assert request.headers["api-key"] == "k-az-1234"
    assert "Authorization" not in request.headers
    await transports.aclose()


async def test_anthropic_lists_models_with_its_key_and_version(
    tmp_path: Path, upstream: Upstream
) -> None:
    table, transports = compiled(
        tmp_path,
        f"""\
        version: 1
        providers:
          an: {{type: anthropic, base_url: "{upstream.url("/v1")}", api_key: k-an-1234,
               health: {{interval: 1s}}}}
        models:
          m: {{provider: an}}
        pools:
          p: {{members: [m]}}
        """,
    )
    [target] = targets(table, transports).values()
    await target.probe()
    [request] = upstream.seen
    assert (request.method, request.path_qs) == ("GET", "/v1/models")
    assert request.headers["x-api-key"] == "k-an-1234"
    assert request.headers["anthropic-version"] == "2023-06-01"
    await transports.aclose()


# --------------------------------------------------------------------------- scheduling

MOCKS = """\
    version: 1
    providers:
      fake: {type: mock, health: {interval: 10s}}
      flaky: {type: mock, mock: {failure_rate: 1.0, failure_status: 500},
              health: {interval: 10s, probe: chat}}
    models:
      m: {provider: fake}
      broken: {provider: flaky, health: {probe: chat}, breaker: {failure_threshold: 1}}
    pools:
      p: {members: [m, broken]}
"""


PASSIVE_MOCKS = """\
    version: 1
    providers:
      fake: {type: mock}
      flaky: {type: mock, mock: {latency: 5s}}
    models:
      m: {provider: fake}
      broken: {provider: flaky}
    pools:
      p: {members: [m, broken]}
"""


class Swappable:
    """The table the checker sees; a test swaps it as a reload would."""

    def __init__(self, table: RoutingTable) -> None:
        self.table = table
        self.fail_next = False

    def __call__(self) -> RoutingTable:
        if self.fail_next:
            self.fail_next = False
            raise RuntimeError("boom")
        return self.table


def checker_for(
    table: RoutingTable, transports: Transports
) -> tuple[HealthChecker, FakeClock, Swappable]:
    clock = FakeClock()
    source = Swappable(table)
    checker = HealthChecker(source, transports, clock, rng=random.Random(7), wall=clock.now)
    checker.running = True
    return checker, clock, source


async def test_the_first_probe_comes_within_a_tenth_of_the_interval(tmp_path: Path) -> None:
    table, transports = compiled(tmp_path, MOCKS)
    checker, clock, _ = checker_for(table, transports)
    nap = checker.tick()
    assert 0 < nap <= 1.0
    assert checker.providers(table)["fake"]["reason"] == "not probed yet"
    clock.advance(1.0)
    checker.tick()
    await checker.settled()
    fake = checker.providers(table)["fake"]
    assert (fake["status"], fake["reason"], fake["checked_at"]) == ("healthy", "", clock.now())
    broken = checker.models(table)["broken"]
    assert broken["status"] == "unhealthy"
    assert "injected failure (500)" in broken["reason"]
    assert table.models["broken"].state.breaker.state is State.OPEN
    assert table.models["m"].state.breaker.state is State.CLOSED
    assert checker.providers(table)["flaky"]["reason"] == "judged by its models' completion probes"


async def test_probes_repeat_every_interval_with_jitter(tmp_path: Path) -> None:
    table, transports = compiled(tmp_path, MOCKS)
    checker, clock, _ = checker_for(table, transports)
    probed: list[float] = []
    for _ in range(400):  # 40 s in 100 ms steps
        checker.tick()
        await checker.settled()
        checked_at = checker.providers(table)["fake"]["checked_at"]
        if checked_at is not None and checked_at not in probed:
            probed.append(checked_at)
        clock.advance(0.1)
    gaps = [later - earlier for earlier, later in itertools.pairwise(probed)]
    assert probed[0] - 1000.0 <= 1.0
    assert len(probed) == 4
    assert all(9.0 - 1e-6 <= gap <= 11.0 + 0.1 for gap in gaps), gaps
    assert len(set(gaps)) > 1  # jittered, not a fixed beat


async def test_a_reload_that_drops_a_target_cancels_its_probe(tmp_path: Path) -> None:
    slow = MOCKS.replace("failure_rate: 1.0", "latency: 5s, failure_rate: 1.0")
    table, transports = compiled(tmp_path, slow)
    checker, clock, source = checker_for(table, transports)
    checker.tick()
    clock.advance(1.0)
    checker.tick()
    for _ in range(100):  # the mock list probe answers at once; the completion probe is slow
        await asyncio.sleep(0.001)
        if checker.providers(table)["fake"]["status"] == "healthy":
            break
    assert checker.models(table)["broken"]["status"] == "unknown"

    source.table, _ = compiled(tmp_path, PASSIVE_MOCKS)
    checker.tick()
    await asyncio.wait_for(checker.settled(), 1.0)  # cancelled, not waited for
    assert "passive" in checker.providers(source.table)["fake"]["reason"]
    assert checker.models(source.table) == {}


async def test_the_loop_survives_a_failed_round_and_stops_promptly(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    table, transports = compiled(tmp_path, MOCKS.replace("10s", "50ms"))
    source = Swappable(table)
    checker = HealthChecker(source, transports, SystemClock())
    source.fail_next = True
    stop = asyncio.Event()
    task = asyncio.create_task(checker.run(stop))
    await asyncio.sleep(1.15)  # one failed round, a 1 s pause, then probes again
    assert "health check round failed" in caplog.text
    assert checker.providers(table)["fake"]["status"] == "healthy"
    stop.set()
    await asyncio.wait_for(task, 0.1)
    assert not checker.running


def test_the_health_gauge_reads_the_latest_results() -> None:
    metrics = Metrics()
    metrics.watch_health(lambda: [("a", "healthy"), ("b", "unhealthy"), ("c", "misconfigured")])
    text = generate_latest(metrics.registry).decode()
    assert 'modelpool_health_status{provider="a"} 1.0' in text
    assert 'modelpool_health_status{provider="b"} 0.0' in text
    assert 'modelpool_health_status{provider="c"} -1.0' in text
