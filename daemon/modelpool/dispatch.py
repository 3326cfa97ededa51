"""The orchestrator: one request → the members of its pool and failover chain.

Everything around it is a pure mechanism (strategies, providers, transport);
this is the only place that decides whether a failure is worth another
attempt, and the only place that walks the chain. A failure is retried on
the next member only while nothing has been sent to the client: for a
non-streaming call the body is read inside the attempt, and for a stream the
first chunk is, so an upstream that dies before its first byte fails over.
"""

from __future__ import annotations

import random
from collections.abc import AsyncIterator, Iterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from modelpool.clock import Clock
from modelpool.errors import (
    AllAttemptsFailed,
    BadRequest,
    RouteNotFound,
    UpstreamConnectError,
    UpstreamError,
    UpstreamStatusError,
    UpstreamStreamBroken,
    UpstreamTimeout,
)
from modelpool.providers.base import Call, UpstreamResponse
from modelpool.table import Member, Pool, RoutingTable

RETRYABLE_STATUS = frozenset({408, 409, 425, 429, 500, 502, 503, 504, 529})


_NEEDS = {
    (endpoint, stream): frozenset({endpoint, "stream"} if stream else {endpoint})
    for endpoint in ("chat", "completions", "embeddings")
    for stream in (False, True)
}


def is_retryable(error: UpstreamError) -> bool:
    """Worth trying another member? Request-scoped statuses (400, 401, 413, 422…) are not."""
    if isinstance(error, UpstreamStatusError):
        return error.status in RETRYABLE_STATUS or error.status >= 500
    return isinstance(error, UpstreamConnectError | UpstreamTimeout | UpstreamStreamBroken)


@dataclass(frozen=True, slots=True)
class ProxyRequest:
    endpoint: str
    route: str
    """The request's `model` field: a pool or a model name."""
    body: Mapping[str, Any]
    stream: bool

    @property
    def capabilities(self) -> frozenset[str]:
        """What a model must declare to serve this request."""
        return _NEEDS[self.endpoint, self.stream]


@dataclass(slots=True)
class Served:
    """A successful attempt, ready to relay."""

    pool: str
    member: Member
    attempts: int
    content_type: str
    body: bytes
    """The whole body (non-streaming) or the first chunk (streaming)."""
    rest: AsyncIterator[bytes] | None
    """The stream after ``body``; None when not streaming."""
    broken: UpstreamError | None = None
    """Set by the relay when the upstream broke the stream after it had started."""


class Dispatcher:
    def __init__(self, clock: Clock, rng: random.Random | None = None) -> None:
        self._clock = clock
        self._rng = rng or random.Random()

    def resolve(self, table: RoutingTable, name: str) -> Pool:
        route = table.routes.get(name)
        if route is None:
            known = ", ".join(sorted(table.routes))
            raise RouteNotFound(f"unknown pool or model {name!r}; known: {known}", param="model")
        return route

    def candidates(
        self, table: RoutingTable, route: Pool, needs: frozenset[str]
    ) -> Iterator[tuple[str, Member]]:
        """Members to try, in order: the pool's own, then each failover pool's.

        Each model is tried once, and only models with every capability in
        ``needs``; when no member anywhere in the chain has them, that is the
        client's mistake (400), not an outage.
        """
        tried: set[str] = set()
        for pool_name in route.chain:
            pool = table.routes[pool_name]
            for member in pool.order(self._rng):
                model = member.model
                if model.name not in tried and needs <= model.spec.capabilities:
                    tried.add(model.name)
                    yield pool_name, member
        if not tried:
            wanted = ", ".join(sorted(needs))
            message = f"no model in {route.name!r} or its failover pools supports {wanted}"
            raise BadRequest(message, param="model")

    @asynccontextmanager
    async def serve(self, table: RoutingTable, request: ProxyRequest) -> AsyncIterator[Served]:
        """Yield the first successful attempt; raise the reason when none succeeds."""
        route = self.resolve(table, request.route)
        failures: list[UpstreamError] = []
        needs = request.capabilities
        for attempt, (pool_name, member) in enumerate(self.candidates(table, route, needs), 1):
            if attempt > route.attempts:
                break
            state = member.model.state
            state.started()
            started = self._clock.now()
            try:
                response, head, rest = await self._attempt(member, request)
            except UpstreamError as error:
                state.finished(None, ok=False)
                if not is_retryable(error):
                    raise
                failures.append(error)
                continue
            except BaseException:  # cancelled: the client went away; no verdict on the model
                state.finished(None, ok=None)
                raise
            served = Served(pool_name, member, attempt, response.content_type, head, rest)
            verdict: bool | None = None
            try:
                yield served
                verdict = served.broken is None
            finally:
                response.close()
                latency = self._clock.now() - started if verdict else None
                state.finished(latency, ok=verdict)
            return
        raise AllAttemptsFailed(failures)

    async def _attempt(
        self, member: Member, request: ProxyRequest
    ) -> tuple[UpstreamResponse, bytes, AsyncIterator[bytes] | None]:
        model = member.model
        body = {**request.body, "model": model.spec.upstream_model}
        call = Call(request.endpoint, body, request.stream, member.timeouts, model.name)
        response = await model.adapter.send(call)
        try:
            if not request.stream:
                return response, await response.read(), None
            rest = aiter(response.chunks())
            first = await anext(rest, b"")
            if not first:
                raise UpstreamStreamBroken(
                    f"{model.name}: stream ended before any data", model=model.name
                )
            return response, first, rest
        except BaseException:
            response.close()
            raise
