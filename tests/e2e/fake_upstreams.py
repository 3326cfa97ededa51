"""`modelpool fake-upstream` processes for e2e tests: started together, stopped by PID."""

from __future__ import annotations

import signal
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from e2e_daemon import REPO, START_TIMEOUT, STOP_TIMEOUT, listening_url, modelpool_command


@dataclass
class Fake:
    """One `modelpool fake-upstream` process."""

    name: str
    process: subprocess.Popen[bytes]
    stdout: Path
    stderr: Path
    url: str = ""

    def output(self) -> str:
        out, err = self.stdout.read_text(), self.stderr.read_text()
        return f"--- {self.name} stdout\n{out}--- stderr\n{err}"


def start_fakes(directory: Path, count: int, fault: str = "ok") -> list[Fake]:
    """Start ``count`` fakes at once, then wait (bounded) for each one's listening line."""
    fakes = []
    for i in range(1, count + 1):
        stdout, stderr = directory / f"fake{i}.stdout", directory / f"fake{i}.stderr"
        args = ["fake-upstream", "--listen", "127.0.0.1:0", "--fault", fault]
        with stdout.open("wb") as out, stderr.open("wb") as err:
            process = subprocess.Popen(
                modelpool_command(*args), stdout=out, stderr=err, stdin=subprocess.DEVNULL, cwd=REPO
            )
        fakes.append(Fake(f"u{i}", process, stdout, stderr))
    deadline = time.monotonic() + START_TIMEOUT
    for fake in fakes:
        while not fake.url and time.monotonic() < deadline and fake.process.poll() is None:
            fake.url = listening_url(fake.stdout) or ""
            time.sleep(0.02)
        if not fake.url:
            stop_fakes(fakes, check=False)
            raise AssertionError(f"{fake.name} did not log 'listening'\n{fake.output()}")
    return fakes


def stop_fakes(fakes: Sequence[Fake], *, check: bool = True) -> None:
    """SIGTERM each fake by its PID; each must exit 0 (a stuck one is killed, by PID)."""
    for fake in fakes:
        if fake.process.poll() is None:
            fake.process.send_signal(signal.SIGTERM)
    failures = []
    for fake in fakes:
        try:
            code: int | None = fake.process.wait(timeout=STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            fake.process.kill()  # by PID: only a process this test started
            fake.process.wait(timeout=STOP_TIMEOUT)
            code = None
        if code != 0:
            failures.append(f"{fake.name} exited with {code} after SIGTERM\n{fake.output()}")
    assert not check or not failures, "\n".join(failures)
