"""The usage store in one SQLite file: hourly buckets, written in batches off the event loop.

Why it is shaped this way:

* ``add`` runs on the request path, so it only adds the record to an
  in-memory tally per bucket key (hour, client, pool, model); a flush then
  writes one UPSERT per key, however many requests the key saw.
* Every SQLite call runs on one worker thread the store owns. A sqlite3
  connection belongs to the thread that made it, and a single thread
  serialises flushes, reports and the retention pass without any locking in
  SQL; the event loop only ever awaits that thread, never the disk.
* A flush swaps the buffer out before writing and merges it back when the
  write fails (disk full, file locked), so trouble delays records but neither
  loses nor double-counts them. A write whose awaiting task is cancelled
  still settles the same way, from the write's own completion.
* Reports add what is still buffered, staged in a temp table so that the
  ``day`` and ``hour`` keys are computed by the same SQL for both: a report
  is exact at any moment, without waiting for a flush.
* WAL lets ``modelpool usage`` read the file (read-only) while the daemon
  writes it; ``synchronous=NORMAL`` keeps a commit durable across a crash of
  the process (only an OS crash can lose the last commits).

The schema is versioned by ``PRAGMA user_version``; :data:`MIGRATIONS` is
the ordered list of steps, and version ``n`` is the file after the first
``n`` steps (version 1: the ``usage_buckets`` table, keyed by hour, client,
pool and model, one column per counter, and indexes by client and by pool).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import sqlite3
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Literal, TypeVar
from urllib.parse import quote

from modelpool.usage.record import Totals, UsageRecord
from modelpool.usage.store import Query, Row, StoreError
from modelpool.usage.tally import COUNTERS, Key, Tally, bucket_of, count_into

log = logging.getLogger("modelpool.usage")

T = TypeVar("T")

BUSY_TIMEOUT = 5.0
"""Seconds a statement waits for another connection's lock before failing (then: retried)."""
PRUNE_EVERY = 3600.0
"""Seconds between retention passes (one runs at open)."""
CLOSE_ATTEMPTS = 3
"""Flushes ``close`` tries before giving up on what is still buffered."""

MIGRATIONS: tuple[tuple[str, ...], ...] = (
    (
        """CREATE TABLE usage_buckets (
            bucket_start INTEGER NOT NULL,
            client TEXT NOT NULL,
            pool TEXT NOT NULL,
            model TEXT NOT NULL,
            requests INTEGER NOT NULL DEFAULT 0,
            errors INTEGER NOT NULL DEFAULT 0,
            cancelled INTEGER NOT NULL DEFAULT 0,
            input_tokens INTEGER NOT NULL DEFAULT 0,
            output_tokens INTEGER NOT NULL DEFAULT 0,
            cache_read_tokens INTEGER NOT NULL DEFAULT 0,
            cache_write_tokens INTEGER NOT NULL DEFAULT 0,
            cost_usd REAL NOT NULL DEFAULT 0,
            cost_unknown INTEGER NOT NULL DEFAULT 0,
            PRIMARY KEY (bucket_start, client, pool, model)
        ) WITHOUT ROWID""",
        "CREATE INDEX usage_buckets_by_client ON usage_buckets (client, bucket_start)",
        "CREATE INDEX usage_buckets_by_pool ON usage_buckets (pool, bucket_start)",
    ),
)
SCHEMA_VERSION = len(MIGRATIONS)

KEY_COLUMNS = ("bucket_start", "client", "pool", "model")


_COLUMNS = ", ".join(KEY_COLUMNS + COUNTERS)
_PLACEHOLDERS = ", ".join("?" for _ in KEY_COLUMNS + COUNTERS)
_UPSERT = (
    f"INSERT INTO usage_buckets ({_COLUMNS}) VALUES ({_PLACEHOLDERS}) "
    f"ON CONFLICT ({', '.join(KEY_COLUMNS)}) DO UPDATE SET "
    + ", ".join(f"{c} = {c} + excluded.{c}" for c in COUNTERS)
)
_CREATE_PENDING = (
    "CREATE TEMP TABLE IF NOT EXISTS usage_pending AS SELECT * FROM usage_buckets WHERE 0"
)
_STAGE = f"INSERT INTO temp.usage_pending ({_COLUMNS}) VALUES ({_PLACEHOLDERS})"
_WITH_PENDING = "(SELECT * FROM usage_buckets UNION ALL SELECT * FROM temp.usage_pending)"
_GROUP_KEYS = {
    "client": "client",
    "pool": "pool",
    "model": "model",
    "day": "strftime('%Y-%m-%d', bucket_start, 'unixepoch')",
    "hour": "strftime('%Y-%m-%dT%H:00Z', bucket_start, 'unixepoch')",
}


BucketRow = tuple[int | float | str, ...]
"""A key followed by its counters, in ``_COLUMNS`` order."""


def _rows(buffer: dict[Key, Tally]) -> list[BucketRow]:
    return [(*key, *tally.values()) for key, tally in buffer.items()]


# --------------------------------------------------------------------------- opening


def connect(path: Path) -> sqlite3.Connection:
    """Open ``path`` for writing, migrating it to :data:`SCHEMA_VERSION` (worker thread)."""
    try:
        conn = sqlite3.connect(path, timeout=BUSY_TIMEOUT, isolation_level=None)
    except sqlite3.Error as exc:
        raise StoreError(f"cannot open usage store {path}: {exc}") from exc
    try:
        _prepare(conn, path)
    except BaseException:
        conn.close()
        raise
    return conn


def _prepare(conn: sqlite3.Connection, path: Path) -> None:
    try:
        conn.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT * 1000)}")
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("PRAGMA synchronous = NORMAL")
        conn.execute("PRAGMA temp_store = MEMORY")
        migrate(conn, path)
        conn.execute(_CREATE_PENDING)
    except sqlite3.Error as exc:
        raise StoreError(f"cannot open usage store {path}: {exc}") from exc


def migrate(conn: sqlite3.Connection, path: Path) -> None:
    """Apply the missing steps in one transaction; a current file is left untouched."""
    if _version(conn, path) == SCHEMA_VERSION:
        return
    with _transaction(conn):
        current = _version(conn, path)  # again under the write lock: another process may have won
        for step in MIGRATIONS[current:]:
            for statement in step:
                conn.execute(statement)
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
    if current < SCHEMA_VERSION:
        log.info("usage store %s migrated from version %d to %d", path, current, SCHEMA_VERSION)


def _version(conn: sqlite3.Connection, path: Path) -> int:
    """The file's schema version; one newer than this build knows is refused."""
    version = int(conn.execute("PRAGMA user_version").fetchone()[0])
    if version > SCHEMA_VERSION:
        raise StoreError(
            f"usage store {path} has schema version {version}, newer than this build's "
            f"{SCHEMA_VERSION}: it was written by a newer modelpool; upgrade, or use another file"
        )
    return version


@contextlib.contextmanager
def _transaction(conn: sqlite3.Connection) -> Iterator[None]:
    """BEGIN IMMEDIATE … COMMIT, rolled back on any failure (commit included)."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise


def connect_read_only(path: Path) -> sqlite3.Connection:
    """Open ``path`` read-only (``mode=ro``), safe beside a running daemon (WAL)."""
    if not path.is_file():
        raise StoreError(f"no usage store at {path}")
    uri = f"file:{quote(str(path.absolute()))}?mode=ro"
    try:
        conn = sqlite3.connect(uri, uri=True, timeout=BUSY_TIMEOUT, isolation_level=None)
    except sqlite3.Error as exc:
        raise StoreError(f"cannot read usage store {path}: {exc}") from exc
    try:
        _require_current(conn, path)
    except BaseException:
        conn.close()
        raise
    return conn


def _require_current(conn: sqlite3.Connection, path: Path) -> None:
    try:
        version = _version(conn, path)
    except sqlite3.Error as exc:
        raise StoreError(f"cannot read usage store {path}: {exc}") from exc
    if version != SCHEMA_VERSION:
        raise StoreError(
            f"{path} is not a modelpool usage store of this version "
            f"(schema {version}, expected {SCHEMA_VERSION}); let the daemon open it first"
        )


def read_report(path: Path, query: Query) -> list[Row]:
    """A report straight from the file, read-only (``modelpool usage``: no buffer to add)."""
    conn = connect_read_only(path)
    try:
        return select_rows(conn, query)
    except sqlite3.Error as exc:
        raise StoreError(f"cannot read usage store {path}: {exc}") from exc
    finally:
        conn.close()


# --------------------------------------------------------------------------- worker-thread jobs


def write_rows(conn: sqlite3.Connection, rows: Sequence[BucketRow]) -> None:
    """Add ``rows`` to their buckets in one transaction: all of them or none."""
    with _transaction(conn):
        conn.executemany(_UPSERT, rows)


def prune(conn: sqlite3.Connection, before: int) -> int:
    """Delete the buckets that start before ``before``; how many went."""
    with _transaction(conn):
        return conn.execute("DELETE FROM usage_buckets WHERE bucket_start < ?", (before,)).rowcount


def select_rows(
    conn: sqlite3.Connection, query: Query, pending: Sequence[BucketRow] = ()
) -> list[Row]:
    """Totals grouped and filtered as ``query`` says, ``pending`` rows included."""
    source = _stage(conn, pending) if pending else "usage_buckets"
    sql, params = _select_sql(query, source)
    width = len(query.group_by)
    rows = conn.execute(sql, params).fetchall()
    return [_report_row(values, width) for values in rows if values[width] is not None]


def _stage(conn: sqlite3.Connection, pending: Sequence[BucketRow]) -> str:
    conn.execute("DELETE FROM temp.usage_pending")
    conn.executemany(_STAGE, pending)
    return _WITH_PENDING


def _select_sql(query: Query, source: str) -> tuple[str, list[object]]:
    unknown = [key for key in query.group_by if key not in _GROUP_KEYS]
    if unknown:
        raise ValueError(f"cannot group by {', '.join(unknown)} (use {', '.join(_GROUP_KEYS)})")
    keys = [_GROUP_KEYS[key] for key in query.group_by]
    sums = [f"SUM({name})" for name in COUNTERS]
    where, params = _where(query)
    sql = f"SELECT {', '.join(keys + sums)} FROM {source}{where}"
    if keys:
        positions = ", ".join(str(i) for i in range(1, len(keys) + 1))
        sql += f" GROUP BY {positions} ORDER BY {positions}"
    return sql, params


def _where(query: Query) -> tuple[str, list[object]]:
    tests = (
        ("bucket_start >= ?", query.since),
        ("bucket_start < ?", query.until),
        ("client = ?", query.client),
        ("pool = ?", query.pool),
        ("model = ?", query.model),
    )
    used = [(test, value) for test, value in tests if value is not None]
    if not used:
        return "", []
    return " WHERE " + " AND ".join(test for test, _ in used), [value for _, value in used]


def _report_row(values: Sequence[Any], width: int) -> Row:
    """A result row: the group's key values, then one SUM per counter (never NULL here)."""
    totals = Totals(**dict(zip(COUNTERS, values[width:], strict=True)))
    return Row(key=tuple(str(value) for value in values[:width]), totals=totals)


# --------------------------------------------------------------------------- the store


class SQLiteStore:
    """A :class:`~modelpool.usage.store.UsageStore` in one SQLite file.

    ``clock`` is unix time (tests inject one); it only decides what retention
    deletes. Records carry their own ``at`` and are bucketed by it.
    """

    def __init__(
        self,
        path: str | Path,
        *,
        flush_interval: float = 1.0,
        retention: float = 90 * 86400.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.path = Path(path)
        self.flush_interval = flush_interval
        self.retention = retention
        self._clock = clock
        self._buffer: dict[Key, Tally] = {}
        self._lock = asyncio.Lock()
        """Held by a flush and by a report, so a report never misses a batch in flight."""
        self._stop = asyncio.Event()
        self._executor: ThreadPoolExecutor | None = None
        self._conn: sqlite3.Connection | None = None
        self._flusher: asyncio.Task[None] | None = None
        self._writing: asyncio.Future[None] | None = None
        self._closer: asyncio.Future[None] | None = None
        self._closed = False
        self._next_prune = 0.0

    # ------------------------------------------------------------------ lifecycle

    async def open(self) -> None:
        """Create or migrate the file, prune old buckets, start the flusher."""
        if self._executor is not None or self._closed:
            return
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="modelpool-usage")
        try:
            self._conn = await self._call(connect, self.path)
        except BaseException:
            self._executor.shutdown(wait=False)
            self._executor = None
            raise
        await self._prune()
        self._flusher = asyncio.create_task(self._flush_forever(), name="modelpool-usage-flusher")

    async def close(self) -> None:
        """Flush, stop the flusher, close the file. Idempotent; shielded from cancellation."""
        if self._closer is None:
            self._closer = asyncio.ensure_future(self._shutdown())
        await asyncio.shield(self._closer)

    async def _shutdown(self) -> None:
        self._stop.set()
        if self._flusher is not None:
            await asyncio.wait([self._flusher])
        if self._executor is None:
            self._closed = True
            return
        await self._flush_all()
        self._closed = True
        await self._call(self._db().close)
        self._executor.shutdown(wait=False)  # idle now: nothing to wait for
        self._conn = None

    async def _flush_all(self) -> None:
        for _ in range(CLOSE_ATTEMPTS):
            if not self._buffer:
                return
            await self.flush()
        if self._buffer:
            log.error(
                "usage store %s: %d buckets could not be written before closing and are lost",
                self.path,
                len(self._buffer),
            )

    # ------------------------------------------------------------------ writing

    def add(self, record: UsageRecord) -> None:
        """Count ``record`` in its bucket's buffered tally; no I/O, no await."""
        if self._closed:
            log.warning("usage record after the store closed dropped (%s)", record.client)
            return
        count_into(self._buffer, record)

    async def flush(self) -> None:
        """Write what is buffered; on failure it stays buffered (and is logged)."""
        async with self._lock:
            await self._settled()
            db = self._db()
            batch, self._buffer = self._buffer, {}
            if batch:
                await self._write(db, batch)

    async def _write(self, db: sqlite3.Connection, batch: dict[Key, Tally]) -> None:
        job = self._call(write_rows, db, _rows(batch))
        self._writing = job
        job.add_done_callback(functools.partial(self._settle, batch))
        await asyncio.wait([job])  # a cancelled flush never cancels the write: _settle decides

    def _settle(self, batch: dict[Key, Tally], job: asyncio.Future[None]) -> None:
        """Runs when a write ends: a failed batch goes back into the buffer."""
        if self._writing is job:
            self._writing = None
        error = asyncio.CancelledError() if job.cancelled() else job.exception()
        if error is None:
            return
        for key, tally in batch.items():
            self._buffer.setdefault(key, Tally()).merge(tally)
        if isinstance(error, sqlite3.Error | OSError):
            log.warning(
                "usage flush to %s failed, %d buckets kept for the next try: %s",
                self.path,
                len(batch),
                error,
            )
        else:
            log.error("usage flush to %s failed; buckets kept", self.path, exc_info=error)

    async def _settled(self) -> None:
        """Wait for a write left running by a cancelled flush, and for its settling."""
        if self._writing is not None:
            await asyncio.wait([self._writing])

    # ------------------------------------------------------------------ reading

    async def report(self, query: Query) -> list[Row]:
        """Totals from the file plus what is still buffered: exact at any moment."""
        async with self._lock:
            await self._settled()
            db = self._db()
            return await self._call(select_rows, db, query, _rows(self._buffer))

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

    # ------------------------------------------------------------------ background

    async def _flush_forever(self) -> None:
        """The top of the flusher task: flush every interval until close."""
        while not await self._stopped_within(self.flush_interval):
            try:
                await self.flush()
                if self._clock() >= self._next_prune:
                    await self._prune()
            except Exception:  # top of a background task: log, go on next interval
                log.exception("usage flusher failed; trying again next interval")

    async def _stopped_within(self, seconds: float) -> bool:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stop.wait(), seconds)
        return self._stop.is_set()

    async def _prune(self) -> None:
        """Delete buckets older than ``retention``; trouble waits for the next pass."""
        now = self._clock()
        self._next_prune = now + PRUNE_EVERY
        try:
            deleted = await self._call(prune, self._db(), bucket_of(now - self.retention))
        except (sqlite3.Error, OSError) as exc:
            log.warning("usage retention pass on %s failed: %s", self.path, exc)
            return
        if deleted:
            log.info("usage retention deleted %d buckets from %s", deleted, self.path)

    # ------------------------------------------------------------------ plumbing

    def _db(self) -> sqlite3.Connection:
        if self._conn is None:
            state = "closed" if self._closed else "not open"
            raise StoreError(f"usage store {self.path} is {state}")
        return self._conn

    def _call(self, fn: Callable[..., T], *args: object) -> asyncio.Future[T]:
        """Run ``fn(*args)`` on the store's worker thread."""
        assert self._executor is not None
        return asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)
