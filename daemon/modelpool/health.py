"""Active health checks: probes on an interval that feed the breakers.

Targets are recomputed from the *current* routing table every round, so a
reload that adds or removes a provider starts or stops its probes (and an
in-flight probe of a removed target is cancelled):

* a **list probe** per provider with ``health.interval`` and ``probe: models``
  (the default): ``GET {api_root}/models`` with the provider's headers, over
  the provider's own pooled connections. It costs nothing and speaks for
  every model of the provider that has no completion probe of its own. A
  ``mock`` provider has no list to fetch and always answers it healthy (its
  injected failures show through completion probes, which go through the
  adapter like any request).
* a **completion probe** per model that opts in (``models.NAME.health.probe:
  chat``; it costs tokens): a 1-token chat completion through the model's
  adapter, on the model's own interval and timeout (defaulting to the
  provider's). ``probe: none`` on the provider turns every probe off.

What a probe finds, and what it tells the breakers of the models it judges:

* **healthy** (2xx): a closed breaker hears nothing (health is not traffic);
  a *due* one — open past its cooldown, or half-open with no trial running —
  takes the probe as its half-open trial and closes. A trial already running
  (a real request) is never stolen.
* **unhealthy** (connect error, timeout, 401/403, 408, 429, 5xx): counted as a
  failed request would be (``failed``; a Retry-After cools), so probes alone
  open the breaker of a dead provider, with no client traffic needed.
* **misconfigured** (any other 4xx: 400, 404, 405, 422…): the probe itself is
  wrong for this upstream (no list endpoint, a model that rejects
  ``max_tokens``); it is reported, and the breakers are left alone.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Awaitable, Callable, Hashable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, Literal

from modelpool.breaker import Breaker, State
from modelpool.clock import Clock
from modelpool.config.spec import BreakerPolicy, ProviderSpec, Timeouts
from modelpool.errors import UpstreamError, UpstreamStatusError
from modelpool.providers import anthropic, openai
from modelpool.providers.base import Call, UpstreamResponse
from modelpool.retry import judge
from modelpool.table import Model, RoutingTable
from modelpool.upstream import Transports

log = logging.getLogger("modelpool.health")

Status = Literal["healthy", "unhealthy", "misconfigured"]

JITTER = 0.1
"""Each interval is stretched or shrunk by up to this fraction, so probes do not align."""
LONGEST_NAP = 1.0
"""The loop looks at the table at least this often, so a reload's new targets start soon."""
SHORTEST_NAP = 0.02
"""Probes due within this long of each other start together: a round is O(targets)."""
PROBE_PROMPT = [{"role": "user", "content": "ping"}]
UNHEALTHY_4XX = frozenset({401, 403, 408, 429})


@dataclass(frozen=True, slots=True)
class Outcome:
    """What one probe found."""

    status: Status
    reason: str = ""
    retry_after: float | None = None


@dataclass(frozen=True, slots=True)
class Result:
    """The latest outcome of one target, for /admin/status and metrics."""

    status: Status
    reason: str
    checked_at: float
    """Unix time the probe ended."""
    latency: float

    def as_json(self) -> dict[str, Any]:
        return {
            "status": self.status,
            "reason": self.reason,
            "checked_at": self.checked_at,
            "latency_ms": round(self.latency * 1000, 2),
        }


Probe = Callable[[], Awaitable[None]]
"""Returns when the upstream answered 2xx; raises an UpstreamError otherwise."""


@dataclass(frozen=True, slots=True, eq=False)
class Target:
    key: Hashable
    interval: float
    timeout: float
    probe: Probe
    judged: tuple[Model, ...]
    """The models whose breakers hear the outcome."""


# --------------------------------------------------------------------------- classifying


def classify(error: UpstreamError) -> Outcome:
    """A failed probe: the upstream's fault (unhealthy) or the probe's own (misconfigured)."""
    if not isinstance(error, UpstreamStatusError):
        return Outcome("unhealthy", error.message)
    status = error.status
    if status in (401, 403):
        return Outcome("unhealthy", f"credentials rejected (HTTP {status})")
    if 400 <= status < 500 and status not in UNHEALTHY_4XX:
        return Outcome("misconfigured", f"the probe was rejected: {error.message}")
    return Outcome("unhealthy", error.message, judge(error).cool_for)


async def run_probe(target: Target) -> Outcome:
    """Run one probe, bounded by its timeout whatever the transport's own deadlines."""
    try:
        async with asyncio.timeout(target.timeout):
            await target.probe()
    except TimeoutError:
        return Outcome("unhealthy", f"no answer within {target.timeout:g}s")
    except UpstreamError as error:
        return classify(error)
    return Outcome("healthy")


def feed(breaker: Breaker, policy: BreakerPolicy, outcome: Outcome) -> None:
    """Tell a breaker what a probe found, never taking a trial a request holds."""
    if outcome.status == "misconfigured":
        return
    if breaker.state is State.HALF_OPEN and breaker.trial_in_flight:
        return  # a real request is the trial; its verdict decides
    due = breaker.state is not State.CLOSED and breaker.available()
    if due:
        breaker.allow()  # the probe is the half-open trial
    if outcome.status == "unhealthy":
        reason = f"health probe: {outcome.reason}"
        breaker.failed(policy, reason, retry_after=outcome.retry_after)
    elif due:
        breaker.succeeded(policy)


# --------------------------------------------------------------------------- targets


def provider_key(spec: ProviderSpec) -> Hashable:
    """A provider's results survive a reload while its endpoint and key stay the same."""
    credential = spec.api_key.fingerprint if spec.api_key is not None else ""
    return ("provider", spec.name, spec.type, spec.base_url, credential)


def model_key(model: Model) -> Hashable:
    return ("model", model.identity)


def completion_settings(model: Model) -> tuple[float, float] | None:
    """(interval, timeout) of the model's completion probe, or None when it has none."""
    own, shared = model.spec.health, model.provider.health
    if own is None or own.probe != "chat" or shared.probe == "none":
        return None
    interval = own.interval if own.interval is not None else shared.interval
    if interval is None:
        return None
    return interval, own.timeout if own.timeout is not None else shared.timeout


def targets(table: RoutingTable, transports: Transports) -> dict[Hashable, Target]:
    """Every probe the table asks for, by key."""
    found = [*_completion_targets(table), *_list_targets(table, transports)]
    return {target.key: target for target in found}


def _completion_targets(table: RoutingTable) -> Iterator[Target]:
    for model in table.models.values():
        settings = completion_settings(model)
        if settings is not None:
            interval, timeout = settings
            probe = _completion_probe(model, timeout)
            yield Target(model_key(model), interval, timeout, probe, (model,))


def _list_targets(table: RoutingTable, transports: Transports) -> Iterator[Target]:
    by_provider: dict[str, list[Model]] = {}
    for model in table.models.values():
        by_provider.setdefault(model.provider.name, []).append(model)
    for name, spec in table.config.providers.items():
        health = spec.health
        mine = by_provider.get(name)
        if health.interval is None or health.probe != "models" or not mine:
            continue
        probe = _list_probe(spec, mine[0], transports)
        if probe is not None:
            judged = tuple(m for m in mine if completion_settings(m) is None)
            yield Target(provider_key(spec), health.interval, health.timeout, probe, judged)


def _list_probe(spec: ProviderSpec, model: Model, transports: Transports) -> Probe | None:
    if spec.type == "mock":
        return _nothing
    if model.transport_key is None:
        return None  # a provider type this build cannot reach: nothing to probe with
    transport = transports.get(*model.transport_key)
    api = anthropic if spec.type == "anthropic" else openai
    url, headers = api.models_url(spec), api.auth_headers(spec)
    timeouts = _timeouts(spec.health.timeout)

    async def probe() -> None:
        await _drain(await transport.get(url, headers, timeouts, spec.name))

    return probe


def _completion_probe(model: Model, timeout: float) -> Probe:
    body = {"model": model.spec.upstream_model, "messages": PROBE_PROMPT, "max_tokens": 1}
    endpoint = "messages" if model.adapter.dialect == "anthropic" else "chat"
    call = Call(endpoint, body, False, _timeouts(timeout), model.name)

    async def probe() -> None:
        await _drain(await model.adapter.send(call))

    return probe


async def _nothing() -> None:
    """The mock provider's list probe: there is no list to fetch, so it is always up."""


async def _drain(response: UpstreamResponse) -> None:
    try:
        await response.read()
    finally:
        response.close()


def _timeouts(seconds: float) -> Timeouts:
    return Timeouts(connect=seconds, first_byte=seconds, idle=seconds, total=seconds)


# --------------------------------------------------------------------------- the checker


class HealthChecker:
    """Schedules probes for the current table, bounded in concurrency; keeps the results."""

    def __init__(
        self,
        table: Callable[[], RoutingTable],
        transports: Transports,
        clock: Clock,
        *,
        concurrency: int = 16,
        rng: random.Random | None = None,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self._table = table
        self._transports = transports
        self._clock = clock
        self._slots = asyncio.Semaphore(concurrency)
        self._rng = rng or random.Random()
        self._wall = wall
        self._built: tuple[RoutingTable, dict[Hashable, Target]] | None = None
        self._due: dict[Hashable, float] = {}
        self._tasks: dict[Hashable, asyncio.Task[None]] = {}
        self._results: dict[Hashable, Result] = {}
        self.running = False

    # ------------------------------------------------------------------ running

    async def run(self, stop: asyncio.Event) -> None:
        """Probe until ``stop`` is set: the top of a background task."""
        self.running = True
        try:
            while not stop.is_set():
                try:
                    nap = self.tick()
                except Exception:  # top of a background task: log, pause, go on
                    log.exception("health check round failed; trying again in 1s")
                    nap = LONGEST_NAP
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), nap)
        finally:
            self.running = False
            await self.cancel()

    def tick(self) -> float:
        """Start the probes that are due; return the seconds until the next one is."""
        now = self._clock.now()
        current = self._targets()
        for key, target in current.items():
            due = self._due.get(key)
            if due is None:  # new: first probe soon, spread over a tenth of the interval
                due = now + self._rng.uniform(0, JITTER) * target.interval
            due = min(due, now + target.interval * (1 + JITTER))  # the interval shrank
            if due <= now:  # a probe still running from the last beat skips this one
                if key not in self._tasks:
                    self._tasks[key] = asyncio.create_task(self._probe(target))
                due = now + target.interval * self._rng.uniform(1 - JITTER, 1 + JITTER)
            self._due[key] = due
        soonest = min(self._due.values(), default=now + LONGEST_NAP)
        return min(max(soonest - now, SHORTEST_NAP), LONGEST_NAP)

    def _targets(self) -> dict[Hashable, Target]:
        """The current table's targets, built once per table (a reload makes a new one)."""
        table = self._table()
        if self._built is None or self._built[0] is not table:
            self._built = (table, targets(table, self._transports))
            self._forget(self._built[1])
        return self._built[1]

    async def settled(self) -> None:
        """Wait until no probe is in flight."""
        while self._tasks:
            await asyncio.gather(*self._tasks.values(), return_exceptions=True)

    async def cancel(self) -> None:
        """Stop every probe in flight (shutdown)."""
        tasks = list(self._tasks.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def _forget(self, current: dict[Hashable, Target]) -> None:
        """Drop what belongs to targets the table no longer has."""
        for key in [key for key in self._due if key not in current]:
            del self._due[key]
            self._results.pop(key, None)
            task = self._tasks.pop(key, None)
            if task is not None:
                task.cancel()

    async def _probe(self, target: Target) -> None:
        """One probe, start to verdict: the top of its own task."""
        try:
            async with self._slots:
                started = time.perf_counter()
                outcome = await run_probe(target)
                latency = time.perf_counter() - started
            self._record(target, outcome, latency)
        except Exception:  # top of a background task: one broken probe stops nothing
            log.exception("health probe %r crashed", target.key)
        finally:
            if self._tasks.get(target.key) is asyncio.current_task():
                del self._tasks[target.key]

    def _record(self, target: Target, outcome: Outcome, latency: float) -> None:
        if target.key not in self._due:
            return  # removed by a reload while it ran
        previous = self._results.get(target.key)
        self._results[target.key] = Result(outcome.status, outcome.reason, self._wall(), latency)
        if previous is None or previous.status != outcome.status:
            log.log(
                logging.INFO if outcome.status == "healthy" else logging.WARNING,
                "health: %s is %s%s",
                _label(target.key),
                outcome.status,
                f": {outcome.reason}" if outcome.reason else "",
            )
        for model in target.judged:
            feed(model.state.breaker, model.spec.breaker, outcome)

    # ------------------------------------------------------------------ reporting

    def providers(self, table: RoutingTable) -> dict[str, dict[str, Any]]:
        """Each provider's latest list-probe result, or why it has none."""
        report = {}
        for name, spec in table.config.providers.items():
            result = self._results.get(provider_key(spec))
            report[name] = result.as_json() if result else self._unprobed(spec)
        return report

    def models(self, table: RoutingTable) -> dict[str, dict[str, Any]]:
        """The latest completion-probe result of each model that has one."""
        report = {}
        for name, model in table.models.items():
            if completion_settings(model) is None:
                continue
            result = self._results.get(model_key(model))
            report[name] = result.as_json() if result else _unknown("not probed yet")
        return report

    def statuses(self) -> Iterable[tuple[str, str]]:
        """(provider, status) of every provider with a result, for the metrics scrape."""
        table = self._table()
        for name, spec in table.config.providers.items():
            result = self._results.get(provider_key(spec))
            if result is not None:
                yield name, result.status

    def _unprobed(self, spec: ProviderSpec) -> dict[str, Any]:
        """Why a provider has no result."""
        if not self.running:
            return _unknown("active health checks are not running")
        return _passive(spec) or _unknown(
            "not probed yet"
            if provider_key(spec) in self._due
            else f"no list probe for this provider ({spec.type}, or no models)"
        )


def _passive(spec: ProviderSpec) -> dict[str, Any] | None:
    """The reason a provider is not list-probed by its own config, if it is not."""
    health = spec.health
    if health.interval is None:
        return _unknown("no health.interval: passive checks only")
    if health.probe == "none":
        return _unknown("health.probe none: passive checks only")
    if health.probe == "chat":
        return _unknown("judged by its models' completion probes")
    return None


def _unknown(reason: str) -> dict[str, Any]:
    return {"status": "unknown", "reason": reason, "checked_at": None, "latency_ms": None}


def _label(key: Hashable) -> str:
    if isinstance(key, tuple) and key[0] == "provider":
        return f"provider {key[1]!r}"
    if isinstance(key, tuple) and key[0] == "model":
        return f"model {key[1].name!r}"
    return repr(key)
