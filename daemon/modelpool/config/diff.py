"""What changed between two configs, for the one-line reload log and /admin/reload."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

from modelpool.config.spec import Config


@dataclass(frozen=True, slots=True)
class Changes:
    added: tuple[str, ...] = ()
    removed: tuple[str, ...] = ()
    changed: tuple[str, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.added or self.removed or self.changed)

    def describe(self, kind: str) -> str:
        parts = [f"+{n}" for n in self.added] + [f"-{n}" for n in self.removed]
        parts += [f"~{n}" for n in self.changed]
        return f"{kind} {' '.join(parts)}" if parts else ""


@dataclass(frozen=True, slots=True)
class ConfigDiff:
    pools: Changes
    models: Changes
    providers: Changes
    clients: Changes
    restart_needed: tuple[str, ...] = ()
    """Settings that only take effect on restart (the listen address, the usage store, the
    shared state)."""

    def __bool__(self) -> bool:
        return bool(self.pools or self.models or self.providers or self.clients)

    def summary(self) -> str:
        sections = (
            self.pools.describe("pools"),
            self.models.describe("models"),
            self.providers.describe("providers"),
            self.clients.describe("clients"),
        )
        text = "; ".join(part for part in sections if part) or "no routing changes"
        if self.restart_needed:
            text += f"; needs restart: {', '.join(self.restart_needed)}"
        return text

    def as_json(self) -> dict[str, Any]:
        return {
            kind: {"added": list(c.added), "removed": list(c.removed), "changed": list(c.changed)}
            for kind, c in (
                ("pools", self.pools),
                ("models", self.models),
                ("providers", self.providers),
                ("clients", self.clients),
            )
        } | {"restart_needed": list(self.restart_needed)}


def _changes(
    old: Mapping[str, Any], new: Mapping[str, Any], also: frozenset[str] = frozenset()
) -> Changes:
    return Changes(
        added=tuple(sorted(new.keys() - old.keys())),
        removed=tuple(sorted(old.keys() - new.keys())),
        changed=tuple(sorted(n for n in old.keys() & new.keys() if old[n] != new[n] or n in also)),
    )


def diff_configs(old: Config, new: Config) -> ConfigDiff:
    providers = _changes(old.providers, new.providers)
    touched = frozenset(providers.changed)
    # A model whose provider changed (URL, key, timeouts) changed too.
    moved = frozenset(n for n, m in new.models.items() if m.provider in touched)
    restart = []
    if (old.server.host, old.server.port) != (new.server.host, new.server.port):
        restart.append("server.listen")
    if old.usage.store != new.usage.store:
        restart.append("usage.store")
    restart += [  # the Redis link, its prefix and its failure mode are set up once
        f"shared_state.{field.name}"
        for field in fields(old.shared_state)
        if getattr(old.shared_state, field.name) != getattr(new.shared_state, field.name)
    ]
    return ConfigDiff(
        pools=_changes(old.pools, new.pools),
        models=_changes(old.models, new.models, moved),
        providers=providers,
        clients=_changes(old.clients, new.clients),
        restart_needed=tuple(restart),
    )
