"""The compiled schema gate: valid or not, in this process or in a child.

jsonschema-rs answers "is this config valid?" about 100x faster than
jsonschema, which only runs to explain a config the gate rejected. Loading it
maps ~15 MB (its code and the compiled schema) that a process never gives
back. One-shot commands pay that in-process (:func:`inline_gate`); the daemon,
which lives for months next to every agent, asks a short-lived child instead
(:func:`child_gate`), so those megabytes exist only while a config loads.

A gate may only err towards "not valid": jsonschema then decides. So a child
that cannot start, dies or stalls costs speed, never a wrong verdict.
"""

from __future__ import annotations

import contextlib
import logging
import pickle
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from typing import Any, Protocol

from modelpool.config.judge import FRAME, INVALID, VALID, judge

log = logging.getLogger(__name__)

ANSWER_TIMEOUT = 10.0
"""Seconds a child may take to start and judge one document before it is killed."""

CHILD = (sys.executable, "-P", "-m", "modelpool.config.judge")
"""The child's command line (``-P``: never a ``modelpool`` found in the working directory)."""


class Gate(Protocol):
    def passes(self, data: Any) -> bool:
        """True only if ``data`` is valid; False if invalid or not known."""
        ...


GateFactory = Callable[[], AbstractContextManager[Gate]]
"""How a config load gets its gate: :func:`inline_gate` or :func:`child_gate`."""


class InlineGate:
    def passes(self, data: Any) -> bool:
        return judge(data)


@contextlib.contextmanager
def inline_gate() -> Iterator[Gate]:
    yield InlineGate()


@contextlib.contextmanager
def child_gate() -> Iterator[Gate]:
    """A gate answered by a child process, started now and stopped on exit.

    The child loads jsonschema-rs while the caller reads and parses the file,
    and serves every check of one load.
    """
    gate = _Child()
    try:
        yield gate
    finally:
        gate.close()


class _Child:
    def __init__(self) -> None:
        self._proc: subprocess.Popen[bytes] | None = None
        try:
            self._proc = subprocess.Popen(
                CHILD,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,  # a traceback could quote the config's secrets
            )
        except (OSError, TypeError) as exc:  # TypeError: sys.executable may be None
            log.warning("schema gate child did not start, validating with jsonschema: %s", exc)

    def passes(self, data: Any) -> bool:
        proc = self._proc
        if proc is None:
            return False
        try:
            payload = pickle.dumps(data, protocol=pickle.HIGHEST_PROTOCOL)
        except (pickle.PicklingError, TypeError, ValueError, RecursionError):
            return False
        assert proc.stdin is not None
        assert proc.stdout is not None
        watchdog = threading.Timer(ANSWER_TIMEOUT, proc.kill)
        watchdog.start()
        try:
            proc.stdin.write(FRAME.pack(len(payload)) + payload)
            proc.stdin.flush()
            answer = proc.stdout.read(1)
        except OSError:
            answer = b""
        finally:
            watchdog.cancel()
        if answer not in (VALID, INVALID):
            log.warning("schema gate child gave no answer, validating with jsonschema")
            self.close()
            return False
        return answer == VALID

    def close(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        for pipe in (proc.stdin, proc.stdout):
            with contextlib.suppress(OSError):
                if pipe is not None:
                    pipe.close()
        proc.kill()  # its work is done (or never came: a file that did not parse)
        proc.wait()
