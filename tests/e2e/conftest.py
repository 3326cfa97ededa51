"""Fixtures that run the real `modelpool run` process on a free loopback port."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

# The integration suite's validating fake upstreams serve e2e tests too (threaded_fakes).
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "integration"))

from e2e_daemon import Daemon, DaemonFactory, finish, offline_example, start_daemon


@pytest.fixture
def daemon_factory(tmp_path: Path) -> Iterator[DaemonFactory]:
    """Start daemons for one test; each one still running is stopped with SIGTERM after it."""
    started: list[Daemon] = []

    def start(config: Path, *extra: str) -> Daemon:
        daemon = start_daemon(config, tmp_path / f"daemon-{len(started)}", *extra)
        started.append(daemon)
        return daemon

    yield start
    failures: list[str] = []
    for daemon in started:
        try:
            finish(daemon)
        except AssertionError as exc:
            failures.append(str(exc))
    assert not failures, "\n".join(failures)


@pytest.fixture(scope="module")
def offline_config(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """examples/pools.yaml with its Ollama moved to a closed port (see offline_example)."""
    return offline_example(tmp_path_factory.mktemp("config"))


@pytest.fixture(scope="module")
def daemon(offline_config: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    """One daemon on the offline example, shared by a module's non-interfering tests."""
    running = start_daemon(offline_config, tmp_path_factory.mktemp("daemon"))
    try:
        yield running
    finally:
        finish(running)
