"""Helpers that run the real `modelpool` CLI and daemon as subprocesses.

Each daemon is a subprocess of the test run: its stdout (JSON log lines) and
stderr go to files next to the test's tmp dir so a failure can be read after
the fact. Start-up waits, bounded, for the `listening` log line and takes the
URL from it; teardown sends SIGTERM, expects exit code 0, and kills only its
own PID when the process did not stop in time.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "examples" / "pools.yaml"
SHIPPED_OLLAMA_URL = "http://127.0.0.1:11434"
START_TIMEOUT = 10.0
STOP_TIMEOUT = 10.0


def modelpool_command(*args: str) -> list[str]:
    """The CLI as a user runs it, with this interpreter (the test venv)."""
    return [sys.executable, "-m", "modelpool", *args]


def run_cli(*args: str, timeout: float = 20.0) -> subprocess.CompletedProcess[str]:
    """Run a short-lived CLI command to completion and capture its output."""
    return subprocess.run(
        modelpool_command(*args),
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=REPO,
        check=False,
    )


def closed_port() -> int:
    """A loopback port that nothing listens on (bound, read, released)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def offline_example(directory: Path) -> Path:
    """A copy of examples/pools.yaml whose Ollama points at a closed port.

    The shipped file names the default Ollama port; a machine running Ollama
    there would serve the first member and hide the failover the tests expect.
    """
    text = EXAMPLE.read_text()
    assert text.count(SHIPPED_OLLAMA_URL) == 1, "examples/pools.yaml no longer names Ollama"
    copy = directory / "pools.yaml"
    copy.write_text(text.replace(SHIPPED_OLLAMA_URL, f"http://127.0.0.1:{closed_port()}"))
    return copy


@dataclass
class Daemon:
    """One running `modelpool run` process and where its output goes."""

    url: str
    process: subprocess.Popen[bytes]
    stdout_path: Path
    stderr_path: Path
    stopped: bool = field(default=False)
    signalled: bool = field(default=False)

    @property
    def v1(self) -> str:
        return f"{self.url}/v1"

    def log_lines(self) -> list[dict[str, Any]]:
        """Every stdout line, each parsed as the JSON object it must be."""
        return [json.loads(line) for line in self.stdout_path.read_text().splitlines() if line]

    def output(self) -> str:
        return (
            f"--- stdout ({self.stdout_path})\n{self.stdout_path.read_text()}"
            f"--- stderr ({self.stderr_path})\n{self.stderr_path.read_text()}"
        )

    def send(self, sig: signal.Signals) -> None:
        """Send ``sig`` once: a second SIGTERM during a drain is not what is tested."""
        if not self.signalled and self.process.poll() is None:
            self.process.send_signal(sig)
        self.signalled = True

    def stop(self, sig: signal.Signals = signal.SIGTERM) -> int:
        """Signal the daemon (unless already done), wait, return its exit code.

        A daemon that does not exit in time is killed, by its PID only.
        """
        if self.stopped:
            return self.process.returncode
        self.stopped = True
        self.send(sig)
        try:
            return self.process.wait(timeout=STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            self.process.kill()  # by PID: only the process this fixture started
            self.process.wait(timeout=STOP_TIMEOUT)
            raise AssertionError(
                f"daemon ignored {sig.name} for {STOP_TIMEOUT}s\n{self.output()}"
            ) from None


TEXT_LISTENING = re.compile(r" INFO modelpool: listening url=(?P<url>\S+)")
"""The `listening` line in `--log-format text`."""


def listening_url(stdout_path: Path) -> str | None:
    for line in stdout_path.read_text().splitlines():
        try:
            entry = json.loads(line)
        except json.JSONDecodeError:
            text = TEXT_LISTENING.search(line)
            if text is not None:
                return text["url"]
            continue
        if isinstance(entry, dict) and entry.get("msg") == "listening":
            url: str = entry["url"]
            return url
    return None


def start_daemon(
    config: Path, log_dir: Path, *extra: str, env: dict[str, str] | None = None
) -> Daemon:
    """Start `modelpool run CONFIG --listen 127.0.0.1:0` and wait until it listens.

    No --log-format unless ``extra`` says: the default must be one JSON object per line.
    """
    log_dir.mkdir(parents=True, exist_ok=True)
    stdout_path, stderr_path = log_dir / "daemon.stdout", log_dir / "daemon.stderr"
    args = ["run", str(config), "--listen", "127.0.0.1:0", *extra]
    with stdout_path.open("wb") as out, stderr_path.open("wb") as err:
        process = subprocess.Popen(
            modelpool_command(*args),
            stdout=out,
            stderr=err,
            stdin=subprocess.DEVNULL,
            cwd=REPO,
            env={**os.environ, **(env or {})},
        )
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        url = listening_url(stdout_path)
        if url is not None:
            return Daemon(url, process, stdout_path, stderr_path)
        if process.poll() is not None:
            break
        time.sleep(0.02)
    daemon = Daemon("", process, stdout_path, stderr_path)
    code = daemon.stop(signal.SIGKILL) if process.poll() is None else process.returncode
    raise AssertionError(f"daemon did not log 'listening' (exit {code})\n{daemon.output()}")


def finish(daemon: Daemon, sig: signal.Signals = signal.SIGTERM) -> None:
    """Stop the daemon and check it shut down cleanly and logged only JSON lines."""
    code = daemon.stop(sig)
    assert code == 0, f"daemon exited with {code} after {sig.name}\n{daemon.output()}"
    messages = [entry["msg"] for entry in daemon.log_lines()]
    assert "listening" in messages
    assert "stopping" in messages


DaemonFactory = Callable[..., Daemon]
