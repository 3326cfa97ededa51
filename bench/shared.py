"""What sharing limits and budgets through Redis costs; 3 sidecars on one Redis against 1.

    .venv/bin/python bench/shared.py [--reps 3] [--json out.json] [--keep]

Starts bench/upstream.py, a redis-server of its own (a free loopback port,
``--save '' --appendonly no``, pinned beside the upstream and wrk) and
``modelpool run`` processes in front of them, all with the same priced model,
pool and client, and the generous limits of bench/limits.py (rpm, tpm and
max_concurrency at the model, the pool and the client, far above reach, and
a queue):

Part 1, one sidecar at a time (bench/limits.py's measurement: closed loop,
one connection, paced 500 rps), interleaved:

* **limits in process**: the baseline.
* **limits shared through Redis**: the same limits with ``shared_state``: every
  gate is taken with one Lua script in Redis.
* **+ shared budgets**: also USD and token budgets per day and month on the
  client and on the pool (far above reach) and the usage store in Redis.

Around each measurement the bench reads Redis's ``INFO commandstats`` and
the redis-server's CPU time, and divides by the requests served: Redis round
trips, Redis CPU and Redis execution time per request. A sidecar sends some
scripts after answering (fire and forget: giving back concurrency slots and
unused tokens, settling budgets); before each next run the bench waits until
those have reached Redis, and counts the CPU that took. It also counts how
often a sidecar marked Redis down (it then serves from local limits).

Part 2, three sidecars on one Redis: three identical ``modelpool run``
processes with shared limits (different ports), driven at once by three wrk
processes (closed loop, 64 connections split 22/21/21), against the first of
them driven alone with all 64 connections; and the same with in-process
limits as a control. All sidecars are pinned to the proxy core, so three
sidecars get no more CPU than one: the ratio is the cost of coordination
(and of three processes sharing a core), not a scaling figure.

Everything started is stopped by PID, also on Ctrl-C. Takes about 2 minutes.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import http.client
import json
import os
import shutil
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import loadgen
import redis
from accounting import BUDGET, PRICE
from limits import (
    HUGE,
    Plan,
    Samples,
    Target,
    Variant,
    _m,
    _pair,
    launch,
    measure_once,
    warm_up,
)
from procs import CpuPlan, NoiseMeter, Proc, Processes, cpu_plan, free_port, process_cpu_s
from run import (
    POOL,
    Settings,
    chat_body,
    median,
    run_reported,
    runs_by_row,
    say,
    start_upstream,
)

QUEUE = {"max_waiting": 1000, "timeout": "10s"}
FLEET = 3
FLEET_S = 2.0
"""Seconds of each closed-loop run in part 2."""

ROUND_TRIP_COMMANDS = frozenset(
    {
        "eval",
        "evalsha",
        "eval_ro",
        "evalsha_ro",
        "fcall",
        "fcall_ro",
        "script",
        "mget",
        "set",
        "ping",
        "multi",
        "smembers",
        "hello",
        "client",
        "select",
    }
)
"""Commands a client sends on their own (one round trip each; a MULTI stands for its
pipelined transaction). Everything else in ``commandstats`` — TIME, HGET, HSET, ZADD,
PEXPIRE, HINCRBYFLOAT, … — ran inside those Lua scripts, and Redis counts those too."""
OURS = frozenset({"info", "config"})
"""The bench's own reads of Redis."""


# --- redis ---------------------------------------------------------------------------------

Snapshot = tuple[dict[str, tuple[int, int]], float]
SETTLE_QUIET_S = 0.1
SETTLE_MAX_S = 5.0


@dataclass
class Redis:
    proc: Proc
    port: int
    client: redis.Redis

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def snapshot(self) -> Snapshot:
        """(command → (calls, usec)), and redis-server's CPU seconds."""
        stats = self.client.info("commandstats")
        calls = {
            name.removeprefix("cmdstat_"): (int(v["calls"]), int(v["usec"]))
            for name, v in stats.items()
        }
        return calls, process_cpu_s(self.proc.pid)

    def scripts(self) -> int:
        """Script calls so far (EVAL, EVALSHA): what sidecars send per request."""
        stats = self.client.info("commandstats")
        return sum(int(v["calls"]) for k, v in stats.items() if k.startswith("cmdstat_eval"))

    def quiesce(self) -> float:
        """Wait until no sidecar has run a script for SETTLE_QUIET_S (at most SETTLE_MAX_S):
        the settlements a sidecar sends after answering (fire and forget) have all
        arrived. Returns the seconds from the call to the last script seen."""
        began = time.monotonic()
        last, last_at = self.scripts(), began
        while time.monotonic() - last_at < SETTLE_QUIET_S:
            if time.monotonic() - began > SETTLE_MAX_S:
                break
            time.sleep(0.01)
            now = self.scripts()
            if now != last:
                last, last_at = now, time.monotonic()
        return last_at - began


def start_redis(procs: Processes, cpus: CpuPlan, workdir: Path) -> Redis:
    port = free_port()
    argv = [
        *cpus.prefix(cpus.load),
        "redis-server",
        "--port",
        str(port),
        "--bind",
        "127.0.0.1",
        "--save",
        "",
        "--appendonly",
        "no",
        "--dir",
        str(workdir),
        "--logfile",
        "",
    ]
    proc = procs.start("redis", argv)
    client = redis.Redis(host="127.0.0.1", port=port, socket_timeout=2, socket_connect_timeout=2)
    deadline = time.monotonic() + 10
    while True:
        try:
            client.ping()
            break
        except redis.RedisError:
            if not proc.alive() or time.monotonic() > deadline:
                raise RuntimeError(f"redis-server did not answer:\n{proc.log_tail()}") from None
            time.sleep(0.02)
    return Redis(proc, port, client)


def redis_delta(before: Snapshot, after: Snapshot, requests: float, into: Samples) -> None:
    """Per-request Redis figures between two snapshots, appended to ``into``."""
    (calls0, cpu0), (calls1, cpu1) = before, after
    per = max(requests, 1.0)
    trips = inner = usec = 0
    commands: dict[str, float] = {}
    for name, (calls, spent) in calls1.items():
        n = calls - calls0.get(name, (0, 0))[0]
        base = name.split("|")[0]
        if n <= 0 or base in OURS:
            continue
        commands[name] = n / per
        if base in ROUND_TRIP_COMMANDS:
            trips += n
            usec += spent - calls0.get(name, (0, 0))[1]
        else:
            inner += n
    add(
        into,
        redis_trips=trips / per,
        redis_inner=inner / per,
        redis_exec_us=usec / per,
        redis_cpu_us=(cpu1 - cpu0) * 1e6 / per,
    )
    into.setdefault("redis_commands", []).append(commands)  # type: ignore[arg-type]


def add(into: Samples, **values: float) -> None:
    for key, value in values.items():
        into.setdefault(key, []).append(value)


def served(targets: Sequence[Target]) -> float:
    """Requests these sidecars finished (``modelpool_requests_total``, every outcome). wrk
    counts only the answers that arrive before it stops; this also counts the ones still in
    flight then, which reached Redis too."""
    total = 0.0
    for target in targets:
        conn = http.client.HTTPConnection("127.0.0.1", target.port, timeout=5)
        try:
            conn.request("GET", "/metrics")
            text = conn.getresponse().read().decode()
        finally:
            conn.close()
        for line in text.splitlines():
            if line.startswith("modelpool_requests_total{"):
                total += float(line.rsplit(" ", 1)[1])
    return total


def downs(targets: Sequence[Target]) -> int:
    """Times these sidecars found Redis down (and served from local fallback limits)."""
    total = 0
    for target in targets:
        with contextlib.suppress(OSError):
            total += target.proc.log.read_text(errors="replace").count("shared state is down")
    return total


# --- the configs ---------------------------------------------------------------------------


def generous(
    name: str,
    *,
    pool_extra: dict[str, object] | None = None,
    client_extra: dict[str, object] | None = None,
    usage: dict[str, object] | None = None,
    config_extra: dict[str, object] | None = None,
) -> Variant:
    """limits.py's "generous limits" row, priced (the budget row needs prices)."""
    return Variant(
        name,
        model_limits=HUGE,
        pool={"limits": HUGE, "queue": QUEUE, **(pool_extra or {})},
        client_limits=HUGE,
        model_extra={"price": PRICE},
        client_extra=client_extra or {},
        usage=usage,
        config_extra=config_extra or {},
    )


def variants(url: str) -> tuple[Variant, ...]:
    def shared(prefix: str, replicas: int = 1) -> dict[str, object]:
        return {"shared_state": {"redis": url, "prefix": prefix, "replicas": replicas}}

    return (
        generous("limits in process (model, pool, client) + queue"),
        generous("limits shared through Redis", config_extra=shared("bench-limits")),
        generous(
            "+ shared budgets (client, pool; USD and tokens) + usage store in Redis",
            client_extra={"budget": BUDGET},
            pool_extra={"budget": BUDGET},
            usage={"store": url},
            config_extra=shared("bench-budgets"),
        ),
    )


def fleet_variants(url: str) -> tuple[Variant, Variant]:
    return (
        generous(
            "shared limits (Redis)",
            config_extra={"shared_state": {"redis": url, "prefix": "bench-fleet", "replicas": 3}},
        ),
        generous("limits in process (control)"),
    )


# --- part 2: several sidecars at once ------------------------------------------------------


def split(connections: int, parts: int) -> list[int]:
    return [connections // parts + (1 if i < connections % parts else 0) for i in range(parts)]


def drive(
    procs: Processes,
    workdir: Path,
    cpus: CpuPlan,
    targets: Sequence[Target],
    connections: int,
    seconds: float,
) -> list[loadgen.WrkResult]:
    """One closed-loop wrk per target, all at once, ``connections`` split between them."""
    body = chat_body(POOL, False)
    results: list[loadgen.WrkResult | Exception | None] = [None] * len(targets)

    def one(i: int, target: Target, conns: int) -> None:
        try:
            results[i] = loadgen.wrk(
                procs,
                target.url(),
                body,
                connections=conns,
                duration=seconds,
                workdir=workdir,
                cpu_prefix=cpus.prefix(cpus.load),
            )
        except (RuntimeError, OSError, ValueError) as exc:  # handed to the main thread
            results[i] = exc

    threads = [
        threading.Thread(target=one, args=(i, t, c), daemon=True)
        for i, (t, c) in enumerate(zip(targets, split(connections, len(targets)), strict=True))
    ]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + seconds + 40
    for thread in threads:
        # A bounded join in slices, so Ctrl-C reaches the main thread at once.
        while thread.is_alive() and time.monotonic() < deadline:
            thread.join(0.2)
    done: list[loadgen.WrkResult] = []
    for result in results:
        if isinstance(result, Exception):
            raise RuntimeError(f"wrk failed: {result}")
        if result is None:
            raise RuntimeError("wrk did not finish in time")
        done.append(result)
    return done


def measure_single(
    procs: Processes,
    workdir: Path,
    cpus: CpuPlan,
    plan: Plan,
    target: Target,
    redis_: Redis,
    into: Samples,
) -> None:
    """limits.measure_once, with Redis read around it and the sidecar's background work
    (settlements sent after the answer) finished before each next run starts."""
    before, down0, served0 = redis_.snapshot(), downs([target]), served([target])
    drain: dict[str, float] = {}

    def settle(run: str) -> None:
        cpu = process_cpu_s(target.proc.pid)
        drain[run] = redis_.quiesce()
        drain[run + "_cpu"] = process_cpu_s(target.proc.pid) - cpu

    measure_once(procs, workdir, cpus, plan, target, into, settle)
    redis_.quiesce()
    redis_delta(before, redis_.snapshot(), served([target]) - served0, into)
    # The closed-loop run's CPU, plus what finishing its settlements took afterwards.
    closed = max(into["closed_requests"][-1], 1.0)
    into["cpu_us"][-1] += drain.get("closed_cpu", 0.0) / closed * 1e6
    add(
        into,
        drain_ms=drain.get("closed", 0.0) * 1000,
        drain_cpu_us=drain.get("closed_cpu", 0.0) / closed * 1e6,
        redis_down=float(downs([target]) - down0),
    )


def measure_fleet(
    procs: Processes,
    workdir: Path,
    cpus: CpuPlan,
    plan: Plan,
    targets: Sequence[Target],
    redis_: Redis,
    into: Samples,
) -> None:
    """Closed loop on ``targets`` at once; CPU and Redis per request include the settling."""
    before, down0, served0 = redis_.snapshot(), downs(targets), served(targets)
    cpu0 = sum(process_cpu_s(t.proc.pid) for t in targets)
    results = drive(procs, workdir, cpus, targets, plan.connections, FLEET_S)
    cpu_run = sum(process_cpu_s(t.proc.pid) for t in targets) - cpu0
    drain = redis_.quiesce()
    cpu = sum(process_cpu_s(t.proc.pid) for t in targets) - cpu0
    requests = sum(r.requests for r in results)
    seconds = [r.requests / r.rps if r.rps else FLEET_S for r in results]
    add(
        into,
        ok_rps=sum((r.requests - r.non2xx) / s for r, s in zip(results, seconds, strict=True)),
        cpu_us=cpu / max(requests, 1) * 1e6,
        cores=cpu_run / (sum(seconds) / len(seconds)),
        closed_p50=max(r.p50_ms for r in results),
        closed_p99=max(r.p99_ms for r in results),
        errors=float(sum(r.errors for r in results)),
        requests=float(requests),
        drain_ms=drain * 1000,
        redis_down=float(downs(targets) - down0),
    )
    redis_delta(before, redis_.snapshot(), served(targets) - served0, into)


# --- report --------------------------------------------------------------------------------


def _against(samples: Samples, base: Samples, key: str, ratio: bool) -> float:
    """Median over repetitions of each run against the base's run of the same repetition."""
    pairs = zip(samples.get(key, []), base.get(key, []), strict=False)
    return median([a / b if ratio else a - b for a, b in pairs])


def _latency(samples: Samples, base: Samples, p50: str, p99: str) -> str:
    cell = _pair(samples, p50, p99)
    if samples is base or cell == "–":
        return cell
    d50, d99 = _against(samples, base, p50, False), _against(samples, base, p99, False)
    return f"{cell} ({d50:+.2f} / {d99:+.2f})"


def _redis_cells(samples: Samples) -> list[str]:
    trips = _m(samples, "redis_trips")
    return [
        f"{trips:.1f}" if trips >= 0.05 else "0",
        f"{_m(samples, 'redis_cpu_us'):.0f}",
    ]


def _total(samples: Samples, key: str) -> str:
    return f"{sum(samples.get(key, [])):.0f}"


def table(rows: Sequence[tuple[Variant, Samples]], plan: Plan) -> str:
    base = rows[0][1]
    header = [
        "modelpool with",
        f"200/s ({plan.connections} conn)",
        "CPU per request (µs)",
        "Redis round trips per request",
        "Redis CPU per request (µs)",
        f"p50 / p99, {plan.connections} conn (ms)",
        "p50 / p99, 1 conn (ms)",
        f"p50 / p99 @ {plan.rate:g} rps (ms)",
        "Redis found down",
        "errors",
    ]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for variant, samples in rows:
        same = samples is base
        ratio = _against(samples, base, "ok_rps", True)
        extra = _against(samples, base, "cpu_us", False)
        # Non-2xx answers only come from the closed-loop run (wrk counts them per run).
        rejected = sum(samples.get("rejected_rps", [])) * plan.closed_s
        errors = sum(samples.get("socket_errors", [])) + rejected
        paced = _latency(samples, base, "rate_p50", "rate_p99")
        achieved = _m(samples, "rate_achieved")
        if achieved < 0.95 * plan.rate:
            paced += f" — saturated at {achieved:,.0f}/s"
        cells = [
            variant.name,
            f"{_m(samples, 'ok_rps'):,.0f}" + ("" if same else f" ({ratio:.2f}×)"),
            f"{_m(samples, 'cpu_us'):,.0f}" + ("" if same else f" ({extra:+,.0f})"),
            *_redis_cells(samples),
            _pair(samples, "closed_p50", "closed_p99"),
            _latency(samples, base, "idle_p50", "idle_p99"),
            paced,
            _total(samples, "redis_down"),
            f"{errors:.0f}",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def fleet_table(rows: Sequence[tuple[str, Samples, Samples | None]], plan: Plan) -> str:
    header = [
        "sidecars",
        f"200/s, total ({plan.connections} conn)",
        f"{FLEET} vs 1",
        "CPU per request, all sidecars (µs)",
        f"{FLEET} vs 1 per CPU second",
        "sidecars' CPU (cores)",
        "Redis round trips per request",
        "Redis CPU per request (µs)",
        "p50 / p99, worst wrk (ms)",
        "Redis found down",
        "errors",
    ]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for name, samples, alone in rows:
        if alone is None:
            ratio = per_cpu = "–"
        else:
            ratio = f"{_against(samples, alone, 'ok_rps', True):.2f}×"
            # Requests per CPU second together ÷ alone = CPU per request alone ÷ together.
            per_cpu = f"{1 / _against(samples, alone, 'cpu_us', True):.2f}×"
        cells = [
            name,
            f"{_m(samples, 'ok_rps'):,.0f}",
            ratio,
            f"{_m(samples, 'cpu_us'):,.0f}",
            per_cpu,
            f"{_m(samples, 'cores'):.2f}",
            *_redis_cells(samples),
            _pair(samples, "closed_p50", "closed_p99"),
            _total(samples, "redis_down"),
            _total(samples, "errors"),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def listing(rows: Sequence[tuple[str, Samples]]) -> str:
    keys = ["ok_rps", "cpu_us", "cores", "redis_trips", "redis_inner", "redis_exec_us"]
    keys += ["redis_cpu_us", "redis_down", "drain_ms", "drain_cpu_us", "closed_p99"]
    keys += ["idle_p50", "idle_p99", "rate_p50", "rate_p99", "rate_achieved"]
    return runs_by_row(rows, keys)


def commands(rows: Sequence[tuple[str, Samples]]) -> str:
    """Redis commands per request by name (medians), for the rows that use Redis."""
    lines = []
    for name, samples in rows:
        runs: list[dict[str, float]] = samples.get("redis_commands", [])  # type: ignore[assignment]
        if _m(samples, "redis_trips") < 0.05:
            continue
        names = sorted({c for run in runs for c in run})
        per = {c: median([run.get(c, 0.0) for run in runs]) for c in names}
        ordered = sorted(per.items(), key=lambda kv: -kv[1])
        lines.append(f"- {name}: " + ", ".join(f"{c} {v:.2f}" for c, v in ordered if v >= 0.005))
    return "\n".join(lines)


# --- main ----------------------------------------------------------------------------------


def run(plan: Plan, workdir: Path, say: Callable[[str], None]) -> tuple[str, dict[str, Samples]]:
    cpus = cpu_plan()
    began = time.monotonic()
    with Processes(workdir) as procs:
        if cpus.load is not None:
            os.sched_setaffinity(0, {cpus.load})
            say(
                f"pinning: every modelpool on cpu {cpus.proxy}; upstream, redis-server and wrk "
                f"on cpu {cpus.load}"
            )
        else:
            say("WARNING: fewer than 2 CPUs available; nothing is pinned")
        upstream = start_upstream(procs, cpus, Settings())
        redis_ = start_redis(procs, cpus, workdir)
        say(f"redis-server on 127.0.0.1:{redis_.port}")

        singles = variants(redis_.url)
        targets = [launch(procs, workdir, cpus, v, i, upstream) for i, v in enumerate(singles)]
        index = len(targets)
        fleets: list[tuple[Variant, list[Target]]] = []
        for variant in fleet_variants(redis_.url):
            members = [
                launch(procs, workdir, cpus, variant, index + i, upstream) for i in range(FLEET)
            ]
            index += FLEET
            fleets.append((variant, members))

        for target in targets:
            say(f"{target.variant.name}: port {target.port}; warming up")
            warm_up(procs, workdir, cpus, plan, target)
        for variant, members in fleets:
            say(f"{FLEET} sidecars, {variant.name}: ports {[t.port for t in members]}; warming up")
            drive(procs, workdir, cpus, members, plan.connections, plan.warmup_s)
        redis_.quiesce()

        samples: dict[str, Samples] = {t.variant.name: {} for t in targets}
        fleet_samples: dict[str, Samples] = {}
        noise = NoiseMeter(procs)
        for rep in range(plan.reps):
            for target in targets:
                say(f"rep {rep + 1}/{plan.reps}: {target.variant.name}")
                into = samples[target.variant.name]
                measure_single(procs, workdir, cpus, plan, target, redis_, into)
            for variant, members in fleets:
                for group in (members[:1], members):
                    label = f"{len(group)} × {variant.name}"
                    say(f"rep {rep + 1}/{plan.reps}: {label}")
                    into = fleet_samples.setdefault(label, {})
                    measure_fleet(procs, workdir, cpus, plan, group, redis_, into)
        foreign = noise.foreign_cpus()

    rows = [(v, samples[v.name]) for v in singles]
    fleet_rows: list[tuple[str, Samples, Samples | None]] = []
    for variant, _ in fleets:
        alone = fleet_samples[f"1 × {variant.name}"]
        fleet_rows.append((f"1 sidecar, {variant.name}", alone, None))
        together = fleet_samples[f"{FLEET} × {variant.name}"]
        fleet_rows.append((f"{FLEET} sidecars, {variant.name}", together, alone))
    named = [(v.name, s) for v, s in rows] + [(n, s) for n, s, _ in fleet_rows]
    pinned = (
        f"every modelpool pinned to cpu {cpus.proxy}; upstream, redis-server and wrk on cpu "
        f"{cpus.load}"
        if cpus.pinned
        else "unpinned"
    )
    conns = "/".join(str(c) for c in split(plan.connections, FLEET))
    found_down = sum(sum(s.get("redis_down", [])) for _, s in named)
    report = [
        "Part 1: one sidecar, limits in process vs. in Redis",
        "",
        table(rows, plan),
        "",
        f"Medians of {plan.reps} interleaved runs; {pinned}. Closed loop {plan.closed_s:g} s × "
        f"{plan.connections} conn, unloaded {plan.unloaded_s:g} s × 1 conn, paced "
        f"{plan.rate:g} rps × {plan.rate_s:g} s over {plan.rate_connections} conn (wrk). In "
        "brackets: the median of each run against the first row's run of the same repetition "
        "(× for 200/s, µs for CPU, ms for latency). Before each run the bench waits until the "
        "sidecar's fire-and-forget settlements have reached Redis; CPU per request includes "
        "finishing them. Redis figures: INFO commandstats and redis-server's CPU time around "
        "all three runs ÷ the requests the sidecar finished (its modelpool_requests_total, "
        "which also counts those still in flight when wrk stopped); a round trip is a script "
        "call or another "
        "command sent on its own. Redis found down: times a sidecar marked Redis down (log "
        "'shared state is down'; it then serves from local limits until a call succeeds).",
        "",
        f"Part 2: {FLEET} sidecars on one Redis vs. 1 (closed loop, {FLEET_S:g} s)",
        "",
        fleet_table(fleet_rows, plan),
        "",
        f"All sidecars are pinned to the same core (cpu {cpus.proxy}): {FLEET} sidecars have "
        "the CPU of one, so the ratio is what coordination costs (and three processes sharing "
        f"a core), not how a fleet scales. {FLEET} sidecars: one wrk each, {conns} connections, "
        "started together; 1 sidecar: the first of them alone with all "
        f"{plan.connections}. The control repeats it with in-process limits (each sidecar its "
        f"own). {FLEET} vs 1: median of each repetition's ratio of 200/s, and of requests per "
        "CPU second of the sidecars (a scheduler that gives three processes a larger share of "
        "a contended core moves the first, not the second). Sidecars' CPU: cores they kept "
        "busy during the run.",
        "",
        f"Took {time.monotonic() - began:.0f} s; other processes kept {foreign:.2f} of "
        f"{os.cpu_count()} CPUs busy on average; Redis found down {found_down:.0f} times"
        + (" (those runs partly measured local fallback limits)" if found_down else "")
        + ".",
        "",
        "Every run:",
        "",
        listing(named),
        "",
        "Redis commands per request (medians): the round trips (evalsha, …) and, counted "
        "by Redis as well, what the scripts ran:",
        "",
        commands(named),
    ]
    return "\n".join(report), {**samples, **fleet_samples}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=Plan.reps, help="repetitions (default 3)")
    parser.add_argument("--json", type=Path, help="also write every run's numbers here")
    parser.add_argument("--keep", action="store_true", help="keep the work directory (logs)")
    args = parser.parse_args(argv)
    for tool in ("wrk", "redis-server"):
        if shutil.which(tool) is None:
            parser.error(f"{tool} is required (apt-get install {tool.removesuffix('-server')})")
    plan = dataclasses.replace(Plan(), reps=args.reps)

    def work(workdir: Path) -> str:
        report, samples = run(plan, workdir, say)
        if args.json:
            args.json.write_text(json.dumps(samples, indent=2))
        return report

    return run_reported(
        "modelpool-bench-shared-", work, keep=args.keep, failures=(RuntimeError, redis.RedisError)
    )


if __name__ == "__main__":
    sys.exit(main())
