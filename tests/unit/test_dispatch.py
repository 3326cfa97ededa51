"""The orchestrator's decisions: what is worth another attempt, in what order, with what status."""

from __future__ import annotations

import random
import textwrap
from pathlib import Path

import pytest

from modelpool.clock import FakeClock
from modelpool.compile import compile_table
from modelpool.config.load import load_config
from modelpool.dispatch import Dispatcher
from modelpool.errors import (
    AllAttemptsFailed,
    RouteNotFound,
    UpstreamConnectError,
    UpstreamError,
    UpstreamStatusError,
    UpstreamStreamBroken,
    UpstreamTimeout,
)
from modelpool.retry import is_retryable
from modelpool.state import StateRegistry
from modelpool.table import RoutingTable
from modelpool.upstream import Transports


def status(code: int, retry_after: float | None = None) -> UpstreamStatusError:
    return UpstreamStatusError(f"HTTP {code}", status=code, retry_after=retry_after, model="m")


@pytest.mark.parametrize(
    ("error", "retryable"),
    [
        (UpstreamConnectError("refused"), True),
        (UpstreamTimeout("slow", phase="first_byte"), True),
        (UpstreamTimeout("silent", phase="idle"), True),
        (UpstreamTimeout("long", phase="total"), True),
        (UpstreamStreamBroken("cut"), True),
        (status(408), True),
        (status(409), True),
        (status(425), True),
        (status(429), True),
        (status(500), True),
        (status(502), True),
        (status(503), True),
        (status(504), True),
        (status(529), True),
        (status(599), True),
        (status(400), False),
        (status(401), False),
        (status(403), False),
        (status(404), False),
        (status(413), False),
        (status(422), False),
        (UpstreamError("unclassified"), False),
    ],
    ids=lambda value: type(value).__name__ if isinstance(value, UpstreamError) else str(value),
)
def test_is_retryable(error: UpstreamError, retryable: bool) -> None:
    assert is_retryable(error) is retryable


@pytest.mark.parametrize(
    ("first", "expected"),
    [
        (UpstreamConnectError("refused"), (503, "upstream_unavailable")),
        (UpstreamTimeout("slow", phase="first_byte"), (504, "upstream_timeout")),
        (status(429, retry_after=3.0), (429, "rate_limit_exceeded")),
        (status(500), (502, "upstream_error")),
        (UpstreamStreamBroken("cut"), (502, "upstream_error")),
    ],
)
def test_all_attempts_failed_takes_its_status_from_the_first_failure(
    first: UpstreamError, expected: tuple[int, str]
) -> None:
    error = AllAttemptsFailed([first, status(503)])
    assert (error.status, error.code) == expected
    assert first.message in error.message
    assert "all 2 attempts failed" in error.message


def test_all_attempts_failed_keeps_the_first_retry_after() -> None:
    assert AllAttemptsFailed([status(429, retry_after=3.0)]).retry_after == 3.0
    assert AllAttemptsFailed([UpstreamConnectError("x")]).retry_after is None


CHAT = frozenset({"chat"})

CONFIG = """\
version: 1
providers:
  mock: {type: mock}
models:
  a: {provider: mock}
  b: {provider: mock}
  c: {provider: mock}
pools:
  first:
    strategy: priority
    members: [a, b]
    failover: [second, third]
  second:
    members: [b, c]
    failover: [third]
  third:
    members: [a]
"""


@pytest.fixture
def table(tmp_path: Path) -> RoutingTable:
    path = tmp_path / "pools.yaml"
    path.write_text(textwrap.dedent(CONFIG))
    return compile_table(
        load_config(path, env={}), generation=1, registry=StateRegistry(), transports=Transports()
    )


def test_candidates_walk_the_chain_trying_each_model_once(table: RoutingTable) -> None:
    dispatcher = Dispatcher(FakeClock(), random.Random(0))
    route = dispatcher.resolve(table, "first")
    tried = [
        (pool, member.model.name) for pool, member in dispatcher.candidates(table, route, CHAT)
    ]
    assert route.chain == ("first", "second", "third")
    assert tried == [("first", "a"), ("first", "b"), ("second", "c")]


def test_a_model_named_directly_is_a_one_member_route(table: RoutingTable) -> None:
    dispatcher = Dispatcher(FakeClock(), random.Random(0))
    route = dispatcher.resolve(table, "c")
    assert [m.model.name for _, m in dispatcher.candidates(table, route, CHAT)] == ["c"]
    assert route.attempts == 3  # the default retry policy: the same model, with backoff


def test_unknown_route_lists_every_known_name(table: RoutingTable) -> None:
    dispatcher = Dispatcher(FakeClock())
    with pytest.raises(RouteNotFound) as caught:
        dispatcher.resolve(table, "fist")
    assert caught.value.status == 404
    assert caught.value.param == "model"
    assert "a, b, c, first, second, third" in caught.value.message
