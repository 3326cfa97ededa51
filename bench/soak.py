"""Memory soak: RSS of one modelpool process across a long run of mixed traffic.

    .venv/bin/python bench/soak.py [--requests 200000] [--concurrency 32] [--json out.json]

Starts bench/upstream.py and one ``modelpool run`` (pinned apart as bench/run.py
does) with a pool that fails over from a dead member to a live one, a streaming
pool, limits, a budget and prices; then sends ``--requests`` requests, a mix of
JSON chats through the failover (60 %), streams (25 %), streams the client
abandons after the first event (5 %), malformed bodies (5 %) and unknown pools
(5 %), while the config is reloaded every 5 s. RSS (VmRSS) is sampled at start,
after warm-up (the first 10 % of requests), every 10 % after that, and at the
end; the verdict is the growth from warm-up to the end. Everything started is
stopped by PID. Loopback only.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
import yaml
from procs import Processes, cpu_plan, free_port
from run import Settings, modelpool_executable, start_upstream

WARMUP = 0.10


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def config(port: int, upstream: int, dead: int, generation: int) -> dict[str, Any]:
    price = {"input_per_mtok": 1.0, "output_per_mtok": 2.0}
    return {
        "version": 1,
        "server": {"listen": f"127.0.0.1:{port}", "access_log": True},
        "providers": {
            "up": {"type": "openai_compatible", "base_url": f"http://127.0.0.1:{upstream}/v1"},
            "dead": {"type": "openai_compatible", "base_url": f"http://127.0.0.1:{dead}/v1"},
        },
        "models": {
            "live": {
                "provider": "up",
                "upstream_model": "bench-upstream",
                "price": price,
                "limits": {"rpm": 10_000_000, "tpm": 10_000_000_000},
            },
            "gone": {"provider": "dead", "upstream_model": "x", "price": price},
        },
        "pools": {
            "p": {
                "strategy": "priority",
                "members": ["gone", "live"],
                "description": f"generation {generation}",
                "budget": {"usd_per_day": 1e9},
            },
            "s": {"members": ["live"], "limits": {"max_concurrency": 1000}},
        },
        "usage": {"store": "usage.db"},
    }


async def one(http: aiohttp.ClientSession, url: str, rng: random.Random) -> str:
    roll = rng.random()
    chat = {"model": "p", "messages": [{"role": "user", "content": "soak " * rng.randint(1, 50)}]}
    if roll < 0.60:
        async with http.post(url, json=chat) as r:
            await r.read()
            return "json"
    if roll < 0.85:
        async with http.post(url, json=chat | {"model": "s", "stream": True}) as r:
            await r.read()
            return "stream"
    if roll < 0.90:
        async with http.post(url, json=chat | {"model": "s", "stream": True}) as r:
            await r.content.readany()
            r.close()  # the client goes away mid-stream
            return "abandoned"
    if roll < 0.95:
        async with http.post(url, data=b'{"model": "p", "messages": [') as r:
            await r.read()
            return "malformed"
    async with http.post(url, json=chat | {"model": f"nope-{rng.getrandbits(32)}"}) as r:
        await r.read()
        return "unknown pool"


async def drive(url: str, total: int, concurrency: int, on_progress: Any) -> dict[str, int]:
    rng = random.Random(7)
    counts: dict[str, int] = {}
    done = 0
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as http:

        async def worker() -> None:
            nonlocal done
            while done < total:
                done += 1
                mine = done
                kind = await one(http, url, rng)
                counts[kind] = counts.get(kind, 0) + 1
                if mine % max(1, total // 10) == 0:
                    on_progress(mine)

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return counts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=200_000)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    workdir = Path(tempfile.mkdtemp(prefix="modelpool-soak-"))
    cpus = cpu_plan()
    samples: list[tuple[str, int, float]] = []
    try:
        with Processes(workdir) as procs:
            upstream = start_upstream(procs, cpus, Settings(chunks=5, chunk_delay=0.0))
            port, dead = free_port(), free_port()
            path = workdir / "pools.yaml"
            path.write_text(yaml.safe_dump(config(port, upstream, dead, 0)))
            argv_ = [*cpus.prefix(cpus.proxy), str(modelpool_executable()), "run", str(path)]
            proc = procs.start("modelpool", argv_)
            proc.wait_for_line('"listening"', timeout=30)
            url = f"http://127.0.0.1:{port}/v1/chat/completions"
            samples.append(("start", 0, rss_mb(proc.pid)))
            began = time.monotonic()

            def progress(done: int) -> None:
                samples.append(("warm-up" if done <= args.requests * WARMUP else "run", done,
                                rss_mb(proc.pid)))  # fmt: skip
                print(f"[soak] {done:,} requests, RSS {samples[-1][2]:.1f} MB", file=sys.stderr)

            async def run() -> dict[str, int]:
                async def reload_forever() -> None:
                    generation = 0
                    while True:
                        await asyncio.sleep(5)
                        generation += 1
                        path.write_text(yaml.safe_dump(config(port, upstream, dead, generation)))

                reloader = asyncio.create_task(reload_forever())
                try:
                    return await drive(url, args.requests, args.concurrency, progress)
                finally:
                    reloader.cancel()

            counts = asyncio.run(run())
            seconds = time.monotonic() - began
            samples.append(("end", args.requests, rss_mb(proc.pid)))
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    warm = next(rss for label, _, rss in samples if label == "warm-up")
    end = samples[-1][2]
    print("| requests | mix | seconds | RSS start | after warm-up | end | growth |")
    print("|---|---|---|---|---|---|---|")
    mix = ", ".join(f"{k} {v:,}" for k, v in sorted(counts.items()))
    print(f"| {args.requests:,} | {mix} | {seconds:.0f} | {samples[0][2]:.1f} MB | {warm:.1f} MB "
          f"| {end:.1f} MB | {(end - warm) / warm * 100:+.1f}% |")  # fmt: skip
    print("\nEvery sample: " + ", ".join(f"{n:,}: {r:.1f} MB" for _, n, r in samples))
    if args.json:
        args.json.write_text(json.dumps({"samples": samples, "counts": counts}))
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
