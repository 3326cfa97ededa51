"""`modelpool usage` as a subprocess, on stores the test filled through SQLiteStore."""

from __future__ import annotations

import asyncio
import csv
import io
import json
import subprocess
from datetime import UTC, datetime
from pathlib import Path

import pytest
from e2e_daemon import modelpool_command, run_cli

from modelpool.providers.translate.usage import Usage
from modelpool.usage.record import UsageRecord
from modelpool.usage.sqlite import SQLiteStore

pytestmark = pytest.mark.e2e

NOW = datetime(2024, 2, 1, 12, tzinfo=UTC).timestamp()
DAY = 86400.0

CONFIG = """\
version: 1
providers:
  mock:
    type: mock
models:
  m1:
    provider: mock
pools:
  chat:
    members: [m1]
usage:
  store: data/usage.db
"""


def record(at: float, client: str, model: str, cost: float) -> UsageRecord:
    return UsageRecord(at, client, "chat", model, "ok", Usage(100, 20), cost, True)


RECORDS = [
    record(NOW - DAY, "alice", "m1", 0.25),
    record(NOW, "alice", "m1", 0.5),
    record(NOW, "alice", "m2", 0.125),
    record(NOW + 3600, "bob", "m1", 1.0),
]


def new_store(path: Path) -> SQLiteStore:
    return SQLiteStore(path, flush_interval=3600, clock=lambda: NOW)


def fill(path: Path) -> Path:
    async def write() -> None:
        store = new_store(path)
        await store.open()
        for each in RECORDS:
            store.add(each)
        await store.close()

    path.parent.mkdir(parents=True, exist_ok=True)
    asyncio.run(write())
    return path


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return fill(tmp_path / "usage.db")


def usage_in(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        modelpool_command("usage", *args),
        capture_output=True,
        text=True,
        timeout=20,
        cwd=cwd,
        check=False,
    )


def test_json_report(db: Path) -> None:
    result = run_cli("usage", "--store", str(db), "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["group_by"] == ["client", "pool", "model", "day"]
    assert [(r["client"], r["model"], r["day"], r["requests"]) for r in report["rows"]] == [
        ("alice", "m1", "2024-01-31", 1),
        ("alice", "m1", "2024-02-01", 1),
        ("alice", "m2", "2024-02-01", 1),
        ("bob", "m1", "2024-02-01", 1),
    ]
    assert report["total"]["requests"] == 4
    assert report["total"]["cost_usd"] == 1.875
    assert report["total"]["tokens"] == 480


def test_filters_and_grouping(db: Path) -> None:
    result = run_cli(
        "usage", "--store", f"sqlite://{db}", "--since", "2024-02-01", "--by", "model", "--json"
    )
    assert result.returncode == 0, result.stderr
    rows = json.loads(result.stdout)["rows"]
    assert [(r["model"], r["requests"], r["cost_usd"]) for r in rows] == [
        ("m1", 2, 1.5),
        ("m2", 1, 0.125),
    ]
    hourly = run_cli(
        "usage", "--store", str(db), "--client", "alice", "--until", "2024-02-01T12:00Z",
        "--by", "hour", "--json",
    )  # fmt: skip
    assert [r["hour"] for r in json.loads(hourly.stdout)["rows"]] == ["2024-01-31T12:00Z"]


def test_csv_report(db: Path) -> None:
    result = run_cli("usage", "--store", str(db), "--csv", "--by", "client")
    assert result.returncode == 0, result.stderr
    table = list(csv.reader(io.StringIO(result.stdout)))
    assert table[0][:3] == ["client", "requests", "errors"]
    assert [(row[0], row[1]) for row in table[1:]] == [("alice", "3"), ("bob", "1")]


def test_table_report(db: Path) -> None:
    result = run_cli("usage", "--store", str(db), "--by", "client,day")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].split()[:3] == ["client", "day", "requests"]
    assert lines[-1].split()[:2] == ["TOTAL", "4"]
    assert "1.875000" in lines[-1]
    assert len({len(line) for line in lines}) == 1


def test_the_config_names_the_store(tmp_path: Path) -> None:
    config = tmp_path / "pools.yaml"
    config.write_text(CONFIG)
    fill(tmp_path / "data" / "usage.db")
    result = usage_in(tmp_path / "data", str(config), "--json", "--by", "")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["total"]["requests"] == 4


def test_usage_db_in_the_working_directory_is_the_default(db: Path, tmp_path: Path) -> None:
    result = usage_in(tmp_path, "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["total"]["requests"] == 4


def test_a_missing_store_is_one_clear_line(tmp_path: Path) -> None:
    result = usage_in(tmp_path)
    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr.count("\n") == 1
    assert "no usage.db in" in result.stderr
    named = usage_in(tmp_path, "--store", "gone.db")
    assert named.returncode == 1
    assert "no usage store at" in named.stderr


def test_an_unreadable_store_is_one_clear_line(tmp_path: Path) -> None:
    (tmp_path / "junk.db").write_text("not a database\n" * 200)
    result = usage_in(tmp_path, "--store", "junk.db")
    assert result.returncode == 1
    assert result.stderr.count("\n") == 1
    assert "cannot read usage store" in result.stderr
    assert "not a database" in result.stderr


def test_a_redis_store_is_refused(tmp_path: Path) -> None:
    result = usage_in(tmp_path, "--store", "redis://:secret@localhost:6379/0")
    assert result.returncode == 1
    assert "Redis" in result.stderr
    assert "secret" not in result.stderr


async def test_reads_while_the_daemon_holds_the_file(tmp_path: Path) -> None:
    """WAL: a read-only reader beside an open writer sees every flushed bucket."""
    path = tmp_path / "usage.db"
    store = new_store(path)
    await store.open()
    try:
        for each in RECORDS:
            store.add(each)
        await store.flush()
        store.add(record(NOW, "carol", "m1", 2.0))  # buffered: not in the file yet
        result = await asyncio.to_thread(usage_in, tmp_path, "--json", "--by", "")
        assert result.returncode == 0, result.stderr
        assert json.loads(result.stdout)["total"]["requests"] == 4
    finally:
        await store.close()
    assert json.loads(usage_in(tmp_path, "--json", "--by", "").stdout)["total"]["requests"] == 5


def test_a_config_that_keeps_no_usage_says_so(tmp_path: Path) -> None:
    config = tmp_path / "pools.yaml"
    config.write_text(CONFIG.replace("store: data/usage.db", "store: none"))
    result = usage_in(tmp_path, str(config))
    assert result.returncode == 1
    assert "keeps no usage (usage.store: none)" in result.stderr
