"""A real ``redis-server`` per test, on 127.0.0.1 and a free port, that tests can kill.

The Redis usage store is tested against the real server, not a fake: what
matters (Lua atomicity, TTLs, a connection dropped mid-flush) is what a fake
would get wrong. Each server keeps nothing on disk (``--save ''``,
``--appendonly no``) in its own folder, so a ``kill()`` then ``restart()``
comes back empty on the same port, like a cache that lost its memory, and
``pause()`` (SIGSTOP) makes it hang, so that replies time out.

Registered for every test by ``tests/conftest.py``. When ``redis-server`` is
not installed the fixture fails (never skips) and says how to install it.
"""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

START_TIMEOUT = 10.0
"""Seconds a server gets to answer PING before the test fails."""
STOP_TIMEOUT = 5.0
"""Seconds a server gets to exit after SIGTERM before it is sent SIGKILL."""
INSTALL_HINT = (
    "redis-server is not installed (the Redis usage store tests run a real one): "
    "`sudo apt-get install redis-server` on Debian/Ubuntu, `brew install redis` on macOS"
)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def answers_ping(port: int) -> bool:
    """True when a Redis server answers on ``port`` (+PONG; -NOAUTH with requirepass)."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(64).startswith((b"+PONG", b"-NOAUTH"))
    except OSError:
        return False


class RedisServer:
    """One ``redis-server`` process; ``start`` waits until it answers PING."""

    def __init__(self, directory: Path, args: Sequence[str] = (), port: int | None = None) -> None:
        self.directory = directory
        self.args = tuple(args)
        """Extra server arguments, e.g. ``("--requirepass", "secret")``."""
        self.port = port or free_port()
        self._process: subprocess.Popen[bytes] | None = None
        self._starts = 0
        self._served = False
        """Whether it ever answered: from then on the port is fixed."""

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def start(self) -> None:
        """Start and wait for PING. A first start whose free port was taken meanwhile
        tries another port; a restart keeps its port (tests reconnect to it)."""
        binary = shutil.which("redis-server")
        if binary is None:
            pytest.fail(INSTALL_HINT)
        self.directory.mkdir(parents=True, exist_ok=True)
        for _ in range(3):
            log = self._spawn(binary)
            if self._ready():
                self._served = True
                return
            self.kill()
            if self._served or b"already in use" not in log.read_bytes():
                break
            self.port = free_port()
        pytest.fail(f"redis-server on port {self.port} did not start:\n{log.read_text()[-2000:]}")

    def _spawn(self, binary: str) -> Path:
        self._starts += 1
        log = self.directory / f"redis-{self._starts}.log"
        command = [binary, *self._options(), *self.args]
        with log.open("wb") as out:
            self._process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)
        return log

    def _options(self) -> list[str]:
        return [
            "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.directory),
            "--save", "", "--appendonly", "no", "--daemonize", "no", "--logfile", "",
        ]  # fmt: skip

    def _ready(self) -> bool:
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline and self.running:
            if answers_ping(self.port):
                return True
            time.sleep(0.01)
        return False

    def stop(self) -> None:
        """SIGTERM this server (by its own PID), wait, SIGKILL it if it lingers."""
        process = self._process
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGCONT)  # a paused server could not act on SIGTERM
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            self.kill()

    def kill(self) -> None:
        """SIGKILL: the server dies at once, without closing its connections cleanly."""
        process = self._process
        if process is None or process.poll() is not None:
            return
        process.kill()
        process.wait(STOP_TIMEOUT)

    def pause(self) -> None:
        """SIGSTOP: the server hangs (connections stay open, nothing answers) until resume."""
        if self._process is not None:
            self._process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        """SIGCONT: a paused server goes on with what it had read, replies and all."""
        if self._process is not None:
            self._process.send_signal(signal.SIGCONT)

    def restart(self) -> None:
        """Start again on the same port (empty: nothing was persisted)."""
        self.stop()
        self.start()


@pytest.fixture
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """A fresh, empty redis-server for one test; stopped after it, whatever happened."""
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    """``redis://127.0.0.1:PORT/0`` of this test's fresh server."""
    return redis_server.url
