"""rpm, tpm and concurrency gates whose counts live in Redis, shared by every sidecar.

Each take is one Lua script: check and count in one round trip, atomic across
daemons. The leaky buckets mirror the in-process gates exactly (a burst of up
to the limit, then limit/60 per second), on Redis's own clock so every daemon
leaks alike. A concurrency slot is a member of a sorted set scored by when it
expires (the request's total timeout), so a daemon that dies cannot hold its
slots forever.

What a gate answers *locally* (``can_take``, ``retry_in``, ``headroom``) is
its last view of Redis: a hint for ordering and waiting. Only ``take``
decides; when it refuses, the gate stays closed locally for the wait Redis
named, so nobody spins. With Redis down a gate falls back to its local twin
(each limit divided by the expected replicas) when failing open, or refuses
with 503 when failing closed.
"""

from __future__ import annotations

import hashlib
import uuid
from collections import deque

from modelpool.clock import Clock
from modelpool.limits import Gate, GateRefused, local_gate
from modelpool.shared.link import RedisLink, SharedDown

BUCKET = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local cap, rate, amount = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local level = tonumber(redis.call('HGET', KEYS[1], 'level') or '0')
local at = tonumber(redis.call('HGET', KEYS[1], 'at') or tostring(now))
level = math.max(0, level - (now - at) * rate)
local ok = 1
if ARGV[4] == 'take' then
  if level + amount <= cap or level == 0 then level = level + amount else ok = 0 end
else
  level = math.max(0, level + tonumber(ARGV[5]) - amount)
end
redis.call('HSET', KEYS[1], 'level', tostring(level), 'at', tostring(now))
redis.call('PEXPIRE', KEYS[1], ARGV[6])
return {ok, tostring(level)}
"""

SLOTS = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if ARGV[3] == 'take' then
  if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[1]) then
    return {0, redis.call('ZCARD', KEYS[1])}
  end
  redis.call('ZADD', KEYS[1], now + tonumber(ARGV[4]), ARGV[2])
  redis.call('PEXPIRE', KEYS[1], ARGV[4])
else
  redis.call('ZREM', KEYS[1], ARGV[2])
end
return {1, redis.call('ZCARD', KEYS[1])}
"""

SLOT_TTL_MS = 3_600_000
"""A concurrency slot outlives any request (the longest total timeout is far less): it
is only reclaimed from a daemon that died holding it."""


def scope_key(scope: str) -> str:
    """A stable, short key part for a level's scope (a model identity can be long)."""
    return hashlib.sha256(scope.encode()).hexdigest()[:16]


class _Shared:
    """What the three shared gates have in common: the link, the fallback, the local view."""

    def __init__(self, kind: str, limit: int, scope: str, link: RedisLink, clock: Clock) -> None:
        self.kind = kind
        self.limit = limit
        self._link = link
        self._clock = clock
        self._key = link.key("limit", scope_key(scope), kind)
        local_limit = max(1, limit // max(1, link.spec.replicas))
        self._fallback: Gate = local_gate(kind, local_limit, clock)
        self._closed_until = 0.0
        self._level = 0.0
        self._local: deque[int] = deque()
        """Takes that went to the fallback (Redis was down): given back there."""

    def can_take(self, amount: int) -> bool:
        if not self._link.up:
            return self._fallback.can_take(amount) if self._link.fail_open else True
        return self._clock.now() >= self._closed_until

    def headroom(self) -> float:
        if not self._link.up and self._link.fail_open:
            return self._fallback.headroom()
        return max(0.0, self.limit - self._level)

    async def _take_down(self, amount: int) -> None:
        if not self._link.fail_open:
            raise self._link.unavailable()
        await self._fallback.take(amount)
        self._local.append(amount)

    def _refused(self, wait: float) -> GateRefused:
        self._closed_until = self._clock.now() + wait
        return GateRefused(self.kind, wait)


class SharedRate(_Shared):
    """rpm (amount 1) or tpm (amount = tokens, settled with what was used)."""

    async def take(self, amount: int) -> None:
        if not self._link.up:
            return await self._take_down(amount)
        try:
            ok, level = await self._run("take", amount, 0)
        except SharedDown:
            return await self._take_down(amount)
        self._level = level
        if not ok:
            raise self._refused(self.retry_in(amount))

    def give(self, taken: int, used: int) -> None:
        if self._local:
            self._fallback.give(self._local.popleft(), used)
        elif self.kind == "tpm" and taken != used:
            self._link.spawn(self._run("give", taken, used))

    def retry_in(self, amount: int) -> float:
        if self.kind == "rpm":
            return 60.0 / self.limit
        excess = self._level + min(amount, self.limit) - self.limit
        return max(60.0 / self.limit, excess * 60.0 / self.limit)

    async def _run(self, mode: str, amount: int, used: int) -> tuple[bool, float]:
        args = [self.limit, self.limit / 60.0, amount, mode, used, 120_000]
        ok, level = await self._link.script(BUCKET, [self._key], args)
        return bool(ok), float(level)


class SharedInFlight(_Shared):
    """max_concurrency across every daemon."""

    def __init__(self, kind: str, limit: int, scope: str, link: RedisLink, clock: Clock) -> None:
        super().__init__(kind, limit, scope, link, clock)
        self._slots: deque[str] = deque()

    async def take(self, amount: int) -> None:
        if not self._link.up:
            return await self._take_down(amount)
        slot = uuid.uuid4().hex
        try:
            ok, count = await self._link.script(
                SLOTS, [self._key], [self.limit, slot, "take", SLOT_TTL_MS]
            )
        except SharedDown:
            return await self._take_down(amount)
        self._level = float(count)
        if not ok:
            raise self._refused(0.05)
        self._slots.append(slot)

    def give(self, taken: int, used: int) -> None:
        if self._local:
            self._fallback.give(self._local.popleft(), used)
            return
        if self._slots:
            slot = self._slots.popleft()
            self._level = max(0.0, self._level - 1)
            args = [self.limit, slot, "give", SLOT_TTL_MS]
            self._link.spawn(self._link.script(SLOTS, [self._key], args))

    def retry_in(self, amount: int) -> float:
        return 0.05


class SharedGates:
    """The GateFactory of a shared daemon: every configured limit lives in Redis."""

    def __init__(self, link: RedisLink, clock: Clock) -> None:
        self._link = link
        self._clock = clock

    def __call__(self, kind: str, value: int, scope: str) -> Gate:
        if kind == "concurrency":
            return SharedInFlight(kind, value, scope, self._link, self._clock)
        return SharedRate(kind, value, scope, self._link, self._clock)
