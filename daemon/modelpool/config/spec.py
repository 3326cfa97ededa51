"""The validated config as frozen dataclasses, with every default applied.

These are plain values: durations in seconds, sizes in bytes, secrets
wrapped in :class:`Secret`. ``modelpool.compile`` turns them into a routing
table; nothing here knows about HTTP or runtime state.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from modelpool.config.secrets import Secret
from modelpool.config.units import parse_duration, parse_size

STRATEGIES = (
    "round_robin",
    "weighted",
    "priority",
    "least_in_flight",
    "least_latency",
    "lowest_cost",
)


@dataclass(frozen=True, slots=True)
class Timeouts:
    connect: float = 5.0
    first_byte: float = 60.0
    idle: float = 30.0
    total: float = 600.0

    def merged(self, override: Mapping[str, float]) -> Timeouts:
        return Timeouts(**{**_fields(self), **override}) if override else self


@dataclass(frozen=True, slots=True)
class Limits:
    rpm: int | None = None
    tpm: int | None = None
    max_concurrency: int | None = None
    default_max_tokens: int | None = None


@dataclass(frozen=True, slots=True)
class Price:
    input_per_mtok: float
    output_per_mtok: float
    cache_read_per_mtok: float | None = None
    cache_write_per_mtok: float | None = None


@dataclass(frozen=True, slots=True)
class Health:
    interval: float | None = None
    timeout: float = 5.0
    probe: str = "models"


@dataclass(frozen=True, slots=True)
class ModelHealth:
    """A model's own completion probe; ``None`` fields fall back to the provider's ``Health``."""

    probe: str = "none"
    interval: float | None = None
    timeout: float | None = None


@dataclass(frozen=True, slots=True)
class MockBehaviour:
    latency: float = 0.0
    chunk_delay: float = 0.0
    reply: str | None = None
    embedding_dimensions: int = 8
    failure_rate: float = 0.0
    failure_status: int = 503
    seed: int | None = None


@dataclass(frozen=True, slots=True)
class ProviderSpec:
    name: str
    type: str
    base_url: str
    api_key: Secret | None = None
    api_version: str | None = None
    headers: Mapping[str, str | Secret] = field(default_factory=dict)
    timeouts: Timeouts = Timeouts()
    max_connections: int = 64
    health: Health = Health()
    mock: MockBehaviour = MockBehaviour()


@dataclass(frozen=True, slots=True)
class BreakerPolicy:
    failure_threshold: int = 5
    rate_threshold: float = 0.5
    rate_window: float = 30.0
    rate_min_requests: int = 20
    cooldown_initial: float = 10.0
    cooldown_max: float = 300.0
    cooldown_multiplier: float = 2.0


@dataclass(frozen=True, slots=True)
class ModelSpec:
    name: str
    provider: str
    upstream_model: str
    capabilities: frozenset[str] = frozenset({"chat", "completions", "stream"})
    context_window: int | None = None
    max_output_tokens: int | None = None
    price: Price | None = None
    limits: Limits = Limits()
    breaker: BreakerPolicy = BreakerPolicy()
    description: str = ""
    health: ModelHealth | None = None


@dataclass(frozen=True, slots=True)
class MemberSpec:
    model: str
    weight: float = 1.0
    priority: int = 0


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    attempts: int = 3
    backoff_initial: float = 0.2
    backoff_max: float = 5.0
    backoff_multiplier: float = 2.0
    retry_after_max: float = 3.0
    budget_ratio: float = 0.2
    budget_min_per_second: float = 5.0


@dataclass(frozen=True, slots=True)
class QueuePolicy:
    max_waiting: int = 100
    timeout: float = 10.0


@dataclass(frozen=True, slots=True)
class Budget:
    usd_per_day: float | None = None
    usd_per_month: float | None = None
    tokens_per_day: int | None = None
    tokens_per_month: int | None = None
    status: int = 429

    @property
    def empty(self) -> bool:
        """No cap at all (a cap of 0 is a cap: nothing may be spent)."""
        caps = (self.usd_per_day, self.usd_per_month, self.tokens_per_day, self.tokens_per_month)
        return all(cap is None for cap in caps)


@dataclass(frozen=True, slots=True)
class PoolSpec:
    name: str
    strategy: str
    members: tuple[MemberSpec, ...]
    retry: RetryPolicy = RetryPolicy()
    queue: QueuePolicy = QueuePolicy()
    limits: Limits = Limits()
    timeouts: Mapping[str, float] = field(default_factory=dict)
    failover: tuple[str, ...] = ()
    description: str = ""
    budget: Budget = Budget()


@dataclass(frozen=True, slots=True)
class ClientSpec:
    name: str
    key_sha256: str
    pools: frozenset[str] | None = None
    limits: Limits = Limits()
    budget: Budget = Budget()


@dataclass(frozen=True, slots=True)
class ServerSpec:
    host: str = "127.0.0.1"
    port: int = 8787
    max_body_bytes: int = 16 * 1024 * 1024
    max_connections: int = 1024
    admin_token: Secret | None = None
    grace_period: float = 30.0
    log_format: str = "json"
    log_level: str = "info"
    access_log: bool = True
    admin_listen: str | None = None
    """host:port or unix:/path: where /admin/* and /metrics are served instead of `listen`."""
    expose_upstream_urls: bool = False


@dataclass(frozen=True, slots=True)
class UsageSpec:
    store: str
    flush_interval: float = 1.0
    retention: float = 90 * 86400.0


@dataclass(frozen=True, slots=True)
class SharedStateSpec:
    redis: Secret | None = None
    """The Redis URL (it may hold a password); None: no shared state."""
    prefix: str = "modelpool"
    on_failure: str = "fail_open"
    replicas: int = 1
    timeout: float = 0.1
    sync_interval: float = 0.5

    @property
    def enabled(self) -> bool:
        return self.redis is not None


@dataclass(frozen=True, slots=True)
class Config:
    """A whole validated config file."""

    source: str
    digest: str
    server: ServerSpec
    providers: Mapping[str, ProviderSpec]
    models: Mapping[str, ModelSpec]
    pools: Mapping[str, PoolSpec]
    breakers: BreakerPolicy
    clients: Mapping[str, ClientSpec]
    usage: UsageSpec
    shared_state: SharedStateSpec = SharedStateSpec()
    files: tuple[str, ...] = ()
    """Every file the config was read from (itself, sops files): what reload watches."""
    secrets: tuple[Secret, ...] = ()
    """Every secret value loaded, so any output can be scrubbed of them."""


# --------------------------------------------------------------------------- building


def _fields(obj: Any) -> dict[str, Any]:
    return {name: getattr(obj, name) for name in obj.__slots__}


def _durations(raw: Mapping[str, Any]) -> dict[str, float]:
    return {key: parse_duration(value) for key, value in raw.items()}


def build_timeouts(raw: Mapping[str, Any] | None, base: Timeouts = Timeouts()) -> Timeouts:
    return base.merged(_durations(raw or {}))


def build_limits(raw: Mapping[str, Any] | None) -> Limits:
    return Limits(**(raw or {}))


def build_breaker(raw: Mapping[str, Any] | None, base: BreakerPolicy) -> BreakerPolicy:
    raw = raw or {}
    values = _fields(base)
    if "failure_threshold" in raw:
        values["failure_threshold"] = raw["failure_threshold"]
    rate = raw.get("failure_rate", {})
    for key, name in (("threshold", "rate_threshold"), ("min_requests", "rate_min_requests")):
        if key in rate:
            values[name] = rate[key]
    if "window" in rate:
        values["rate_window"] = parse_duration(rate["window"])
    cooldown = raw.get("cooldown", {})
    for key in ("initial", "max"):
        if key in cooldown:
            values[f"cooldown_{key}"] = parse_duration(cooldown[key])
    if "multiplier" in cooldown:
        values["cooldown_multiplier"] = float(cooldown["multiplier"])
    return BreakerPolicy(**values)


def build_retry(raw: Mapping[str, Any] | None) -> RetryPolicy:
    raw = raw or {}
    values = _fields(RetryPolicy())
    if "attempts" in raw:
        values["attempts"] = raw["attempts"]
    backoff = raw.get("backoff", {})
    for key in ("initial", "max"):
        if key in backoff:
            values[f"backoff_{key}"] = parse_duration(backoff[key])
    if "multiplier" in backoff:
        values["backoff_multiplier"] = float(backoff["multiplier"])
    if "retry_after_max" in raw:
        values["retry_after_max"] = parse_duration(raw["retry_after_max"])
    budget = raw.get("budget", {})
    if "ratio" in budget:
        values["budget_ratio"] = float(budget["ratio"])
    if "min_per_second" in budget:
        values["budget_min_per_second"] = float(budget["min_per_second"])
    return RetryPolicy(**values)


def build_member(raw: str | Mapping[str, Any], index: int) -> MemberSpec:
    if isinstance(raw, str):
        return MemberSpec(model=raw, priority=index)
    return MemberSpec(
        model=raw["model"],
        weight=float(raw.get("weight", 1.0)),
        priority=int(raw.get("priority", index)),
    )


def frozen(mapping: Mapping[str, Any]) -> Mapping[str, Any]:
    return MappingProxyType(dict(mapping))


def parse_listen(listen: str) -> tuple[str, int]:
    host, _, port = listen.rpartition(":")
    return host.strip("[]"), int(port)


def server_from(raw: Mapping[str, Any], admin_token: Secret | None) -> ServerSpec:
    host, port = parse_listen(raw.get("listen", "127.0.0.1:8787"))
    defaults = ServerSpec()
    return ServerSpec(
        host=host,
        port=port,
        max_body_bytes=parse_size(raw.get("max_body_bytes", defaults.max_body_bytes)),
        max_connections=raw.get("max_connections", defaults.max_connections),
        admin_token=admin_token,
        grace_period=parse_duration(raw.get("grace_period", defaults.grace_period)),
        log_format=raw.get("log_format", defaults.log_format),
        log_level=raw.get("log_level", defaults.log_level),
        admin_listen=raw.get("admin_listen"),
        expose_upstream_urls=raw.get("expose_upstream_urls", False),
        access_log=raw.get("access_log", defaults.access_log),
    )
