"""Reload latency: from a config write to the new table serving, in the real daemon.

    .venv/bin/python bench/reload_latency.py [--edits 20] [--keep]

Starts ``modelpool run`` on a config with the built-in mock provider (no
network, loopback only), then for each way of saving a file — in-place
write, temp file renamed over, a Kubernetes ``..data`` symlink swap — makes
``--edits`` edits that flip pool ``p`` between models ``a`` and ``b``. After
each write one keep-alive connection asks for ``p`` back to back until
``x-modelpool-model`` names the new model; the time from just before the
write to that answer is the latency. Edits are 0.3 s apart, so each is a
reload of its own. Prints median, p90 and max per pattern, and the median of
the reload pipeline itself (``duration_ms`` in the daemon's log line).
Everything started is stopped by PID, also on failure.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from procs import Processes, free_port

WAIT = 5.0
"""Give up on one edit after this long: a reload that never shows is a failure, not a number."""


def config_text(member: str) -> str:
    return (
        "version: 1\n"
        "providers:\n"
        "  mock: {type: mock}\n"
        "models:\n"
        "  a: {provider: mock}\n"
        "  b: {provider: mock}\n"
        "pools:\n"
        f"  p: {{members: [{member}]}}\n"
    )


def write_in_place(folder: Path, text: str) -> None:
    with (folder / "pools.yaml").open("w") as file:
        file.write(text)


def rename_over(folder: Path, text: str) -> None:
    temp = folder / ".pools.yaml.tmp"
    temp.write_text(text)
    os.replace(temp, folder / "pools.yaml")


class ConfigMap:
    """The kubelet's AtomicWriter: a new ``..<ts>/`` folder, ``..data`` renamed onto it."""

    def __init__(self) -> None:
        self.version = 0

    def __call__(self, folder: Path, text: str) -> None:
        self.version += 1
        payload = folder / f"..2026_01_01_00_00_00.{self.version:09d}"
        payload.mkdir()
        (payload / "pools.yaml").write_text(text)
        data = folder / "..data"
        old = os.readlink(data) if data.is_symlink() else None
        (folder / "..data_tmp").symlink_to(payload.name)
        os.rename(folder / "..data_tmp", data)
        if not (folder / "pools.yaml").is_symlink():
            (folder / "pools.yaml").symlink_to("..data/pools.yaml")
        if old is not None:
            shutil.rmtree(folder / old)


def served_by(conn: http.client.HTTPConnection) -> str | None:
    body = json.dumps({"model": "p", "messages": [{"role": "user", "content": "hi"}]})
    conn.request("POST", "/v1/chat/completions", body, {"Content-Type": "application/json"})
    response = conn.getresponse()
    response.read()
    return response.getheader("x-modelpool-model")


def measure(
    name: str, edit: Callable[[Path, str], None], edits: int, work: Path, procs: Processes
) -> tuple[list[float], list[float]]:
    """(write → served seconds, pipeline ms) for ``edits`` edits saved the ``name`` way."""
    folder = work / name
    folder.mkdir()
    if isinstance(edit, ConfigMap):
        edit(folder, config_text("a"))
    else:
        (folder / "pools.yaml").write_text(config_text("a"))
    port = free_port()
    daemon = procs.start(
        name,
        [sys.executable, "-m", "modelpool", "run", str(folder / "pools.yaml"),
         "--listen", f"127.0.0.1:{port}"],
    )  # fmt: skip
    daemon.wait_for_line('"listening"', timeout=15)
    time.sleep(0.3)  # let the watcher's start-up check pass
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    latencies: list[float] = []
    try:
        assert served_by(conn) == "a"
        for i in range(edits):
            member = "ab"[(i + 1) % 2]
            started = time.monotonic()
            edit(folder, config_text(member))
            while served_by(conn) != member:
                if time.monotonic() - started > WAIT:
                    raise RuntimeError(f"{name}: edit {i} not served within {WAIT}s")
            latencies.append(time.monotonic() - started)
            time.sleep(0.3)
    finally:
        conn.close()
        procs.stop(daemon.popen)
    pipeline = [
        float(entry["duration_ms"])
        for line in daemon.log.read_text().splitlines()
        if line.startswith("{")
        and (entry := json.loads(line)).get("msg", "").startswith("config reloaded")
    ]
    if len(pipeline) != edits:
        raise RuntimeError(f"{name}: {len(pipeline)} reloads logged for {edits} edits")
    return latencies, pipeline


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--edits", type=int, default=20)
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="modelpool-reload-"))
    patterns: dict[str, Callable[[Path, str], None]] = {
        "in_place": write_in_place,
        "rename_over": rename_over,
        "configmap_swap": ConfigMap(),
    }
    print("| pattern | edits | median ms | p90 ms | max ms | pipeline median ms |")
    print("|---|---|---|---|---|---|")
    try:
        with Processes(work) as procs:
            for name, edit in patterns.items():
                latencies, pipeline = measure(name, edit, args.edits, work, procs)
                ms = sorted(x * 1000 for x in latencies)
                p90 = ms[min(len(ms) - 1, int(0.9 * len(ms)))]
                print(
                    f"| {name} | {len(ms)} | {statistics.median(ms):.0f} | {p90:.0f} "
                    f"| {max(ms):.0f} | {statistics.median(pipeline):.1f} |"
                )
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
        else:
            print(f"work directory: {work}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
