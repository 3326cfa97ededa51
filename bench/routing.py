"""What choosing members costs per request, for each strategy and pool size.

    .venv/bin/python bench/routing.py [--runs 7] [--requests 20000]

Builds one routing table through the real loader and compiler (one pool per
strategy and size, members on HTTP providers so the connection-pool check is
real), gives every model some learned state (in-flight counts, latency EWMAs;
prices come from the config), then times, per request:

* ``Pool.order(rng, hint)``: the strategy alone, with the pool's cursor;
* ``candidates``: what the dispatcher does before its first attempt — the
  order plus the capability, duplicate and busy-connection checks, drained
  for one whole round.

Each figure is the median of ``--runs`` runs of ``--requests`` requests, in
µs per request. ``tokens.estimate`` (which ``lowest_cost`` needs once per
request) is timed alone for a typical chat body. Prints markdown tables (see
bench/README.md).
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import yaml

from modelpool.balance import STRATEGIES
from modelpool.clock import SystemClock
from modelpool.compile import compile_table
from modelpool.config.load import load_config
from modelpool.dispatch import Dispatcher
from modelpool.state import StateRegistry
from modelpool.table import Pool, RoutingTable
from modelpool.tokens import Estimate, estimate
from modelpool.upstream import Transports

SIZES = (2, 4, 8)
NEEDS = frozenset({"chat", "stream"})
CHAT = {
    "model": "p",
    "max_tokens": 512,
    "stream": True,
    "messages": [
        {"role": "system", "content": "You are a careful assistant. " * 8},
        {"role": "user", "content": "Summarise the following text in three bullets. " * 16},
    ],
}


def generate() -> dict[str, Any]:
    """One pool per (strategy, size); each pool has its own models, as pools rarely share."""
    providers = {
        f"provider-{i}": {
            "type": "openai_compatible",
            "base_url": f"https://provider-{i}.example.com/v1",
            "api_key": f"sk-bench-{i:04d}-0123456789abcdef",
        }
        for i in range(4)
    }
    models: dict[str, Any] = {}
    pools: dict[str, Any] = {}
    for strategy in STRATEGIES:
        for size in SIZES:
            members = []
            for j in range(size):
                name = f"{strategy}-{size}-m{j}"
                models[name] = {
                    "provider": f"provider-{j % 4}",
                    "upstream_model": f"upstream-{j}",
                    "capabilities": ["chat", "completions", "stream"],
                    "price": {"input_per_mtok": 0.5 + j % 3, "output_per_mtok": 1.5 + j % 5},
                }
                members.append({"model": name, "weight": 1 + j % 3, "priority": j // 2})
            pools[f"{strategy}-{size}"] = {"strategy": strategy, "members": members}
    return {
        "version": 1,
        "server": {"listen": "127.0.0.1:8787"},
        "providers": providers,
        "models": models,
        "pools": pools,
    }


def build(folder: Path) -> RoutingTable:
    path = folder / "routing.yaml"
    path.write_text(yaml.safe_dump(generate(), sort_keys=False))
    registry = StateRegistry()
    table = compile_table(
        load_config(path, env={}), generation=1, registry=registry, transports=Transports()
    )
    rng = random.Random(3)
    for state in registry.models():  # what a busy daemon would have learned
        state.in_flight = rng.randint(0, 3)
        state.latency_ewma = rng.uniform(0.05, 0.8)
    return table


def one_round(dispatcher: Dispatcher, table: RoutingTable, pool: Pool, hint: Estimate) -> None:
    """Every candidate of one round, as the dispatcher's first loop walks them."""
    for _ in dispatcher.candidates(table, pool, NEEDS, hint):
        pass


def per_request_us(action: Callable[[], object], requests: int, runs: int) -> float:
    results = []
    for _ in range(runs):
        start = time.perf_counter_ns()
        for _ in range(requests):
            action()
        results.append((time.perf_counter_ns() - start) / requests / 1000)
    return statistics.median(results)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--runs", type=int, default=7, help="runs per figure (median)")
    parser.add_argument("--requests", type=int, default=20_000, help="requests per run")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="modelpool-routing-") as tmp:
        table = build(Path(tmp))
    rng = random.Random(1)
    dispatcher = Dispatcher(SystemClock(), rng)
    hint = estimate("chat", CHAT)

    header = " / ".join(str(n) for n in SIZES) + " members"
    print(f"µs per request, median of {args.runs} runs of {args.requests:,} requests\n")
    print(f"| strategy | `Pool.order` ({header}) | `candidates` ({header}) |")
    print("|---|---|---|")
    for strategy in STRATEGIES:
        order, round_ = [], []
        for size in SIZES:
            pool = table.routes[f"{strategy}-{size}"]
            walk = partial(one_round, dispatcher, table, pool, hint)
            order.append(per_request_us(partial(pool.order, rng, hint), args.requests, args.runs))
            round_.append(per_request_us(walk, args.requests, args.runs))
        cells = " / ".join(f"{us:.2f}" for us in order), " / ".join(f"{us:.2f}" for us in round_)
        print(f"| {strategy} | {cells[0]} | {cells[1]} |")

    body_kib = len(str(CHAT)) / 1024
    us = per_request_us(partial(estimate, "chat", CHAT), args.requests, args.runs)
    print(f"\n`tokens.estimate` for a {body_kib:.1f} KiB chat body: {us:.2f} µs")
    return 0


if __name__ == "__main__":
    sys.exit(main())
