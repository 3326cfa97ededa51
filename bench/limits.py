"""Throughput and latency through modelpool with limits and a waiting line, against none.

    .venv/bin/python bench/limits.py [--reps 3] [--json out.json] [--keep]

Starts bench/upstream.py and four ``modelpool run`` processes in front of it,
identical but for their limits (the client ``bench`` is configured in all
four, so every row pays for the key check alike):

* **no limits**: the baseline.
* **generous limits**: rpm, tpm and max_concurrency at the model, the pool
  and the client, all far above what the run can reach, and a queue: the
  cost of checking and taking three levels of gates on every request.
* **concurrency binds**: the model's ``max_concurrency: 8`` under 64
  connections, so 56 requests are always waiting in the pool's line and
  every answer hands its slot to the head of the line.
* **rpm binds**: the model's ``rpm: 6000`` (100 per second once the burst
  allowance is spent) under 64 connections, the line capped at 16 with a
  1 s timeout: 100 answers per second, everyone else a 429 at once.

Each repetition measures every target in turn (interleaved, so drifting
machine load hits every row), with wrk pinned beside the upstream and
modelpool pinned on a core of its own, as bench/run.py does. The table
shows medians; the ratio and the CPU difference in brackets are medians of
each repetition against the baseline's run in the same repetition. Every
run is listed below the table. Everything started is stopped
by PID, also on Ctrl-C. Takes about 100 s.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import http.client
import json
import math
import os
import shutil
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import loadgen
import yaml
from procs import CpuPlan, NoiseMeter, Proc, Processes, cpu_plan, free_port, process_cpu_s
from run import (
    CHAT_PATH,
    POOL,
    Samples,
    Settings,
    chat_body,
    median,
    modelpool_executable,
    run_reported,
    runs_by_row,
    say,
    start_upstream,
)

KEY = "bench"
"""The key wrk sends (``Authorization: Bearer bench``, see loadgen.WRK_SCRIPT)."""
HUGE = {"rpm": 100_000_000, "tpm": 10_000_000_000, "max_concurrency": 100_000}


@dataclass(frozen=True)
class Plan:
    connections: int = 64
    closed_s: float = 4.0
    unloaded_s: float = 1.0
    rate: float = 500.0
    rate_s: float = 2.0
    rate_connections: int = 32
    warmup_s: float = 1.0
    drain_s: float = 2.0
    """For the rpm row: a closed-loop run before each measurement spends the burst
    allowance the bucket regained while the other rows were measured."""
    reps: int = 3


@dataclass(frozen=True)
class Variant:
    name: str
    model_limits: dict[str, int] | None = None
    pool: dict[str, object] = field(default_factory=dict)
    client_limits: dict[str, int] | None = None
    rate_bound: bool = False
    """The rpm binds: only the closed-loop run means something (after a drain)."""
    model_extra: dict[str, object] = field(default_factory=dict)
    client_extra: dict[str, object] = field(default_factory=dict)
    usage: dict[str, object] | None = None
    """The ``usage:`` section; default: a SQLite file of the variant's own."""
    config_extra: dict[str, object] = field(default_factory=dict)
    """More top-level config sections (``shared_state:``, …)."""


VARIANTS = (
    Variant("no limits"),
    Variant(
        "generous limits (model, pool, client) + queue",
        model_limits=HUGE,
        pool={"limits": HUGE, "queue": {"max_waiting": 1000, "timeout": "10s"}},
        client_limits=HUGE,
    ),
    Variant(
        "concurrency binds (model max 8, 64 conn)",
        model_limits={"max_concurrency": 8},
        pool={"queue": {"max_waiting": 1000, "timeout": "10s"}},
    ),
    Variant(
        "rpm binds (model 6000 rpm, line 16 / 1 s, 64 conn)",
        model_limits={"rpm": 6000},
        pool={"queue": {"max_waiting": 16, "timeout": "1s"}},
        rate_bound=True,
    ),
)


def config_for(variant: Variant, index: int, port: int, upstream: int) -> dict[str, object]:
    model: dict[str, object] = {
        "provider": "bench-upstream",
        "upstream_model": "bench-upstream",
        "capabilities": ["chat", "completions", "stream"],
        **variant.model_extra,
    }
    if variant.model_limits:
        model["limits"] = variant.model_limits
    client: dict[str, object] = {"key_sha256": hashlib.sha256(KEY.encode()).hexdigest()}
    client |= variant.client_extra
    if variant.client_limits:
        client["limits"] = variant.client_limits
    return {
        "version": 1,
        "server": {"listen": f"127.0.0.1:{port}", "access_log": False},
        "providers": {
            "bench-upstream": {
                "type": "openai_compatible",
                "base_url": f"http://127.0.0.1:{upstream}/v1",
                "max_connections": 128,
            }
        },
        "models": {"bench-json": model},
        "pools": {POOL: {"members": ["bench-json"], **variant.pool}},
        "clients": {"bench": client},
        "usage": variant.usage or {"store": f"usage-{index}.db"},
        **variant.config_extra,
    }


@dataclass
class Target:
    variant: Variant
    port: int
    proc: Proc

    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}{CHAT_PATH}"


def answers_200(port: int) -> bool:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
    try:
        headers = {"Content-Type": "application/json", "Authorization": f"Bearer {KEY}"}
        conn.request("POST", CHAT_PATH, body=chat_body(POOL, False), headers=headers)
        response = conn.getresponse()
        response.read()
        return response.status == 200
    except OSError:
        return False
    finally:
        conn.close()


def launch(
    procs: Processes, workdir: Path, cpus: CpuPlan, variant: Variant, index: int, upstream: int
) -> Target:
    port = free_port()
    config = workdir / f"modelpool-{index}.yaml"
    config.write_text(yaml.safe_dump(config_for(variant, index, port, upstream), sort_keys=False))
    argv = [*cpus.prefix(cpus.proxy), str(modelpool_executable()), "run", str(config)]
    proc = procs.start(f"modelpool-{index}", argv)
    deadline = time.monotonic() + 30
    while not answers_200(port):
        if not proc.alive() or time.monotonic() > deadline:
            raise RuntimeError(f"{variant.name}: modelpool did not serve:\n{proc.log_tail()}")
        time.sleep(0.01)
    return Target(variant, port, proc)


def measure_once(
    procs: Processes,
    workdir: Path,
    cpus: CpuPlan,
    plan: Plan,
    target: Target,
    into: Samples,
    settle: Callable[[str], None] | None = None,
) -> None:
    """One repetition of one target; ``settle(run)`` is called after the closed-loop and the
    unloaded run (to let work the target still does in the background finish first)."""
    body = chat_body(POOL, False)

    def wrk(connections: int, seconds: float, rate: float | None = None) -> loadgen.WrkResult:
        return loadgen.wrk(
            procs,
            target.url(),
            body,
            connections=connections,
            duration=seconds,
            workdir=workdir,
            cpu_prefix=cpus.prefix(cpus.load),
            rate=rate,
        )

    if target.variant.rate_bound:
        wrk(plan.connections, plan.drain_s)
    cpu0 = process_cpu_s(target.proc.pid)
    closed = wrk(plan.connections, plan.closed_s)
    cpu1 = process_cpu_s(target.proc.pid)
    seconds = closed.requests / closed.rps if closed.rps else math.nan
    values = {
        "ok_rps": (closed.requests - closed.non2xx) / seconds,
        "rejected_rps": closed.non2xx / seconds,
        "cpu_us": (cpu1 - cpu0) / max(closed.requests, 1) * 1e6,
        "closed_p50": closed.p50_ms,
        "closed_p99": closed.p99_ms,
        "socket_errors": float(closed.errors - closed.non2xx),
        "closed_requests": float(closed.requests),
    }
    if not target.variant.rate_bound:
        if settle:
            settle("closed")
        unloaded = wrk(1, plan.unloaded_s)
        if settle:
            settle("unloaded")
        paced = wrk(plan.rate_connections, plan.rate_s, plan.rate)
        values |= {
            "idle_p50": unloaded.p50_ms,
            "idle_p99": unloaded.p99_ms,
            "rate_p50": paced.p50_ms,
            "rate_p99": paced.p99_ms,
            "rate_achieved": paced.rps,
            "socket_errors": values["socket_errors"] + unloaded.errors + paced.errors,
        }
    for key, value in values.items():
        into.setdefault(key, []).append(value)


def warm_up(procs: Processes, workdir: Path, cpus: CpuPlan, plan: Plan, target: Target) -> None:
    # The rpm row starts with a full burst allowance (6000): spend it here.
    seconds = plan.warmup_s + (3.0 if target.variant.rate_bound else 0.0)
    loadgen.wrk(
        procs,
        target.url(),
        chat_body(POOL, False),
        connections=plan.connections,
        duration=seconds,
        workdir=workdir,
        cpu_prefix=cpus.prefix(cpus.load),
    )


# --- report ------------------------------------------------------------------------------


def _m(samples: Samples, key: str) -> float:
    return median(samples.get(key, []))


def _pair(samples: Samples, p50: str, p99: str) -> str:
    a, b = _m(samples, p50), _m(samples, p99)
    return "–" if math.isnan(a) else f"{a:.2f} / {b:.2f}"


def table(rows: Sequence[tuple[Variant, Samples]], plan: Plan) -> str:
    base = rows[0][1]
    header = [
        "modelpool with",
        f"200/s ({plan.connections} conn)",
        "429/s",
        "CPU per answer (µs)",
        f"p50 / p99, {plan.connections} conn (ms)",
        "p50 / p99, 1 conn (ms)",
        f"p50 / p99 @ {plan.rate:g} rps (ms)",
        "socket errors",
    ]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for variant, samples in rows:
        ok, cpu = _m(samples, "ok_rps"), _m(samples, "cpu_us")
        same = samples is base
        # Against the baseline run of the same repetition (interleaved: same machine state).
        ratio = median([a / b for a, b in zip(samples["ok_rps"], base["ok_rps"], strict=True)])
        extra = median([a - b for a, b in zip(samples["cpu_us"], base["cpu_us"], strict=True)])
        cells = [
            variant.name,
            f"{ok:,.0f}" + ("" if same else f" ({ratio:.2f}×)"),
            f"{_m(samples, 'rejected_rps'):,.0f}",
            f"{cpu:.0f}" + ("" if same else f" ({extra:+.0f})"),
            _pair(samples, "closed_p50", "closed_p99"),
            _pair(samples, "idle_p50", "idle_p99"),
            _pair(samples, "rate_p50", "rate_p99"),
            f"{sum(samples.get('socket_errors', [])):.0f}",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def listing(rows: Sequence[tuple[Variant, Samples]]) -> str:
    keys = ["ok_rps", "rejected_rps", "cpu_us", "closed_p50", "closed_p99", "idle_p50"]
    keys += ["rate_p50", "rate_p99", "rate_achieved"]
    return runs_by_row([(variant.name, samples) for variant, samples in rows], keys)


# --- main --------------------------------------------------------------------------------


def run(
    plan: Plan, workdir: Path, say: Callable[[str], None], variants: Sequence[Variant] = VARIANTS
) -> tuple[str, dict[str, Samples]]:
    cpus = cpu_plan()
    began = time.monotonic()
    with Processes(workdir) as procs:
        if cpus.load is not None:
            os.sched_setaffinity(0, {cpus.load})
            say(f"pinning: modelpool on cpu {cpus.proxy}; upstream and wrk on cpu {cpus.load}")
        else:
            say("WARNING: fewer than 2 CPUs available; nothing is pinned")
        upstream = start_upstream(procs, cpus, Settings())
        targets = [launch(procs, workdir, cpus, v, i, upstream) for i, v in enumerate(variants)]
        for target in targets:
            say(f"{target.variant.name}: port {target.port}; warming up")
            warm_up(procs, workdir, cpus, plan, target)
        samples: dict[str, Samples] = {t.variant.name: {} for t in targets}
        noise = NoiseMeter(procs)
        for rep in range(plan.reps):
            for target in targets:
                say(f"rep {rep + 1}/{plan.reps}: {target.variant.name}")
                measure_once(procs, workdir, cpus, plan, target, samples[target.variant.name])
        foreign = noise.foreign_cpus()
    rows = [(v, samples[v.name]) for v in variants]
    pinned = (
        f"modelpool pinned to cpu {cpus.proxy}, upstream and wrk on cpu {cpus.load}"
        if cpus.pinned
        else "unpinned"
    )
    report = [
        table(rows, plan),
        "",
        f"Medians of {plan.reps} interleaved runs; {pinned}; closed loop {plan.closed_s:g} s × "
        f"{plan.connections} conn, unloaded {plan.unloaded_s:g} s × 1 conn, paced "
        f"{plan.rate:g} rps × {plan.rate_s:g} s over {plan.rate_connections} conn (wrk). "
        f"Took {time.monotonic() - began:.0f} s; other processes kept {foreign:.2f} of "
        f"{os.cpu_count()} CPUs busy on average.",
        "",
        "Every run:",
        "",
        listing(rows),
    ]
    return "\n".join(report), samples


def main(
    argv: Sequence[str] | None = None,
    variants: Sequence[Variant] = VARIANTS,
    description: str = "modelpool with limits and a queue vs. without.",
) -> int:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--reps", type=int, default=Plan.reps, help="repetitions (default 3)")
    parser.add_argument("--json", type=Path, help="also write every run's numbers here")
    parser.add_argument("--keep", action="store_true", help="keep the work directory (logs)")
    args = parser.parse_args(argv)
    if shutil.which("wrk") is None:
        parser.error("wrk is required (apt-get install wrk)")
    plan = dataclasses.replace(Plan(), reps=args.reps)

    def work(workdir: Path) -> str:
        report, samples = run(plan, workdir, say, variants)
        if args.json:
            args.json.write_text(json.dumps(samples, indent=2))
        return report

    return run_reported("modelpool-bench-variants-", work, keep=args.keep)


if __name__ == "__main__":
    sys.exit(main())
