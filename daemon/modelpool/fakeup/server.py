"""The fake upstream's aiohttp app: OpenAI endpoints behind a fault script, and its controls.

Control endpoints (never subject to faults):

- ``GET /_fault``: the script, where it is, and how many requests each step served.
- ``POST /_fault``: replace the script (JSON: a list of steps, ``{"steps": [...],
  "loop": true}`` or one step) and start it from the top. ``DELETE /_fault``: no faults.
- ``GET /_stats``: requests per path and fault, Authorization headers seen
  (all but their last 4 characters hidden), requests in flight and abandoned.
- ``POST /_reset``: zero every counter (the script keeps its place).
"""

from __future__ import annotations

import asyncio
import logging
import signal
from collections import Counter
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import web

from modelpool.fakeup.answers import answer_for
from modelpool.fakeup.cursor import Cursor
from modelpool.fakeup.faults import perform
from modelpool.fakeup.script import FaultScriptError, Script, describe_script, script_from

log = logging.getLogger("modelpool.fakeup")

DEFAULT_MODELS = ("fake-model",)
SHUTDOWN_TIMEOUT = 1.0
"""A fake has nothing worth draining: hung requests are cut at once on shutdown."""
MAX_BODY = 64 * 1024 * 1024


@dataclass
class Stats:
    """What the fake has seen since it started or since the last ``POST /_reset``."""

    requests: dict[str, Counter[str]] = field(default_factory=dict)
    authorization: Counter[str] = field(default_factory=Counter)
    in_flight: int = 0
    abandoned: int = 0
    """Requests whose client left before the answer was complete."""

    def record(self, path: str, kind: str, authorization: str | None) -> None:
        self.requests.setdefault(path, Counter())[kind] += 1
        if authorization is not None:
            self.authorization[redact(authorization)] += 1

    def view(self) -> dict[str, Any]:
        return {
            "total": sum(sum(c.values()) for c in self.requests.values()),
            "requests": {path: dict(kinds) for path, kinds in self.requests.items()},
            "authorization": dict(self.authorization),
            "in_flight": self.in_flight,
            "abandoned": self.abandoned,
        }

    def clear(self) -> None:
        self.requests.clear()
        self.authorization.clear()
        self.abandoned = 0


def redact(secret: str) -> str:
    """All but the last 4 characters hidden, so tests can tell keys apart without leaking them."""
    return "…" + secret[-4:] if len(secret) > 4 else "…"


@dataclass
class FakeState:
    cursor: Cursor
    stats: Stats = field(default_factory=Stats)
    models: tuple[str, ...] = DEFAULT_MODELS


STATE = web.AppKey("fakeup_state", FakeState)


def build_app(script: Script, models: Sequence[str] = DEFAULT_MODELS) -> web.Application:
    app = web.Application(client_max_size=MAX_BODY)
    app[STATE] = FakeState(Cursor(script), models=tuple(models) or DEFAULT_MODELS)
    app.router.add_get("/_fault", _get_fault)
    app.router.add_post("/_fault", _post_fault)
    app.router.add_delete("/_fault", _delete_fault)
    app.router.add_get("/_stats", _get_stats)
    app.router.add_post("/_reset", _post_reset)
    app.router.add_route("*", "/{tail:.*}", _handle)
    return app


# --------------------------------------------------------------------------- the API


async def _handle(request: web.Request) -> web.StreamResponse:
    state = request.app[STATE]
    raw = await request.read()
    fault, step = state.cursor.next_fault(request.path)
    state.stats.record(request.path, fault.kind, request.headers.get("Authorization"))
    log.info("request", extra={"path": request.path, "fault": fault.kind, "step": step})
    answer = answer_for(request.method, request.path, raw, state.models)
    state.stats.in_flight += 1
    try:
        return await perform(request, fault, answer)
    except (asyncio.CancelledError, ConnectionError):
        state.stats.abandoned += 1
        raise
    finally:
        state.stats.in_flight -= 1


# --------------------------------------------------------------------------- controls


def _fault_view(state: FakeState) -> dict[str, Any]:
    cursor = state.cursor
    return {
        "script": describe_script(cursor.script),
        "position": cursor.position,
        "served": list(cursor.served),
    }


def _json(data: Any, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(data), status=status, content_type="application/json")


async def _get_fault(request: web.Request) -> web.Response:
    return _json(_fault_view(request.app[STATE]))


async def _post_fault(request: web.Request) -> web.Response:
    state = request.app[STATE]
    try:
        script = script_from(orjson.loads(await request.read()))
    except (orjson.JSONDecodeError, FaultScriptError) as exc:
        return _json({"error": {"message": str(exc), "type": "invalid_request_error"}}, 400)
    state.cursor = Cursor(script)
    log.info("script replaced", extra={"script": describe_script(script)})
    return _json(_fault_view(state))


async def _delete_fault(request: web.Request) -> web.Response:
    state = request.app[STATE]
    state.cursor = Cursor()
    return _json(_fault_view(state))


async def _get_stats(request: web.Request) -> web.Response:
    return _json(request.app[STATE].stats.view())


async def _post_reset(request: web.Request) -> web.Response:
    state = request.app[STATE]
    state.stats.clear()
    state.cursor.clear_counters()
    return _json(state.stats.view())


# --------------------------------------------------------------------------- running


@asynccontextmanager
async def running(
    script: Script,
    host: str = "127.0.0.1",
    port: int = 0,
    models: Sequence[str] = DEFAULT_MODELS,
) -> AsyncIterator[str]:
    """Serve a fake upstream for the duration of the block; yields its root URL."""
    runner = web.AppRunner(
        build_app(script, models),
        handler_cancellation=True,
        access_log=None,
        shutdown_timeout=SHUTDOWN_TIMEOUT,
    )
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port, reuse_address=True).start()
        bound_host, bound_port = runner.addresses[0][:2]
        shown = f"[{bound_host}]" if ":" in bound_host else bound_host
        yield f"http://{shown}:{bound_port}"
    finally:
        await runner.cleanup()


async def serve(script: Script, host: str, port: int, models: Sequence[str] = ()) -> int:
    """``modelpool fake-upstream``: serve until SIGTERM or SIGINT; return the exit code."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        async with running(script, host, port, models or DEFAULT_MODELS) as url:
            log.info("listening", extra={"url": url, "script": describe_script(script)})
            await stop.wait()
            log.info("stopping")
    except OSError as exc:
        log.error("cannot listen", extra={"listen": f"{host}:{port}", "error": str(exc)})
        return 1
    return 0
