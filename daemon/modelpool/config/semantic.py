"""Checks the schema cannot express: references, cycles, duplicates, consistency.

Each check reads the schema-valid data and reports issues at the exact key
path; all of them run, so one ``modelpool check`` lists every problem.
"""

from __future__ import annotations

import difflib
import ipaddress
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

from modelpool.config.source import Document, Path, format_path
from modelpool.config.spec import Config, parse_listen
from modelpool.config.units import format_duration, parse_duration
from modelpool.errors import ConfigError, ConfigIssue

Check = Callable[[Document, Mapping[str, Any]], Iterator[tuple[Path, str]]]


def check_semantics(doc: Document, data: Mapping[str, Any]) -> list[ConfigIssue]:
    issues = [doc.issue(path, message) for check in CHECKS for path, message in check(doc, data)]
    issues.sort(key=lambda i: (i.line or 0, i.path))
    return issues


def _unknown(kind: str, name: str, known: Mapping[str, Any]) -> str:
    close = difflib.get_close_matches(name, list(known), n=1, cutoff=0.6)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return f"unknown {kind} {name!r}{hint}"


def _model_providers(doc: Document, data: Mapping[str, Any]) -> Iterator[tuple[Path, str]]:
    for name, model in data["models"].items():
        if model["provider"] not in data["providers"]:
            yield (
                ("models", name, "provider"),
                _unknown("provider", model["provider"], data["providers"]),
            )


ANTHROPIC_CANNOT = ("completions", "embeddings")
"""Endpoints the Anthropic Messages API has no counterpart for."""


def _provider_capabilities(doc: Document, data: Mapping[str, Any]) -> Iterator[tuple[Path, str]]:
    for name, model in data["models"].items():
        provider = data["providers"].get(model["provider"], {})
        if provider.get("type") != "anthropic":
            continue
        for i, capability in enumerate(model.get("capabilities", [])):
            if capability in ANTHROPIC_CANNOT:
                yield (
                    ("models", name, "capabilities", i),
                    f"an anthropic model cannot serve {capability} (the Messages API has no "
                    "counterpart); remove it",
                )


def _pool_members(doc: Document, data: Mapping[str, Any]) -> Iterator[tuple[Path, str]]:
    for name, pool in data["pools"].items():
        seen: set[str] = set()
        for i, member in enumerate(pool["members"]):
            model = member if isinstance(member, str) else member["model"]
            path: Path = ("pools", name, "members", i)
            if model not in data["models"]:
                hint = " (members name models, not pools)" if model in data["pools"] else ""
                yield path, _unknown("model", model, data["models"]) + hint
            elif model in seen:
                yield path, f"duplicate member {model!r}"
            seen.add(model)


def _failover(doc: Document, data: Mapping[str, Any]) -> Iterator[tuple[Path, str]]:
    pools = data["pools"]
    for name, pool in pools.items():
        for i, target in enumerate(pool.get("failover", [])):
            path: Path = ("pools", name, "failover", i)
            if target == name:
                yield path, f"pool {name!r} fails over to itself"
            elif target not in pools:
                yield path, _unknown("pool", target, pools)
    yield from _cycles(pools)


def _cycles(pools: Mapping[str, Any]) -> Iterator[tuple[Path, str]]:
    """Report each failover cycle once, at the edge that closes it.

    One depth-first walk in file order, iterative and linear in pools plus edges:
    walking every path from every pool is exponential in a web of failovers, and
    recursion stops at Python's stack limit on a chain of ~1,000 pools.
    """
    finished: set[str] = set()
    for start in pools:
        if start in finished:
            continue
        trail, on_trail = [start], {start}
        stack = [(start, _failovers(pools, start))]
        while stack:
            name, edges = stack[-1]
            step = next(edges, None)
            if step is None:
                stack.pop()
                on_trail.discard(trail.pop())
                finished.add(name)
                continue
            i, target = step
            if target in finished:
                continue
            if target in on_trail:
                cycle = [*trail[trail.index(target) :], target]
                yield ("pools", name, "failover", i), "failover cycle: " + " → ".join(cycle)
                continue
            trail.append(target)
            on_trail.add(target)
            stack.append((target, _failovers(pools, target)))


def _failovers(pools: Mapping[str, Any], name: str) -> Iterator[tuple[int, str]]:
    """``name``'s failover pools that exist (other problems are reported on their own)."""
    for i, target in enumerate(pools[name].get("failover", [])):
        if target in pools and target != name:
            yield i, target


def _clients(doc: Document, data: Mapping[str, Any]) -> Iterator[tuple[Path, str]]:
    routes = {**data["models"], **data["pools"]}
    hashes: dict[str, str] = {}
    for name, client in data.get("clients", {}).items():
        for i, pool in enumerate(client.get("pools", [])):
            if pool not in routes:
                yield ("clients", name, "pools", i), _unknown("pool", pool, data["pools"])
        key = client["key_sha256"]
        if key in hashes:
            yield ("clients", name, "key_sha256"), f"same key as client {hashes[key]!r}"
        hashes.setdefault(key, name)


def _names(doc: Document, data: Mapping[str, Any]) -> Iterator[tuple[Path, str]]:
    for name in data["pools"]:
        if name in data["models"]:
            message = (
                f"{name!r} is both a pool and a model; a request's `model` must name exactly one"
            )
            yield ("pools", name), message


def _listen(doc: Document, data: Mapping[str, Any]) -> Iterator[tuple[Path, str]]:
    listen = data.get("server", {}).get("listen")
    if listen is None:
        return
    host, port = parse_listen(listen)
    if not 0 <= port <= 65535:
        yield ("server", "listen"), f"port {port} is out of range"
    if not data.get("clients") and not is_loopback(host):
        message = f"refusing to listen on non-loopback {host!r} without `clients` (keys) configured"
        yield ("server", "listen"), message


def _admin_listen(doc: Document, data: Mapping[str, Any]) -> Iterator[tuple[Path, str]]:
    server = data.get("server", {})
    admin = server.get("admin_listen")
    if admin is None or admin.startswith("unix:"):
        return
    host, port = parse_listen(admin)
    if not 0 <= port <= 65535:
        yield ("server", "admin_listen"), f"port {port} is out of range"
    if not is_loopback(host) and "admin_token" not in server:
        message = f"refusing to serve admin endpoints on non-loopback {host!r} without admin_token"
        yield ("server", "admin_listen"), message


def check_bound(config: Config, hosts: Iterable[str]) -> None:
    """Raise ConfigError when ``config`` would leave the daemon open on a non-loopback address.

    ``server.listen`` takes effect only at a start (where ``modelpool run
    --listen`` may override it), so a reload cannot be judged by the address its
    file names: ``hosts`` are where the proxy is bound. Without clients every
    one must be loopback — the rule ``_listen`` and ``modelpool run`` apply at
    start (SPEC §7).
    """
    exposed = sorted({host for host in hosts if not is_loopback(host)})
    if config.clients or not exposed:
        return
    message = (
        f"refusing to remove every client while listening on non-loopback "
        f"{', '.join(map(repr, exposed))}: the daemon would run open; restart it on a "
        "loopback address to run without keys"
    )
    raise ConfigError([ConfigIssue(config.source, None, "clients", message)])


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _ordered_durations(doc: Document, data: Mapping[str, Any]) -> Iterator[tuple[Path, str]]:
    """Pairs that must be ordered: a timeout above `total`, a backoff above its max."""
    for kind in ("providers", "pools"):
        for name, item in data[kind].items():
            yield from _not_above(item.get("timeouts", {}), (kind, name, "timeouts"), "total")
    for name, pool in data["pools"].items():
        backoff = pool.get("retry", {}).get("backoff", {})
        yield from _not_above(backoff, ("pools", name, "retry", "backoff"), "max")
    yield from _not_above(
        data.get("breakers", {}).get("cooldown", {}), ("breakers", "cooldown"), "max"
    )
    for name, model in data["models"].items():
        cooldown = model.get("breaker", {}).get("cooldown", {})
        yield from _not_above(cooldown, ("models", name, "breaker", "cooldown"), "max")


def _not_above(values: Mapping[str, Any], path: Path, ceiling: str) -> Iterator[tuple[Path, str]]:
    if ceiling not in values:
        return
    limit = parse_duration(values[ceiling])
    for key, value in values.items():
        if key != ceiling and key != "multiplier" and parse_duration(value) > limit:
            yield (*path, key), f"{key} ({value}) is longer than {ceiling} ({values[ceiling]})"


def _limits(doc: Document, data: Mapping[str, Any]) -> Iterator[tuple[Path, str]]:
    sections = [("models", n, m) for n, m in data["models"].items()]
    sections += [("pools", n, p) for n, p in data["pools"].items()]
    sections += [("clients", n, c) for n, c in data.get("clients", {}).items()]
    for kind, name, item in sections:
        limits = item.get("limits", {})
        tpm, reserve = limits.get("tpm"), limits.get("default_max_tokens")
        if tpm is not None and reserve is not None and reserve > tpm:
            message = (
                f"default_max_tokens ({reserve}) exceeds tpm ({tpm}): no request could be admitted"
            )
            yield (kind, name, "limits", "default_max_tokens"), message
    for name, model in data["models"].items():
        window, out = model.get("context_window"), model.get("max_output_tokens")
        if window is not None and out is not None and out > window:
            message = f"max_output_tokens ({out}) exceeds context_window ({window})"
            yield ("models", name, "max_output_tokens"), message


BUDGET_SPANS = {
    "usd_per_month": 31 * 86400.0,
    "tokens_per_month": 31 * 86400.0,
    "usd_per_day": 86400.0,
    "tokens_per_day": 86400.0,
}
"""How far back the usage store must reach for a budget's meter to restart exactly."""


def _retention(doc: Document, data: Mapping[str, Any]) -> Iterator[tuple[Path, str]]:
    """History kept at least as long as the longest budget period.

    A budget's meter starts, at each start of the daemon, from what the store
    still holds for the current period: a shorter retention silently forgets
    spend and hands the budget back.
    """
    usage = data.get("usage", {})
    if "retention" not in usage or usage.get("store") == "none":
        return
    retention = parse_duration(usage["retention"])
    caps = [(("clients", n), c.get("budget", {})) for n, c in data.get("clients", {}).items()]
    caps += [(("pools", n), p.get("budget", {})) for n, p in data["pools"].items()]
    needed = [
        (BUDGET_SPANS[key], (*where, "budget", key))
        for where, budget in caps
        for key in BUDGET_SPANS
        if key in budget
    ]
    span, path = max(needed, key=lambda pair: pair[0], default=(0.0, ()))
    if retention < span:
        message = (
            f"retention ({usage['retention']}) is shorter than the period of "
            f"{format_path(path)}: that spend would be forgotten at a restart; "
            f"keep at least {format_duration(span)} ({_days(span)})"
        )
        yield ("usage", "retention"), message


def _days(seconds: float) -> str:
    days = seconds / 86400
    return "one day" if days == 1 else f"{days:g} days"


def _health(doc: Document, data: Mapping[str, Any]) -> Iterator[tuple[Path, str]]:
    """Completion probes that could never run, and a provider probe with nothing to probe."""
    providers = data["providers"]
    opted_in: set[str] = set()
    for name, model in data["models"].items():
        own = model.get("health", {})
        provider = providers.get(model["provider"])
        if own.get("probe") != "chat" or provider is None:
            continue
        opted_in.add(model["provider"])
        yield from _completion_probe(name, own, model["provider"], provider.get("health", {}))
        if "chat" not in model.get("capabilities", ["chat"]):
            yield ("models", name, "health", "probe"), "a chat probe needs the chat capability"
    for name, provider in providers.items():
        if provider.get("health", {}).get("probe") == "chat" and name not in opted_in:
            message = (
                "probe chat sends completion probes only for models that opt in "
                "(models.NAME.health.probe: chat), and no model of this provider does"
            )
            yield ("providers", name, "health", "probe"), message


def _completion_probe(
    model: str, own: Mapping[str, Any], provider: str, shared: Mapping[str, Any]
) -> Iterator[tuple[Path, str]]:
    path: Path = ("models", model, "health", "probe")
    if shared.get("probe") == "none":
        yield path, f"provider {provider!r} has health.probe none, which turns this probe off"
    elif "interval" not in own and "interval" not in shared:
        message = (
            f"a completion probe needs an interval: set models.{model}.health.interval "
            f"or providers.{provider}.health.interval"
        )
        yield path, message


CHECKS: tuple[Check, ...] = (
    _model_providers,
    _provider_capabilities,
    _pool_members,
    _failover,
    _clients,
    _names,
    _listen,
    _admin_listen,
    _ordered_durations,
    _limits,
    _retention,
    _health,
)
