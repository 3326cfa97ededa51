"""The real daemon keeps its usage: SIGTERM flushes everything, kill -9 loses at most a
flush interval, a restart keeps counting where it stopped, and `modelpool usage` reads it."""

from __future__ import annotations

import json
import signal
import sqlite3
import time
import urllib.request
from pathlib import Path
from typing import Any

import openai
import pytest
from e2e_daemon import DaemonFactory, offline_example, run_cli, start_daemon

pytestmark = pytest.mark.e2e


def config_with_usage(directory: Path, flush: str) -> Path:
    path = offline_example(directory)
    text = path.read_text()
    path.write_text(text + f"\nusage:\n  store: usage.db\n  flush_interval: {flush}\n")
    return path


def chat(url: str, n: int) -> None:
    with openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0) as sdk:
        for _ in range(n):
            sdk.chat.completions.create(
                model="mock-small", messages=[{"role": "user", "content": "count me"}]
            )


def get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=10) as response:
        return json.load(response)


def requests_on_disk(db: Path) -> int:
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
        (count,) = conn.execute("SELECT COALESCE(SUM(requests), 0) FROM usage_buckets").fetchone()
    return int(count)


def test_sigterm_flushes_every_request_and_a_restart_adds_to_them(
    daemon_factory: DaemonFactory, tmp_path: Path
) -> None:
    config = config_with_usage(tmp_path, "30s")  # nothing flushes before the SIGTERM
    daemon = daemon_factory(config)
    chat(daemon.url, 25)
    assert daemon.stop(signal.SIGTERM) == 0
    assert requests_on_disk(tmp_path / "usage.db") == 25

    again = daemon_factory(config)
    chat(again.url, 5)
    report = get_json(f"{again.url}/admin/usage?by=model")
    assert report["rows"] == [report["rows"][0]]
    assert report["rows"][0]["model"] == "mock-small"
    assert report["rows"][0]["requests"] == 30
    assert again.stop(signal.SIGTERM) == 0

    result = run_cli("usage", "--store", str(tmp_path / "usage.db"), "--by", "model", "--json")
    assert result.returncode == 0, result.stderr
    [row] = json.loads(result.stdout)["rows"]
    assert (row["model"], row["requests"], row["errors"]) == ("mock-small", 30, 0)
    assert row["output_tokens"] > 0


def test_kill_9_loses_at_most_one_flush_interval(tmp_path: Path) -> None:
    config = config_with_usage(tmp_path, "200ms")
    daemon = start_daemon(config, tmp_path / "log")
    try:
        chat(daemon.url, 20)
        time.sleep(0.5)  # two flush intervals: all 20 must be on disk now
        chat(daemon.url, 3)  # these may be lost: they are inside the last interval
    finally:
        assert daemon.stop(signal.SIGKILL) == -signal.SIGKILL
    assert 20 <= requests_on_disk(tmp_path / "usage.db") <= 23


def test_a_usage_store_from_a_newer_modelpool_stops_startup_with_a_clear_error(
    tmp_path: Path,
) -> None:
    config = config_with_usage(tmp_path, "1s")
    with sqlite3.connect(tmp_path / "usage.db") as conn:
        conn.execute("PRAGMA user_version = 99")
    result = run_cli("run", str(config), "--listen", "127.0.0.1:0", timeout=20)
    assert result.returncode == 1
    assert "usage.db" in result.stderr
    assert "Traceback" not in result.stderr
