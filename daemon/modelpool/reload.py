"""Hot reload: every trigger feeds one serialized pipeline with one write.

Triggers — the file watcher, SIGHUP and ``POST /admin/reload`` — all call
:meth:`Reloader.reload`, which holds a lock, so reloads never race. The
pipeline: read + parse + decrypt + validate (in a worker thread, off the
event loop) → skip when the bytes did not change → compile → swap the one
reference in :class:`TableHolder` → release runtime state nothing refers to
any more. Any failure before the swap leaves the old table serving and is
recorded, logged and counted; nothing after the swap can fail.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import watchfiles

from modelpool.compile import compile_table
from modelpool.config.diff import diff_configs
from modelpool.config.load import load_config
from modelpool.config.semantic import check_bound
from modelpool.config.spec import Config
from modelpool.errors import ConfigError
from modelpool.metrics import Metrics
from modelpool.state import StateRegistry
from modelpool.table import RoutingTable, TableHolder
from modelpool.upstream import Transports
from modelpool.usage.pricing import unpriced, warn_unpriced

log = logging.getLogger("modelpool.reload")

Result = Literal["applied", "unchanged", "rejected"]


@dataclass(frozen=True, slots=True)
class ReloadOutcome:
    result: Result
    trigger: str
    generation: int
    """The generation serving after this reload."""
    digest: str
    at: float
    """Unix time the reload finished."""
    duration: float
    diff: dict[str, Any] = field(default_factory=dict)
    summary: str = ""
    errors: tuple[str, ...] = ()

    def as_json(self) -> dict[str, Any]:
        return {
            "result": self.result,
            "trigger": self.trigger,
            "generation": self.generation,
            "digest": self.digest,
            "at": self.at,
            "duration_ms": round(self.duration * 1000, 2),
            "summary": self.summary,
            "diff": self.diff,
            "errors": list(self.errors),
        }


class Reloader:
    """Owns the path to the config and the one pipeline that may replace the table."""

    def __init__(
        self,
        path: str,
        holder: TableHolder,
        registry: StateRegistry,
        transports: Transports,
        metrics: Metrics,
        *,
        loader: Callable[[str], Config] = load_config,
    ) -> None:
        self.path = path
        self._holder = holder
        self._registry = registry
        self._transports = transports
        self._metrics = metrics
        self._loader = loader
        self._lock = asyncio.Lock()
        self._tried = ""
        self._bound: tuple[str, ...] = ()
        table = holder.current
        self.loaded_at = time.time()
        self.last = ReloadOutcome(
            "applied", "startup", table.generation, table.config.digest, self.loaded_at, 0.0
        )
        metrics.generation.set(table.generation)
        metrics.last_reload_success.set(self.loaded_at)

    def listening_on(self, hosts: Iterable[str]) -> None:
        """Where the proxy is bound: no reload may leave a non-loopback one without keys."""
        self._bound = tuple(hosts)

    async def reload(self, trigger: str) -> ReloadOutcome:
        async with self._lock:
            started = time.perf_counter()
            outcome = await self._run(trigger, started)
        self.last = outcome if outcome.result != "unchanged" else self.last
        return outcome

    async def _run(self, trigger: str, started: float) -> ReloadOutcome:
        old = self._holder.current
        try:
            config = await asyncio.to_thread(self._loader, self.path)
            check_bound(config, self._bound)
        except ConfigError as exc:
            return self._rejected(trigger, old, exc, started)
        if config.digest == old.config.digest:
            return ReloadOutcome(
                "unchanged", trigger, old.generation, config.digest, time.time(), 0.0
            )
        table = compile_table(
            config,
            generation=old.generation + 1,
            registry=self._registry,
            transports=self._transports,
        )
        self._holder.swap(table)
        await self._release_unused(table)
        return self._applied(trigger, old, table, started)

    async def _release_unused(self, table: RoutingTable) -> None:
        self._registry.reconcile(
            (model.identity for model in table.models.values()),
            (pool.state_key for pool in table.routes.values()),
            table.config.clients,
        )
        await self._transports.reconcile(_endpoints(table))

    def _applied(
        self, trigger: str, old: RoutingTable, new: RoutingTable, started: float
    ) -> ReloadOutcome:
        diff = diff_configs(old.config, new.config)
        now = time.time()
        self.loaded_at = now
        self._metrics.reloads.labels(result="applied").inc()
        self._metrics.generation.set(new.generation)
        self._metrics.last_reload_success.set(now)
        duration = time.perf_counter() - started
        summary = diff.summary()
        log.info(
            "config reloaded: generation %d; %s",
            new.generation,
            summary,
            extra={
                "trigger": trigger,
                "generation": new.generation,
                "duration_ms": round(duration * 1000, 2),
            },
        )
        if diff.restart_needed:
            log.warning("config changes that need a restart: %s", ", ".join(diff.restart_needed))
        warn_unpriced(unpriced(new.config) - unpriced(old.config))
        return ReloadOutcome(
            "applied",
            trigger,
            new.generation,
            new.config.digest,
            now,
            duration,
            diff.as_json(),
            summary,
        )

    def _rejected(
        self, trigger: str, old: RoutingTable, exc: ConfigError, started: float
    ) -> ReloadOutcome:
        errors = tuple(str(issue) for issue in exc.issues)
        self._metrics.reloads.labels(result="rejected").inc()
        log.error(
            "config reload rejected; generation %d keeps serving: %s",
            old.generation,
            "; ".join(errors),
            extra={"trigger": trigger, "errors": list(errors)},
        )
        duration = time.perf_counter() - started
        return ReloadOutcome(
            "rejected",
            trigger,
            old.generation,
            old.config.digest,
            time.time(),
            duration,
            errors=errors,
        )

    # ------------------------------------------------------------------ watching

    def current_files(self) -> tuple[Path, ...]:
        """The config and every file it references, as the current table read them."""
        files = self._holder.current.config.files
        return tuple(Path(f) for f in files) if files else (Path(self.path),)

    async def watch(
        self, stop: asyncio.Event, *, step_ms: int = 50, settle: float = 0.05, idle: float = 1.0
    ) -> None:
        """Reload whenever the bytes of a watched file change, however they were written.

        The *directories* holding the files are watched, not the files, so
        rename-over (vim, sed -i), delete-then-recreate and Kubernetes'
        ``..data`` symlink swaps are all seen. Any event there makes us hash
        the files' contents; only a real change triggers a reload, once the
        bytes have stopped changing for ``settle`` seconds.

        Every ``idle`` seconds the bytes are compared anyway, on a timer of its
        own (other files in the folder, a usage database say, may keep the
        watcher busy with events for files that are not ours): an edit that
        sent no event — made after the daemon read its config but before these
        watches existed, or between two sets of watches, or lost by the
        kernel — is still applied, within about ``idle`` seconds.
        """
        recheck = asyncio.create_task(self._recheck(stop, idle, settle))
        try:
            await self._watch_events(stop, step_ms, settle, idle)
        finally:
            recheck.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await recheck

    async def _recheck(self, stop: asyncio.Event, idle: float, settle: float) -> None:
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), idle)
            if not stop.is_set() and self._untried() and await self._settled_change(settle):
                await self.reload("watch")

    async def _watch_events(
        self, stop: asyncio.Event, step_ms: int, settle: float, idle: float
    ) -> None:
        while not stop.is_set():
            files = self.current_files()
            dirs = sorted(_folders(files))
            async for changes in watchfiles.awatch(
                *dirs,
                watch_filter=functools.partial(_relevant, names=frozenset(f.name for f in files)),
                stop_event=stop,
                step=step_ms,
                recursive=False,
                debounce=1000,
                rust_timeout=round(idle * 1000),
                yield_on_timeout=True,  # an empty set: `idle` seconds without an event
                ignore_permission_denied=True,
            ):
                if changes and await self._settled_change(settle):
                    await self.reload("watch")
                if self.current_files() != files:
                    break  # the set of referenced files changed: watch the new set

    def _untried(self) -> bool:
        """Whether the files hold bytes that are neither serving nor already tried (cheap)."""
        digest = _digest(self.current_files())
        return bool(digest) and digest not in (self._holder.current.config.digest, self._tried)

    async def _settled_change(self, settle: float) -> bool:
        """Whether the files now hold bytes we have not tried yet, once they stopped changing."""
        digest = _digest(self.current_files())
        for _ in range(40):  # bounded: a file rewritten non-stop for 2s is read as it stands
            await asyncio.sleep(settle)
            again = _digest(self.current_files())
            if again == digest:
                break
            digest = again
        if not digest or digest in (self._holder.current.config.digest, self._tried):
            return False
        self._tried = digest  # a rejected file is not retried until its bytes change again
        return True


def _digest(files: Iterable[Path]) -> str:
    """The same hash as Config.digest: the config's text, then each sops file's bytes."""
    digest = hashlib.sha256()
    for i, path in enumerate(files):
        try:
            data = path.read_bytes()
        except OSError:
            return ""  # mid-swap or deleted: not a state worth loading
        digest.update(data.decode("utf-8", "replace").encode() if i == 0 else data)
    return digest.hexdigest()


def _relevant(_change: watchfiles.Change, path: str, *, names: frozenset[str]) -> bool:
    """Events worth a look: our files, or Kubernetes' ``..data`` symlink swaps."""
    name = Path(path).name
    return name in names or name.startswith("..")


def _folders(files: Iterable[Path]) -> set[str]:
    """Folders to watch: each file's own, plus a symlink target's folder when it lies elsewhere.

    A target *inside* the file's folder (Kubernetes' ``..data/…``) is covered by
    watching the folder itself, and its timestamped target folder vanishes on
    every swap, so it is not watched.
    """
    folders: set[str] = set()
    for file in files:
        folders.add(str(file.parent))
        target = file.resolve().parent
        if not target.is_relative_to(file.parent) and target.exists():
            folders.add(str(target))
    return folders


def _endpoints(table: RoutingTable) -> set[tuple[str, int]]:
    return {key for model in table.models.values() if (key := model.transport_key) is not None}
