"""The public view of the registry: what `GET /v1/models` shows. No keys, no URLs."""

from __future__ import annotations

from typing import Any

from modelpool.auth import may_use
from modelpool.config.spec import ClientSpec
from modelpool.table import Model, Pool, RoutingTable


def models_listing(table: RoutingTable, client: ClientSpec | None = None) -> dict[str, Any]:
    """Pools and models ``client`` may name (all of them when the daemon is open)."""
    data = [_pool_entry(pool) for name, pool in table.pools.items() if may_use(client, name)]
    data += [_model_entry(model) for name, model in table.models.items() if may_use(client, name)]
    return {"object": "list", "data": data}


def _model_entry(model: Model) -> dict[str, Any]:
    spec = model.spec
    price = spec.price
    return {
        "id": model.name,
        "object": "model",
        "created": 0,
        "owned_by": model.provider.type,
        "modelpool": {
            "kind": "model",
            "provider_type": model.provider.type,
            "capabilities": sorted(model.capabilities),
            "context_window": spec.context_window,
            "max_output_tokens": spec.max_output_tokens,
            "price": None
            if price is None
            else {
                "input_per_mtok": price.input_per_mtok,
                "output_per_mtok": price.output_per_mtok,
                "cache_read_per_mtok": price.cache_read_per_mtok,
                "cache_write_per_mtok": price.cache_write_per_mtok,
            },
            "description": spec.description,
            "in_flight": model.state.in_flight,
        },
    }


def _pool_entry(pool: Pool) -> dict[str, Any]:
    models = [m.model for m in pool.members]
    windows = [m.spec.context_window for m in models if m.spec.context_window]
    capabilities = set.intersection(*(set(m.capabilities) for m in models)) if models else set()
    return {
        "id": pool.name,
        "object": "model",
        "created": 0,
        "owned_by": "modelpool",
        "modelpool": {
            "kind": "pool",
            "strategy": pool.spec.strategy if pool.spec else "round_robin",
            "members": [m.name for m in models],
            "failover": list(pool.chain[1:]),
            "capabilities": sorted(capabilities),
            "context_window": min(windows) if windows else None,
            "description": pool.spec.description if pool.spec else "",
        },
    }
