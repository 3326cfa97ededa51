"""modelpool against other proxies, each on one pinned core in front of the same upstream.

    .venv/bin/python bench/compare.py [--quick] [--only modelpool,nginx] [--json out.json]

Starts bench/upstream.py (fixed chat completion; 20-event SSE streams), then
each selected row — the upstream called directly, nginx as a plain reverse
proxy, a bare aiohttp + uvloop passthrough (bench/passthrough.py), modelpool,
LiteLLM's proxy and Portkey's gateway — each pinned to the proxy core, with
the upstream, wrk and the streaming client on the other core. Measures every
row in turn, interleaved, ``--reps`` times: closed-loop throughput, unloaded
latency, latency at 200 and 500 requests per second, streaming time to first
event and to the end, CPU per request, peak RSS and start-up time. Prints two
markdown tables (medians; ratios against this run's direct and nginx rows)
and every single run. LiteLLM and Portkey are installed once into a cache
directory (see competitors.py); a row that cannot be installed or started is
reported with the reason and the rest still runs.

Everything listens and talks on 127.0.0.1 only; every process started is
stopped by PID, also on Ctrl-C. After the reps, a paired phase runs every
row's closed loop back to back, round after round, and reports modelpool's
throughput ÷ each row's within each round: the machine's drift cancels out of
those ratios. A full run takes about 9.5 minutes, ``--quick`` about 2 (plus,
once, the installs). See bench/README.md for the columns.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import hashlib
import json
import math
import os
import platform
import shutil
import sys
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol
from urllib.parse import urlsplit

import loadgen
from competitors import (
    DirectLauncher,
    LiteLLMLauncher,
    ModelpoolRow,
    NginxLauncher,
    PassthroughLauncher,
    PortkeyLauncher,
    Proxy,
    Say,
    describe_versions,
    post,
)
from procs import NoiseMeter, Processes, cpu_plan, preemptions, process_cpu_s
from run import (
    POOL,
    Env,
    Samples,
    Settings,
    chat_body,
    median,
    modelpool_executable,
    run_reported,
    runs,
    runs_by_key,
    start_upstream,
)


@dataclass(frozen=True)
class CompareSettings(Settings):
    throughput_s: float = 6.0
    unloaded_s: float = 3.0
    rates: tuple[float, ...] = (200.0, 500.0)
    rate_s: float = 4.0
    stream_s: float = 4.0
    warmup_s: float = 2.0
    paired_rounds: int = 5
    paired_s: float = 3.0


QUICK = CompareSettings(
    reps=1,
    starts=1,
    throughput_s=2.0,
    unloaded_s=1.0,
    rate_s=2.0,
    stream_s=1.5,
    warmup_s=1.0,
    paired_rounds=2,
    paired_s=1.0,
)


class Launcher(Protocol):
    name: str
    key: str

    def launch(self, env: Env, say: Say) -> Proxy: ...


def launchers(install_timeout: float) -> list[Launcher]:
    """Every row, in table order; ``--only`` selects by ``key``."""
    return [
        DirectLauncher(),
        NginxLauncher(),
        PassthroughLauncher(),
        ModelpoolRow(modelpool_executable()),
        LiteLLMLauncher(install_timeout),
        PortkeyLauncher(install_timeout),
    ]


# --- the process tree of a row (nginx has a master and a worker) --------------------------


def tree(pid: int) -> list[int]:
    """``pid`` and all its living descendants."""
    children: dict[int, list[int]] = defaultdict(list)
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as stat:
                ppid = int(stat.read().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        children[ppid].append(int(entry))
    found = [pid]
    for each in found:  # grows while iterating: breadth first
        found.extend(children.get(each, []))
    return found


def _status_kib(pid: int, key: str) -> int:
    with contextlib.suppress(OSError), open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    return 0


def tree_cpu_s(target: Proxy) -> float:
    if target.proc is None:
        return math.nan
    total = 0.0
    for pid in tree(target.proc.pid):
        with contextlib.suppress(OSError):
            total += process_cpu_s(pid)
    return total


def tree_preemptions(target: Proxy) -> float:
    if target.proc is None:
        return math.nan
    total = 0
    for pid in tree(target.proc.pid):
        with contextlib.suppress(OSError):
            total += preemptions(pid)
    return float(total)


def tree_peak_rss_mb(target: Proxy) -> float | None:
    """Sum of the peak RSS (VmHWM) of the row's processes, in MB."""
    if target.proc is None:
        return None
    return sum(_status_kib(pid, "VmHWM") for pid in tree(target.proc.pid)) / 1024


# --- load with per-row headers -------------------------------------------------------------


def _lua_string(value: str) -> str:
    return f" [==[{value}]==] "  # spaced: "t[[==[" would open a long string, not index t


def wrk(
    env: Env,
    target: Proxy,
    body: bytes,
    connections: int,
    duration: float,
    rate: float | None = None,
) -> loadgen.WrkResult:
    """loadgen.wrk's script and summary, plus the row's own headers (which win)."""
    pacing = loadgen.WRK_PACING.format(rate=rate) if rate else ""
    script_text = loadgen.WRK_SCRIPT.format(body=body.decode(), pacing=pacing) + "".join(
        f"wrk.headers[{_lua_string(k)}] = {_lua_string(v)}\n" for k, v in target.headers.items()
    )
    script = env.workdir / f"wrk-{hashlib.sha1(script_text.encode()).hexdigest()[:12]}.lua"
    if not script.exists():
        script.write_text(script_text)
    argv = [
        *env.cpus.prefix(env.cpus.load),
        "wrk",
        "-t1",
        f"-c{connections}",
        f"-d{max(1, round(duration))}s",
        *("--timeout", "5s", "-s", str(script)),
        target.url(),
    ]
    out = env.procs.run("wrk", argv, timeout=duration + 30)
    line = next((ln for ln in out.splitlines() if ln.startswith("WRKJSON ")), None)
    if line is None and " 0 requests in " in out:  # nothing answered in time: no latencies
        return loadgen.WrkResult(0.0, math.nan, math.nan, math.nan, 0, 0)
    if line is None:
        raise RuntimeError(f"wrk printed no summary:\n{out}")
    raw: dict[str, int] = json.loads(line.removeprefix("WRKJSON "))
    return loadgen.WrkResult(
        rps=raw["requests"] / (raw["duration_us"] / 1e6),
        p50_ms=raw["p50_us"] / 1000,
        p99_ms=raw["p99_us"] / 1000,
        max_ms=raw["max_us"] / 1000,
        requests=raw["requests"],
        errors=sum(raw[k] for k in ("connect", "read", "write", "status", "timeout")),
        non2xx=raw["status"],
    )


class HeaderSse(loadgen.SseConnection):
    """loadgen's raw-socket SSE connection with extra request headers (which win)."""

    def __init__(self, host: str, port: int, path: str, body: bytes, headers: dict[str, str]):
        super().__init__(host, port, path, body)
        if not headers:
            return
        head, _, rest = self._request.partition(b"\r\n\r\n")
        names = {k.lower().encode() for k in headers}
        lines = [ln for ln in head.split(b"\r\n") if ln.split(b":", 1)[0].lower() not in names]
        lines += [f"{k}: {v}".encode() for k, v in headers.items()]
        self._request = b"\r\n".join(lines) + b"\r\n\r\n" + rest


async def _streams(target: Proxy, body: bytes, concurrency: int, duration: float) -> list[float]:
    """[ttfb p50, ttfb p99, total p50, total p99 (ms), streams, failed streams]."""
    parts = urlsplit(target.url())
    connections = [
        HeaderSse("127.0.0.1", target.port, parts.path, body, target.headers)
        for _ in range(concurrency)
    ]
    ttfbs: list[float] = []
    totals: list[float] = []
    failed = 0

    async def client(connection: HeaderSse, until: float, record: bool) -> None:
        nonlocal failed
        while True:
            try:
                ttfb, total = await connection.stream()
            except (OSError, loadgen.StreamError):
                if record:
                    failed += 1
                await asyncio.sleep(0.01)  # a refusing proxy is not spun on
            else:
                if record:
                    ttfbs.append(ttfb)
                    totals.append(total)
            if time.perf_counter() >= until:
                return

    try:
        await asyncio.gather(*(client(c, 0.0, record=False) for c in connections))  # warm
        until = time.perf_counter() + duration
        await asyncio.gather(*(client(c, until, record=True) for c in connections))
    finally:
        for connection in connections:
            await connection.close()
    pct = loadgen.percentile
    return [
        pct(ttfbs, 50) * 1000,
        pct(ttfbs, 99) * 1000,
        pct(totals, 50) * 1000,
        pct(totals, 99) * 1000,
        float(len(totals)),
        float(failed),
    ]


def streams(target: Proxy, concurrency: int, duration: float) -> list[float]:
    import uvloop

    async def bounded() -> list[float]:
        async with asyncio.timeout(duration + 60):
            return await _streams(target, chat_body(POOL, True), concurrency, duration)

    return uvloop.run(bounded())


# --- one repetition -----------------------------------------------------------------------


def _others_cpu(targets: Sequence[Proxy], current: Proxy) -> float:
    return sum(tree_cpu_s(t) for t in targets if t is not current and t.proc is not None)


def settle(target: Proxy, limit: float = 30.0) -> float:
    """Wait until the row is idle (< 5 % of a core over 100 ms); return the seconds waited.

    A slow proxy is still working off requests that wrk abandoned when its previous
    run ended; measuring the next thing before that backlog is gone would charge it
    to the wrong column.
    """
    if target.proc is None:
        return 0.0
    began = time.monotonic()
    before = tree_cpu_s(target)
    while time.monotonic() - began < limit:
        time.sleep(0.1)
        now = tree_cpu_s(target)
        if now - before < 0.005:
            break
        before = now
    return time.monotonic() - began


def measure_once(env: Env, target: Proxy, others: Sequence[Proxy], into: Samples) -> None:
    """Every measurement against ``target`` once, appended to ``into``."""
    s = env.settings
    assert isinstance(s, CompareSettings)
    body = chat_body(POOL, False)
    values: dict[str, float] = {}
    errors = 0
    waited = settle(target)
    began, others0 = time.monotonic(), _others_cpu(others, target)

    cpu0 = tree_cpu_s(target)
    closed = wrk(env, target, body, s.connections, s.throughput_s)
    cpu1 = tree_cpu_s(target)
    values |= {
        "rps": closed.rps,
        "cpu_us_per_req": (cpu1 - cpu0) / max(closed.requests, 1) * 1e6,
        "sat_p50": closed.p50_ms,
        "sat_p99": closed.p99_ms,
    }
    errors += closed.errors

    waited += settle(target)
    pre = tree_preemptions(target)
    unloaded = wrk(env, target, body, 1, s.unloaded_s)
    values |= {
        "idle_p50": unloaded.p50_ms,
        "idle_p99": unloaded.p99_ms,
        "idle_preempted": tree_preemptions(target) - pre,
    }
    errors += unloaded.errors

    for rate in s.rates:
        waited += settle(target)
        pre = tree_preemptions(target)
        paced = wrk(env, target, body, s.rate_connections, s.rate_s, rate)
        tag = f"rate{rate:g}"
        values |= {
            f"{tag}_p50": paced.p50_ms,
            f"{tag}_p99": paced.p99_ms,
            f"{tag}_achieved": paced.rps,
            f"{tag}_preempted": tree_preemptions(target) - pre,
        }
        errors += paced.errors

    waited += settle(target)
    ttfb50, ttfb99, total50, total99, count, failed = streams(
        target, s.stream_concurrency, s.stream_s
    )
    values |= {
        "ttfb_p50": ttfb50,
        "ttfb_p99": ttfb99,
        "total_p50": total50,
        "total_p99": total99,
        "streams": count,
        "errors": float(errors) + failed,
        "settle_s": waited,
        # CPU the other (idle) rows used meanwhile, in % of one core: they share the core.
        "others_cpu_pct": (_others_cpu(others, target) - others0)
        / max(time.monotonic() - began, 1e-9)
        * 100,
    }
    for key, value in values.items():
        into.setdefault(key, []).append(value)


def warm_up(env: Env, target: Proxy, say: Say) -> None:
    """Requests one by one (must answer 200), then a short closed loop and a few streams."""
    s = env.settings
    body = chat_body(POOL, False)
    for _ in range(20):
        status, answer = post(target.port, target.headers)
        if status != 200:
            raise RuntimeError(f"warm-up request answered {status}: {answer[:300]!r}")
    closed = wrk(env, target, body, s.connections, s.warmup_s)
    if closed.non2xx or closed.errors:
        say(f"WARNING {target.name} warm-up: {closed.errors} errors ({closed.non2xx} non-2xx)")
    *_, count, failed = streams(target, 4, s.warmup_s)
    if failed or not count:
        say(f"WARNING {target.name} warm-up: {failed:.0f} of {count + failed:.0f} streams failed")


# --- the report ---------------------------------------------------------------------------


@dataclass
class Row:
    name: str
    key: str
    samples: Samples
    rss_peak_mb: float | None
    start_s: list[float]
    failure: str | None = None

    def m(self, key: str) -> float:
        return median(self.samples.get(key, []))


def _fmt(value: float, digits: int = 2) -> str:
    return "–" if math.isnan(value) else f"{value:,.{digits}f}"


def _latency(row: Row, prefix: str, rate: float | None = None) -> str:
    cell = f"{_fmt(row.m(prefix + '_p50'))} / {_fmt(row.m(prefix + '_p99'))}"
    if rate is not None:
        achieved = row.m(prefix + "_achieved")
        if achieved < 0.95 * rate:
            cell += f" (held {achieved:,.0f} rps)"
    return cell


def absolute_table(rows: list[Row], s: CompareSettings) -> str:
    header = [
        "target",
        f"max rps ({s.connections} conn)",
        "CPU per request (µs)",
        "p50 / p99, 1 conn (ms)",
        *(f"p50 / p99 @ {rate:g} rps (ms)" for rate in s.rates),
        f"stream TTFB p50 / p99, c={s.stream_concurrency} (ms)",
        "stream total p50 (ms)",
        "peak RSS (MB)",
        "start → first 200 (s)",
        "errors",
    ]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        if row.failure is not None:
            cells = [row.name, "**not run** (see below)"] + ["–"] * (len(header) - 2)
        else:
            cells = [
                row.name,
                _fmt(row.m("rps"), 0),
                _fmt(row.m("cpu_us_per_req"), 0),
                _latency(row, "idle"),
                *(_latency(row, f"rate{rate:g}", rate) for rate in s.rates),
                _latency(row, "ttfb"),
                _fmt(row.m("total_p50"), 1),
                _fmt(row.rss_peak_mb, 1) if row.rss_peak_mb is not None else "–",
                _fmt(median(row.start_s)) if row.start_s else "–",
                f"{sum(row.samples.get('errors', [])):.0f}",
            ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _ratio(row: Row, base: Row | None, key: str) -> str:
    if base is None or base.failure is not None:
        return "–"
    a, b = row.m(key), base.m(key)
    if math.isnan(a) or math.isnan(b) or b == 0:
        return "–"
    value = a / b
    return f"{value:.3f}×" if value < 0.1 else f"{value:.2f}×"


def ratio_table(rows: list[Row], s: CompareSettings) -> str:
    direct = next((r for r in rows if r.key == "direct"), None)
    nginx = next((r for r in rows if r.key == "nginx"), None)
    columns = [
        ("max rps", "rps", True),
        ("p50, 1 conn", "idle_p50", True),
        *((f"p50 @ {rate:g} rps", f"rate{rate:g}_p50", True) for rate in s.rates),
        ("stream TTFB p50", "ttfb_p50", True),
        ("CPU per request", "cpu_us_per_req", False),
    ]
    header = ["target", *(f"{title} ÷ direct / ÷ nginx" for title, _, both in columns if both)]
    header += [f"{title} ÷ nginx" for title, _, both in columns if not both]
    header.append("peak RSS ÷ nginx")
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        if row.failure is not None:
            continue
        cells = [row.name]
        cells += [
            f"{_ratio(row, direct, key)} / {_ratio(row, nginx, key)}"
            for _, key, both in columns
            if both
        ]
        cells += [_ratio(row, nginx, key) for _, key, both in columns if not both]
        rss = "–"
        if nginx and nginx.rss_peak_mb and row.rss_peak_mb is not None:
            rss = f"{row.rss_peak_mb / nginx.rss_peak_mb:.1f}×"
        cells.append(rss)
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def paired_table(rows: list[Row], s: CompareSettings) -> str:
    """modelpool's throughput ÷ each row's, round by round (see measure_paired)."""
    ours = next((r for r in rows if r.key == "modelpool" and r.failure is None), None)
    head = (
        f"Throughput, paired: {s.paired_rounds} rounds, each running every row back to back "
        f"for {s.paired_s:g} s × {s.connections} conn; modelpool ÷ row within each round."
    )
    if ours is None or not ours.samples.get("paired_rps"):
        return head + " (modelpool did not run)"
    lines = [
        head,
        "",
        "| row | rps per round | modelpool ÷ row, rps | median | CPU µs per request per round "
        "| row ÷ modelpool, CPU | median |",
        "|---|---|---|---|---|---|---|",
    ]
    mine, my_cpu = ours.samples["paired_rps"], ours.samples.get("paired_cpu_us", [])
    for row in rows:
        theirs = row.samples.get("paired_rps", [])
        if row.failure is not None or len(theirs) != len(mine):
            continue
        cpu = row.samples.get("paired_cpu_us", [])
        cells = [runs(theirs)]
        cells += _paired_ratios(mine, theirs) if row is not ours else ["", ""]
        cells.append(runs(cpu))
        cells += _paired_ratios(cpu, my_cpu) if row is not ours else ["", ""]
        lines.append(f"| {row.name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _paired_ratios(top: list[float], bottom: list[float]) -> list[str]:
    """Round-by-round ``top ÷ bottom`` and their median, as two cells."""
    if len(top) != len(bottom) or any(math.isnan(v) for v in (*top, *bottom)):
        return ["–", "–"]
    ratios = [a / b if b else math.nan for a, b in zip(top, bottom, strict=True)]
    return [" / ".join(f"{v:.2f}" for v in ratios), f"**{median(ratios):.2f}×**"]


def per_run_table(rows: list[Row], s: CompareSettings) -> str:
    keys = ["rps", "cpu_us_per_req", "sat_p99", "idle_p50", "idle_p99", "idle_preempted"]
    for rate in s.rates:
        keys += [f"rate{rate:g}_{k}" for k in ("p50", "p99", "achieved", "preempted")]
    keys += ["ttfb_p50", "ttfb_p99", "total_p50", "streams", "others_cpu_pct", "settle_s"]
    keys += ["errors"]
    return runs_by_key([(r.name, r.samples) for r in rows if r.failure is None], keys)


def _describe(s: CompareSettings, pinned: str) -> str:
    rates = " and ".join(f"{r:g}" for r in s.rates)
    return (
        f"{pinned}; closed loop {s.throughput_s:g} s × {s.connections} conn (wrk), unloaded "
        f"{s.unloaded_s:g} s × 1 conn, paced {rates} rps × {s.rate_s:g} s over "
        f"{s.rate_connections} conn (wrk + Lua pacing), SSE {s.stream_concurrency} × "
        f"{s.stream_s:g} s of {s.chunks} events {s.chunk_delay * 1000:g} ms apart"
    )


# --- main ---------------------------------------------------------------------------------


def launch_all(env: Env, chosen: list[Launcher], say: Say) -> tuple[list[Proxy], dict[str, str]]:
    """Start and warm every row; a row that fails is kept out with its reason."""
    started: list[Proxy] = []
    failed: dict[str, str] = {}
    for launcher in chosen:
        say(f"starting {launcher.name}")
        try:
            target = launcher.launch(env, say)
            target.name = launcher.name
            warm_up(env, target, say)
        except Exception as exc:  # noqa: BLE001 - any failure only takes this row out
            failed[launcher.name] = str(exc).strip() or repr(exc)
            say(f"{launcher.name}: NOT RUN: {failed[launcher.name].splitlines()[0]}")
            continue
        extra = f", start-up {median(target.start_s):.2f} s" if target.start_s else ""
        say(f"{launcher.name}: port {target.port}{extra}")
        started.append(target)
    return started, failed


def measure_all(
    env: Env, targets: list[Proxy], failed: dict[str, str], say: Say
) -> dict[str, Samples]:
    samples: dict[str, Samples] = {t.name: {} for t in targets}
    reps = env.settings.reps
    for rep in range(reps):
        for target in targets:  # interleaved: drifting machine load hits every row alike
            if target.name in failed:
                continue
            say(f"rep {rep + 1}/{reps}: {target.name}")
            try:
                measure_once(env, target, targets, samples[target.name])
            except (RuntimeError, OSError, TimeoutError) as exc:
                failed[target.name] = f"failed during rep {rep + 1}: {exc}"
            if target.proc is not None and not target.proc.alive():
                failed[target.name] = f"exited during rep {rep + 1}:\n{target.proc.log_tail(12)}"
            if target.name in failed:
                say(f"{target.name}: {failed[target.name].splitlines()[0]}")
    return samples


def measure_paired(
    env: Env, targets: list[Proxy], failed: dict[str, str], samples: dict[str, Samples], say: Say
) -> None:
    """Closed-loop throughput of every row back to back, round after round.

    The machine's speed drifts over minutes (other tenants of the host), which
    moves the reps' throughput by ±25 %; within one round the rows run seconds
    apart, so the ratio of two rows in the same round is what their code makes
    of the same machine. Appends ``paired_rps`` per round to each row's samples.
    """
    s = env.settings
    assert isinstance(s, CompareSettings)
    body = chat_body(POOL, False)
    for round_ in range(s.paired_rounds):
        say(f"paired throughput, round {round_ + 1}/{s.paired_rounds}")
        for target in targets:
            if target.name in failed:
                continue
            settle(target)
            cpu0 = tree_cpu_s(target)
            try:
                closed = wrk(env, target, body, s.connections, s.paired_s)
            except (RuntimeError, OSError, TimeoutError) as exc:
                failed[target.name] = f"failed during paired round {round_ + 1}: {exc}"
                continue
            cpu_us = (tree_cpu_s(target) - cpu0) / max(closed.requests, 1) * 1e6
            row = samples[target.name]
            row.setdefault("paired_rps", []).append(closed.rps)
            row.setdefault("paired_cpu_us", []).append(cpu_us if target.proc else math.nan)


def run(
    settings: CompareSettings, only: set[str] | None, workdir: Path, args: argparse.Namespace
) -> str:
    say: Say = _say
    cpus = cpu_plan()
    chosen = [ln for ln in launchers(args.install_timeout) if only is None or ln.key in only]
    began = time.monotonic()
    with Processes(workdir) as procs:
        if cpus.load is not None:
            os.sched_setaffinity(0, {cpus.load})  # this process drives the streaming load
            pinned = f"proxies pinned to cpu {cpus.proxy}, upstream and load on cpu {cpus.load}"
        else:
            pinned = "NOT pinned (fewer than 2 CPUs)"
        say(pinned)
        env = Env(procs, workdir, cpus, settings, start_upstream(procs, cpus, settings))
        targets, failed = launch_all(env, chosen, say)
        noise = NoiseMeter(procs)
        samples = measure_all(env, targets, failed, say)
        measure_paired(env, targets, failed, samples, say)
        foreign = noise.foreign_cpus()
        by_name = {t.name: t for t in targets}
        rows = [
            Row(
                ln.name,
                ln.key,
                samples.get(ln.name, {}),
                tree_peak_rss_mb(by_name[ln.name]) if ln.name in by_name else None,
                by_name[ln.name].start_s if ln.name in by_name else [],
                failed.get(ln.name),
            )
            for ln in chosen
        ]
        versions = describe_versions(env, {r.key for r in rows if r.failure is None})
        _write_json(workdir / "results.json", settings, foreign, rows, versions)
    return _report(rows, settings, pinned, foreign, versions, time.monotonic() - began)


def _report(
    rows: list[Row],
    settings: CompareSettings,
    pinned: str,
    foreign: float,
    versions: dict[str, str],
    took: float,
) -> str:
    import aiohttp

    what = [
        f"Python {platform.python_version()}",
        f"aiohttp {aiohttp.__version__}",
        *(f"{k} {v}" for k, v in versions.items()),
    ]
    out = [
        absolute_table(rows, settings),
        "",
        "Ratios (medians ÷ the same run's direct and nginx medians; latency ratios "
        "above 1 are slower):",
        "",
        ratio_table(rows, settings),
        "",
        paired_table(rows, settings),
        "",
        f"Medians of {settings.reps} interleaved run(s); {_describe(settings, pinned)}. "
        f"{', '.join(what)}. Took {took:.0f} s. Other processes on the machine kept "
        f"{foreign:.2f} of {os.cpu_count()} CPUs busy on average while this measured.",
    ]
    for row in rows:
        if row.failure is not None:
            out += ["", f"**{row.name} not run**:", "", "```", row.failure, "```"]
    if any(r.failure is None for r in rows):
        out += [
            "",
            "Every run (ms unless named; *_preempted: times the kernel took the row's CPU "
            "away; others_cpu_pct: CPU the other, idle rows used on the shared core meanwhile):",
            "",
            per_run_table(rows, settings),
        ]
    return "\n".join(out)


def _write_json(
    path: Path,
    settings: CompareSettings,
    foreign: float,
    rows: list[Row],
    versions: dict[str, str],
) -> None:
    results = {
        "settings": dataclasses.asdict(settings),
        "foreign_cpus": foreign,
        "versions": versions,
        "rows": {
            r.name: {
                "samples": {
                    k: [None if math.isnan(v) else v for v in vs] for k, vs in r.samples.items()
                },
                "rss_peak_mb": r.rss_peak_mb,
                "start_s": r.start_s,
                "failure": r.failure,
            }
            for r in rows
        },
    }
    path.write_text(json.dumps(results, indent=2))


def _say(message: str) -> None:
    print(f"[compare] {message}", file=sys.stderr, flush=True)


KEYS = ("direct", "nginx", "passthrough", "modelpool", "litellm", "portkey")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1 repetition, short runs (~1.5 min)")
    parser.add_argument("--only", help=f"comma-separated rows to run, of: {','.join(KEYS)}")
    parser.add_argument("--reps", type=int, help="repetitions (default 3; --quick 1)")
    parser.add_argument("--json", type=Path, help="also write the raw results here")
    parser.add_argument("--keep", action="store_true", help="keep the work directory (logs)")
    parser.add_argument(
        "--install-timeout", type=float, default=900, help="seconds for one pip/npm install"
    )
    args = parser.parse_args(argv)
    settings = QUICK if args.quick else CompareSettings()
    if args.reps:
        settings = dataclasses.replace(settings, reps=args.reps, starts=min(args.reps, 3))
    only = None
    if args.only:
        only = {k.strip().lower() for k in args.only.split(",") if k.strip()}
        if unknown := only - set(KEYS):
            parser.error(f"unknown rows {sorted(unknown)}; choose from {','.join(KEYS)}")
    if shutil.which("wrk") is None:
        parser.error("wrk is required (apt-get install wrk)")

    def work(workdir: Path) -> str:
        report = run(settings, only, workdir, args)
        if args.json:
            shutil.copy(workdir / "results.json", args.json)
        return report

    return run_reported("modelpool-compare-", work, keep=args.keep, tell=_say)


if __name__ == "__main__":
    sys.exit(main())
