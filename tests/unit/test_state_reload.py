"""Runtime state across reloads (issue 3, SPEC §4): what carries over, what is released.

Reloads go through the real :class:`Reloader` pipeline (compile, swap,
reconcile of state and connection pools) with a loader that hands it
configs loaded up front by the real ``load_config``, so thousands of them
take a second or two. A request is simulated the way the dispatcher makes
one: ``started()`` on the state of the table it began on, ``finished()`` on
that same object, however many reloads later.
"""

from __future__ import annotations

import gc
import random
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from modelpool.compile import compile_table
from modelpool.config.load import load_config
from modelpool.config.spec import Config
from modelpool.errors import ConfigError, ConfigIssue
from modelpool.metrics import Metrics
from modelpool.providers.mock import MockProvider
from modelpool.providers.openai import OpenAIProvider
from modelpool.reload import Reloader
from modelpool.state import ModelState, PoolState, StateRegistry
from modelpool.table import Member, Model, Pool, RoutingTable, TableHolder
from modelpool.upstream import HttpTransport, Transports

URL_A = "http://127.0.0.1:9/v1"
URL_B = "http://127.0.0.1:10/v1"
URL_C = "http://127.0.0.1:11/v1"

RETAINED = (
    ModelState,
    PoolState,
    Model,
    Member,
    Pool,
    RoutingTable,
    Config,
    HttpTransport,
    OpenAIProvider,
    MockProvider,
)
"""What a reload creates or keeps: every instance is counted after thousands of reloads."""


def config_data(**changes: Any) -> dict[str, Any]:
    """Models m1, m2 on provider a; m3 on b; m4 on the mock; pools p1 [m1, m3], p2 [m2, m4].

    ``changes``: ``key`` (provider a's api_key), ``url_b`` / ``connections_b``
    (provider b's endpoint / pool size), ``upstream_m1``, ``timeout`` (provider
    a's total), ``price`` (m1's input price), ``weights`` (p1's), ``drop`` (model
    names to leave out, with every pool that needs them), ``extra`` (add model
    m5 on b and pool p3 [m5, m2]).
    """
    drop = set(changes.get("drop", ()))
    providers = {
        "a": {
            "type": "openai",
            "base_url": URL_A,
            "api_key": changes.get("key", "sk-key-one-0123456789"),
            "timeouts": {"total": changes.get("timeout", "60s")},
        },
        "b": {
            "type": "openai_compatible",
            "base_url": changes.get("url_b", URL_B),
            "max_connections": changes.get("connections_b", 16),
        },
        "mock": {"type": "mock"},
    }
    models: dict[str, Any] = {
        "m1": {
            "provider": "a",
            "upstream_model": changes.get("upstream_m1", "up-m1"),
            "price": {"input_per_mtok": changes.get("price", 1.0), "output_per_mtok": 2.0},
        },
        "m2": {"provider": "a", "upstream_model": "up-m2"},
        "m3": {"provider": "b", "upstream_model": "up-m3"},
        "m4": {"provider": "mock"},
    }
    w1, w2 = changes.get("weights", (1, 1))
    pools: dict[str, Any] = {
        "p1": {
            "strategy": "weighted",
            "members": [{"model": "m1", "weight": w1}, {"model": "m3", "weight": w2}],
        },
        "p2": {"members": ["m2", "m4"]},
    }
    if changes.get("extra"):
        models["m5"] = {"provider": "b", "upstream_model": "up-m5"}
        pools["p3"] = {"members": ["m5", "m2"]}
    for name in drop:
        del models[name]
    pools = {
        name: pool
        for name, pool in pools.items()
        if not drop & {m if isinstance(m, str) else m["model"] for m in pool["members"]}
    }
    return {"version": 1, "providers": providers, "models": models, "pools": pools}


@dataclass
class Configs:
    folder: Path
    made: int = 0

    def __call__(self, **changes: Any) -> Config:
        self.made += 1
        path = self.folder / f"pools-{self.made}.yaml"
        path.write_text(yaml.safe_dump(config_data(**changes), sort_keys=False))
        return load_config(path, env={})


@pytest.fixture
def configs(tmp_path: Path) -> Configs:
    return Configs(tmp_path)


@dataclass
class Live:
    """The daemon's reload machinery, without HTTP: what ``build_app`` wires up."""

    holder: TableHolder
    registry: StateRegistry
    transports: Transports
    reloader: Reloader
    queue: list[Config | ConfigError] = field(default_factory=list)

    @classmethod
    def start(cls, config: Config) -> Live:
        registry, transports = StateRegistry(), Transports()
        table = compile_table(config, generation=1, registry=registry, transports=transports)
        holder = TableHolder(table)
        queue: list[Config | ConfigError] = []

        def next_config(_path: str) -> Config:
            item = queue.pop(0)
            if isinstance(item, ConfigError):
                raise item
            return item

        reloader = Reloader("-", holder, registry, transports, Metrics(), loader=next_config)
        return cls(holder, registry, transports, reloader, queue)

    @property
    def table(self) -> RoutingTable:
        return self.holder.current

    async def reload(self, config: Config | ConfigError) -> RoutingTable:
        self.queue.append(config)
        outcome = await self.reloader.reload("test")
        expected = "rejected" if isinstance(config, ConfigError) else "applied"
        assert outcome.result == expected, outcome
        return self.table

    def state_of(self, model: str) -> ModelState:
        return self.table.models[model].state

    def held(self) -> set[int]:
        """ids of every ModelState the registry holds."""
        return {id(state) for state in self.registry.models()}

    def check_nothing_stale(self) -> None:
        """The registry and the connection pools hold exactly what the table uses."""
        table = self.table
        assert {s.identity for s in self.registry.models()} == {
            m.identity for m in table.models.values()
        }
        assert set(self.registry.pools()) == {pool.state_key for pool in table.routes.values()}
        live = {key for model in table.models.values() if (key := model.transport_key)}
        assert set(self.transports._pools) == live


def rejected() -> ConfigError:
    """A fresh error each time, as the loader raises (a re-raised one would grow its traceback)."""
    return ConfigError([ConfigIssue("pools.yaml", 3, "pools.p1", "a typo")])


# ------------------------------------------------------------------ carry-over


async def test_unchanged_identity_keeps_its_state_through_timeout_price_and_weight_edits(
    configs: Configs,
) -> None:
    live = Live.start(configs())
    m1 = live.state_of("m1")
    m1.started()
    m1.started()
    m1.finished(0.5, ok=True)
    pool = live.table.routes["p1"]
    for _ in range(3):
        pool.order(random.Random(1))
    transport = live.transports.get(URL_B, 16)

    await live.reload(configs(timeout="90s", price=3.5, weights=(3, 1)))
    await live.reload(rejected())
    table = await live.reload(configs(timeout="30s", price=0.5, weights=(1, 4), extra=True))

    assert table.generation == 3
    assert table.models["m1"].state is m1
    assert (m1.in_flight, m1.requests, m1.latency_ewma) == (1, 2, 0.5)
    assert table.models["m1"].provider.timeouts.total == 30.0  # the new spec, the old state
    assert table.routes["p1"].state.cursor == 3
    assert live.transports.get(URL_B, 16) is transport
    m1.finished(None, ok=None)
    assert live.state_of("m1") is m1
    assert m1.in_flight == 0
    live.check_nothing_stale()


@pytest.mark.parametrize(
    ("change", "models"),
    [
        ({"key": "sk-key-two-0123456789"}, ("m1", "m2")),
        ({"url_b": URL_C}, ("m3",)),
        ({"upstream_m1": "up-m1-v2"}, ("m1",)),
    ],
    ids=["rotated-key", "new-endpoint", "new-upstream-model"],
)
async def test_a_changed_identity_starts_fresh_and_the_old_state_goes_with_its_last_request(
    configs: Configs, change: dict[str, Any], models: tuple[str, ...]
) -> None:
    live = Live.start(configs())
    old = {name: live.state_of(name) for name in models}
    for state in old.values():
        state.started()
        state.finished(0.25, ok=True)
        state.started()  # still running when the reload swaps the table
    untouched = {name: live.state_of(name) for name in ("m1", "m2", "m3", "m4")}

    await live.reload(configs(**change))

    for name, state in old.items():
        fresh = live.state_of(name)
        assert fresh is not state
        assert (fresh.in_flight, fresh.requests, fresh.latency_ewma) == (0, 0, None)
        assert id(state) in live.held(), "released while its request still runs"
    for name, state in untouched.items():
        if name not in old:
            assert live.state_of(name) is state
    for state in old.values():
        state.finished(0.3, ok=True)  # the request ends, on the state it started with
        assert id(state) not in live.held()
    live.check_nothing_stale()


async def test_a_new_endpoint_gets_a_new_connection_pool_and_the_old_one_is_closed(
    configs: Configs,
) -> None:
    live = Live.start(configs())
    old = live.transports.get(URL_B, 16)
    await live.reload(configs(connections_b=32))
    assert old.retired
    assert old.closed
    assert live.transports.get(URL_B, 32) is not old
    live.check_nothing_stale()


# ------------------------------------------------------------------ release


async def test_a_removed_model_is_kept_until_its_last_request_ends(configs: Configs) -> None:
    live = Live.start(configs())
    m2 = live.state_of("m2")
    m2.started()
    m2.started()

    table = await live.reload(configs(drop=["m2"]))
    assert "m2" not in table.models
    assert "p2" not in table.routes
    assert "model:m2" not in live.registry.pools()  # pool state has no requests to wait for
    assert id(m2) in live.held()
    m2.finished(0.1, ok=True)
    assert id(m2) in live.held()
    await live.reload(configs(drop=["m2"], timeout="20s"))  # another reload meanwhile
    assert id(m2) in live.held()
    m2.finished(0.1, ok=True)
    assert id(m2) not in live.held()
    live.check_nothing_stale()


async def test_an_idle_removed_model_is_released_at_once(configs: Configs) -> None:
    live = Live.start(configs())
    m2 = live.state_of("m2")
    await live.reload(configs(drop=["m2"]))
    assert id(m2) not in live.held()
    live.check_nothing_stale()


async def test_a_model_removed_and_added_back_before_its_last_request_ends_keeps_its_state(
    configs: Configs,
) -> None:
    live = Live.start(configs())
    m2 = live.state_of("m2")
    m2.started()
    m2.finished(0.4, ok=True)
    m2.started()

    await live.reload(configs(drop=["m2"]))
    await live.reload(configs())
    assert live.state_of("m2") is m2
    assert (m2.in_flight, m2.latency_ewma) == (1, 0.4)
    m2.finished(0.4, ok=True)  # its last request ends: it is live again, so it stays
    assert live.state_of("m2") is m2
    assert id(m2) in live.held()

    m2.started()
    await live.reload(configs(drop=["m2"]))  # retired a second time …
    m2.finished(None, ok=None)
    assert id(m2) not in live.held()  # … and released this time
    live.check_nothing_stale()


# ------------------------------------------------------------------ thousands of reloads


def census(kinds: Iterable[type]) -> Counter[str]:
    gc.collect()
    wanted = tuple(kinds)
    return Counter(type(o).__name__ for o in gc.get_objects() if isinstance(o, wanted))


async def test_thousands_of_reloads_leave_no_growth_in_retained_state(configs: Configs) -> None:
    """3,500 reloads through six shapes (models and pools added and removed, keys rotated,
    endpoints and upstream models changed, timeouts and prices edited), one in seven
    rejected, with requests held open across up to five reloads: afterwards the registry,
    the connection pools and the live objects of every runtime type are what they were."""
    variants = [
        configs(),
        configs(extra=True, drop=["m2"], weights=(2, 1)),
        configs(key="sk-key-two-0123456789"),
        configs(url_b=URL_C, connections_b=8, extra=True),
        configs(upstream_m1="up-m1-v2", drop=["m4"]),
        configs(timeout="45s", price=9.0),
    ]
    live = Live.start(variants[0])
    rng = random.Random(3)
    holding: list[tuple[int, ModelState]] = []

    async def cycle(reloads: int) -> tuple[int, int]:
        started = applied = 0
        for step in range(reloads):
            for due, state in [h for h in holding if h[0] <= step]:
                state.finished(rng.uniform(0.01, 1.0), ok=True)
                holding.remove((due, state))
            for model in rng.sample(list(live.table.models.values()), 2):
                model.state.started()
                holding.append((step + rng.randint(1, 5), model.state))
                started += 1
            if step % 7 == 6:
                await live.reload(rejected())
            else:
                await live.reload(rng.choice([v for v in variants if v is not live.table.config]))
                applied += 1
        for due, state in list(holding):
            state.finished(None, ok=None)
            holding.remove((due, state))
        live.check_nothing_stale()  # retired state went with its last request, no reload needed
        await live.reload(variants[5])
        await live.reload(variants[0])
        return started, applied + 2

    _, warm_up = await cycle(60)  # every shape seen, every lazily built cache built
    before = census(RETAINED)
    registry_before = (len(live.registry.models()), len(live.registry.pools()))
    started, applied = await cycle(3500)
    after = census(RETAINED)

    assert applied >= 3000
    assert live.table.generation == 1 + warm_up + applied
    assert started == 7000
    assert all(state.in_flight == 0 for state in live.registry.models())
    live.check_nothing_stale()
    assert (len(live.registry.models()), len(live.registry.pools())) == registry_before
    assert after == before, f"retained objects grew: {after - before}"
    # Other tests' objects may share the process: count this test's own tables.
    mine = {id(v) for v in variants}
    ours = [o for o in gc.get_objects() if isinstance(o, RoutingTable) and id(o.config) in mine]
    assert ours == [live.table]
