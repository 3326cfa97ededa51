"""The routing table: an immutable snapshot of the config, ready to serve.

Each request takes ``holder.current`` once, at its start, and uses only that
snapshot, so a reload (which replaces the one reference in
:class:`TableHolder`) never changes a request mid-flight. The table points at
long-lived runtime state (``modelpool.state``) but does not own it.
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from dataclasses import dataclass

from modelpool.auth import Authenticator
from modelpool.balance import NO_HINT, Strategy
from modelpool.config.spec import (
    Config,
    Limits,
    ModelSpec,
    PoolSpec,
    Price,
    ProviderSpec,
    QueuePolicy,
    RetryPolicy,
    Timeouts,
)
from modelpool.limits import LimitState
from modelpool.providers.base import Provider
from modelpool.state import ModelIdentity, ModelState, PoolState
from modelpool.tokens import Estimate
from modelpool.upstream import HttpTransport


@dataclass(frozen=True, slots=True, eq=False)
class Model:
    """One deployment, resolved: its provider, adapter and runtime state."""

    name: str
    spec: ModelSpec
    provider: ProviderSpec
    adapter: Provider
    identity: ModelIdentity
    state: ModelState
    transport_key: tuple[str, int] | None
    """The shared connection pool this model's requests use (None: no HTTP, e.g. mock)."""
    capabilities: frozenset[str]
    """What it may serve: the declared capabilities its provider's API can carry."""
    transport: HttpTransport | None = None

    @property
    def saturated(self) -> bool:
        """Every pooled connection to this model's endpoint is busy: a new attempt would queue."""
        transport = self.transport
        return transport is not None and transport.active >= transport.max_connections


@dataclass(frozen=True, slots=True, eq=False)
class Member:
    """A model as a member of one pool, with that pool's weight and timeouts."""

    model: Model
    weight: float
    priority: int
    timeouts: Timeouts

    # What the strategies read (balance.Candidate): the model's live state and price.

    @property
    def in_flight(self) -> int:
        return self.model.state.in_flight

    @property
    def latency(self) -> float | None:
        return self.model.state.latency_ewma

    @property
    def price(self) -> Price | None:
        return self.model.spec.price


@dataclass(frozen=True, slots=True, eq=False)
class Pool:
    """What a request's ``model`` field names: a declared pool, or a model on its own."""

    name: str
    spec: PoolSpec | None
    """None for the implicit one-member route of a model named directly."""
    members: tuple[Member, ...]
    strategy: Strategy[Member]
    state: PoolState
    chain: tuple[str, ...]
    """This pool, then its failover pools depth-first, each once."""
    retry: RetryPolicy
    state_key: str
    """Where this pool's runtime state lives in the StateRegistry."""
    limits: Limits
    queue: QueuePolicy

    @property
    def attempts(self) -> int:
        """Upstream tries per client request, across the whole chain, the first included."""
        return self.retry.attempts

    def order(self, rng: random.Random, hint: Estimate = NO_HINT) -> list[Member]:
        """Members in the order this request (of ``hint``'s estimated size) should try them."""
        return self.strategy(self.members, self.state.advance(), rng, hint)


@dataclass(frozen=True, slots=True, eq=False)
class RoutingTable:
    generation: int
    config: Config
    models: Mapping[str, Model]
    pools: Mapping[str, Pool]
    routes: Mapping[str, Pool]
    """Declared pools plus one implicit route per model: what `model` may name."""
    authenticator: Authenticator
    client_limits: Mapping[str, LimitState]
    """Each client's long-lived limit state, by client name."""


class TableHolder:
    """The single mutable reference to the table being served."""

    __slots__ = ("_table",)

    def __init__(self, table: RoutingTable) -> None:
        self._table = table

    @property
    def current(self) -> RoutingTable:
        return self._table

    def swap(self, table: RoutingTable) -> RoutingTable:
        """Install ``table``; return the one it replaced."""
        previous, self._table = self._table, table
        return previous
