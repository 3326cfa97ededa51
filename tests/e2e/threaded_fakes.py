"""The integration suite's fake upstreams, served from a background thread for e2e tests.

The e2e tests drive the real daemon process with the official (blocking)
SDKs; the fakes they talk to are asyncio servers, so they run on their own
event loop in a daemon thread. Everything crosses threads through
``run_coroutine_threadsafe`` with a bounded wait.
"""

from __future__ import annotations

import asyncio
import sys
import threading
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, TypeVar

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "integration"))

from fake_upstream import FakeUpstream, Received, Reply

T = TypeVar("T")
WAIT = 10.0


class ThreadedFakes:
    def __init__(self, count: int) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()
        self.fakes: list[FakeUpstream] = [self._run(FakeUpstream().start()) for _ in range(count)]

    def _run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(WAIT)

    def script(self, index: int, path: str, *replies: Reply) -> None:
        async def script() -> None:
            self.fakes[index].script(path, *replies)

        self._run(script())

    def requests(self, index: int) -> list[Received]:
        async def snapshot() -> list[Received]:
            return list(self.fakes[index].requests)

        return self._run(snapshot())

    def reset(self) -> None:
        async def reset() -> None:
            for fake in self.fakes:
                fake.reset()

        self._run(reset())

    def close(self) -> None:
        async def close() -> None:
            for fake in self.fakes:
                await fake.close()

        try:
            self._run(close())
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(WAIT)
            self._loop.close()
