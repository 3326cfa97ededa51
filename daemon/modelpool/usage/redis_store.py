"""The usage store in Redis: one set of hourly counters shared by many daemons.

Why it is shaped this way:

* ``add`` is the SQLite store's: it only adds the record to an in-memory
  tally per bucket key (hour, client, pool, model). No I/O on the hot path.
* A flush takes the buffer as one *batch* with a unique id — this store's
  writer id (random per store) and a sequence number — and applies it with
  one Lua script, which Redis runs atomically (like MULTI/EXEC: all of the
  batch or none of it). The script first compares the sequence number with
  the writer's high-water mark ``{prefix}:usage:applied:{writer}``, kept in
  the same atomic step: a batch already applied is not applied again.
* That makes a retry safe even when the first try's reply was lost (timeout,
  connection dropped after the server ran the script): a failed batch is
  kept *as it is*, with its id, and retried before anything newer is sent.
  It is not merged back into the buffer, since a merged retry would be a
  different batch that the id could no longer recognise. Records that
  arrive meanwhile wait in the buffer for the next batch.
* Reports and ``spent`` read only the buckets of the asked range (an index
  set per bucket lists its hashes: SMEMBERS, then pipelined HGETALL in one
  MULTI with the writer's mark), then add the held batch (unless the mark
  says Redis already has it) and the buffer: exact at any moment.
* Every key expires ``retention`` after its bucket ends, so Redis holds
  ``retention`` of history and nothing grows without bound; the marks
  expire after :data:`APPLIED_TTL`.
* The URL may carry a password: logs and errors name ``where`` (scheme,
  host, port, db) only.

Key layout (names percent-encoded, ``%`` → ``%25`` and ``:`` → ``%3A``, so a
``:`` inside a name can never make two keys collide)::

    {prefix}:usage:{bucket_start}:{client}:{pool}:{model}   hash: the counters
    {prefix}:usage:index:{bucket_start}                     set: that bucket's hashes
    {prefix}:usage:applied:{writer}                         string: last applied sequence
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal
from urllib.parse import urlsplit

from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.commands.core import AsyncScript
from redis.exceptions import AuthenticationError, RedisError, ResponseError

from modelpool.usage.record import Totals, UsageRecord
from modelpool.usage.store import BUCKET, Query, Row, StoreError
from modelpool.usage.tally import COUNTERS, Key, Tally, bucket_of, count_into

log = logging.getLogger("modelpool.usage")

APPLIED_TTL = 86400
"""Seconds a writer's high-water mark outlives its last flush: a batch whose reply was
lost is recognised if it is retried within a day."""
CLOSE_TIMEOUT = 3.0
"""Seconds ``close`` keeps trying to write what is buffered before giving up."""
CLOSE_RETRY = 0.1
"""Seconds between those tries."""
FUTURE_BUCKETS = 24
"""Buckets after now a report still reads (other daemons' clocks may run ahead)."""

Values = tuple[float, ...]
"""One bucket key's counters, in COUNTERS order."""
Entry = tuple[Key, Values]

_APPLY = """
local seq = tonumber(ARGV[1])
if seq <= tonumber(redis.call('GET', KEYS[1]) or '0') then return 0 end
local a = 3
for k = 2, #KEYS, 2 do
  local hash, index, ttl, n = KEYS[k], KEYS[k + 1], ARGV[a], tonumber(ARGV[a + 1])
  a = a + 2
  for _ = 1, n do
    if ARGV[a] == 'cost_usd' then
      redis.call('HINCRBYFLOAT', hash, ARGV[a], ARGV[a + 1])
    else
      redis.call('HINCRBY', hash, ARGV[a], ARGV[a + 1])
    end
    a = a + 2
  end
  redis.call('EXPIRE', hash, ttl)
  redis.call('SADD', index, hash)
  redis.call('EXPIRE', index, ttl)
end
redis.call('SET', KEYS[1], seq, 'EX', ARGV[2])
return 1
"""
"""KEYS: the writer's mark, then (hash, index) per bucket key. ARGV: the batch's sequence
number, the mark's TTL, then per bucket key: its TTL, n, and n (counter, amount) pairs."""

_DAY = "%Y-%m-%d"
_HOUR = "%Y-%m-%dT%H:00Z"
_GROUP_KEYS = ("client", "pool", "model", "day", "hour")


# --------------------------------------------------------------------------- keys


def escape(name: str) -> str:
    """``name`` with ``%`` and ``:`` percent-encoded: safe between ``:`` separators."""
    return name.replace("%", "%25").replace(":", "%3A")


def unescape(text: str) -> str:
    return text.replace("%3A", ":").replace("%25", "%")


@dataclass(frozen=True, slots=True)
class Keys:
    """Every key name of one prefix."""

    prefix: str

    def bucket(self, key: Key) -> str:
        start, client, pool, model = key
        names = ":".join(escape(name) for name in (client, pool, model))
        return f"{self.prefix}:usage:{start}:{names}"

    def index(self, start: int) -> str:
        return f"{self.prefix}:usage:index:{start}"

    def applied(self, writer: str) -> str:
        return f"{self.prefix}:usage:applied:{writer}"

    def parse(self, start: int, name: str) -> Key | None:
        """The bucket key a hash name (from ``start``'s index) stands for; None if foreign."""
        head = f"{self.prefix}:usage:{start}:"
        parts = name.removeprefix(head).split(":") if name.startswith(head) else []
        if len(parts) != 3:
            return None
        return (start, unescape(parts[0]), unescape(parts[1]), unescape(parts[2]))


def describe_url(url: str) -> str:
    """``scheme://host:port/db`` of a Redis URL: what logs may say (never the password)."""
    try:
        parts = urlsplit(url)
        db = parts.path.strip("/") or "0"
        return f"{parts.scheme}://{parts.hostname or 'localhost'}:{parts.port or 6379}/{db}"
    except ValueError:
        return "redis://(unparsable URL)"


# --------------------------------------------------------------------------- batches


@dataclass(slots=True)
class Batch:
    """Buffered tallies sent under one sequence number, until Redis confirms them."""

    seq: int
    tallies: dict[Key, Tally]

    @property
    def records(self) -> int:
        return sum(tally.requests for tally in self.tallies.values())

    def script_input(
        self, keys: Keys, writer: str, ttls: dict[int, int]
    ) -> tuple[list[str], list[str]]:
        """KEYS and ARGV for :data:`_APPLY`. Buckets without a TTL are past retention and
        left out: Redis would drop them at once."""
        names, args = [keys.applied(writer)], [str(self.seq), str(APPLIED_TTL)]
        for key, tally in self.tallies.items():
            ttl = ttls.get(key[0])
            if ttl is None:
                continue
            pairs = [(n, v) for n, v in zip(COUNTERS, tally.values(), strict=True) if v]
            names += [keys.bucket(key), keys.index(key[0])]
            args += [str(ttl), str(len(pairs))]
            args += [text for name, value in pairs for text in (name, repr(value))]
        return names, args


def _values(tally: Tally) -> Values:
    return tuple(
        float(v) if name == "cost_usd" else v
        for name, v in zip(COUNTERS, tally.values(), strict=True)
    )


def _from_hash(fields: dict[str, str]) -> Values:
    return tuple(
        float(fields.get(name, 0)) if name == "cost_usd" else int(fields.get(name, 0))
        for name in COUNTERS
    )


# --------------------------------------------------------------------------- reports


def check_group_by(query: Query) -> None:
    unknown = [key for key in query.group_by if key not in _GROUP_KEYS]
    if unknown:
        raise ValueError(f"cannot group by {', '.join(unknown)} (use {', '.join(_GROUP_KEYS)})")


def matches(query: Query, key: Key) -> bool:
    start, client, pool, model = key
    return (
        (query.since is None or start >= query.since)
        and (query.until is None or start < query.until)
        and query.client in (None, client)
        and query.pool in (None, pool)
        and query.model in (None, model)
    )


def _group_value(name: str, key: Key) -> str:
    start, client, pool, model = key
    if name in ("day", "hour"):
        return datetime.fromtimestamp(start, UTC).strftime(_DAY if name == "day" else _HOUR)
    return {"client": client, "pool": pool, "model": model}[name]


def summarise(query: Query, entries: Iterable[Entry]) -> list[Row]:
    """Group and sum ``entries`` as ``query`` says, sorted by group (the SQLite order)."""
    groups: dict[tuple[str, ...], list[Values]] = {}
    for key, values in entries:
        if matches(query, key):
            group = tuple(_group_value(name, key) for name in query.group_by)
            groups.setdefault(group, []).append(values)
    return [Row(group, _total(groups[group])) for group in sorted(groups)]


def _total(values: list[Values]) -> Totals:
    columns = dict(zip(COUNTERS, zip(*values, strict=True), strict=True))
    cost = math.fsum(columns.pop("cost_usd"))  # exact sums of many small costs
    return Totals(cost_usd=cost, **{name: int(sum(column)) for name, column in columns.items()})


# --------------------------------------------------------------------------- the store


class RedisStore:
    """A :class:`~modelpool.usage.store.UsageStore` on Redis, shared by many daemons.

    ``timeout`` bounds every Redis call (connect and reply); ``clock`` is unix
    time and only decides TTLs and which buckets a report reads. ``up`` says
    whether the last Redis call succeeded (for a metrics gauge).
    """

    def __init__(
        self,
        url: str,
        *,
        prefix: str = "modelpool",
        flush_interval: float = 1.0,
        retention: float = 90 * 86400.0,
        timeout: float = 0.5,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.url = url
        self.where = describe_url(url)
        self.flush_interval = flush_interval
        self.retention = retention
        self.timeout = timeout
        self.keys = Keys(prefix)
        self.writer = uuid.uuid4().hex
        self._clock = clock
        self._buffer: dict[Key, Tally] = {}
        self._held: Batch | None = None
        """The batch sent but not confirmed: retried, with its id, before anything newer."""
        self._seq = 0
        self._lock = asyncio.Lock()
        """Held by a flush and by a report, so a report never misses a batch in flight."""
        self._stop = asyncio.Event()
        self._redis: Redis | None = None
        self._script: AsyncScript | None = None
        self._flusher: asyncio.Task[None] | None = None
        self._closer: asyncio.Future[None] | None = None
        self._closed = False
        self._up: bool | None = None
        """None until the first call; then whether the last one succeeded."""

    def __repr__(self) -> str:
        return f"RedisStore({self.where!r})"

    @property
    def up(self) -> bool:
        """Whether the last call to Redis succeeded."""
        return bool(self._up)

    @property
    def pending(self) -> int:
        """Records not yet confirmed written to Redis (held batch and buffer)."""
        held = self._held.records if self._held is not None else 0
        return held + sum(tally.requests for tally in self._buffer.values())

    # ------------------------------------------------------------------ lifecycle

    async def open(self) -> None:
        """Connect and start the flusher. Redis being down is not fatal (records wait in
        the buffer); a refused password or a bad db is: StoreError."""
        if self._redis is not None or self._closed:
            return
        try:
            self._redis = Redis.from_url(
                self.url,
                socket_timeout=self.timeout,
                socket_connect_timeout=self.timeout,
                retry=Retry(NoBackoff(), 0),  # this store retries, by batch id
                decode_responses=True,
            )
        except ValueError:
            raise StoreError(f"usage store {self.where}: not a valid Redis URL") from None
        self._script = self._redis.register_script(_APPLY)
        await self._first_ping()
        self._flusher = asyncio.create_task(self._flush_forever(), name="modelpool-usage-flusher")

    async def _first_ping(self) -> None:
        try:
            await self._client().ping()
        except (AuthenticationError, ResponseError) as exc:
            await self._disconnect()
            raise StoreError(f"cannot use usage store {self.where}: {self._why(exc)}") from None
        except (RedisError, OSError) as exc:
            self._mark(False, exc)
            return
        self._mark(True)

    async def close(self) -> None:
        """Flush (for at most CLOSE_TIMEOUT), stop the flusher, disconnect. Idempotent."""
        if self._closer is None:
            self._closer = asyncio.ensure_future(self._shutdown())
        await asyncio.shield(self._closer)

    async def _shutdown(self) -> None:
        self._stop.set()
        if self._flusher is not None:
            await asyncio.wait([self._flusher])
        if self._redis is not None:
            await self._final_flush()
            await self._disconnect()
        self._closed = True

    async def _final_flush(self) -> None:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(CLOSE_TIMEOUT):
                while True:
                    await self.flush()
                    if not self.pending:
                        return
                    await asyncio.sleep(CLOSE_RETRY)
        log.error(
            "usage store %s: %d records could not be written before closing and are lost",
            self.where,
            self.pending,
        )

    async def _disconnect(self) -> None:
        if self._redis is not None:
            with contextlib.suppress(RedisError, OSError):
                await self._redis.aclose()
            self._redis = None

    # ------------------------------------------------------------------ writing

    def add(self, record: UsageRecord) -> None:
        """Count ``record`` in its bucket's buffered tally; no I/O, no await."""
        if self._closed:
            log.warning("usage record after the store closed dropped (%s)", record.client)
            return
        count_into(self._buffer, record)

    async def flush(self) -> None:
        """Retry the held batch, then send the buffer as a new one. A batch that fails
        stays held (logged on the first failure) and is retried by the next flush."""
        async with self._lock:
            if self._held is not None and not await self._send(self._held):
                return
            if self._buffer:
                self._seq += 1
                self._held = Batch(self._seq, self._buffer)
                self._buffer = {}
                await self._send(self._held)

    async def _send(self, batch: Batch) -> bool:
        names, args = batch.script_input(self.keys, self.writer, self._ttls(batch))
        try:
            applied = await self._apply(names, args)
        except (RedisError, OSError) as exc:
            self._mark(False, exc, f"{batch.records} records kept for the next try")
            return False
        self._mark(True)
        if not applied:
            log.info("usage batch %s:%d was already in %s", self.writer, batch.seq, self.where)
        self._held = None
        return True

    async def _apply(self, names: list[str], args: list[str]) -> int:
        """Run :data:`_APPLY`: 1 if it applied the batch, 0 if Redis already had it."""
        assert self._script is not None
        return int(await self._script(keys=names, args=args, client=self._client()))

    def _ttls(self, batch: Batch) -> dict[int, int]:
        """Seconds each bucket of ``batch`` has left before retention drops it."""
        now = self._clock()
        ttls = {
            start: math.ceil(start + BUCKET + self.retention - now) for start, *_ in batch.tallies
        }
        return {start: ttl for start, ttl in ttls.items() if ttl > 0}

    # ------------------------------------------------------------------ reading

    async def report(self, query: Query) -> list[Row]:
        """Totals from Redis plus what is held or buffered here: exact at any moment.
        Raises StoreError when Redis cannot be read."""
        check_group_by(query)
        async with self._lock:
            stored, mark = await self._read(query)
            local = self._local(mark)
        return summarise(query, [*stored, *local])

    async def spent(self, scope: Literal["client", "pool"], name: str, since: float) -> Totals:
        """Totals for one client or pool in the buckets starting at or after ``since``."""
        query = Query(
            since=since,
            client=name if scope == "client" else None,
            pool=name if scope == "pool" else None,
            group_by=(),
        )
        rows = await self.report(query)
        return rows[0].totals if rows else Totals()

    def _local(self, mark: int) -> list[Entry]:
        """The buffer, and the held batch unless Redis's mark shows it was applied."""
        entries = [(key, _values(tally)) for key, tally in self._buffer.items()]
        if self._held is not None and self._held.seq > mark:
            entries += [(key, _values(tally)) for key, tally in self._held.tallies.items()]
        return entries

    async def _read(self, query: Query) -> tuple[list[Entry], int]:
        try:
            names = await self._members(self._buckets(query), query)
            entries, mark = await self._hashes(names)
        except (RedisError, OSError) as exc:
            self._mark(False, exc)
            raise StoreError(f"usage store {self.where} cannot be read: {self._why(exc)}") from None
        self._mark(True)
        return entries, mark

    def _buckets(self, query: Query) -> range:
        """The bucket starts a query can find in Redis: its range, cut to what has not
        expired and to FUTURE_BUCKETS ahead of now."""
        now = self._clock()
        first = bucket_of(now - self.retention) - BUCKET
        last = bucket_of(now) + FUTURE_BUCKETS * BUCKET
        if query.since is not None:
            first = max(first, math.ceil(query.since / BUCKET) * BUCKET)
        if query.until is not None:
            last = min(last, math.ceil(query.until / BUCKET) * BUCKET - BUCKET)
        return range(first, last + 1, BUCKET)

    async def _members(self, buckets: range, query: Query) -> list[tuple[Key, str]]:
        """The hashes (with their keys) the index sets list for ``buckets`` that match."""
        if not buckets:
            return []
        pipe = self._client().pipeline(transaction=False)
        for start in buckets:
            pipe.smembers(self.keys.index(start))
        found: list[tuple[Key, str]] = []
        for start, members in zip(buckets, await pipe.execute(), strict=True):
            for name in sorted(members):
                key = self.keys.parse(start, name)
                if key is not None and matches(query, key):
                    found.append((key, name))
        return found

    async def _hashes(self, names: Sequence[tuple[Key, str]]) -> tuple[list[Entry], int]:
        """The counters of ``names`` and this writer's mark, read in one MULTI."""
        pipe = self._client().pipeline(transaction=True)
        pipe.get(self.keys.applied(self.writer))
        for _, name in names:
            pipe.hgetall(name)
        mark, *hashes = await pipe.execute()
        entries = [
            (key, _from_hash(fields))
            for (key, _), fields in zip(names, hashes, strict=True)
            if fields
        ]
        return entries, int(mark or 0)

    # ------------------------------------------------------------------ background

    async def _flush_forever(self) -> None:
        """The top of the flusher task: flush every interval (or ping, when idle)."""
        while not await self._stopped_within(self.flush_interval):
            try:
                if self.pending:
                    await self.flush()
                else:
                    await self._ping()
            except Exception:  # top of a background task: log, go on next interval
                log.exception("usage flusher failed; trying again next interval")

    async def _stopped_within(self, seconds: float) -> bool:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stop.wait(), seconds)
        return self._stop.is_set()

    async def _ping(self) -> None:
        """Keeps ``up`` true to Redis while there is nothing to write."""
        try:
            await self._client().ping()
        except (RedisError, OSError) as exc:
            self._mark(False, exc)
            return
        self._mark(True)

    # ------------------------------------------------------------------ plumbing

    def _client(self) -> Redis:
        if self._redis is None:
            state = "closed" if self._closed else "not open"
            raise StoreError(f"usage store {self.where} is {state}")
        return self._redis

    def _mark(self, up: bool, error: BaseException | None = None, detail: str = "") -> None:
        """Record whether Redis answered; log only the changes, not every failed try."""
        was, self._up = self._up, up
        if up and was is False:
            log.info("usage store %s is reachable again", self.where)
        elif not up and was is not False:
            suffix = f"; {detail}" if detail else ""
            log.warning("usage store %s is unreachable: %s%s", self.where, self._why(error), suffix)

    def _why(self, error: BaseException | None) -> str:
        """An error's message, with the URL's password masked should it ever appear."""
        text = f"{type(error).__name__}: {error}" if error is not None else "unknown error"
        try:
            password = urlsplit(self.url).password
        except ValueError:
            password = None
        return text.replace(password, "***") if password else text
