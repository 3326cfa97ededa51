"""What a usage store keeps when its process dies: SIGKILL loses at most one flush interval,
SIGTERM (a graceful close) loses nothing.

The child is a small Python process (this venv's interpreter, no network) that adds one
record every ~2 ms to a SQLiteStore flushing every 0.2 s, and prints ``added N`` after each
add and ``flushed N`` after each completed flush, N being what it had added when that flush
began: everything up to N is then on disk.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from modelpool.usage.sqlite import read_report
from modelpool.usage.store import Query

pytestmark = pytest.mark.e2e

FLUSH_INTERVAL = 0.2
ADD_EVERY = 0.002
PER_INTERVAL = FLUSH_INTERVAL / ADD_EVERY
"""Records one flush interval holds at most (sleeps only ever run long)."""

CHILD = f"""
import asyncio, signal, sys, time
from modelpool.providers.translate.usage import Usage
from modelpool.usage.record import UsageRecord
from modelpool.usage.sqlite import SQLiteStore

async def main(path):
    store = SQLiteStore(path, flush_interval={FLUSH_INTERVAL})
    await store.open()
    added = 0
    flush = store.flush

    async def flush_and_tell():
        began_at = added
        await flush()
        print("flushed", began_at, flush=True)

    store.flush = flush_and_tell
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    while not stop.is_set():
        store.add(UsageRecord(time.time(), "c", "p", "m", "ok", Usage(3, 2), 0.001, True))
        added += 1
        print("added", added, flush=True)
        await asyncio.sleep({ADD_EVERY})
    await store.close()
    print("closed", added, flush=True)

asyncio.run(main(sys.argv[1]))
"""


def start_child(tmp_path: Path) -> tuple[subprocess.Popen[bytes], Path, Path]:
    db, out = tmp_path / "usage.db", tmp_path / "child.out"
    with out.open("wb") as stdout:
        child = subprocess.Popen(
            [sys.executable, "-c", CHILD, str(db)],
            stdout=stdout,
            stderr=subprocess.STDOUT,
            cwd=tmp_path,
        )
    return child, db, out


def counts(out: Path, word: str) -> list[int]:
    return [int(n) for n in re.findall(rf"^{word} (\d+)$", out.read_text(), re.MULTILINE)]


def wait_for_first_flush(child: subprocess.Popen[bytes], out: Path) -> None:
    deadline = time.monotonic() + 15
    while not counts(out, "flushed"):
        assert child.poll() is None, out.read_text()
        assert time.monotonic() < deadline, "the child never flushed"
        time.sleep(0.02)


def on_disk(db: Path) -> int:
    rows = read_report(db, Query(group_by=()))
    return rows[0].totals.requests if rows else 0


def stop(child: subprocess.Popen[bytes], signum: signal.Signals) -> int:
    try:
        os.kill(child.pid, signum)
        return child.wait(timeout=10)
    finally:
        if child.poll() is None:  # pragma: no cover - only when the child hangs
            os.kill(child.pid, signal.SIGKILL)
            child.wait(timeout=10)


def test_sigkill_loses_at_most_one_flush_interval(tmp_path: Path) -> None:
    child, db, out = start_child(tmp_path)
    wait_for_first_flush(child, out)
    time.sleep(1.5)
    assert stop(child, signal.SIGKILL) == -signal.SIGKILL

    flushed = counts(out, "flushed")
    added = max(counts(out, "added")) + 1  # it may have added one more than it printed
    kept = on_disk(db)
    assert len(flushed) >= 5, out.read_text()[-2000:]
    assert kept >= flushed[-1]  # every completed flush is on disk
    assert kept <= added  # and nothing is counted twice
    assert added - kept <= 1.5 * PER_INTERVAL, (added, kept, flushed[-3:])


def test_sigterm_closes_the_store_and_loses_nothing(tmp_path: Path) -> None:
    child, db, out = start_child(tmp_path)
    wait_for_first_flush(child, out)
    time.sleep(0.5)
    assert stop(child, signal.SIGTERM) == 0, out.read_text()[-2000:]

    closed = counts(out, "closed")
    assert closed == [max(counts(out, "added"))]
    assert on_disk(db) == closed[0]
