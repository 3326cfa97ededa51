"""Processes the benchmark starts: launched pinned, tracked by PID, always stopped.

Every child runs in its own session (so a Ctrl-C in the terminal reaches only
the benchmark, which then stops its children in order) and is stopped by its
own PID — SIGTERM, then SIGKILL to its own process group if it lingers. Nothing
this module did not start is ever signalled.
"""

from __future__ import annotations

import contextlib
import http.client
import os
import resource
import signal
import socket
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType


@dataclass(frozen=True)
class CpuPlan:
    """Which core the proxy under test gets, and which the upstream and load generator share."""

    proxy: int | None
    load: int | None

    @property
    def pinned(self) -> bool:
        return self.proxy is not None

    def prefix(self, cpu: int | None) -> list[str]:
        """``taskset -c N`` when pinning, else nothing."""
        return ["taskset", "-c", str(cpu)] if cpu is not None else []


def cpu_plan() -> CpuPlan:
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        return CpuPlan(None, None)
    return CpuPlan(proxy=cpus[0], load=cpus[1])


class Processes:
    """Owns every process the benchmark starts; ``close()`` stops them all, newest first."""

    def __init__(self, logdir: Path) -> None:
        self._logdir = logdir
        self._running: list[subprocess.Popen[bytes]] = []

    def __enter__(self) -> Processes:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def start(self, name: str, argv: Sequence[str], *, env: dict[str, str] | None = None) -> Proc:
        log = self._logdir / f"{name}.log"
        with log.open("ab") as out:
            popen = subprocess.Popen(
                list(argv),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                env=env,
            )
        self._running.append(popen)
        return Proc(name, popen, log)

    def run(self, name: str, argv: Sequence[str], timeout: float) -> str:
        """Run a short-lived command to completion (bounded) and return its stdout."""
        popen = subprocess.Popen(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,
        )
        self._running.append(popen)
        try:
            out, err = popen.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.stop(popen)
            raise RuntimeError(f"{name} did not finish within {timeout:g}s") from None
        self._running.remove(popen)  # on any other exception close() still stops it
        if popen.returncode != 0:
            raise RuntimeError(f"{name} exited {popen.returncode}: {err.decode(errors='replace')}")
        return out.decode(errors="replace")

    def stop(self, popen: subprocess.Popen[bytes], grace: float = 5.0) -> None:
        if popen.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(popen.pid, signal.SIGTERM)
            try:
                popen.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                # start_new_session made the child the leader of a group of its own.
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(popen.pid, signal.SIGKILL)
                popen.wait(timeout=grace)
        with contextlib.suppress(ValueError):
            self._running.remove(popen)

    def running_pids(self) -> list[int]:
        return [p.pid for p in self._running if p.poll() is None]

    def close(self) -> None:
        for popen in reversed(list(self._running)):
            self.stop(popen)


@dataclass
class Proc:
    name: str
    popen: subprocess.Popen[bytes]
    log: Path

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def log_tail(self, lines: int = 20) -> str:
        try:
            text = self.log.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def wait_for_line(self, needle: str, timeout: float) -> str:
        """The first line of the log containing ``needle``, polled until ``timeout``."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError):
                for line in self.log.read_text(errors="replace").splitlines():
                    if needle in line:
                        return line
            if not self.alive():
                break
            time.sleep(0.005)
        raise RuntimeError(f"{self.name} never logged {needle!r}:\n{self.log_tail()}")


def memory_kib(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM (peak RSS) of ``pid`` from /proc, in KiB."""
    found: dict[str, int] = {}
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                found[key] = int(value.split()[0])
    return found


def preemptions(pid: int) -> int:
    """Times the kernel took the CPU away from ``pid``'s main thread while it could run."""
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("nonvoluntary_ctxt_switches:"):
                return int(line.split()[1])
    return 0


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def post_ok(port: int, path: str, body: bytes, timeout: float = 2.0) -> bool:
    """One blocking POST to loopback; True on a 200 answer, False on refusal or other status."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("POST", path, body=body, headers={"Content-Type": "application/json"})
        response = conn.getresponse()
        response.read()
        return response.status == 200
    except OSError:
        return False
    finally:
        conn.close()


def wait_first_served(
    proc: Proc, port: int, path: str, body: bytes, started: float, timeout: float
) -> float:
    """Seconds from ``started`` (a perf_counter reading) to the first 200 from ``proc``."""
    deadline = started + timeout
    while time.perf_counter() < deadline:
        if post_ok(port, path, body):
            return time.perf_counter() - started
        if not proc.alive():
            raise RuntimeError(f"{proc.name} exited during start:\n{proc.log_tail()}")
        time.sleep(0.002)
    raise RuntimeError(f"{proc.name} served nothing within {timeout:g}s:\n{proc.log_tail()}")


_TICK = os.sysconf("SC_CLK_TCK")


def machine_busy_s() -> float:
    """CPU seconds all CPUs spent busy since boot (user, nice, system, irq, softirq, steal)."""
    with open("/proc/stat") as stat:
        fields = stat.readline().split()
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(v) for v in fields[1:9])
    return (user + nice + system + irq + softirq + steal) / _TICK


def own_cpu_s(running: list[int]) -> float:
    """CPU seconds used by this process, its finished children and the running ``running``."""
    total = 0.0
    for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN):
        usage = resource.getrusage(who)
        total += usage.ru_utime + usage.ru_stime
    for pid in running:
        with contextlib.suppress(OSError):
            total += process_cpu_s(pid, children=True)
    return total


def process_cpu_s(pid: int, *, children: bool = False) -> float:
    """CPU seconds (user + system) ``pid`` used, with its reaped children's if ``children``."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    # After the command: state ppid ... utime(11) stime(12) cutime(13) cstime(14).
    return sum(int(v) for v in fields[11 : 15 if children else 13]) / _TICK


class NoiseMeter:
    """How much CPU other processes on the machine used while we measured."""

    def __init__(self, procs: Processes) -> None:
        self._procs = procs
        self._start = self._sample()

    def _sample(self) -> tuple[float, float, float]:
        return time.monotonic(), machine_busy_s(), own_cpu_s(self._procs.running_pids())

    def foreign_cpus(self) -> float:
        """Average number of CPUs kept busy by processes we did not start."""
        wall0, busy0, own0 = self._start
        wall1, busy1, own1 = self._sample()
        return max(0.0, ((busy1 - busy0) - (own1 - own0)) / max(wall1 - wall0, 1e-9))
