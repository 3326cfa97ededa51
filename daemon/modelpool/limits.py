"""Capacity limits: requests per minute, tokens per minute, requests in flight.

Each configured limit is a *gate*. Admission takes from every gate of a
level at once or from none; a :class:`Lease` gives back what must be given
back (the in-flight slot, unused reserved tokens) exactly once, when the
request ends. Gates are long-lived state (they survive reloads in the
StateRegistry) and are rebuilt only when their configured number changes.

This in-process implementation is the default; the :class:`Gate` protocol
is the seam a shared (Redis) implementation plugs into.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

from aiolimiter import AsyncLimiter

from modelpool.clock import Clock
from modelpool.config.spec import Limits


class GateRefused(Exception):
    """A shared gate's authoritative check said no although its local view said yes."""

    def __init__(self, kind: str, retry_in: float) -> None:
        super().__init__(f"{kind} limit reached")
        self.kind = kind
        self.retry_in = retry_in


class Gate(Protocol):
    kind: str
    """rpm, tpm or concurrency: the reason given when it refuses."""

    def can_take(self, amount: int) -> bool: ...

    async def take(self, amount: int) -> None:
        """Take ``amount``; only called right after can_take said yes. A shared gate may
        still refuse (GateRefused): its count lives elsewhere."""

    def give(self, taken: int, used: int) -> None:
        """The request ended having used ``used`` of the ``taken`` it reserved."""

    def retry_in(self, amount: int) -> float:
        """Seconds until ``amount`` could be taken, assuming nothing else changes."""

    def headroom(self) -> float:
        """What is left now, in the gate's own unit."""


class RequestRate:
    """rpm: aiolimiter's leaky bucket (a burst of up to rpm, then rpm/60 per second)."""

    kind = "rpm"

    def __init__(self, rpm: int) -> None:
        self.limit = rpm
        self._bucket = AsyncLimiter(rpm, 60)

    def can_take(self, amount: int) -> bool:
        return self._bucket.has_capacity(1)

    async def take(self, amount: int) -> None:
        await self._bucket.acquire(1)  # does not wait: capacity was just checked

    def give(self, taken: int, used: int) -> None:
        """A request that was sent counts, whatever it used."""

    def retry_in(self, amount: int) -> float:
        return 60.0 / self.limit

    def headroom(self) -> float:
        self._bucket.has_capacity(0)  # leaks the bucket up to now
        return max(0.0, self.limit - self._bucket._level)


class TokenRate:
    """tpm: a leaky bucket that takes a reservation and refunds what was not used."""

    kind = "tpm"

    def __init__(self, tpm: int, clock: Clock) -> None:
        self.limit = tpm
        self._clock = clock
        self._level = 0.0
        self._at = clock.now()

    def _leak(self) -> float:
        now = self._clock.now()
        self._level = max(0.0, self._level - (now - self._at) * self.limit / 60.0)
        self._at = now
        return self._level

    def can_take(self, amount: int) -> bool:
        level = self._leak()
        # A request larger than the whole limit gets through an empty bucket, alone.
        return level + amount <= self.limit or level == 0.0

    async def take(self, amount: int) -> None:
        self._leak()
        self._level += amount

    def give(self, taken: int, used: int) -> None:
        self._leak()
        self._level = max(0.0, self._level + used - taken)

    def retry_in(self, amount: int) -> float:
        excess = self._leak() + min(amount, self.limit) - self.limit
        return max(0.0, excess * 60.0 / self.limit)

    def headroom(self) -> float:
        return max(0.0, self.limit - self._leak())


class InFlight:
    """max_concurrency: a counter with a ceiling."""

    kind = "concurrency"

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.count = 0

    def can_take(self, amount: int) -> bool:
        return self.count < self.limit

    async def take(self, amount: int) -> None:
        self.count += 1

    def give(self, taken: int, used: int) -> None:
        self.count = max(0, self.count - 1)

    def retry_in(self, amount: int) -> float:
        return 0.05  # frees when a request ends; waiters are also woken then

    def headroom(self) -> float:
        return float(self.limit - self.count)


class GateFactory(Protocol):
    def __call__(self, kind: str, value: int, scope: str) -> Gate:
        """A gate of ``kind`` limited to ``value``, for the level named ``scope``."""
        ...


def local_gate(kind: str, value: int, clock: Clock) -> Gate:
    """The in-process gates: the default, and the fallback of shared ones."""
    if kind == "rpm":
        return RequestRate(value)
    if kind == "tpm":
        return TokenRate(value, clock)
    return InFlight(value)


class LimitState:
    """The gates of one level (a model, a pool or a client), kept across reloads."""

    __slots__ = ("_clock", "_factory", "_gates", "_last", "_scope")

    def __init__(
        self, clock: Clock, *, factory: GateFactory | None = None, scope: str = ""
    ) -> None:
        self._clock = clock
        self._factory = factory
        self._scope = scope
        self._gates: dict[str, Gate] = {}
        self._last: tuple[Limits, Sequence[Gate]] | None = None

    def gates(self, limits: Limits) -> Sequence[Gate]:
        """The gates for ``limits``: the same objects while each number stays the same."""
        last = self._last
        if last is not None and last[0] is limits:  # every request: the table's own Limits
            return last[1]
        gates = self._gates_for(limits)
        self._last = (limits, gates)
        return gates

    def _gates_for(self, limits: Limits) -> Sequence[Gate]:
        wanted = {"rpm": limits.rpm, "tpm": limits.tpm, "concurrency": limits.max_concurrency}
        gates: list[Gate] = []
        for kind, value in wanted.items():
            gate = self._gates.get(kind)
            if value is None:
                self._gates.pop(kind, None)
                continue
            if gate is None or getattr(gate, "limit", None) != value:
                gate = self._gates[kind] = self._build(kind, value)
            gates.append(gate)
        return tuple(gates)

    def _build(self, kind: str, value: int) -> Gate:
        if self._factory is not None:
            return self._factory(kind, value, self._scope)
        return local_gate(kind, value, self._clock)


@dataclass(slots=True)
class Lease:
    """What one request took from its gates; ``release`` gives it back exactly once."""

    taken: list[tuple[Gate, int]] = field(default_factory=list)
    released: bool = False

    def release(self, used_tokens: int | None = None) -> None:
        if self.released:
            return
        self.released = True
        for gate, amount in self.taken:
            gate.give(amount, amount if used_tokens is None else used_tokens)


@dataclass(frozen=True, slots=True)
class Refusal:
    kind: str
    """rpm, tpm or concurrency."""
    retry_in: float


def blocking(gates: Sequence[Gate], tokens: int) -> Refusal | None:
    """The gate that would refuse this request now, if any (the longest wait)."""
    refusals = [
        Refusal(gate.kind, gate.retry_in(tokens)) for gate in gates if not gate.can_take(tokens)
    ]
    return max(refusals, key=lambda r: r.retry_in) if refusals else None


class Batch(Protocol):
    """Takes from several gates in one go (shared gates: one Redis round trip)."""

    async def take_many(self, gates: Sequence[Gate], amounts: Sequence[int]) -> None: ...


async def take_all(gates: Sequence[Gate], tokens: int, lease: Lease) -> None:
    """Take from every gate, or from none: the caller checked ``blocking`` just before,
    but a shared gate can still refuse (GateRefused), and then what this call took is
    given back before the refusal goes on. Gates that share a ``batch`` (the shared
    ones) are taken together, in one call."""
    taken: list[tuple[Gate, int]] = []
    batches: dict[int, tuple[Batch, list[Gate], list[int]]] = {}
    try:
        for gate in gates:
            amount = tokens if gate.kind == "tpm" else 1
            batch: Batch | None = getattr(gate, "batch", None)
            if batch is None:
                await gate.take(amount)
                taken.append((gate, amount))
            else:
                _, group, amounts = batches.setdefault(id(batch), (batch, [], []))
                group.append(gate)
                amounts.append(amount)
        for batch, group, amounts in batches.values():
            await batch.take_many(group, amounts)
            taken.extend(zip(group, amounts, strict=True))
    except BaseException:
        for gate, amount in taken:
            gate.give(amount, 0)
        raise
    lease.taken.extend(taken)


def retry_after(seconds: float) -> int:
    """A Retry-After value: whole seconds, at least 1."""
    return max(1, math.ceil(seconds))
