"""Benchmark modelpool against the same upstream called directly.

    .venv/bin/python bench/run.py [--quick] [--json out.json] [--profile 8]

Starts bench/upstream.py (a fast OpenAI-compatible server), the targets
(the upstream itself, then ``modelpool run`` pinned to its own core), and
measures each, interleaved, ``--reps`` times: closed-loop throughput with wrk,
unloaded latency (wrk, one connection), latency at a fixed request rate
(wrk, Lua-paced), and SSE time-to-first-byte / total time (raw sockets).
Prints a markdown table of medians with ratios and overheads against the
direct row. Everything runs on loopback and everything started is stopped
by PID, also on Ctrl-C.

See bench/README.md for how to read the table.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import shutil
import signal
import statistics
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Protocol

import loadgen
from procs import (
    CpuPlan,
    NoiseMeter,
    Proc,
    Processes,
    cpu_plan,
    free_port,
    memory_kib,
    post_ok,
    preemptions,
    process_cpu_s,
    wait_first_served,
)

HERE = Path(__file__).resolve().parent
CHAT_PATH = "/v1/chat/completions"
POOL = "bench"


@dataclass(frozen=True)
class Settings:
    reps: int = 3
    connections: int = 64
    throughput_s: float = 10.0
    unloaded_s: float = 3.0
    rate: float = 500.0
    rate_s: float = 5.0
    rate_connections: int = 32
    stream_concurrency: int = 16
    stream_s: float = 4.0
    warmup_s: float = 2.0
    starts: int = 3
    chunks: int = 20
    chunk_delay: float = 0.005


QUICK = Settings(throughput_s=2.0, unloaded_s=1.0, rate_s=2.0, stream_s=1.5, warmup_s=1.0)


def chat_body(model: str, stream: bool) -> bytes:
    body = {
        "model": model,
        "messages": [
            {"role": "system", "content": "You are a terse assistant."},
            {"role": "user", "content": "Say hello in one short sentence."},
        ],
        "max_tokens": 32,
        "temperature": 0,
        "stream": stream,
    }
    return json.dumps(body, separators=(",", ":")).encode()


@dataclass
class Target:
    """Something that answers OpenAI chat calls on a loopback port."""

    name: str
    port: int
    proc: Proc | None = None  # the process whose memory is reported
    start_s: list[float] = field(default_factory=list)

    def url(self, path: str = CHAT_PATH) -> str:
        return f"http://127.0.0.1:{self.port}{path}"


@dataclass(frozen=True)
class Env:
    procs: Processes
    workdir: Path
    cpus: CpuPlan
    settings: Settings
    upstream_port: int


class Launcher(Protocol):
    """Starts one target. Issue 10 adds nginx, LiteLLM and Portkey as more launchers."""

    name: str

    def launch(self, env: Env) -> Target: ...


class DirectLauncher:
    name = "upstream direct"

    def launch(self, env: Env) -> Target:
        return Target(self.name, env.upstream_port)


MODELPOOL_CONFIG = """\
version: 1
server:
  listen: 127.0.0.1:{port}
providers:
  bench-upstream:
    type: openai_compatible
    base_url: http://127.0.0.1:{upstream}/v1
    max_connections: 128
models:
  bench-json:
    provider: bench-upstream
    upstream_model: bench-upstream
    capabilities: [chat, completions, stream]
    context_window: 32768
    price: {{input_per_mtok: 0.10, output_per_mtok: 0.40}}
pools:
  {pool}:
    members: [bench-json]
"""


class ModelpoolLauncher:
    name = "modelpool"

    def __init__(self, executable: Path) -> None:
        self.executable = executable

    def launch(self, env: Env) -> Target:
        """Start ``settings.starts`` times to time start-up; keep the last process running."""
        samples: list[float] = []
        starts = max(1, env.settings.starts)
        for attempt in range(starts):
            port = free_port()
            config = env.workdir / "modelpool.yaml"
            config.write_text(
                MODELPOOL_CONFIG.format(port=port, upstream=env.upstream_port, pool=POOL)
            )
            argv = [
                *env.cpus.prefix(env.cpus.proxy),
                str(self.executable),
                "run",
                str(config),
                "--listen",
                f"127.0.0.1:{port}",
            ]
            started = time.perf_counter()
            proc = env.procs.start("modelpool", argv)
            samples.append(
                wait_first_served(proc, port, CHAT_PATH, chat_body(POOL, False), started, 30)
            )
            if attempt < starts - 1:
                env.procs.stop(proc.popen)
        return Target(self.name, port, proc, samples)


# --- measuring ---------------------------------------------------------------------------

Samples = dict[str, list[float]]


def _counters(target: Target) -> tuple[float, float]:
    """(CPU seconds, preemptions) of the target's process so far; NaN without one."""
    if target.proc is None:
        return math.nan, math.nan
    return process_cpu_s(target.proc.pid), float(preemptions(target.proc.pid))


def measure_once(env: Env, target: Target, into: Samples) -> None:
    """One repetition of every measurement against ``target``, appended to ``into``."""
    s = env.settings
    body = chat_body(POOL, False)

    def wrk(connections: int, duration: float, rate: float | None = None) -> loadgen.WrkResult:
        return loadgen.wrk(
            env.procs,
            target.url(),
            body,
            connections=connections,
            duration=duration,
            workdir=env.workdir,
            cpu_prefix=env.cpus.prefix(env.cpus.load),
            rate=rate,
        )

    c0 = _counters(target)
    closed = wrk(s.connections, s.throughput_s)
    c1 = _counters(target)
    unloaded = wrk(1, s.unloaded_s)
    c2 = _counters(target)
    paced = wrk(s.rate_connections, s.rate_s, s.rate)
    c3 = _counters(target)
    stream = loadgen.streams(
        target.url(),
        chat_body(POOL, True),
        concurrency=s.stream_concurrency,
        duration=s.stream_s,
    )
    c4 = _counters(target)
    values = {
        "rps": closed.rps,
        "cpu_us_per_req": (c1[0] - c0[0]) / max(closed.requests, 1) * 1e6,
        "sat_p50": closed.p50_ms,
        "sat_p99": closed.p99_ms,
        "idle_p50": unloaded.p50_ms,
        "idle_p99": unloaded.p99_ms,
        "idle_max": unloaded.max_ms,
        "idle_preempted": c2[1] - c1[1],
        "rate_p50": paced.p50_ms,
        "rate_p99": paced.p99_ms,
        "rate_achieved": paced.rps,
        "rate_preempted": c3[1] - c2[1],
        "ttfb_p50": stream.ttfb_p50_ms,
        "ttfb_p99": stream.ttfb_p99_ms,
        "total_p50": stream.total_p50_ms,
        "total_p99": stream.total_p99_ms,
        "streams": float(stream.streams),
        "stream_preempted": c4[1] - c3[1],
        "errors": float(closed.errors + unloaded.errors + paced.errors + stream.errors),
    }
    for key, value in values.items():
        into.setdefault(key, []).append(value)


def warm_up(env: Env, target: Target) -> None:
    if not post_ok(target.port, CHAT_PATH, chat_body(POOL, False)):
        raise RuntimeError(f"{target.name}: the check request did not answer 200")
    loadgen.wrk(
        env.procs,
        target.url(),
        chat_body(POOL, False),
        connections=env.settings.connections,
        duration=env.settings.warmup_s,
        workdir=env.workdir,
        cpu_prefix=env.cpus.prefix(env.cpus.load),
    )
    loadgen.streams(
        target.url(), chat_body(POOL, True), concurrency=4, duration=env.settings.warmup_s
    )


# --- reporting ---------------------------------------------------------------------------


def median(values: Sequence[float]) -> float:
    finite = [v for v in values if not math.isnan(v)]
    return statistics.median(finite) if finite else math.nan


@dataclass
class Row:
    name: str
    samples: Samples
    rss_peak_mb: float | None
    rss_idle_mb: float | None
    start_s: list[float]

    def m(self, key: str) -> float:
        return median(self.samples.get(key, []))


def _pair(row: Row, base: Row, p50: str, p99: str) -> str:
    a, b = row.m(p50), row.m(p99)
    cell = f"{a:.2f} / {b:.2f}"
    if row is base:
        return cell
    return f"{cell} ({a - base.m(p50):+.2f} / {b - base.m(p99):+.2f})"


def _single(row: Row, base: Row, key: str) -> str:
    value = row.m(key)
    return f"{value:.1f}" if row is base else f"{value:.1f} ({value - base.m(key):+.1f})"


def _finite(value: float, fmt: str) -> str:
    return "–" if math.isnan(value) else fmt.format(value)


def table(rows: list[Row], settings: Settings) -> str:
    base = rows[0]
    s = settings
    header = [
        "target",
        f"max rps ({s.connections} conn)",
        "proxy CPU per request (µs)",
        "latency p50 / p99, 1 conn (ms)",
        f"latency p50 / p99 @ {s.rate:g} rps (ms)",
        f"stream TTFB p50 / p99, c={s.stream_concurrency} (ms)",
        "stream total p50 (ms)",
        "peak RSS (MB)",
        "start → first 200 (s)",
        "errors",
    ]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        rps = row.m("rps")
        rps_cell = f"{rps:,.0f}" if row is base else f"{rps:,.0f} ({rps / base.m('rps'):.3f}×)"
        cells = [
            row.name,
            rps_cell,
            _finite(row.m("cpu_us_per_req"), "{:.0f}"),
            _pair(row, base, "idle_p50", "idle_p99"),
            _pair(row, base, "rate_p50", "rate_p99"),
            _pair(row, base, "ttfb_p50", "ttfb_p99"),
            _single(row, base, "total_p50"),
            f"{row.rss_peak_mb:.1f}" if row.rss_peak_mb is not None else "–",
            f"{median(row.start_s):.2f}" if row.start_s else "–",
            f"{sum(row.samples.get('errors', [])):.0f}",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def spread(rows: list[Row]) -> str:
    keys = [
        "rps",
        "cpu_us_per_req",
        "sat_p99",
        "idle_p50",
        "idle_p99",
        "idle_preempted",
        "rate_p50",
        "rate_p99",
        "rate_achieved",
        "rate_preempted",
        "ttfb_p50",
        "ttfb_p99",
        "total_p50",
        "stream_preempted",
    ]
    return runs_by_key([(row.name, row.samples) for row in rows], keys)


def number(value: float) -> str:
    """A figure for a table cell: grouped from 100 up, 3 significant digits below."""
    if math.isnan(value):
        return "–"
    return f"{value:,.0f}" if abs(value) >= 100 else f"{value:.3g}"


def runs(values: Sequence[float]) -> str:
    """Every run of one figure, as one cell: ``a / b / c``."""
    return " / ".join(number(v) for v in values) or "–"


def runs_by_key(columns: Sequence[tuple[str, Samples]], keys: Sequence[str]) -> str:
    """Every single run as a markdown table: a line per figure, a column per row."""
    lines = [
        "| per run | " + " | ".join(name for name, _ in columns) + " |",
        "|" + "---|" * (len(columns) + 1),
    ]
    for key in keys:
        cells = [runs(samples.get(key, [])) for _, samples in columns]
        lines.append(f"| {key} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def runs_by_row(rows: Sequence[tuple[str, Samples]], keys: Sequence[str]) -> str:
    """Every single run as a markdown table: a line per row, a column per figure."""
    lines = ["| per run | " + " | ".join(keys) + " |", "|" + "---|" * (len(keys) + 1)]
    for name, samples in rows:
        lines.append(f"| {name} | " + " | ".join(runs(samples.get(k, [])) for k in keys) + " |")
    return "\n".join(lines)


# --- profiling ---------------------------------------------------------------------------


def profile(env: Env, target: Target, seconds: float) -> str:
    """py-spy samples of ``target`` under closed-loop load: self and inclusive top frames."""
    spy = shutil.which("py-spy", path=str(Path(sys.executable).parent)) or shutil.which("py-spy")
    if spy is None or target.proc is None:
        return "(py-spy not found: `pip install py-spy` into the venv to profile)"
    raw = env.workdir / "profile.txt"
    sampler = env.procs.start(
        "py-spy",
        [
            spy,
            "record",
            *("-p", str(target.proc.pid), "-d", f"{seconds:g}", "-r", "250"),
            *("--format", "raw", "-o", str(raw)),
        ],
    )
    time.sleep(0.5)
    loadgen.wrk(
        env.procs,
        target.url(),
        chat_body(POOL, False),
        connections=env.settings.connections,
        duration=seconds,
        workdir=env.workdir,
        cpu_prefix=env.cpus.prefix(env.cpus.load),
    )
    sampler.popen.wait(timeout=seconds + 30)
    return summarize_profile(raw.read_text())


def _frame_name(frame: str) -> str:
    """``handle (aiohttp/web_protocol.py:123)`` → ``aiohttp/web_protocol.py:handle``."""
    name, _, where = frame.partition(" (")
    path = where.rstrip(")").rsplit(":", 1)[0]
    for marker in ("site-packages/", "/daemon/", "lib/python3"):
        if marker in path:
            path = path.split(marker, 1)[1]
            break
    return f"{path}:{name}"


COMPONENTS = (
    ("asyncio/runners.py:", "event loop internals (uvloop C code: epoll, socket I/O, callbacks)"),
    ("modelpool/", "modelpool"),
    ("aiohttp/client", "aiohttp client"),
    ("aiohttp/connector", "aiohttp client"),
    ("aiohttp/tracing", "aiohttp client"),
    ("aiohappyeyeballs/", "aiohttp client"),
    ("aiohttp/", "aiohttp server and shared HTTP code"),
    ("asyncio/", "asyncio (timeouts, tasks) and contextlib"),
    ("contextlib", "asyncio (timeouts, tasks) and contextlib"),
)


def _component(frame: str) -> str:
    return next((name for prefix, name in COMPONENTS if frame.startswith(prefix)), "other")


def summarize_profile(collapsed: str, top: int = 15) -> str:
    """Tables of self time by component and by frame, and inclusive time of modelpool frames."""
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    total = 0
    for line in collapsed.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [_frame_name(f) for f in stack.split(";")]
        total += count
        own[frames[-1]] += count
        for name in set(frames):
            inclusive[name] += count
    if not total:
        return "(no samples)"
    by_component: Counter[str] = Counter()
    for frame, n in own.items():
        by_component[_component(frame)] += n
    out = [f"{total} samples of the busy event loop.", "", "| self % | component |", "|---|---|"]
    out += [f"| {n / total:.1%} | {name} |" for name, n in by_component.most_common()]
    out += ["", "| self % | frame |", "|---|---|"]
    out += [f"| {n / total:.1%} | `{name}` |" for name, n in own.most_common(top)]
    out += ["", "| inclusive % | modelpool frame |", "|---|---|"]
    mine = [
        (k, v)
        for k, v in inclusive.most_common()
        if k.startswith("modelpool/") and not k.startswith("modelpool/cli.py")
    ]
    out += [f"| {n / total:.1%} | `{name}` |" for name, n in mine[:top]]
    return "\n".join(out)


# --- main --------------------------------------------------------------------------------


def _raise_interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def say(message: str) -> None:
    """A progress line on stderr (the report goes to stdout)."""
    print(f"[bench] {message}", file=sys.stderr, flush=True)


def run_reported(
    prefix: str,
    work: Callable[[Path], str],
    *,
    keep: bool = False,
    failures: tuple[type[Exception], ...] = (RuntimeError,),
    tell: Callable[[str], None] = say,
) -> int:
    """Run ``work`` in a fresh work directory and print the report it returns.

    SIGTERM and Ctrl-C end it with 130 (whatever it started is stopped by then);
    one of ``failures`` is told, keeps the directory's logs and ends it with 1.
    The directory is removed otherwise, unless ``keep``.
    """
    signal.signal(signal.SIGTERM, _raise_interrupt)
    signal.signal(signal.SIGINT, signal.default_int_handler)  # even if started with it ignored
    workdir = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        report = work(workdir)
    except KeyboardInterrupt:
        tell("interrupted; every started process was stopped")
        return 130
    except failures as exc:
        tell(f"failed: {exc}")
        keep = True
        return 1
    finally:
        if keep:
            tell(f"logs kept in {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    print(report)
    return 0


def start_upstream(procs: Processes, cpus: CpuPlan, settings: Settings) -> int:
    argv = [
        *cpus.prefix(cpus.load),
        sys.executable,
        str(HERE / "upstream.py"),
        "--port",
        "0",
        "--chunks",
        str(settings.chunks),
        "--chunk-delay",
        str(settings.chunk_delay),
    ]
    proc = procs.start("upstream", argv)
    line = proc.wait_for_line('"listening"', timeout=15)
    return int(json.loads(line)["listening"].rsplit(":", 1)[1])


def modelpool_executable() -> Path:
    beside = Path(sys.executable).parent / "modelpool"
    found = beside if beside.exists() else shutil.which("modelpool")
    if found is None:
        raise SystemExit("modelpool is not installed in this environment (pip install -e .)")
    return Path(found)


def run(settings: Settings, workdir: Path, profile_s: float, say: Callable[[str], None]) -> str:
    """Start everything, measure, stop everything; return the markdown report."""
    cpus = cpu_plan()
    launchers: list[Launcher] = [DirectLauncher(), ModelpoolLauncher(modelpool_executable())]
    began = time.monotonic()
    with Processes(workdir) as procs:
        if cpus.load is not None:
            os.sched_setaffinity(0, {cpus.load})  # this process drives the streaming load
            say(f"pinning: proxy on cpu {cpus.proxy}; upstream and load on cpu {cpus.load}")
        else:
            say("WARNING: fewer than 2 CPUs available; nothing is pinned")
        env = Env(procs, workdir, cpus, settings, start_upstream(procs, cpus, settings))
        targets = [launcher.launch(env) for launcher in launchers]
        for target in targets:
            extra = f", start-up {median(target.start_s):.2f}s" if target.start_s else ""
            say(f"{target.name}: port {target.port}{extra}; warming up")
            warm_up(env, target)
        rss_idle = {t.name: memory_kib(t.proc.pid)["VmRSS"] / 1024 for t in targets if t.proc}
        samples: dict[str, Samples] = {t.name: {} for t in targets}
        noise = NoiseMeter(procs)
        for rep in range(settings.reps):
            for target in targets:  # interleaved, so drifting machine load hits every target
                say(f"rep {rep + 1}/{settings.reps}: {target.name}")
                measure_once(env, target, samples[target.name])
        foreign = noise.foreign_cpus()
        rows = [
            Row(
                t.name,
                samples[t.name],
                memory_kib(t.proc.pid)["VmHWM"] / 1024 if t.proc else None,
                rss_idle.get(t.name),
                t.start_s,
            )
            for t in targets
        ]
        report = [
            table(rows, settings),
            "",
            f"Medians of {settings.reps} interleaved runs; {_describe_settings(settings, cpus)}. "
            f"Took {time.monotonic() - began:.0f} s. Other processes on the machine kept "
            f"{foreign:.2f} of {os.cpu_count()} CPUs busy on average while this measured.",
            "",
            "Every run (latencies in ms; sat_p99: p99 during the closed-loop run; *_preempted: "
            "times the kernel took the proxy's CPU away during that measurement):",
            "",
            spread(rows),
        ]
        if profile_s > 0:
            say(f"profiling modelpool for {profile_s:g}s with py-spy")
            report += ["", "py-spy, closed-loop load through modelpool:", ""]
            report.append(profile(env, targets[-1], profile_s))
        _write_results(workdir / "results.json", settings, foreign, rows)
        return "\n".join(report)


def _write_results(path: Path, settings: Settings, foreign: float, rows: list[Row]) -> None:
    results = {
        "settings": dataclasses.asdict(settings),
        "foreign_cpus": foreign,
        "targets": {
            r.name: {
                "samples": {
                    k: [None if math.isnan(v) else v for v in vs] for k, vs in r.samples.items()
                },
                "rss_peak_mb": r.rss_peak_mb,
                "rss_idle_mb": r.rss_idle_mb,
                "start_s": r.start_s,
            }
            for r in rows
        },
    }
    path.write_text(json.dumps(results, indent=2))


def _describe_settings(s: Settings, cpus: CpuPlan) -> str:
    pinned = (
        f"proxy pinned to cpu {cpus.proxy}, upstream and load on cpu {cpus.load}"
        if cpus.pinned
        else "unpinned"
    )
    return (
        f"{pinned}; closed loop {s.throughput_s:g} s × {s.connections} conn (wrk), "
        f"unloaded {s.unloaded_s:g} s × 1 conn (wrk), paced {s.rate:g} rps × {s.rate_s:g} s "
        f"over {s.rate_connections} conn (wrk + Lua pacing), SSE streams "
        f"{s.stream_concurrency} × {s.stream_s:g} s of {s.chunks} events "
        f"{s.chunk_delay * 1000:g} ms apart (raw-socket client)"
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Benchmark modelpool against its upstream.")
    parser.add_argument("--quick", action="store_true", help="short runs (< 1 min in all)")
    parser.add_argument("--reps", type=int, help="repetitions of each measurement (default 3)")
    parser.add_argument("--rate", type=float, help="paced request rate (default 500)")
    parser.add_argument("--json", type=Path, help="also write the raw results here")
    parser.add_argument(
        "--profile", type=float, default=0, metavar="S", help="py-spy modelpool for S seconds"
    )
    parser.add_argument("--keep", action="store_true", help="keep the work directory (logs)")
    args = parser.parse_args(argv)
    settings = QUICK if args.quick else Settings()
    if args.reps:
        settings = dataclasses.replace(settings, reps=args.reps)
    if args.rate:
        settings = dataclasses.replace(settings, rate=args.rate)
    if shutil.which("wrk") is None:
        parser.error("wrk is required (apt-get install wrk)")

    def work(workdir: Path) -> str:
        report = run(settings, workdir, args.profile, say)
        if args.json:
            shutil.copy(workdir / "results.json", args.json)
        return report

    return run_reported("modelpool-bench-", work, keep=args.keep)


if __name__ == "__main__":
    sys.exit(main())
