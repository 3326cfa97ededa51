"""The whole config pipeline: read → parse → schema → secrets → interpolate → semantics → spec.

``load_config`` is what both ``modelpool check`` and the daemon (at start and
on every reload) call, so the two can never disagree on a verdict.
"""

from __future__ import annotations

import contextlib
import gc
import hashlib
import os
from collections.abc import Iterator, Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

from modelpool.config.gate import Gate, GateFactory, inline_gate
from modelpool.config.interpolate import Interpolation, interpolate
from modelpool.config.schema import validate_schema
from modelpool.config.secrets import Secret, SopsError, decrypt_sops_file
from modelpool.config.semantic import check_semantics
from modelpool.config.source import Document, parse_yaml
from modelpool.config.spec import (
    BreakerPolicy,
    Budget,
    ClientSpec,
    Config,
    Health,
    MockBehaviour,
    ModelHealth,
    ModelSpec,
    PoolSpec,
    Price,
    ProviderSpec,
    QueuePolicy,
    SharedStateSpec,
    UsageSpec,
    build_breaker,
    build_limits,
    build_member,
    build_retry,
    build_timeouts,
    frozen,
    server_from,
)
from modelpool.config.units import parse_duration
from modelpool.errors import ConfigError, ConfigIssue

DEFAULT_STRATEGY = "round_robin"
DEFAULT_CAPABILITIES = ("chat", "completions", "stream")


def load_config(
    path: str | os.PathLike[str],
    *,
    env: Mapping[str, str] | None = None,
    gate: GateFactory = inline_gate,
) -> Config:
    """Load and fully validate ``path``; raise ConfigError listing every problem.

    ``gate`` is where the compiled schema runs: in this process by default,
    in a child for the daemon (see :mod:`modelpool.config.gate`).
    """
    with gate() as schema_gate:
        return _load(path, env, schema_gate)


def _load(path: str | os.PathLike[str], env: Mapping[str, str] | None, gate: Gate) -> Config:
    file = str(path)
    raw, text = _read(Path(path), file)
    with _cyclic_gc_paused():
        doc = parse_yaml(text, file)
        if not isinstance(doc.data, dict):
            raise ConfigError([ConfigIssue(file, 1, "", "the config must be a YAML mapping")])
        issues = validate_schema(doc, gate, defer_references=True)
    if issues:
        raise ConfigError(issues)
    base = (
        Path(path).absolute().parent
    )  # not resolved: a symlinked config's folder is where it appears
    secrets, sops_issues, sops_files = _decrypt_all(doc, base)
    environment = os.environ if env is None else env
    result = interpolate(doc, environment, secrets, secrets_complete=not sops_issues)
    # The substituted values, judged now (the rest passed above and did not change).
    late = validate_schema(replace(doc, data=result.data), gate, within=result.referencing)
    issues = sops_issues + result.issues
    issues += _reportable(late, result, secrets, {i.path for i in issues})
    if not late:  # semantic checks rely on a schema-valid document
        issues += check_semantics(doc, result.data)
    if issues:
        raise ConfigError(sorted(issues, key=lambda i: (i.file, i.line or 0)))
    digest = hashlib.sha256(raw)
    for sops_bytes in sops_files.values():
        digest.update(sops_bytes)
    files = (str(Path(path).absolute()), *(str(f) for f in sops_files))
    config = _assemble(result.data, file, digest.hexdigest(), base, files)
    return replace(config, secrets=_secrets_of(config, result.data, result.secret_paths, secrets))


@contextlib.contextmanager
def _cyclic_gc_paused() -> Iterator[None]:
    """No cyclic garbage collection while parsing and validating.

    Both allocate a lot of short-lived objects (YAML nodes, jsonschema's
    per-keyword validators: ~10^6 for a 2,000-model config), and each
    allocation burst triggers collections that walk the daemon's long-lived
    heap, the serving table included: a third of the load time. Reference
    counting still frees everything; cycles wait until the pause ends.
    """
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def _reportable(
    late: list[ConfigIssue], result: Interpolation, secrets: Mapping[str, str], failed: set[str]
) -> list[ConfigIssue]:
    """Schema issues in substituted values, secret values masked, unresolved ones skipped."""
    values = {*secrets.values(), *(str(_at(result.data, p)) for p in result.secret_paths)}
    masks = sorted((v for v in values if len(v) >= 4), key=len, reverse=True)
    issues = []
    for issue in late:
        if issue.path in failed:
            continue  # already reported: the reference itself could not be resolved
        message = issue.message
        for value in masks:
            message = message.replace(value, "***")
        issues.append(replace(issue, message=message))
    return issues


def _secrets_of(
    config: Config, data: Any, paths: set[tuple[str | int, ...]], secrets: Mapping[str, str]
) -> tuple[Secret, ...]:
    texts = [str(_at(data, path)) for path in paths]
    # The decrypted values in use, not the whole strings around them: the rest of
    # `redis://:${secret:pw}@host` is plain config and stays readable when masked.
    found = {Secret(value) for value in secrets.values() if any(value in t for t in texts)}
    for provider in config.providers.values():
        if provider.api_key is not None:
            found.add(provider.api_key)
        found.update(v for v in provider.headers.values() if isinstance(v, Secret))
    if config.server.admin_token is not None:
        found.add(config.server.admin_token)
    # Longest first, so masking one value never leaves part of a longer one showing.
    return tuple(sorted(found, key=lambda s: (-len(s.reveal()), s.reveal())))


def _at(data: Any, path: tuple[str | int, ...]) -> Any:
    for part in path:
        data = data[part]
    return data


def _read(path: Path, file: str) -> tuple[bytes, str]:
    try:
        raw = path.read_bytes()
        return raw, raw.decode("utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise ConfigError([ConfigIssue(file, None, "", f"cannot read config: {reason}")]) from None


def _decrypt_all(
    doc: Document, base: Path
) -> tuple[dict[str, str], list[ConfigIssue], dict[Path, bytes]]:
    """Secrets from every sops file, and each file's bytes *as read before decrypting*,
    so a file that changes meanwhile hashes differently and is reloaded again."""
    section = doc.data.get("secrets", {})
    binary = section.get("sops_binary", "sops")
    timeout = parse_duration(section.get("timeout", "10s"))
    secrets: dict[str, str] = {}
    issues: list[ConfigIssue] = []
    files: dict[Path, bytes] = {}
    for i, name in enumerate(section.get("sops_files", [])):
        file = (base / name).absolute()
        try:
            content = file.read_bytes()
            secrets.update(decrypt_sops_file(file, binary=binary, timeout=timeout))
            files[file] = content
        except OSError as exc:
            reason = (
                "does not exist"
                if isinstance(exc, FileNotFoundError)
                else f"cannot be read: {exc.strerror}"
            )
            issues.append(
                doc.issue(("secrets", "sops_files", i), f"sops file {str(file)!r} {reason}")
            )
        except SopsError as exc:
            issues.append(doc.issue(("secrets", "sops_files", i), str(exc)))
    return secrets, issues, files


def _secret(value: str | None) -> Secret | None:
    return None if value is None else Secret(value)


def _provider(name: str, raw: Mapping[str, Any]) -> ProviderSpec:
    health = raw.get("health", {})
    mock = dict(raw.get("mock", {}))
    for key in ("latency", "chunk_delay"):
        if key in mock:
            mock[key] = parse_duration(mock[key])
    return ProviderSpec(
        name=name,
        type=raw["type"],
        base_url=raw.get("base_url", "mock://").rstrip("/"),
        api_key=_secret(raw.get("api_key")),
        api_version=raw.get("api_version"),
        headers=frozen({k: Secret(v) for k, v in raw.get("headers", {}).items()}),
        timeouts=build_timeouts(raw.get("timeouts")),
        max_connections=raw.get("max_connections", 64),
        health=Health(
            interval=parse_duration(health["interval"]) if "interval" in health else None,
            timeout=parse_duration(health.get("timeout", 5.0)),
            probe=health.get("probe", "models"),
        ),
        mock=MockBehaviour(**mock),
    )


def _model(name: str, raw: Mapping[str, Any], breakers: BreakerPolicy) -> ModelSpec:
    price = raw.get("price")
    return ModelSpec(
        name=name,
        provider=raw["provider"],
        upstream_model=raw.get("upstream_model", name),
        capabilities=frozenset(raw.get("capabilities", DEFAULT_CAPABILITIES)),
        context_window=raw.get("context_window"),
        max_output_tokens=raw.get("max_output_tokens"),
        price=Price(**price) if price else None,
        limits=build_limits(raw.get("limits")),
        breaker=build_breaker(raw.get("breaker"), breakers),
        description=raw.get("description", ""),
        health=_model_health(raw.get("health")),
    )


def _model_health(raw: Mapping[str, Any] | None) -> ModelHealth | None:
    if raw is None:
        return None
    return ModelHealth(
        probe=raw.get("probe", "none"),
        interval=parse_duration(raw["interval"]) if "interval" in raw else None,
        timeout=parse_duration(raw["timeout"]) if "timeout" in raw else None,
    )


def _pool(name: str, raw: Mapping[str, Any]) -> PoolSpec:
    queue = raw.get("queue", {})
    defaults = QueuePolicy()
    return PoolSpec(
        name=name,
        strategy=raw.get("strategy", DEFAULT_STRATEGY),
        members=tuple(build_member(m, i) for i, m in enumerate(raw["members"])),
        retry=build_retry(raw.get("retry")),
        queue=QueuePolicy(
            max_waiting=queue.get("max_waiting", defaults.max_waiting),
            timeout=parse_duration(queue.get("timeout", defaults.timeout)),
        ),
        limits=build_limits(raw.get("limits")),
        timeouts=frozen({k: parse_duration(v) for k, v in raw.get("timeouts", {}).items()}),
        failover=tuple(raw.get("failover", ())),
        description=raw.get("description", ""),
        budget=Budget(**raw.get("budget", {})),
    )


def _client(name: str, raw: Mapping[str, Any]) -> ClientSpec:
    pools = raw.get("pools")
    return ClientSpec(
        name=name,
        key_sha256=raw["key_sha256"],
        pools=frozenset(pools) if pools is not None else None,
        limits=build_limits(raw.get("limits")),
        budget=Budget(**raw.get("budget", {})),
    )


def _shared_state(raw: Mapping[str, Any], usage: Mapping[str, Any]) -> SharedStateSpec:
    """On with ``shared_state.redis``, or with a redis:// usage store (the same Redis)."""
    store = usage.get("store", "")
    url = raw.get("redis") or (store if store.startswith(("redis://", "rediss://")) else None)
    defaults = SharedStateSpec()
    return SharedStateSpec(
        redis=_secret(url),
        prefix=raw.get("prefix", defaults.prefix),
        on_failure=raw.get("on_failure", defaults.on_failure),
        replicas=raw.get("replicas", defaults.replicas),
        timeout=parse_duration(raw.get("timeout", defaults.timeout)),
        sync_interval=parse_duration(raw.get("sync_interval", defaults.sync_interval)),
    )


NO_STORE = "none"
"""``usage.store: none``: count in metrics only; nothing kept across restarts."""


def _usage(raw: Mapping[str, Any], base: Path) -> UsageSpec:
    """``sqlite:///var/lib/x.db`` is the absolute path /var/lib/x.db (a URL's path);
    a plain path is relative to the config file's folder. Stored as ``sqlite:///ABS``."""
    store = raw.get("store", "usage.db")
    if store == NO_STORE:
        pass
    elif "://" not in store:
        store = f"sqlite://{(base / store).resolve()}"
    elif store.startswith("sqlite://"):
        path = "/" + store.removeprefix("sqlite://").lstrip("/")
        store = f"sqlite://{Path(path).resolve()}"
    defaults = UsageSpec(store=store)
    return UsageSpec(
        store=store,
        flush_interval=parse_duration(raw.get("flush_interval", defaults.flush_interval)),
        retention=parse_duration(raw.get("retention", defaults.retention)),
    )


def _assemble(
    data: Mapping[str, Any], file: str, digest: str, base: Path, files: tuple[str, ...]
) -> Config:
    server = data.get("server", {})
    breakers = build_breaker(data.get("breakers"), BreakerPolicy())
    return Config(
        source=file,
        digest=digest,
        server=server_from(server, _secret(server.get("admin_token"))),
        providers=frozen({n: _provider(n, p) for n, p in data["providers"].items()}),
        models=frozen({n: _model(n, m, breakers) for n, m in data["models"].items()}),
        pools=frozen({n: _pool(n, p) for n, p in data["pools"].items()}),
        breakers=breakers,
        clients=frozen({n: _client(n, c) for n, c in data.get("clients", {}).items()}),
        usage=_usage(data.get("usage", {}), base),
        shared_state=_shared_state(data.get("shared_state", {}), data.get("usage", {})),
        files=files,
    )
