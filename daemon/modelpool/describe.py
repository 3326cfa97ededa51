"""Human-readable rendering of a validated config's routing, for `modelpool check`.

Renders from the same Config the daemon compiles, with the same failover
flattening, so what `check` prints is what the daemon serves. Secrets are
never printed: keys show as `***`, and any secret value that reached another
string is masked too.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Mapping
from typing import Any

from modelpool.compile import failover_chain
from modelpool.config.secrets import Secret
from modelpool.config.spec import Config, Limits, ModelSpec, PoolSpec, ProviderSpec, Timeouts
from modelpool.config.units import format_duration


def describe(config: Config) -> str:
    lines = [f"config: {config.source} (valid)", *_server(config), "providers:"]
    lines += [f"  {line}" for spec in config.providers.values() for line in _provider(spec)]
    lines.append("models:")
    lines += [f"  {line}" for spec in config.models.values() for line in _model(spec)]
    lines.append("pools:")
    lines += [f"  {line}" for spec in config.pools.values() for line in _pool(spec, config)]
    if config.clients:
        lines.append("clients:")
        for client in config.clients.values():
            pools = ", ".join(sorted(client.pools)) if client.pools is not None else "all"
            lines.append(f"  {client.name}: pools {pools}; limits {_limits(client.limits)}")
    return redact("\n".join(lines), config)


HIDDEN_URL = "(hidden; server.expose_upstream_urls shows it)"


def config_json(config: Config) -> Any:
    """The whole validated config as JSON-ready data, secrets masked (for /admin/config);
    providers' base URLs too unless ``server.expose_upstream_urls``."""
    masks = [secret.reveal() for secret in config.secrets if len(secret.reveal()) >= 4]
    hide_urls = not config.server.expose_upstream_urls

    def walk(value: Any) -> Any:
        if isinstance(value, Secret):
            return "***"
        if isinstance(value, ProviderSpec) and hide_urls and value.base_url != HIDDEN_URL:
            return walk(dataclasses.replace(value, base_url=HIDDEN_URL))
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            fields = (f.name for f in dataclasses.fields(value) if f.name not in ("secrets",))
            return {name: walk(getattr(value, name)) for name in fields}
        if isinstance(value, Mapping):
            return {str(k): walk(v) for k, v in value.items()}
        if isinstance(value, frozenset):
            return sorted(walk(v) for v in value)
        if isinstance(value, list | tuple):
            return [walk(v) for v in value]
        if isinstance(value, str):
            for mask in masks:
                value = value.replace(mask, "***")
        return value

    return walk(config)


def redact(text: str, config: Config) -> str:
    for secret in config.secrets:
        value = secret.reveal()
        if len(value) >= 4:
            text = text.replace(value, "***")
    return text


def _server(config: Config) -> Iterator[str]:
    server = config.server
    host = f"[{server.host}]" if ":" in server.host else server.host
    admin = "token required" if server.admin_token else "loopback peers only (no admin_token)"
    yield f"server: listen {host}:{server.port}; max body {server.max_body_bytes} bytes"
    yield f"admin: {admin}"
    yield f"usage: {config.usage.store}"


def _timeouts(t: Timeouts) -> str:
    parts = (
        ("connect", t.connect),
        ("first_byte", t.first_byte),
        ("idle", t.idle),
        ("total", t.total),
    )
    return " ".join(f"{name}={format_duration(value)}" for name, value in parts)


def _limits(limits: Limits) -> str:
    parts = [
        f"{name}={value}"
        for name in ("rpm", "tpm", "max_concurrency")
        if (value := getattr(limits, name)) is not None
    ]
    return " ".join(parts) or "none"


def _provider(spec: ProviderSpec) -> Iterator[str]:
    key = "***" if spec.api_key is not None else "none"
    where = "(built-in, offline)" if spec.type == "mock" else spec.base_url
    yield f"{spec.name}: {spec.type} {where}; key {key}; max_connections {spec.max_connections}"
    yield f"  timeouts {_timeouts(spec.timeouts)}"


def _model(spec: ModelSpec) -> Iterator[str]:
    caps = ",".join(sorted(spec.capabilities))
    price = (
        f"${spec.price.input_per_mtok:g}/${spec.price.output_per_mtok:g} per Mtok in/out"
        if spec.price
        else "no price (cost unknown)"
    )
    window = f"context {spec.context_window}" if spec.context_window else "context ?"
    yield f"{spec.name} → {spec.provider}/{spec.upstream_model}; {caps}; {window}; {price}"
    yield f"  limits {_limits(spec.limits)}"


def _pool(spec: PoolSpec, config: Config) -> Iterator[str]:
    retry = spec.retry
    limits = _limits(spec.limits)
    yield f"{spec.name}: strategy {spec.strategy}; attempts {retry.attempts}; limits {limits}"
    for i, member in enumerate(spec.members, start=1):
        extra = (
            f"weight {member.weight:g}"
            if spec.strategy == "weighted"
            else f"priority {member.priority}"
        )
        yield f"  {i}. {member.model} ({extra})"
    chain = failover_chain(spec.name, config.pools)
    if len(chain) > 1:
        yield f"  failover: {' → '.join(chain)}"
    queue = spec.queue
    yield f"  queue max_waiting {queue.max_waiting}, timeout {format_duration(queue.timeout)}"
