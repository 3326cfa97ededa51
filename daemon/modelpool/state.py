"""Long-lived runtime state, kept apart from the immutable routing table.

The routing table is rebuilt on every reload; what a model has *learned*
(in-flight count, latency, later breaker and limiter state) must survive
that. So state lives here, keyed by :class:`ModelIdentity`: the model's name
plus what makes it a different upstream (endpoint, upstream model name,
credential fingerprint). Changing a timeout or a price keeps the state;
pointing the model at another endpoint or key starts it fresh.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

from modelpool.breaker import Breaker
from modelpool.clock import Clock, SystemClock
from modelpool.limits import GateFactory, LimitState
from modelpool.retry import RetryBudget
from modelpool.waitqueue import WaitQueue


@dataclass(frozen=True, slots=True)
class ModelIdentity:
    name: str
    endpoint: str
    upstream_model: str
    credential: str

    @property
    def scope(self) -> str:
        """One string naming this deployment everywhere (shared state keys, limits)."""
        return "|".join((self.name, self.endpoint, self.upstream_model, self.credential))


class ModelState:
    """What one model's runtime has learned. Mutated only on the event loop."""

    __slots__ = (
        "breaker",
        "errors",
        "identity",
        "in_flight",
        "latency_ewma",
        "limits",
        "on_idle",
        "requests",
    )

    def __init__(
        self, identity: ModelIdentity, clock: Clock, gates: GateFactory | None = None
    ) -> None:
        self.identity = identity
        self.breaker = Breaker(clock)
        self.limits = LimitState(clock, factory=gates, scope=f"model:{identity.scope}")
        self.in_flight = 0
        self.requests = 0
        self.errors = 0
        self.latency_ewma: float | None = None
        self.on_idle: Callable[[ModelState], None] | None = None
        """Set while the model is retired: called when its last request ends."""

    def started(self) -> None:
        self.in_flight += 1
        self.requests += 1

    def finished(self, latency: float | None, *, ok: bool | None) -> None:
        """A request ended: ``ok`` False counts an error; None (the client left) judges nothing."""
        self.in_flight = max(0, self.in_flight - 1)
        if ok is False:
            self.errors += 1
        if self.in_flight == 0 and self.on_idle is not None:
            self.on_idle(self)
        if latency is not None:
            previous = self.latency_ewma
            self.latency_ewma = latency if previous is None else 0.8 * previous + 0.2 * latency


class PoolState:
    """Per-pool runtime state: round-robin cursor, retry budget, limits, waiting line."""

    __slots__ = ("budget", "cursor", "limits", "queue")

    def __init__(self, clock: Clock, gates: GateFactory | None = None, name: str = "") -> None:
        self.cursor = 0
        self.budget = RetryBudget(clock)
        self.limits = LimitState(clock, factory=gates, scope=f"pool:{name}")
        self.queue = WaitQueue()

    def advance(self) -> int:
        """A fresh position for this request (wraps freely; callers take a modulo)."""
        position = self.cursor
        self.cursor = position + 1
        return position


class StateRegistry:
    """Owns every ModelState and PoolState across reloads.

    After a reload, state that the new table no longer refers to is released
    at once if idle, or *retired* and released when its last in-flight
    request ends; a model that comes back before then keeps its state.
    """

    def __init__(self, clock: Clock | None = None, gates: GateFactory | None = None) -> None:
        self._clock: Clock = clock or SystemClock()
        self._gates = gates
        """Where limits count: in this process (None), or shared (Redis)."""
        self._models: dict[ModelIdentity, ModelState] = {}
        self._pools: dict[str, PoolState] = {}
        self._clients: dict[str, LimitState] = {}

    def model(self, identity: ModelIdentity) -> ModelState:
        state = self._models.get(identity)
        if state is None:
            state = self._models[identity] = ModelState(identity, self._clock, self._gates)
        state.on_idle = None  # live again, if it was retired
        return state

    def pool(self, name: str) -> PoolState:
        state = self._pools.get(name)
        if state is None:
            state = self._pools[name] = PoolState(self._clock, self._gates, name)
        return state

    def client(self, name: str) -> LimitState:
        """A client's limits, kept across reloads while the client exists."""
        state = self._clients.get(name)
        if state is None:
            state = self._clients[name] = LimitState(
                self._clock, factory=self._gates, scope=f"client:{name}"
            )
        return state

    def models(self) -> list[ModelState]:
        return list(self._models.values())

    def pools(self) -> list[str]:
        return list(self._pools)

    def reconcile(
        self,
        live_models: Iterable[ModelIdentity],
        live_pools: Iterable[str],
        live_clients: Iterable[str] = (),
    ) -> None:
        """Release state no table refers to any more, now or when its last request ends."""
        keep = set(live_models)
        for identity, state in list(self._models.items()):
            if identity in keep:
                continue
            if state.in_flight == 0:
                del self._models[identity]
            else:
                state.on_idle = self._release
        pools = set(live_pools)
        for name in list(self._pools):
            if name not in pools:
                del self._pools[name]
        clients = set(live_clients)
        for name in list(self._clients):
            if name not in clients:
                del self._clients[name]

    def _release(self, state: ModelState) -> None:
        if self._models.get(state.identity) is state:
            del self._models[state.identity]
        state.on_idle = None
