"""Where usage is kept: the interface every backend implements, and picking one.

The hot path only calls :meth:`UsageStore.add`, which never waits: records
are buffered in memory and written in batches, off the event loop, every
``flush_interval``. ``close`` writes everything still buffered (SIGTERM
loses nothing; a crash loses at most one flush interval).

Counters are kept in hourly buckets per (client, pool, model), so a report
or a budget sums buckets, never individual requests.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Protocol

from modelpool.config.spec import UsageSpec
from modelpool.errors import ConfigError, ConfigIssue, ModelpoolError
from modelpool.usage.record import Totals, UsageRecord

BUCKET = 3600
"""Seconds per bucket: an hour, so UTC days and months are whole buckets."""

GroupKey = Literal["client", "pool", "model", "day", "hour"]


@dataclass(frozen=True, slots=True)
class Query:
    since: float | None = None
    """Unix time; buckets starting at or after it (None: from the beginning)."""
    until: float | None = None
    """Unix time; buckets starting before it (None: up to now)."""
    client: str | None = None
    pool: str | None = None
    model: str | None = None
    group_by: Sequence[GroupKey] = ("client", "pool", "model", "day")


@dataclass(frozen=True, slots=True)
class Row:
    """One group of a report: its key values (in ``group_by`` order) and totals.
    ``day`` is ``YYYY-MM-DD`` (UTC), ``hour`` ``YYYY-MM-DDTHH:00Z``."""

    key: tuple[str, ...]
    totals: Totals


class UsageStore(Protocol):
    async def open(self) -> None:
        """Create or migrate the storage; start the background flusher."""
        ...

    def add(self, record: UsageRecord) -> None:
        """Buffer one record. Never blocks, never raises for storage trouble."""
        ...

    async def flush(self) -> None:
        """Write everything buffered so far (used by tests and shutdown)."""
        ...

    async def close(self) -> None:
        """Flush, stop the flusher, release the storage."""
        ...

    async def report(self, query: Query) -> list[Row]:
        """Totals grouped as ``query`` says, buffered records included."""
        ...

    async def spent(self, scope: Literal["client", "pool"], name: str, since: float) -> Totals:
        """Totals for one client or pool since a unix time (budgets at startup)."""
        ...


class StoreError(ModelpoolError):
    """The usage store cannot be used: missing, unreadable, or written by a newer modelpool."""


REDIS_SCHEMES = ("redis", "rediss")


def sqlite_path(store: str) -> Path:
    """The file a ``usage.store`` names: ``sqlite:///ABS`` or a plain path (as given)."""
    if store.startswith("sqlite://"):
        return Path("/" + store.removeprefix("sqlite://").lstrip("/"))
    if "://" in store:
        kind = store.split("://", 1)[0]  # never the rest: a URL may carry a password
        message = (
            "a Redis store is not a file: ask a daemon that uses it (GET /admin/usage)"
            if kind in REDIS_SCHEMES
            else f"unknown store kind {kind!r}; use sqlite:///PATH, a path or redis://HOST:PORT/DB"
        )
        raise ConfigError([ConfigIssue("config", None, "usage.store", message)])
    return Path(store)


def open_store(spec: UsageSpec, prefix: str = "modelpool") -> UsageStore | None:
    """The store ``spec`` names, not yet opened (the caller awaits ``open``, then ``close``);
    None for ``usage.store: none``. A Redis store names its keys ``{prefix}:usage:…``
    (``shared_state.prefix``: daemons on one Redis share usage only with the same prefix)."""
    # imported here: both import this module, and redis-py (~10 MB, 0.1 s) only when used
    if spec.store == "none":
        return None
    if spec.store.startswith(tuple(f"{scheme}://" for scheme in REDIS_SCHEMES)):
        from modelpool.usage.redis_store import RedisStore

        return RedisStore(
            spec.store,
            prefix=prefix,
            flush_interval=spec.flush_interval,
            retention=spec.retention,
        )
    from modelpool.usage.sqlite import SQLiteStore

    return SQLiteStore(
        sqlite_path(spec.store), flush_interval=spec.flush_interval, retention=spec.retention
    )
