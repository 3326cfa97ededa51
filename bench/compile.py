"""What a reload costs: loading and compiling a large config, and routing in it.

    .venv/bin/python bench/compile.py [--runs 7] [--profile]

Generates a 2,000-model, 500-pool config (several providers of different
types, pools of 4-8 members, failover chains) into a temporary folder, then
measures, each as the median of ``--runs`` runs:

* ``load_config``: read + YAML parse + schema (twice: before and after
  substitution) + semantic checks + building the frozen spec;
* ``compile_table``: spec → routing table, against a warm StateRegistry and
  Transports, as every reload after the first does;
* the request-path route lookup (``table.routes[name]`` then ``Pool.order``)
  in tables of 50, 500 and 5,000 pools, which must not grow with the table.

Prints markdown tables (see bench/README.md). ``--profile`` adds the top
functions of one load + compile by cumulative time (cProfile).
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import gc
import io
import pstats
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import yaml

from modelpool.compile import compile_table
from modelpool.config.gate import InlineGate
from modelpool.config.load import _assemble as assemble
from modelpool.config.load import load_config
from modelpool.config.schema import validate_schema
from modelpool.config.source import parse_yaml
from modelpool.config.spec import Config
from modelpool.state import StateRegistry
from modelpool.table import RoutingTable
from modelpool.upstream import Transports

PROVIDER_TYPES = ("openai", "openai_compatible", "azure_openai", "anthropic", "ollama", "mock")
STRATEGIES = ("round_robin", "weighted", "priority", "least_in_flight")


def generate(models: int, pools: int, providers: int = 12, seed: int = 1) -> dict[str, Any]:
    """A config shaped like a big real one: many providers, overlapping pools, failover chains.

    Every fourth pool fails over to the next one or two, so chains run up to a
    few pools deep and never loop (a pool only fails over to later pools).
    """
    rng = random.Random(seed)
    provider_blocks: dict[str, Any] = {}
    for i in range(providers):
        kind = PROVIDER_TYPES[i % len(PROVIDER_TYPES)]
        block: dict[str, Any] = {"type": kind}
        if kind != "mock":
            block["base_url"] = f"https://provider-{i}.example.com/v1"
            block["timeouts"] = {"connect": "5s", "first_byte": "60s", "idle": "30s"}
            block["max_connections"] = 32 + i
        if kind in ("openai", "openai_compatible", "azure_openai", "anthropic"):
            block["api_key"] = f"sk-bench-{i:04d}-0123456789abcdef"
        if kind == "azure_openai":
            block["api_version"] = "2024-06-01"
        provider_blocks[f"provider-{i}"] = block
    names = list(provider_blocks)
    model_blocks: dict[str, Any] = {}
    for i in range(models):
        model_blocks[f"model-{i:05d}"] = {
            "provider": names[i % len(names)],
            "upstream_model": f"upstream-model-{i}",
            "capabilities": ["chat", "completions", "stream", "tools"],
            "context_window": 128000,
            "price": {"input_per_mtok": 0.5 + i % 7, "output_per_mtok": 1.5 + i % 5},
            "limits": {"rpm": 600, "tpm": 200000},
        }
    model_names = list(model_blocks)
    pool_blocks: dict[str, Any] = {}
    for i in range(pools):
        chosen = rng.sample(model_names, rng.randint(4, 8))
        strategy = STRATEGIES[i % len(STRATEGIES)]
        members: list[Any] = (
            [
                {"model": m, "weight": rng.randint(1, 5), "priority": j // 2}
                for j, m in enumerate(chosen)
            ]
            if strategy in ("weighted", "priority")
            else chosen
        )
        pool: dict[str, Any] = {
            "description": f"pool {i}",
            "strategy": strategy,
            "members": members,
            "retry": {"attempts": 3},
            "timeouts": {"total": "120s"},
        }
        if i % 4 == 0 and i + 2 < pools:
            pool["failover"] = [f"pool-{i + 1:04d}", f"pool-{i + 2:04d}"][: 1 + i % 2]
        pool_blocks[f"pool-{i:04d}"] = pool
    return {
        "version": 1,
        "server": {"listen": "127.0.0.1:8787"},
        "providers": provider_blocks,
        "models": model_blocks,
        "pools": pool_blocks,
    }


def write(config: dict[str, Any], folder: Path, name: str) -> Path:
    path = folder / name
    path.write_text(yaml.dump(config, Dumper=yaml.CSafeDumper, sort_keys=False))
    return path


@contextlib.contextmanager
def paused_gc() -> Iterator[None]:
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


def median_seconds(action: Callable[[], object], runs: int) -> float:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        action()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def compile_once(config: Config, registry: StateRegistry, transports: Transports) -> RoutingTable:
    return compile_table(config, generation=2, registry=registry, transports=transports)


def lookup_ns(table: RoutingTable, lookups: int = 50_000, seed: int = 2) -> tuple[float, float]:
    """Median ns per request: ``routes[name]`` alone, and with the pool's try order."""
    rng = random.Random(seed)
    picks = [rng.choice(list(table.pools)) for _ in range(lookups)]
    routes = table.routes
    alone, ordered = [], []
    for _ in range(7):
        start = time.perf_counter_ns()
        for name in picks:
            routes[name]
        alone.append((time.perf_counter_ns() - start) / lookups)
        start = time.perf_counter_ns()
        for name in picks:
            routes[name].order(rng)
        ordered.append((time.perf_counter_ns() - start) / lookups)
    return statistics.median(alone), statistics.median(ordered)


def profile(path: Path, registry: StateRegistry, transports: Transports) -> str:
    profiler = cProfile.Profile()
    profiler.enable()
    compile_once(load_config(path, env={}), registry, transports)
    profiler.disable()
    out = io.StringIO()
    pstats.Stats(profiler, stream=out).sort_stats("cumulative").print_stats(25)
    return out.getvalue()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--runs", type=int, default=7, help="runs per measurement (median)")
    parser.add_argument("--profile", action="store_true", help="cProfile one load + compile")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="modelpool-compile-") as tmp:
        folder = Path(tmp)
        big = write(generate(2000, 500), folder, "big.yaml")
        size_kib = big.stat().st_size / 1024
        config = load_config(big, env={})
        registry, transports = StateRegistry(), Transports()
        compile_once(config, registry, transports)  # warm: later reloads find state in place

        load_s = median_seconds(lambda: load_config(big, env={}), args.runs)
        compile_s = median_seconds(lambda: compile_once(config, registry, transports), args.runs)
        text = big.read_text()
        with paused_gc():  # as load_config runs them
            parse_s = median_seconds(lambda: parse_yaml(text, str(big)), args.runs)
            doc = parse_yaml(text, str(big))
            schema_s = median_seconds(lambda: validate_schema(doc, InlineGate()), args.runs)
        print(f"config: 2,000 models, 500 pools, 12 providers, {size_kib:,.0f} KiB of YAML\n")
        print(f"| step | median of {args.runs} (ms) |")
        print("|---|---|")
        print(f"| load_config (parse + schema + semantics + spec) | {load_s * 1000:.1f} |")
        print(f"| … of which YAML parse (`parse_yaml`) | {parse_s * 1000:.1f} |")
        print(f"| … of which JSON Schema (`validate_schema`) | {schema_s * 1000:.1f} |")
        print(f"| compile_table | {compile_s * 1000:.1f} |")
        print(f"| **reload total** | **{(load_s + compile_s) * 1000:.1f}** |")

        print(
            "\n| pools in table | models | `routes[name]` (ns) | `routes[name].order(rng)` (ns) |"
        )
        print("|---|---|---|---|")
        for pools in (50, 500, 5000):
            models = pools * 4
            # Built straight from the data (no YAML, no schema): this measures the table.
            spec = assemble(generate(models, pools, seed=pools), "generated", "", folder, ())
            table = compile_once(spec, StateRegistry(), Transports())
            alone, ordered = lookup_ns(table)
            print(f"| {pools:,} | {models:,} | {alone:.0f} | {ordered:.0f} |")

        if args.profile:
            print("\n```")
            print(profile(big, registry, transports))
            print("```")
    return 0


if __name__ == "__main__":
    sys.exit(main())
