"""The systemd notification protocol (sd_notify), spoken directly.

systemd hands a ``Type=notify`` service the address of a datagram socket in
``NOTIFY_SOCKET`` (a filesystem path, or ``@name`` for an abstract socket) and
reads newline-separated ``KEY=value`` assignments from it: ``READY=1`` once
serving, ``RELOADING=1`` + ``MONOTONIC_USEC`` when a reload starts and
``READY=1`` when it ends (the ``Type=notify-reload`` protocol of systemd ≥ 253;
older versions accept the same messages), ``STOPPING=1`` when draining,
``STATUS=`` for ``systemctl status``, and ``WATCHDOG=1`` pings at least every
``WATCHDOG_USEC``. The watchdog belongs to the process named by
``WATCHDOG_PID`` when that is set, so a child that inherited the environment
never pings on its parent's behalf.

Spoken directly rather than through python-systemd, whose C extension would
be a dependency for about forty lines of socket code. Notifications are
advice to the service manager, never a reason to fail: every send is
non-blocking and a failure is logged once, at debug level, and dropped. With
no ``NOTIFY_SOCKET`` (not run by systemd) every call is a cheap no-op.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
from collections.abc import Callable, Mapping

log = logging.getLogger("modelpool.notify")


class Notifier:
    """Sends sd_notify messages over one non-blocking datagram socket."""

    def __init__(self, address: str | None, *, watchdog_usec: int | None = None) -> None:
        """``address`` as it would appear in ``NOTIFY_SOCKET``; None disables everything.

        ``watchdog_usec`` is the watchdog timeout this process must honour
        (None: no watchdog); :meth:`from_environ` works it out.
        """
        self._address = _socket_address(address)
        self._watchdog_usec = watchdog_usec if self._address is not None else None
        self._socket: socket.socket | None = None
        self._failed = False
        if self._address is not None:
            self._socket = self._open()

    @classmethod
    def from_environ(
        cls, environ: Mapping[str, str] | None = None, *, pid: int | None = None
    ) -> Notifier:
        """The notifier systemd asked for through the environment (``os.environ`` by default)."""
        env = os.environ if environ is None else environ
        own_pid = os.getpid() if pid is None else pid
        return cls(env.get("NOTIFY_SOCKET"), watchdog_usec=_watchdog_usec(env, own_pid))

    @property
    def enabled(self) -> bool:
        return self._socket is not None

    def ready(self, status: str) -> None:
        """Startup finished: the daemon is serving."""
        self._send("READY=1", _status_line(status))

    def reloading(self) -> None:
        """A reload started; :meth:`reloaded` must follow, whatever its outcome."""
        now_usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        self._send("RELOADING=1", f"MONOTONIC_USEC={now_usec}")

    def reloaded(self, status: str) -> None:
        """The reload ended (applied, unchanged or rejected): serving again."""
        self._send("READY=1", _status_line(status))

    def stopping(self, status: str) -> None:
        """Shutdown started: no new connections, in-flight requests draining."""
        self._send("STOPPING=1", _status_line(status))

    def status(self, text: str) -> None:
        """A one-line state for ``systemctl status``."""
        self._send(_status_line(text))

    def watchdog_interval(self) -> float | None:
        """Seconds between pings (half the timeout, as systemd advises), or None."""
        if self._watchdog_usec is None or self._socket is None:
            return None
        return self._watchdog_usec / 2 / 1_000_000

    async def run_watchdog(self, stop: asyncio.Event, status: Callable[[], str]) -> None:
        """Ping every :meth:`watchdog_interval` until ``stop`` is set.

        The pings come from the event loop itself, so a loop stuck in blocking
        code stops them and systemd restarts the daemon. Each carries a fresh
        ``STATUS=`` from ``status()``. Returns at once when there is no watchdog.
        """
        interval = self.watchdog_interval()
        if interval is None:
            return
        while not stop.is_set():
            self._send("WATCHDOG=1", *_status_lines(status))
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(interval):
                    await stop.wait()

    def close(self) -> None:
        """Close the socket; later calls are no-ops."""
        if self._socket is not None:
            self._socket.close()
            self._socket = None

    def _open(self) -> socket.socket | None:
        try:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        except OSError as exc:
            self._report(exc)
            return None
        sock.setblocking(False)
        return sock

    def _send(self, *lines: str) -> None:
        if self._socket is None or self._address is None:
            return
        try:
            self._socket.sendto("\n".join(lines).encode(), self._address)
        except OSError as exc:  # gone, refused, or full (BlockingIOError): drop it
            self._report(exc)

    def _report(self, exc: OSError) -> None:
        if not self._failed:
            self._failed = True
            log.debug("cannot notify systemd (further failures not logged): %s", exc)


def _socket_address(address: str | None) -> str | None:
    """The ``sendto`` address for a ``NOTIFY_SOCKET`` value, None when unusable."""
    if not address:
        return None
    if address.startswith("@"):
        return "\0" + address[1:]
    if address.startswith("/"):
        return address
    log.debug("NOTIFY_SOCKET %r is not a unix socket; systemd notifications off", address)
    return None


def _watchdog_usec(env: Mapping[str, str], pid: int) -> int | None:
    """``WATCHDOG_USEC`` when it is meant for ``pid``, else None."""
    watchdog_pid = env.get("WATCHDOG_PID")
    if watchdog_pid is not None and watchdog_pid.strip() != str(pid):
        return None
    try:
        usec = int(env.get("WATCHDOG_USEC", ""))
    except ValueError:
        return None
    return usec if usec > 0 else None


def _status_line(text: str) -> str:
    """``STATUS=text`` on one line: a newline would start a new assignment."""
    return "STATUS=" + " ".join(text.splitlines())


def _status_lines(status: Callable[[], str]) -> tuple[str, ...]:
    """A fresh status line, or none when the callable fails (the ping still goes)."""
    try:
        return (_status_line(status()),)
    except Exception:  # a status callback must never silence the watchdog
        log.exception("watchdog status callback failed")
        return ()
