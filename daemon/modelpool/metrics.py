"""Prometheus metrics on an injected registry (one per app, so tests stay independent)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge


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
