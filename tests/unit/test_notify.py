"""sd_notify over a real datagram socket: the exact messages, the watchdog, and never raising.

Each test binds its own receiving socket (a file in tmp_path, or an abstract
one) and reads what the notifier sent, the way systemd would.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import re
import socket
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from modelpool.notify import Notifier

MONOTONIC = re.compile(rb"RELOADING=1\nMONOTONIC_USEC=(\d+)")


class Receiver:
    """The systemd side: a bound datagram socket and what arrived on it."""

    def __init__(self, sock: socket.socket, address: str) -> None:
        self.sock = sock
        self.address = address
        """As NOTIFY_SOCKET would name it."""

    def recv(self, timeout: float = 1.0) -> bytes:
        self.sock.settimeout(timeout)
        return self.sock.recv(4096)

    def pending(self) -> list[bytes]:
        self.sock.setblocking(False)
        messages: list[bytes] = []
        while True:
            try:
                messages.append(self.sock.recv(4096))
            except BlockingIOError:
                return messages

    def notifier(self, **environ: str) -> Notifier:
        return Notifier.from_environ({"NOTIFY_SOCKET": self.address, **environ}, pid=4242)


@pytest.fixture
def receiver(tmp_path: Path) -> Iterator[Receiver]:
    path = tmp_path / "notify.sock"
    assert len(str(path)) < 100, "AF_UNIX paths are limited to 108 bytes"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(path))
        yield Receiver(sock, str(path))


@pytest.fixture
def abstract_receiver() -> Iterator[Receiver]:
    name = f"modelpool-test-{uuid.uuid4().hex}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        yield Receiver(sock, "@" + name)


def test_ready_sends_ready_and_status(receiver: Receiver) -> None:
    receiver.notifier().ready("serving generation 1 on http://127.0.0.1:8787")
    assert receiver.recv() == b"READY=1\nSTATUS=serving generation 1 on http://127.0.0.1:8787"


def test_reloading_carries_the_monotonic_clock_in_microseconds(receiver: Receiver) -> None:
    before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    receiver.notifier().reloading()
    after = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    match = MONOTONIC.fullmatch(receiver.recv())
    assert match is not None
    assert before <= int(match[1]) <= after


def test_reloaded_stopping_and_status_messages(receiver: Receiver) -> None:
    notifier = receiver.notifier()
    notifier.reloaded("generation 2: reload applied")
    notifier.stopping("draining 3 in-flight requests")
    notifier.status("generation 2, 0 in flight")
    assert receiver.recv() == b"READY=1\nSTATUS=generation 2: reload applied"
    assert receiver.recv() == b"STOPPING=1\nSTATUS=draining 3 in-flight requests"
    assert receiver.recv() == b"STATUS=generation 2, 0 in flight"


def test_a_newline_in_a_status_cannot_inject_an_assignment(receiver: Receiver) -> None:
    receiver.notifier().status("reload rejected:\nREADY=1\r\nmore")
    assert receiver.recv() == b"STATUS=reload rejected: READY=1 more"


def test_an_abstract_socket_is_named_with_an_at_sign(abstract_receiver: Receiver) -> None:
    notifier = abstract_receiver.notifier()
    assert notifier.enabled
    notifier.ready("up")
    assert abstract_receiver.recv() == b"READY=1\nSTATUS=up"


def test_the_socket_is_created_once(receiver: Receiver, monkeypatch: pytest.MonkeyPatch) -> None:
    notifier = receiver.notifier()
    created: list[object] = []
    monkeypatch.setattr(socket, "socket", lambda *a, **k: created.append(a))
    notifier.status("one")
    notifier.status("two")
    assert created == []
    assert receiver.pending() == [b"STATUS=one", b"STATUS=two"]


def test_without_notify_socket_everything_is_a_no_op() -> None:
    notifier = Notifier.from_environ({"WATCHDOG_USEC": "200000"}, pid=4242)
    assert not notifier.enabled
    assert notifier.watchdog_interval() is None
    notifier.ready("up")
    notifier.reloading()
    notifier.reloaded("up")
    notifier.stopping("down")
    notifier.status("x")
    notifier.close()


@pytest.mark.parametrize("address", ["", "vsock:2:1234", "relative/path.sock"])
def test_an_unusable_notify_socket_disables_the_notifier(address: str) -> None:
    notifier = Notifier.from_environ({"NOTIFY_SOCKET": address}, pid=1)
    assert not notifier.enabled
    notifier.ready("up")


def test_watchdog_interval_is_half_the_timeout(receiver: Receiver) -> None:
    assert receiver.notifier(WATCHDOG_USEC="200000").watchdog_interval() == pytest.approx(0.1)
    assert receiver.notifier(WATCHDOG_USEC="30000000").watchdog_interval() == pytest.approx(15)


@pytest.mark.parametrize(
    "environ",
    [
        {},
        {"WATCHDOG_USEC": "200000", "WATCHDOG_PID": "999"},
        {"WATCHDOG_USEC": "200000", "WATCHDOG_PID": "not-a-pid"},
        {"WATCHDOG_USEC": "soon"},
        {"WATCHDOG_USEC": "0"},
    ],
    ids=["unset", "pid-mismatch", "pid-garbage", "usec-garbage", "usec-zero"],
)
def test_no_watchdog_unless_it_is_meant_for_us(receiver: Receiver, environ: dict[str, str]) -> None:
    assert receiver.notifier(**environ).watchdog_interval() is None


def test_watchdog_pid_equal_to_ours_keeps_the_watchdog(receiver: Receiver) -> None:
    notifier = receiver.notifier(WATCHDOG_USEC="200000", WATCHDOG_PID="4242")
    assert notifier.watchdog_interval() == pytest.approx(0.1)


def test_from_environ_defaults_to_the_process_environment(
    receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", receiver.address)
    monkeypatch.setenv("WATCHDOG_USEC", "200000")
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    notifier = Notifier.from_environ()
    assert notifier.watchdog_interval() == pytest.approx(0.1)
    notifier.status("hello")
    assert receiver.recv() == b"STATUS=hello"


async def test_watchdog_pings_every_half_interval_with_a_fresh_status(receiver: Receiver) -> None:
    notifier = receiver.notifier(WATCHDOG_USEC="200000")
    counter = itertools.count(1)
    stop = asyncio.Event()
    task = asyncio.create_task(notifier.run_watchdog(stop, lambda: f"generation {next(counter)}"))
    arrivals = [await _arrival(receiver) for _ in range(4)]
    stop.set()
    await asyncio.wait_for(task, timeout=0.05)
    messages = [message for _, message in arrivals]
    assert messages == [b"WATCHDOG=1\nSTATUS=generation %d" % n for n in (1, 2, 3, 4)]
    gaps = [b[0] - a[0] for a, b in itertools.pairwise(arrivals)]
    assert all(0.07 < gap < 0.3 for gap in gaps), gaps


async def test_watchdog_stops_promptly_and_sends_nothing_after(receiver: Receiver) -> None:
    notifier = receiver.notifier(WATCHDOG_USEC="200000")
    stop = asyncio.Event()
    task = asyncio.create_task(notifier.run_watchdog(stop, lambda: "ok"))
    assert (await _arrival(receiver))[1] == b"WATCHDOG=1\nSTATUS=ok"
    stop.set()
    await asyncio.wait_for(task, timeout=0.05)
    await asyncio.sleep(0.15)
    assert receiver.pending() == []


async def test_watchdog_pings_even_when_the_status_callback_fails(
    receiver: Receiver, caplog: pytest.LogCaptureFixture
) -> None:
    def broken() -> str:
        raise RuntimeError("boom")

    stop = asyncio.Event()
    task = asyncio.create_task(receiver.notifier(WATCHDOG_USEC="200000").run_watchdog(stop, broken))
    assert (await _arrival(receiver))[1] == b"WATCHDOG=1"
    stop.set()
    await task
    assert "watchdog status callback failed" in caplog.text


async def test_run_watchdog_returns_at_once_without_a_watchdog(receiver: Receiver) -> None:
    stop = asyncio.Event()
    await asyncio.wait_for(receiver.notifier().run_watchdog(stop, lambda: "x"), timeout=0.05)
    assert receiver.pending() == []


def test_a_missing_socket_does_not_raise_and_is_logged_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="modelpool.notify")
    notifier = Notifier.from_environ({"NOTIFY_SOCKET": str(tmp_path / "absent.sock")}, pid=1)
    assert notifier.enabled
    notifier.ready("up")
    notifier.reloading()
    notifier.stopping("down")
    failures = [r for r in caplog.records if r.name == "modelpool.notify"]
    assert len(failures) == 1
    assert failures[0].levelno == logging.DEBUG


def test_a_socket_closed_by_systemd_does_not_raise(tmp_path: Path) -> None:
    path = tmp_path / "gone.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(path))
        notifier = Notifier.from_environ({"NOTIFY_SOCKET": str(path)}, pid=1)
        notifier.status("before")
    notifier.status("after close")
    path.unlink()
    notifier.status("after unlink")


def test_a_closed_notifier_is_a_no_op(receiver: Receiver) -> None:
    notifier = receiver.notifier(WATCHDOG_USEC="200000")
    notifier.close()
    notifier.close()
    notifier.ready("up")
    assert not notifier.enabled
    assert notifier.watchdog_interval() is None
    assert receiver.pending() == []


def test_a_full_socket_never_blocks_the_caller(receiver: Receiver) -> None:
    notifier = receiver.notifier()
    started = time.monotonic()
    for n in range(500):
        notifier.status(f"message {n}")
    assert time.monotonic() - started < 0.5
    assert 0 < len(receiver.pending()) < 500


def test_a_socket_that_cannot_be_created_disables_the_notifier(
    receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    def refused(*args: object, **kwargs: object) -> socket.socket:
        raise PermissionError("address family not allowed")

    monkeypatch.setattr(socket, "socket", refused)
    notifier = receiver.notifier(WATCHDOG_USEC="200000")
    assert not notifier.enabled
    assert notifier.watchdog_interval() is None
    notifier.ready("up")


async def _arrival(receiver: Receiver) -> tuple[float, bytes]:
    """The next datagram and when it came, read without blocking the event loop."""
    loop = asyncio.get_running_loop()
    receiver.sock.setblocking(False)
    message = await asyncio.wait_for(loop.sock_recv(receiver.sock, 4096), timeout=1.0)
    return loop.time(), message
