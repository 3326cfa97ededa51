"""Prometheus metrics on an injected registry (one per app, so tests stay independent)."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from modelpool.breaker import Breaker, State

if TYPE_CHECKING:  # the table is only read, at scrape time
    from modelpool.table import RoutingTable


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        self.reloads = Counter(
            "modelpool_config_reloads",
            "Config reloads by result (applied or rejected).",
            ["result"],
            registry=self.registry,
        )
        self.generation = Gauge(
            "modelpool_config_generation",
            "Generation of the routing table being served (+1 per applied reload).",
            registry=self.registry,
        )
        self.last_reload_success = Gauge(
            "modelpool_config_last_reload_success_timestamp_seconds",
            "Unix time of the last successfully applied config (startup included).",
            registry=self.registry,
        )
        for result in ("applied", "rejected"):
            self.reloads.labels(result=result)
        self.retries = Counter(
            "modelpool_retries",
            "Attempts beyond the first, by the pool the client asked for.",
            ["pool"],
            registry=self.registry,
        )
        self.failovers = Counter(
            "modelpool_failovers",
            "Times a request moved on to a different model, by the pool the client asked for.",
            ["pool"],
            registry=self.registry,
        )
        self.upstream_errors = Counter(
            "modelpool_upstream_errors",
            "Failed upstream attempts by model and kind "
            "(connect, timeout, status_429, status_5xx, status_4xx, stream).",
            ["model", "kind"],
            registry=self.registry,
        )

        self.rejections = Counter(
            "modelpool_rejections",
            "Requests turned away for capacity, by pool and reason (queue_full, queue_timeout).",
            ["pool", "reason"],
            registry=self.registry,
        )
        self.queue_wait = Histogram(
            "modelpool_queue_wait_seconds",
            "Time requests spent waiting in a pool's line for capacity.",
            ["pool"],
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
            registry=self.registry,
        )

        self.requests = Counter(
            "modelpool_requests",
            "Finished client requests by client, pool (asked for), model (that served) and "
            "outcome (ok, error, cancelled, rejected: refused for its key, body, pool, "
            "capacity or budget). Names come from the config; '-' is none, 'other' anything "
            "the config does not name (an unknown key's client too).",
            ["client", "pool", "model", "outcome"],
            registry=self.registry,
        )
        self.tokens = Counter(
            "modelpool_tokens",
            "Tokens used, by kind (input, output, cache_read, cache_write).",
            ["client", "pool", "model", "kind"],
            registry=self.registry,
        )
        self.cost = Counter(
            "modelpool_cost_usd",
            "Cost in USD from the models' prices.",
            ["client", "pool", "model"],
            registry=self.registry,
        )
        self.cost_unknown = Counter(
            "modelpool_cost_unknown_requests",
            "Requests served by a model with no price: their cost is not in modelpool_cost_usd.",
            ["client", "pool", "model"],
            registry=self.registry,
        )
        self.upstream_latency = Histogram(
            "modelpool_upstream_latency_seconds",
            "Time from sending an attempt to its first event (streams: time to first token) "
            "or its whole body, for attempts that were served.",
            ["model", "stream"],
            buckets=(0.05, 0.1, 0.25, 0.5, 1, 2, 4, 8, 15, 30, 60, 120),
            registry=self.registry,
        )
        self.overhead = Histogram(
            "modelpool_overhead_seconds",
            "modelpool's own time per served request, before its answer's head went out: "
            "everything since the request arrived except waiting on upstreams.",
            buckets=(0.0001, 0.00025, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.1, 1),
            registry=self.registry,
        )
        self.request_duration = Histogram(
            "modelpool_request_duration_seconds",
            "Whole client requests, from admission to the last byte, by pool and outcome.",
            ["pool", "outcome"],
            buckets=(0.05, 0.1, 0.25, 0.5, 1, 2, 4, 8, 15, 30, 60, 120, 300),
            registry=self.registry,
        )

    def watch_breakers(self, models: Callable[[], Iterable[tuple[str, Breaker]]]) -> None:
        """Expose every breaker's state, read at scrape time (nothing on the hot path)."""
        self.registry.register(_BreakerCollector(models))

    def watch_shared_state(self, up: Callable[[], bool]) -> None:
        """modelpool_shared_state_up: 1 while Redis answers, 0 while it does not."""
        self.registry.register(_SharedStateCollector(up))

    def watch_health(self, providers: Callable[[], Iterable[tuple[str, str]]]) -> None:
        """Expose each provider's latest health-probe status, read at scrape time."""
        self.registry.register(_HealthCollector(providers))


def watch_capacity_of(metrics: Metrics, table: Callable[[], RoutingTable]) -> None:
    """In-flight, queue depth and limit headroom, read at scrape time from the table."""
    metrics.registry.register(_CapacityCollector(table))


class _CapacityCollector(Collector):
    def __init__(self, table: Callable[[], RoutingTable]) -> None:
        self._table = table

    def collect(self) -> Iterator[Metric]:
        table = self._table()
        in_flight = GaugeMetricFamily(
            "modelpool_in_flight", "Requests in flight per model.", labels=["model"]
        )
        depth = GaugeMetricFamily(
            "modelpool_queue_depth", "Requests waiting in a pool's line.", labels=["pool"]
        )
        headroom = GaugeMetricFamily(
            "modelpool_limit_headroom",
            "What is left of each configured limit (requests or tokens).",
            labels=["level", "name", "kind"],
        )
        for name, model in table.models.items():
            in_flight.add_metric([name], model.state.in_flight)
            for gate in model.state.limits.gates(model.spec.limits):
                headroom.add_metric(["model", name, gate.kind], gate.headroom())
        for name, pool in table.pools.items():
            depth.add_metric([name], pool.state.queue.depth)
            for gate in pool.state.limits.gates(pool.limits):
                headroom.add_metric(["pool", name, gate.kind], gate.headroom())
        yield from (in_flight, depth, headroom)


_STATE_VALUE = {State.CLOSED: 0, State.OPEN: 1, State.HALF_OPEN: 2}
_HEALTH_VALUE = {"healthy": 1, "unhealthy": 0, "misconfigured": -1}


class _BreakerCollector(Collector):
    def __init__(self, models: Callable[[], Iterable[tuple[str, Breaker]]]) -> None:
        self._models = models

    def collect(self) -> Iterator[Metric]:
        state = GaugeMetricFamily(
            "modelpool_breaker_state",
            "Circuit breaker state per model: 0 closed, 1 open, 2 half-open.",
            labels=["model"],
        )
        transitions = CounterMetricFamily(
            "modelpool_breaker_transitions",
            "Breaker state changes per model since its state was created.",
            labels=["model"],
        )
        for name, breaker in self._models():
            state.add_metric([name], _STATE_VALUE[breaker.state])
            transitions.add_metric([name], breaker.transitions)
        yield state
        yield transitions


class _SharedStateCollector(Collector):
    def __init__(self, up: Callable[[], bool]) -> None:
        self._up = up

    def collect(self) -> Iterator[Metric]:
        gauge = GaugeMetricFamily(
            "modelpool_shared_state_up",
            "1 while the shared state (Redis) answers; 0 while this sidecar runs without it.",
        )
        gauge.add_metric([], 1.0 if self._up() else 0.0)
        yield gauge


class _HealthCollector(Collector):
    def __init__(self, providers: Callable[[], Iterable[tuple[str, str]]]) -> None:
        self._providers = providers

    def collect(self) -> Iterator[Metric]:
        status = GaugeMetricFamily(
            "modelpool_health_status",
            "Latest active health probe per provider: 1 healthy, 0 unhealthy, "
            "-1 misconfigured (the probe itself is rejected); absent until probed.",
            labels=["provider"],
        )
        for name, value in self._providers():
            status.add_metric([name], _HEALTH_VALUE[value])
        yield status
