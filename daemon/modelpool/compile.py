"""Config → RoutingTable. Pure: no awaits, no I/O; state is looked up, not created anew.

Everything a request would otherwise recompute (URLs, auth headers,
effective timeouts, failover order) is settled here, once per reload.
"""

from __future__ import annotations

from collections.abc import Mapping

from modelpool.auth import Authenticator
from modelpool.balance import round_robin, strategy_for
from modelpool.config.spec import (
    Config,
    Limits,
    ModelSpec,
    PoolSpec,
    ProviderSpec,
    QueuePolicy,
    RetryPolicy,
)
from modelpool.config.spec import frozen as freeze
from modelpool.providers import anthropic, openai
from modelpool.providers.anthropic import AnthropicProvider
from modelpool.providers.base import Provider
from modelpool.providers.mock import MockProvider
from modelpool.providers.openai import OpenAIProvider
from modelpool.state import ModelIdentity, StateRegistry
from modelpool.table import Member, Model, Pool, RoutingTable
from modelpool.upstream import Transports

DIRECT = RetryPolicy()
"""A model named directly: the default retry policy (same model, backoff between tries)."""
NONE = Limits()
QUEUE = QueuePolicy()

OPENAI_DIALECT = frozenset({"openai", "openai_compatible", "ollama", "azure_openai"})
ANTHROPIC_SERVES = frozenset({"chat", "stream", "tools", "vision", "json_mode", "reasoning"})
"""What the Messages API can do: no legacy completions, no embeddings."""


def identity_of(spec: ModelSpec, provider: ProviderSpec) -> ModelIdentity:
    credential = provider.api_key.fingerprint if provider.api_key is not None else ""
    endpoint = f"{provider.type}:{provider.base_url}"
    return ModelIdentity(spec.name, endpoint, spec.upstream_model, credential)


def compile_table(
    config: Config, *, generation: int, registry: StateRegistry, transports: Transports
) -> RoutingTable:
    adapters = {name: _adapter(spec, transports) for name, spec in config.providers.items()}
    models = {
        name: _model(spec, config.providers[spec.provider], adapters[spec.provider], registry)
        for name, spec in config.models.items()
    }
    pools = {name: _pool(spec, config, models, registry) for name, spec in config.pools.items()}
    routes = dict(pools)
    for name, model in models.items():
        member = Member(model, 1.0, 0, model.provider.timeouts)
        key = f"model:{name}"
        pool_state = registry.pool(key)
        routes[name] = Pool(
            name, None, (member,), round_robin, pool_state, (name,), DIRECT, key, NONE, QUEUE
        )
    authenticator = Authenticator(config.clients)
    clients = freeze({name: registry.client(name) for name in config.clients})
    return RoutingTable(
        generation, config, freeze(models), freeze(pools), freeze(routes), authenticator, clients
    )


def transport_key(spec: ProviderSpec) -> tuple[str, int] | None:
    """Which shared connection pool a provider's requests use (None: no HTTP, the mock)."""
    if spec.type in OPENAI_DIALECT:
        return openai.api_root(spec), spec.max_connections
    if spec.type == "anthropic":
        return anthropic.api_root(spec), spec.max_connections
    return None


def _adapter(spec: ProviderSpec, transports: Transports) -> Provider:
    key = transport_key(spec)
    if key is None:
        return MockProvider(spec)
    if spec.type == "anthropic":
        return AnthropicProvider(spec, transports.get(*key))
    return OpenAIProvider(spec, transports.get(*key))


def _model(
    spec: ModelSpec, provider: ProviderSpec, adapter: Provider, registry: StateRegistry
) -> Model:
    identity = identity_of(spec, provider)
    state = registry.model(identity)
    key = transport_key(provider)
    transport = (
        adapter.transport if isinstance(adapter, OpenAIProvider | AnthropicProvider) else None
    )
    capabilities = spec.capabilities
    if adapter.dialect == "anthropic":
        capabilities &= ANTHROPIC_SERVES
    return Model(spec.name, spec, provider, adapter, identity, state, key, capabilities, transport)


def _pool(
    spec: PoolSpec, config: Config, models: Mapping[str, Model], registry: StateRegistry
) -> Pool:
    members = tuple(
        Member(
            models[m.model],
            m.weight,
            m.priority,
            models[m.model].provider.timeouts.merged(spec.timeouts),
        )
        for m in spec.members
    )
    chain = failover_chain(spec.name, config.pools)
    return Pool(
        spec.name,
        spec,
        members,
        strategy_for(spec.strategy),
        registry.pool(spec.name),
        chain,
        spec.retry,
        spec.name,
        spec.limits,
        spec.queue,
    )


def failover_chain(start: str, pools: Mapping[str, PoolSpec]) -> tuple[str, ...]:
    """``start`` then its failover pools depth-first; each pool once, so loops end."""
    chain: list[str] = []
    seen: set[str] = set()
    stack = [start]  # iterative depth-first: a chain of thousands of pools is fine
    while stack:
        name = stack.pop()
        if name in seen or name not in pools:
            continue
        seen.add(name)
        chain.append(name)
        stack.extend(reversed(pools[name].failover))
    return tuple(chain)
