"""The orchestrator: one request → the members of its pool and failover chain.

Everything around it is a pure mechanism (strategies, breakers, retry policy,
providers, transport); this is the only place that walks the chain, and it
asks ``retry.judge`` what a failure means. A failure is retried only while
nothing has been sent to the client: a non-streaming body is read (and
checked to be JSON) inside the attempt, and so is a stream's first event,
so an upstream that dies — or answers 200 with an error event — before any
content fails over cleanly.

Rounds: the first round tries each capable member once, in the strategy's
order, skipping those whose breaker is open. Later rounds (while the
attempts cap and the retry budget allow) try them again after a jittered
backoff. When no member can be tried at all, the request fails at once with
503 and a Retry-After naming the earliest reopening — unless every member is
only cooling after a short upstream Retry-After, which is waited out.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace

from prometheus_client import Histogram

from modelpool.answers import json_answer, stream_head
from modelpool.balance import NO_HINT
from modelpool.bridge import Bridge, bridge_for
from modelpool.clock import Clock
from modelpool.errors import (
    AllAttemptsFailed,
    AllDown,
    BadRequest,
    BudgetExceeded,
    ContextTooLong,
    NoCapacity,
    RequestError,
    RouteNotFound,
    UpstreamError,
)
from modelpool.limits import Gate, GateRefused, Lease, blocking, take_all
from modelpool.metrics import Metrics
from modelpool.providers.base import Call, UpstreamResponse, credentials, scrub
from modelpool.providers.translate import TranslationError, Usage
from modelpool.relays import StreamRelay
from modelpool.request import ProxyRequest
from modelpool.retry import backoff, judge
from modelpool.table import Member, Model, Pool, RoutingTable
from modelpool.tokens import Estimate, estimate
from modelpool.usage.accounting import Accountant
from modelpool.usage.record import ANONYMOUS, NO_MODEL, OTHER
from modelpool.waitqueue import POLL, QueueFull, QueueTimeout

__all__ = ["Dispatcher", "ProxyRequest", "Served"]

log = logging.getLogger("modelpool.dispatch")


@dataclass(slots=True)
class Served:
    """A successful attempt, ready to relay."""

    pool: str
    member: Member
    attempts: int
    failovers: int
    content_type: str
    body: bytes
    """What to send the client first: the whole answer, or the stream's head
    (up to the upstream's first event), already in the client's API."""
    rest: AsyncIterator[bytes] | None
    """The upstream's stream after its head; None when not streaming."""
    relay: StreamRelay | None = None
    """Turns ``rest`` into the client's bytes, counting usage; None when not streaming."""
    answer_usage: Usage | None = None
    """The usage a whole (non-streaming) answer reported."""
    broken: UpstreamError | None = None
    """Set by the relay when the upstream broke the stream after it had started."""
    cut: bool = False
    """Set by the relay when a shutdown cut the stream short."""
    upstream_seconds: float = 0.0
    """Time spent waiting on upstreams before this answer's head was in hand."""

    @property
    def usage(self) -> Usage | None:
        """What the upstream reported using, in the one canonical shape."""
        return self.relay.usage if self.relay is not None else self.answer_usage

    @property
    def used_tokens(self) -> int | None:
        usage = self.usage
        return None if usage is None else usage.total_tokens

    def billed(self, prompt_tokens: int, cut_short: bool) -> Usage | None:
        """What to charge: the upstream's usage, or for a stream cut short (client gone,
        upstream broke) what was seen of it — about one token per relayed event past the
        first two, on top of the reported (or estimated) prompt."""
        reported = self.usage
        if not cut_short or self.relay is None:
            return reported
        seen = reported or Usage()
        output = max(seen.output_tokens, self.relay.events - 2)
        if seen.prompt_tokens:
            return replace(seen, output_tokens=output)
        return Usage(input_tokens=prompt_tokens, output_tokens=output)


@dataclass(frozen=True, slots=True)
class _Answer:
    response: UpstreamResponse
    head: bytes
    rest: AsyncIterator[bytes] | None
    latency: float
    """Seconds from sending the attempt to having its head (time to first token)."""
    lease: Lease
    """What the attempt took from its model's limits."""
    relay: StreamRelay | None
    usage: Usage | None
    """What the upstream reported using, for a whole (non-streaming) answer."""


@dataclass(slots=True)
class _Progress:
    """One request's walk: what was tried and how it failed."""

    attempts: int = 0
    failovers: int = 0
    upstream_seconds: float = 0.0
    """Time spent waiting on upstreams (every attempt, up to the served one's head)."""
    limited: bool = False
    """Some member was skipped only because its limits were reached."""
    last_model: str = ""
    failures: list[UpstreamError] = field(default_factory=list)
    untranslatable: list[TranslationError] = field(default_factory=list)
    """Members skipped because the request cannot be said in their API."""
    outgrown: set[str] = field(default_factory=set)
    """Models that answered that the prompt exceeds their context window."""
    context_floor: int = 0
    """Models whose context window is no larger than this are too small as well."""

    def fits(self, model: Model, prompt_tokens: int) -> bool:
        """Whether the prompt may fit the model's context window (unknown windows may)."""
        if model.name in self.outgrown:
            return False
        window = model.spec.context_window
        return window is None or (window > self.context_floor and window >= prompt_tokens)

    def outgrow(self, model: Model) -> None:
        self.outgrown.add(model.name)
        self.context_floor = max(self.context_floor, model.spec.context_window or 0)

    def count(self, model: str) -> None:
        self.attempts += 1
        if self.last_model and model != self.last_model:
            self.failovers += 1
        self.last_model = model


class Serving:
    """One request through the dispatcher, as an async context manager.

    Entering takes the client's and the pool's limits once, for the whole
    request (waiting in the pool's line if need be), reserves its budget and
    walks the members until one answers; each attempt takes its model's limits.
    Leaving — after the answer was relayed, or on whatever interrupted it —
    gives everything back exactly once, with the tokens the answer really
    used, and closes the request's bill. (A class, not a generator: this runs
    for every request, and an async generator costs several microseconds.)
    """

    __slots__ = ("_answer", "_bill", "_dispatcher", "_guess", "_lease", "_request", "_route",
                 "_served", "_table")  # fmt: skip

    def __init__(self, dispatcher: Dispatcher, table: RoutingTable, request: ProxyRequest) -> None:
        self._dispatcher = dispatcher
        self._table = table
        self._request = request
        self._served: Served | None = None

    async def __aenter__(self) -> Served:
        dispatcher, table, request = self._dispatcher, self._table, self._request
        route = self._route = dispatcher._route(table, request)
        guess = self._guess = estimate(
            request.endpoint, request.body, route.limits.default_max_tokens
        )
        self._lease = Lease()
        bill = self._bill = request.trace["bill"] = dispatcher._accountant.open(request, route)
        try:
            await dispatcher._enter(table, route, request, guess.total, self._lease)
            await dispatcher._accountant.admit(bill, table, route, request, guess)
            served, self._answer = await dispatcher._walk(table, route, request, guess)
        except BaseException as exc:
            self._close(self._outcome_of(exc))
            raise
        self._served = served
        bill.served_by(served.member.model.name, served.member.model.spec.price)
        bill.attempts = served.attempts
        return served

    async def __aexit__(self, kind: object, exc: BaseException | None, tb: object) -> None:
        served = self._served
        assert served is not None
        # the relay ended (or was interrupted, then the answer is not the model's to judge)
        self._dispatcher._settle(served.member, self._answer, served if exc is None else None)
        if exc is not None:
            outcome = self._outcome_of(exc)
        else:
            outcome = "cancelled" if served.cut else "ok" if served.broken is None else "error"
        self._close(outcome)

    def _outcome_of(self, exc: BaseException) -> str:
        if isinstance(exc, asyncio.CancelledError):
            return "cancelled"
        if isinstance(exc, RequestError | NoCapacity | BudgetExceeded):
            return "rejected"
        if isinstance(exc, AllAttemptsFailed):
            self._bill.attempts = len(exc.attempts)
        elif isinstance(exc, AllDown):
            self._bill.attempts = exc.attempts
        return "error"

    def _close(self, outcome: str) -> None:
        served = self._served
        usage = None if served is None else served.billed(self._guess.input_tokens, outcome != "ok")
        self._lease.release(None if usage is None else usage.total_tokens)
        self._route.state.queue.notify()
        self._dispatcher._accountant.close(self._bill, outcome, usage)


class Dispatcher:
    def __init__(
        self,
        clock: Clock,
        rng: random.Random | None = None,
        *,
        metrics: Metrics | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        accountant: Accountant | None = None,
    ) -> None:
        self._clock = clock
        self._rng = rng or random.Random()
        self._metrics = metrics or Metrics()
        self._sleep = sleep
        self._accountant = accountant or Accountant(None, self._metrics)
        self._latency: dict[tuple[str, bool], Histogram] = {}
        """upstream_latency children by (model, stream), bound once (names come from config)."""

    def resolve(self, table: RoutingTable, name: str) -> Pool:
        route = table.routes.get(name)
        if route is None:
            known = ", ".join(sorted(table.routes))
            raise RouteNotFound(f"unknown pool or model {name!r}; known: {known}", param="model")
        return route

    def candidates(
        self,
        table: RoutingTable,
        route: Pool,
        needs: frozenset[str],
        hint: Estimate = NO_HINT,
        progress: _Progress | None = None,
    ) -> Iterator[tuple[str, Member]]:
        """One round of members, in order: the pool's own, then each failover pool's.

        Each model appears once, and only models with every capability in
        ``needs`` whose context window can hold the prompt (``hint``) — and
        that ``progress`` has not found too small; when no member anywhere in
        the chain qualifies, that is the client's mistake (400), not an
        outage. A member whose connection pool is full goes to the end of
        the round: it is not waited on while another member can serve (a
        hung upstream holds its connections).
        """
        progress = progress or _Progress()
        seen: set[str] = set()
        fitting = 0
        busy: list[tuple[str, Member]] = []
        for pool_name in route.chain:
            pool = table.routes[pool_name]
            for member in pool.order(self._rng, hint):
                model = member.model
                if model.name in seen or not needs <= model.capabilities:
                    continue
                seen.add(model.name)
                if not progress.fits(model, hint.input_tokens):
                    continue
                fitting += 1
                if model.saturated:
                    busy.append((pool_name, member))
                else:
                    yield pool_name, member
        yield from busy
        if not seen:
            wanted = ", ".join(sorted(needs))
            message = f"no model in {route.name!r} or its failover pools supports {wanted}"
            raise BadRequest(message, param="model")
        if not fitting:
            message = (
                f"the prompt (about {hint.input_tokens} tokens) is too long for every model "
                f"in {route.name!r} and its failover pools"
            )
            raise ContextTooLong(message, param="messages")

    def serve(self, table: RoutingTable, request: ProxyRequest) -> Serving:
        """``async with dispatcher.serve(table, request) as served``: the first successful
        attempt, or the reason none succeeded, raised. See ``Serving``."""
        return Serving(self, table, request)

    def _route(self, table: RoutingTable, request: ProxyRequest) -> Pool:
        try:
            return self.resolve(table, request.route)
        except RouteNotFound:
            client = request.client.name if request.client is not None else ANONYMOUS
            self._metrics.requests.labels(client, OTHER, NO_MODEL, "rejected").inc()
            raise

    async def _enter(
        self, table: RoutingTable, route: Pool, request: ProxyRequest, tokens: int, lease: Lease
    ) -> None:
        """Take the request-level limits (client, then pool), waiting while refused.

        A client over its own limit waits *outside* the pool's line, so it never
        holds up other clients queued behind it. In the line, a newcomer also
        queues when the head could go now: the capacity that just freed is the
        head's (first come, first served).
        """
        client = request.client
        own: Sequence[Gate] = ()
        if client is not None and client.name in table.client_limits:
            own = table.client_limits[client.name].gates(client.limits)
            if own and blocking(own, tokens) is not None:
                await self._client_wait(route, client.name, own, tokens)
        gates = [*route.state.limits.gates(route.limits), *own]
        while True:
            refused = bool(gates) and blocking(gates, tokens) is not None
            if refused or route.state.queue.barred():
                await self._queue(route, lambda: self._room(table, route, request, tokens, gates))
            if not gates:
                return
            try:
                await take_all(gates, tokens, lease)
                return
            except GateRefused:  # a shared gate's count was further on than it knew
                continue  # it now says so: the line holds this request until it frees

    async def _client_wait(
        self, route: Pool, client: str, gates: Sequence[Gate], tokens: int
    ) -> None:
        """Wait (up to the pool's queue timeout) for the client's own limits to admit it."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + route.queue.timeout
        while (wait := _refused_for(gates, tokens)) is not None:
            remaining = deadline - loop.time()
            if wait > remaining:  # cannot be admitted in time: say so at once
                self._metrics.rejections.labels(pool=route.name, reason="client_limit").inc()
                message = f"client {client!r} is over its own limits; retry later"
                raise NoCapacity(message, retry_after=wait)
            await self._sleep(min(wait, remaining, POLL))

    async def _walk(
        self, table: RoutingTable, route: Pool, request: ProxyRequest, guess: Estimate
    ) -> tuple[Served, _Answer]:
        """Rounds over the members until one answers; see the module docstring.

        The answer is the caller's to settle (``_settle``) once its relay is done."""
        tokens = guess.total
        route.state.budget.deposit(route.retry)
        progress = _Progress()
        round_ = 0
        while progress.attempts < route.attempts:
            tried_any = False
            members = self.candidates(table, route, request.capabilities, guess, progress)
            for pool_name, member in members:
                if progress.attempts >= route.attempts:
                    break
                bridge = bridge_for(request, member.model)
                try:
                    call = bridge.call(request, member.model, member.timeouts)
                except TranslationError as exc:
                    progress.untranslatable.append(exc)
                    continue
                lease = await self._admit(route, member, progress, round_, tokens)
                if lease is None:
                    continue
                tried_any = True
                attempt = await self._try(route, member, request, progress, lease, bridge, call)
                if attempt is None:
                    continue
                self._answered(member, attempt)
                served = Served(
                    pool_name,
                    member,
                    progress.attempts,
                    progress.failovers,
                    attempt.response.content_type,
                    attempt.head,
                    attempt.rest,
                    attempt.relay,
                    attempt.usage,
                    upstream_seconds=progress.upstream_seconds,
                )
                return served, attempt
            if not tried_any and not await self._wait_for_room(
                table, route, request, progress, tokens
            ):
                break
            round_ += 1 if tried_any else 0
        raise self._exhausted(table, route, request, progress)

    async def _queue(self, route: Pool, blocked: Callable[[], float | None]) -> None:
        """Wait in the pool's line; a full line or a timeout is a 429 with Retry-After."""
        started = self._clock.now()
        try:
            await route.state.queue.wait(route.queue, blocked)
        except (QueueFull, QueueTimeout) as exc:
            reason = "queue_full" if isinstance(exc, QueueFull) else "queue_timeout"
            self._metrics.rejections.labels(pool=route.name, reason=reason).inc()
            wait = blocked() or 1.0
            what = (
                "is full" if reason == "queue_full" else f"timed out after {route.queue.timeout:g}s"
            )
            raise NoCapacity(
                f"pool {route.name!r} is at capacity; its queue {what}", retry_after=wait
            ) from None
        finally:
            self._metrics.queue_wait.labels(pool=route.name).observe(self._clock.now() - started)

    # ------------------------------------------------------------------ one attempt

    async def _admit(
        self, route: Pool, member: Member, progress: _Progress, round_: int, tokens: int
    ) -> Lease | None:
        """Whether to try ``member`` now (breaker, retry budget, backoff, its limits).

        Returns the lease on the model's limits, or None to skip the member.
        """
        model = member.model
        breaker = model.state.breaker
        if not breaker.available():
            return None
        policy = route.retry
        if progress.attempts and not route.state.budget.withdraw(policy):
            return None
        if round_:
            await self._sleep(backoff(policy, round_, self._rng))
        gates = model.state.limits.gates(model.spec.limits)
        if gates and blocking(gates, tokens) is not None:
            progress.limited = True
            return None
        if not breaker.allow():
            return None
        lease = Lease()
        if not gates:
            return lease
        try:
            await take_all(gates, tokens, lease)
        except GateRefused:  # a shared limit, reached by another sidecar
            breaker.abandoned()
            progress.limited = True
            return None
        except BaseException:  # shared state down and failing closed, or cancelled
            breaker.abandoned()
            raise
        return lease

    async def _try(
        self,
        route: Pool,
        member: Member,
        request: ProxyRequest,
        progress: _Progress,
        lease: Lease,
        bridge: Bridge,
        call: Call,
    ) -> _Answer | None:
        """One attempt; None when it failed in a way worth another one."""
        model = member.model
        state = model.state
        if progress.attempts:
            self._metrics.retries.labels(pool=route.name).inc()
        before = progress.failovers
        progress.count(model.name)
        if progress.failovers > before:
            self._metrics.failovers.labels(pool=route.name).inc()
        state.started()
        started = self._clock.now()
        try:
            response, head, rest, relay, usage = await self._attempt(member, request, bridge, call)
        except UpstreamError as error:
            progress.upstream_seconds += self._clock.now() - started
            lease.release(0)
            scrub(error, credentials(model.provider))
            verdict = judge(error)
            log.debug(
                "attempt failed",
                extra={"model": model.name, "kind": verdict.kind, "error": error.message},
            )
            if verdict.kind == "context_length":
                progress.outgrow(model)
            self._metrics.upstream_errors.labels(model=model.name, kind=verdict.kind).inc()
            if verdict.blame_model:
                state.breaker.failed(
                    model.spec.breaker, error.message, retry_after=verdict.cool_for
                )
            else:
                state.breaker.succeeded(model.spec.breaker)
            state.finished(None, ok=False if verdict.blame_model else None)
            if not verdict.retry:
                raise
            progress.failures.append(error)
            return None
        except BaseException:  # cancelled: the client went away; no verdict on the model
            lease.release(None)
            state.breaker.abandoned()
            state.finished(None, ok=None)
            raise
        latency = self._clock.now() - started
        progress.upstream_seconds += latency
        if log.isEnabledFor(logging.DEBUG):
            log.debug("attempt answered", extra={"model": model.name, "latency_s": latency})
        return _Answer(response, head, rest, latency, lease, relay, usage)

    def _answered(self, member: Member, answer: _Answer) -> None:
        """An attempt answered: the model did its part, whatever the relay meets later.

        The latency kept for the model is the time to the first byte of its
        answer (a whole body, or a stream's first event), not the relay's
        length: a long stream is not a slow model.
        """
        model = member.model
        model.state.breaker.succeeded(model.spec.breaker)
        key = (model.name, answer.rest is not None)
        series = self._latency.get(key)
        if series is None:
            stream = "true" if key[1] else "false"
            series = self._latency[key] = self._metrics.upstream_latency.labels(model.name, stream)
        series.observe(answer.latency)

    def _settle(self, member: Member, answer: _Answer, served: Served | None) -> None:
        """Record how a served attempt ended once the relay is done with it."""
        model = member.model
        state = model.state
        answer.response.close()
        answer.lease.release(served.used_tokens if served is not None else None)
        verdict = None if served is None else served.broken is None
        if served is not None and served.broken is not None:
            broken = served.broken
            kind = judge(broken).kind
            self._metrics.upstream_errors.labels(model=model.name, kind=kind).inc()
            state.breaker.failed(model.spec.breaker, broken.message)
        state.finished(answer.latency if verdict else None, ok=verdict)

    async def _attempt(
        self, member: Member, request: ProxyRequest, bridge: Bridge, call: Call
    ) -> tuple[
        UpstreamResponse, bytes, AsyncIterator[bytes] | None, StreamRelay | None, Usage | None
    ]:
        """Send ``call`` and judge the answer up to the point the client would see it."""
        model = member.model
        response = await model.adapter.send(call)
        try:
            if not request.stream:
                raw = await response.read()
                body, usage = bridge.answer(json_answer(raw, model.name), raw, model)
                return response, body, None, None, usage
            rest = aiter(response.chunks())
            head = await stream_head(rest, model.name)
            relay = bridge.relay(request, model)
            return response, relay.feed(head), rest, relay, None
        except BaseException:
            response.close()
            raise

    # ------------------------------------------------------------------ nothing to try

    async def _wait_for_room(
        self,
        table: RoutingTable,
        route: Pool,
        request: ProxyRequest,
        progress: _Progress,
        tokens: int,
    ) -> bool:
        """Nobody could be tried this round. Wait in line while members are only limited,
        wait out a short upstream Retry-After, or give up (everything is down)."""
        if progress.limited:
            progress.limited = False
            await self._queue(route, lambda: self._member_wait(table, route, request, tokens))
            return True
        wait, rate_limited = self._earliest_reopening(table, route, request)
        if wait is None or not rate_limited or wait > route.retry.retry_after_max:
            return False
        await self._sleep(wait)
        return True

    def _room(
        self,
        table: RoutingTable,
        route: Pool,
        request: ProxyRequest,
        tokens: int,
        gates: Sequence[Gate],
    ) -> float | None:
        """None when a request may leave the line: its request-level limits admit it and
        some member has room (or none is merely limited: the walk then says what is wrong)."""
        refused = _refused_for(gates, tokens)
        if refused is not None:
            return refused
        try:
            return self._member_wait(table, route, request, tokens, limited_only=True)
        except BadRequest:  # no member can ever serve it: leave, and let the walk say so
            return None

    def _member_wait(
        self,
        table: RoutingTable,
        route: Pool,
        request: ProxyRequest,
        tokens: int,
        *,
        limited_only: bool = False,
    ) -> float | None:
        """None when some member could take the request now, else the shortest wait.

        ``limited_only``: members whose breaker is open are not waited for, and
        when every member is down there is nothing to wait for (None).
        """
        waits: list[float] = []
        for _, member in self.candidates(table, route, request.capabilities):
            model = member.model
            available = model.state.breaker.available()
            if limited_only and not available:
                continue
            refused = _refused_for(model.state.limits.gates(model.spec.limits), tokens)
            if available and refused is None and not model.saturated:
                return None
            waits.append(max(model.state.breaker.retry_in(), refused or POLL))
        if limited_only and not waits:
            return None
        return min(waits, default=POLL)

    def _earliest_reopening(
        self, table: RoutingTable, route: Pool, request: ProxyRequest
    ) -> tuple[float | None, bool]:
        """Seconds until some member can be tried, and whether all are merely rate-limited."""
        waits: list[float] = []
        rate_limited = True
        for _, member in self.candidates(table, route, request.capabilities):
            breaker = member.model.state.breaker
            waits.append(breaker.retry_in())
            rate_limited = rate_limited and breaker.rate_limited
        return (min(waits) if waits else None), rate_limited

    def _exhausted(
        self, table: RoutingTable, route: Pool, request: ProxyRequest, progress: _Progress
    ) -> Exception:
        wait, rate_limited = self._earliest_reopening(table, route, request)
        if progress.failures:
            return AllAttemptsFailed(progress.failures, retry_after=wait or None)
        if progress.untranslatable:
            reason = progress.untranslatable[0]
            return BadRequest(
                f"no model can take this request: {reason.message}", param=reason.param
            )
        reasons = [
            f"{member.model.name}: {member.model.state.breaker.reason or 'unavailable'}"
            for _, member in self.candidates(table, route, request.capabilities)
        ]
        message = f"no member of {route.name!r} can take requests now ({'; '.join(reasons)})"
        return AllDown(
            message, retry_after=wait or 1.0, rate_limited=rate_limited, attempts=progress.attempts
        )


def _refused_for(gates: Sequence[Gate], tokens: int) -> float | None:
    refusal = blocking(gates, tokens)
    return None if refusal is None else max(refusal.retry_in, POLL)
