"""The real daemon speaks systemd's notify protocol over NOTIFY_SOCKET: READY once it
serves, RELOADING/READY around a SIGHUP reload, WATCHDOG pings at half WATCHDOG_USEC
with a status line, STOPPING on SIGTERM."""

from __future__ import annotations

import signal
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from e2e_daemon import offline_example, start_daemon

pytestmark = pytest.mark.e2e


@pytest.fixture
def notify_socket(tmp_path: Path) -> Iterator[tuple[socket.socket, str]]:
    path = str(tmp_path / "notify.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(0.1)
    try:
        yield sock, path
    finally:
        sock.close()


def collect(sock: socket.socket, until: str, within: float = 10.0) -> list[str]:
    """Datagrams received until one contains ``until`` (bounded)."""
    got: list[str] = []
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        try:
            got.append(sock.recv(4096).decode())
        except TimeoutError:
            continue
        if until in got[-1]:
            return got
    raise AssertionError(f"no {until!r} within {within}s; got {got}")


def test_ready_reloading_watchdog_stopping(
    notify_socket: tuple[socket.socket, str], tmp_path: Path
) -> None:
    sock, path = notify_socket
    config = offline_example(tmp_path)
    env = {"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "400000"}
    daemon = start_daemon(config, tmp_path / "log", env=env)
    try:
        ready = collect(sock, "READY=1")
        assert "STATUS=serving generation 1" in ready[-1]
        pings = collect(sock, "WATCHDOG=1")  # every 0.2 s
        pings += collect(sock, "WATCHDOG=1", within=1.0)
        assert all("STATUS=serving generation 1" in p for p in pings if "WATCHDOG=1" in p)

        config.write_text(config.read_text() + "\n# touched\n")
        daemon.process.send_signal(signal.SIGHUP)
        reload = collect(sock, "RELOADING=1")
        lines = dict(line.split("=", 1) for line in reload[-1].splitlines())
        assert abs(int(lines["MONOTONIC_USEC"]) - time.monotonic_ns() // 1000) < 5_000_000
        after = collect(sock, "READY=1")
        assert "STATUS=serving generation 2" in after[-1]

        daemon.send(signal.SIGTERM)
        stopping = collect(sock, "STOPPING=1")
        assert "draining 0 requests in flight" in stopping[-1]
    finally:
        assert daemon.stop() == 0
